"""Other frameworks' metric names mapped onto ours (docs/metrics.md), one table per framework.

A key maps onto one of our names only where the quantity is the same; a quantity that merely
resembles ours keeps its own name under the framework's prefix (``trl/...``, ``verl/...``), so
nothing is lost and nothing is mislabelled. Where the definitions differ:

* TRL 1.16 ``GRPOTrainer._compute_loss``: ``clip_ratio/high_mean`` = (r > 1+eps_high) & (A > 0)
  and ``clip_ratio/low_mean`` = (r < 1-eps_low) & (A < 0), token means: our
  ``clip/upper_frac`` / ``clip/lower_frac``. ``clip_ratio/region_mean`` is their sum (kept as
  ``trl/clip_ratio/region_mean``). ``entropy`` is the token mean of the full-vocabulary entropy
  at the sampling temperature, as ours. ``kl`` is the k3 estimate against the reference model.
* verl 0.9 ``compute_policy_loss_vanilla``: ``actor/pg_clipfrac`` counts tokens clipped on
  *either* side (not split), so it stays ``verl/actor/pg_clipfrac``; ``actor/pg_clipfrac_lower``
  is the *dual-clip* fraction (A < 0 and the ``clip_ratio_c`` cap binds): our
  ``clip/dual_frac``, not ``clip/lower_frac``. ``actor/ppo_kl`` is the k1 estimate
  mean(-log r), not our k3 ``kl/old_approx``, so it stays ``verl/actor/ppo_kl``.
  ``val-core/<source>/acc/mean@N`` -> ``acc/eval`` and ``val-core/<source>/acc/best@N/mean``
  -> ``eval/pass@N`` (mean over data sources); verl prefixes a loss's own metrics with
  ``actor/``, so ``actor/<one of our names>`` (from our ``erl_*`` losses) maps back to it.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping

__all__ = ["NAMINGS", "TRL_NAMES", "VERL_NAMES", "detect_naming", "is_our_name", "map_metrics"]

NAMINGS = ("entropy_rl", "trl", "verl")

TRL_NAMES: dict[str, str] = {
    "entropy": "entropy/mean",
    "clip_ratio/high_mean": "clip/upper_frac",
    "clip_ratio/low_mean": "clip/lower_frac",
    "cispo_clip_ratio": "clip/upper_frac",  # loss_type="cispo": (r > epsilon_high) & (A > 0)
    "reward": "reward/mean",
    "reward_std": "reward/std",
    "frac_reward_zero_std": "groups/zero_var_frac",
    "completions/mean_length": "length/mean",
    "completions/clipped_ratio": "length/truncated_frac",
    "kl": "kl/ref",
    "loss": "loss/total",
    "policy_loss": "loss/policy",
    "grad_norm": "grad/norm",
    "learning_rate": "lr",
    "entropy_coef": "control/entropy_coef",
    "step_time": "time/step",
}
"""TRL 1.16 GRPOTrainer log keys -> ours (checked against trl/trainer/grpo_trainer.py)."""

VERL_NAMES: dict[str, str] = {
    "actor/entropy": "entropy/mean",
    "actor/pg_clipfrac_lower": "clip/dual_frac",
    "actor/pg_loss": "loss/policy",
    "actor/kl_loss": "kl/ref",
    "actor/grad_norm": "grad/norm",
    "actor/lr": "lr",
    "critic/score/mean": "reward/mean",
    "response_length/mean": "length/mean",
    "response_length/clip_ratio": "length/truncated_frac",
    "timing_s/step": "time/step",
}
"""verl 0.9 metric keys -> ours (checked against verl/trainer/ppo/{core_algos,metric_utils}.py)."""

_VERL_VAL_ACC = re.compile(r"^val-core/.+/acc/mean@\d+$")
_VERL_VAL_BEST = re.compile(r"^val-core/.+/acc/best@(\d+)/mean$")

_OUR_PREFIXES = (
    "entropy/",
    "reward/",
    "acc/",
    "eval/",
    "prob/",
    "cov/",
    "clip/",
    "ratio/",
    "kl/",
    "loss/",
    "grad/",
    "length/",
    "groups/",
    "control/",
    "time/",
    "throughput/",
    "gen/",
)


def is_our_name(key: str) -> bool:
    """True for a key in one of our namespaces (docs/metrics.md), e.g. ``entropy/mean``."""
    return key in ("step", "lr") or key.startswith(_OUR_PREFIXES)


def _number(value: object) -> float | None:
    """A finite float, else None (bools, strings, None, NaN and inf are not metrics)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def detect_naming(keys: set[str] | list[str]) -> str | None:
    """Which framework's names ``keys`` use: ``entropy_rl``, ``verl``, ``trl``, or None."""
    keys = set(keys)
    if "entropy/mean" in keys:
        return "entropy_rl"
    if any(k.startswith(("actor/", "critic/", "response_length/", "val-core/")) for k in keys):
        return "verl"
    if keys & {"entropy", "reward", "clip_ratio/high_mean", "completions/mean_length"}:
        return "trl"
    return None


def map_metrics(row: Mapping[str, object], *, naming: str) -> dict[str, float]:
    """One step's metrics in ``naming``'s names -> ours.

    Mapped keys take our name; keys already in our namespaces pass unchanged and win over a
    mapped duplicate; any other numeric key is kept as ``<naming>/<key>``. Non-numeric and
    non-finite values are dropped. ``step`` is kept as an int when present.

    Raises:
        ValueError: ``naming`` not one of ``NAMINGS``.
    """
    if naming not in NAMINGS:
        raise ValueError(f"unknown metric naming {naming!r}; allowed: {', '.join(NAMINGS)}")
    table = {"entropy_rl": {}, "trl": TRL_NAMES, "verl": VERL_NAMES}[naming]
    native: dict[str, float] = {}
    mapped: dict[str, float] = {}
    averaged: dict[str, list[float]] = defaultdict(list)
    for key, raw in row.items():
        if key == "step":
            continue
        v = _number(raw)
        if v is None:
            continue
        if naming == "entropy_rl" or is_our_name(key):
            native[key] = v
        elif key in table:
            mapped[table[key]] = v
        elif naming == "verl" and key.startswith("actor/") and is_our_name(key[6:]):
            native[key[6:]] = v
        elif naming == "verl" and _VERL_VAL_ACC.match(key):
            averaged["acc/eval"].append(v)
        elif naming == "verl" and (m := _VERL_VAL_BEST.match(key)):
            averaged[f"eval/pass@{m.group(1)}"].append(v)
        else:
            mapped[f"{naming}/{key}"] = v
    out: dict[str, float] = {}
    step = _number(row.get("step"))
    if step is not None:
        out["step"] = int(step)
    out |= mapped
    out |= {k: sum(vs) / len(vs) for k, vs in averaged.items()}
    out |= native
    return out
