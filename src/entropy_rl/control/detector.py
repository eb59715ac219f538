"""Collapse detector: rules over the per-step metric stream that emit events.

``CollapseDetector.observe(metrics)`` takes one step's metrics (the row written to
``metrics.jsonl``) and returns the events that fired at that step. Seven rules:

* ``entropy_drop``: ``entropy/mean`` fell by more than a fraction of its peak within a
  window of steps while accuracy did not improve;
* ``entropy_floor``: ``entropy/mean`` under a floor before a given fraction of training;
* ``exploration_collapse``: ``eval/distinct_answers`` fell to <= a minimum, or pass@K at the
  largest K stalled or fell while pass@1 rose over the last evaluations;
* ``entropy_explosion``: entropy above a ceiling (absolute or a multiple of its initial
  value) or risen fast while accuracy did not, or ``length/mean`` above a multiple of its
  initial value;
* ``repetition_rise``: ``gen/repetition`` (the share of a completion's 4-grams seen earlier in
  it) risen above its initial value by a margin: the model loops. A rule of its own because
  looping comes with entropy *falling* as often as rising (SmolLM2 at 60x the learning rate:
  repetition 0.015 -> 0.315 while entropy fell 2.03 -> 0.45 nats, docs/experiments.md);
* ``truncation``: ``length/truncated_frac`` (the share of completions cut at
  ``max_new_tokens``) above a share for several steps in a row: the reward then scores
  unfinished answers (SmolLM2 on word problems at 48 tokens: 69-75% cut, no signal);
* ``no_signal``: ``groups/zero_var_frac`` (the share of prompt groups whose samples all
  earned the same reward) at or above a share for several steps in a row: their advantages
  are 0 and the update learns nothing from them, because the prompts are solved or, at low
  entropy, because the policy answers each prompt one way (TRL's ``frac_reward_zero_std``
  at 1 with ``loss`` and ``grad_norm`` 0: TRL #3857).

A rule whose metrics are absent (or non-finite) at a step is skipped for that step: it
neither fires nor counts as quiet. Each rule fires once per episode: after firing it stays
silent until its condition has been false at ``rearm_steps`` consecutive evaluations and
``cooldown_steps`` steps have passed. The detector only *reports* the configured action
(``Event.action``); the trainer carries it out. ``is_healthy`` is False while any rule's
condition held at its latest evaluation; the trainer can use it to mark the last healthy
checkpoint for ``rollback``.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from entropy_rl.control.detector_config import ACTIONS, RULES, DetectorConfig

__all__ = ["ACTIONS", "RULES", "CollapseDetector", "DetectorConfig", "Event"]

Severity = Literal["warning", "critical"]

ENTROPY = "entropy/mean"
DISTINCT = "eval/distinct_answers"
REPETITION = "gen/repetition"
LENGTH = "length/mean"
TRUNCATED = "length/truncated_frac"
ZERO_VAR = "groups/zero_var_frac"
NO_SIGNAL = "groups/no_signal_frac"
"""Our trainer's share of the update's groups without signal (dynamic sampling keeps only
groups with signal, so 1 only when it kept none); read by ``no_signal`` in place of
``groups/zero_var_frac`` (TRL's ``frac_reward_zero_std``: the same without dynamic sampling)."""
ROLLOUT_ENTROPY = "entropy/rollout"
"""Every sample's entropy from the sampler: read as ``entropy/mean`` on a step without it (an
update skipped because dynamic sampling kept no group)."""


def with_rollout_entropy(metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    """``metrics`` with ``entropy/rollout`` as ``entropy/mean`` on a step that logged only the
    former (its update skipped); otherwise unchanged. The detector and ``entropy-rl compare``
    read a step's entropy through this."""
    if ENTROPY in metrics or metrics.get(ROLLOUT_ENTROPY) is None:
        return metrics
    return {**metrics, ENTROPY: metrics[ROLLOUT_ENTROPY]}


SMOOTHED = (ENTROPY, "acc/train")
"""The per-step training metrics ``smooth_steps`` averages (evaluations are not)."""
PASS1_KEYS = ("eval/pass@1", "acc/eval")
_PASS_AT = re.compile(r"^eval/pass@(\d+)$")


@dataclass(frozen=True)
class Event:
    """One detector event: a line of ``events.jsonl`` (schema in docs/metrics.md)."""

    step: int
    """RL step at which the rule fired."""
    rule: str
    """One of ``RULES``."""
    severity: Severity
    """warning or critical."""
    values: dict[str, float]
    """The numbers the rule compared."""
    message: str
    """One line saying what happened."""
    action: str | None
    """The configured action for the trainer, None for none."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["values"] = {k: (v if math.isfinite(v) else None) for k, v in self.values.items()}
        return d

    def to_json(self) -> str:
        """Strict JSON (non-finite values become null)."""
        return json.dumps(self.to_dict(), allow_nan=False)


@dataclass
class _RuleState:
    active: bool = False
    armed: bool = True
    quiet: int = 0
    last_fired: int | None = None


# (condition, severity, values, message), or None when the rule cannot be evaluated.
_Check = tuple[bool, Severity, dict[str, float], str] | None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


class CollapseDetector:
    """Watch the metric stream; see the module docstring for the rules.

    Args:
        config: thresholds and actions (defaults: ``DetectorConfig()``).
        total_steps: planned RL steps, for ``entropy_floor_before_frac``.
    """

    def __init__(self, config: DetectorConfig | None, total_steps: int) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
        self.config = config if config is not None else DetectorConfig()
        self.total_steps = total_steps
        self._step = 0
        self._history: dict[str, deque[tuple[int, float]]] = {}
        self._first: dict[str, list[float]] = {}
        self._raw: dict[str, deque[float]] = {}  # the last smooth_steps values of SMOOTHED
        self._rules = {r: _RuleState() for r in RULES}
        self.last_healthy_step: int | None = None

    # ------------------------------------------------------------------ public

    @property
    def is_healthy(self) -> bool:
        """True when no enabled rule's condition held at its latest evaluation."""
        return not any(s.active for s in self._rules.values())

    def observe(self, metrics: Mapping[str, Any]) -> list[Event]:
        """Feed one step's metrics; return the events fired at this step (often none).

        ``metrics["step"]`` is the step; without it the previous step + 1 is used. A step
        without ``entropy/mean`` but with ``entropy/rollout`` is read with the latter in its
        place (dynamic sampling skipped the update).
        """
        metrics = with_rollout_entropy(metrics)
        step_value = _number(metrics.get("step"))
        step = int(step_value) if step_value is not None else self._step + 1
        self._step = step
        now: dict[str, float] = {}
        for key, raw in metrics.items():
            v = _number(raw)
            if v is not None and key != "step":
                if key in SMOOTHED:
                    recent = self._raw.setdefault(key, deque(maxlen=self.config.smooth_steps))
                    recent.append(v)
                    v = sum(recent) / len(recent)
                now[key] = v
                self._record(key, step, v)

        cfg = self.config
        checks = {
            "entropy_drop": self._check_drop,
            "entropy_floor": self._check_floor,
            "exploration_collapse": self._check_exploration,
            "entropy_explosion": self._check_explosion,
            "repetition_rise": self._check_repetition,
            "truncation": self._check_truncation,
            "no_signal": self._check_no_signal,
        }
        events = []
        for rule, check in checks.items():
            if not getattr(cfg, f"{rule}_enabled"):
                continue
            result = check(step, now)
            if result is None:
                continue
            event = self._hysteresis(rule, step, *result)
            if event is not None:
                events.append(event)
        if self.is_healthy:
            self.last_healthy_step = step
        return events

    def state_dict(self) -> dict[str, Any]:
        """Histories, baselines and rule states as plain JSON-able values."""
        return {
            "step": self._step,
            "history": {k: [list(p) for p in d] for k, d in self._history.items()},
            "first": {k: list(v) for k, v in self._first.items()},
            "raw": {k: list(d) for k, d in self._raw.items()},
            "rules": {r: asdict(s) for r, s in self._rules.items()},
            "last_healthy_step": self.last_healthy_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the config comes from the constructor)."""
        try:
            step = int(state["step"])
            history = {
                k: deque(((int(s), float(v)) for s, v in pts), maxlen=self._maxlen(k))
                for k, pts in state["history"].items()
            }
            first = {k: [float(x) for x in v] for k, v in state["first"].items()}
            n = self.config.smooth_steps  # "raw" is absent from checkpoints before smoothing
            raw = {
                k: deque((float(x) for x in v), maxlen=n) for k, v in state.get("raw", {}).items()
            }
            # a rule missing from an older checkpoint (repetition_rise came later) starts armed
            rules = {r: _RuleState(**state["rules"].get(r, {})) for r in RULES}
            last = state["last_healthy_step"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a CollapseDetector state dict: {exc!r}") from exc
        self._step, self._history, self._first, self._rules = step, history, first, rules
        self._raw = raw
        self.last_healthy_step = None if last is None else int(last)

    # ------------------------------------------------------------------ bookkeeping

    def _maxlen(self, key: str) -> int:
        """History length: drop window + 1 for entropy/accuracy, the pass@k window for eval."""
        n = 1
        if key == ENTROPY or key in self.config.accuracy_keys:
            n = self.config.entropy_drop_window + 1
        if key in PASS1_KEYS or _PASS_AT.match(key):
            n = max(n, self.config.exploration_passk_window)
        if key == TRUNCATED:
            n = self.config.truncation_steps
        if key in (ZERO_VAR, NO_SIGNAL):
            n = self.config.no_signal_steps
        return n

    def _record(self, key: str, step: int, value: float) -> None:
        tracked = (
            key in (ENTROPY, TRUNCATED, ZERO_VAR, NO_SIGNAL)
            or key in self.config.accuracy_keys
            or key in PASS1_KEYS
        )
        if tracked or _PASS_AT.match(key):
            hist = self._history.setdefault(key, deque(maxlen=self._maxlen(key)))
            hist.append((step, value))
        first = self._first.setdefault(key, [])
        if len(first) < self.config.baseline_steps:
            first.append(value)

    def _baseline(self, key: str) -> float | None:
        first = self._first.get(key, [])
        if len(first) < self.config.baseline_steps:
            return None
        return sum(first) / len(first)

    def _hysteresis(
        self,
        rule: str,
        step: int,
        cond: bool,
        severity: Severity,
        values: dict[str, float],
        msg: str,
    ) -> Event | None:
        """Fire on the first step of an episode (armed and out of cooldown), else stay quiet."""
        st = self._rules[rule]
        st.active = cond
        if not cond:
            st.quiet += 1
            if st.quiet >= self.config.rearm_steps:
                st.armed = True
            return None
        st.quiet = 0
        cooled = st.last_fired is None or step - st.last_fired >= self.config.cooldown_steps
        if not (st.armed and cooled):
            return None
        st.armed, st.last_fired = False, step
        return Event(step, rule, severity, values, msg, self.config.action_for(rule))

    def _means(self, *, alone: bool = False) -> str:
        """What a message's values are under ``smooth_steps`` > 1 (nothing when 1)."""
        k = self.config.smooth_steps
        if k == 1:
            return ""
        return f" ({k}-step mean)" if alone else f", {k}-step means"

    # ------------------------------------------------------------------ rules

    def _check_drop(self, step: int, now: dict[str, float]) -> _Check:
        cfg = self.config
        if ENTROPY not in now:
            return None
        start = step - cfg.entropy_drop_window
        hs = [v for s, v in self._history[ENTROPY] if s >= start]  # includes this step
        peak, h = max(hs), now[ENTROPY]
        if len(hs) < 2 or peak <= 0:
            return None
        acc = self._acc_gain(start)
        if acc is None:
            return None
        key, gain = acc
        drop = (peak - h) / peak
        cond = (
            drop > cfg.entropy_drop_frac
            and peak - h > cfg.entropy_drop_min
            and gain < cfg.entropy_drop_min_acc_gain
        )
        values = {"entropy": h, "entropy_peak": peak, "drop_frac": drop, "acc_gain": gain}
        msg = (
            f"entropy/mean fell {drop:.0%} within {cfg.entropy_drop_window} steps"
            f" ({peak:.3g} -> {h:.3g} nats{self._means()}) while {key} changed {gain:+.3f}"
        )
        return cond, "warning", values, msg

    def _acc_gain(self, start: int) -> tuple[str, float] | None:
        """(key, gain) of the first accuracy key with >= 2 values since ``start``: mean of the
        newer half minus mean of the older half; None when no key has 2 values."""
        for key in self.config.accuracy_keys:
            accs = [v for s, v in self._history.get(key, ()) if s >= start]
            if len(accs) >= 2:
                half = len(accs) // 2
                return key, sum(accs[-half:]) / half - sum(accs[:half]) / half
        return None

    def _check_floor(self, step: int, now: dict[str, float]) -> _Check:
        cfg = self.config
        if ENTROPY not in now:
            return None
        h, progress = now[ENTROPY], step / self.total_steps
        cond = progress < cfg.entropy_floor_before_frac and h < cfg.entropy_floor_value
        values = {"entropy": h, "floor": cfg.entropy_floor_value, "progress": progress}
        msg = (
            f"entropy/mean {h:.3g} nats{self._means(alone=True)} is under the floor"
            f" {cfg.entropy_floor_value:g} at"
            f" {progress:.0%} of training (floor holds until {cfg.entropy_floor_before_frac:.0%})"
        )
        return cond, "critical", values, msg

    def _check_exploration(self, step: int, now: dict[str, float]) -> _Check:
        cfg = self.config
        evaluated, values, parts = False, dict[str, float](), list[str]()
        base = self._baseline(DISTINCT)
        if DISTINCT in now and base is not None:
            evaluated = True
            d = now[DISTINCT]
            values |= {"distinct_answers": d, "distinct_answers_initial": base}
            if base > cfg.exploration_distinct_min >= d:
                parts.append(f"eval/distinct_answers fell to {d:.2f} per prompt (from {base:.2f})")
        ks = [int(mt.group(1)) for key in now if (mt := _PASS_AT.match(key))]
        ks = [k for k in ks if k > 1]
        pass1 = next((key for key in PASS1_KEYS if key in now), None)
        if ks and pass1 is not None:
            k_key = f"eval/pass@{max(ks)}"
            hk, h1 = self._history[k_key], self._history[pass1]
            w = cfg.exploration_passk_window
            if len(hk) >= w and len(h1) >= w:
                evaluated = True
                dk, d1 = hk[-1][1] - hk[-w][1], h1[-1][1] - h1[-w][1]
                values |= {"passk": hk[-1][1], "passk_gain": dk, "pass1_gain": d1}
                stalled = hk[-1][1] < cfg.exploration_passk_saturated
                stalled = stalled and dk <= cfg.exploration_passk_max_gain
                if stalled and d1 >= cfg.exploration_pass1_min_gain:
                    parts.append(
                        f"{k_key} moved {dk:+.3f} over the last {w} evals while {pass1}"
                        f" rose {d1:+.3f}: diversity traded for pass@1"
                    )
        if not evaluated:
            return None
        return bool(parts), "warning", values, "; ".join(parts)

    def _entropy_rise(self, step: int, h: float) -> tuple[float, float, str, float] | None:
        """(window minimum, (h - min) / min, accuracy key, accuracy gain) over the drop window;
        None without 2 entropy values, a positive minimum and an accuracy key."""
        if self.config.explosion_rise_frac is None:
            return None
        start = step - self.config.entropy_drop_window
        hs = [v for s, v in self._history[ENTROPY] if s >= start]
        acc = self._acc_gain(start)
        if len(hs) < 2 or min(hs) <= 0 or acc is None:
            return None
        low = min(hs)
        return low, (h - low) / low, acc[0], acc[1]

    def _check_explosion(self, step: int, now: dict[str, float]) -> _Check:
        cfg = self.config
        evaluated, values, parts, critical = False, dict[str, float](), list[str](), False
        if ENTROPY in now:
            h, base = now[ENTROPY], self._baseline(ENTROPY)
            ceilings = []
            if cfg.explosion_entropy_ceiling is not None:
                ceilings.append(cfg.explosion_entropy_ceiling)
            if cfg.explosion_entropy_mult is not None and base is not None:
                ceilings.append(cfg.explosion_entropy_mult * base)
            if ceilings:
                evaluated, ceiling = True, min(ceilings)
                values |= {"entropy": h, "entropy_ceiling": ceiling}
                if h > ceiling:
                    critical = True
                    parts.append(f"entropy/mean {h:.3g} nats above its ceiling {ceiling:.3g}")
            rise = self._entropy_rise(step, h)
            if rise is not None:
                evaluated = True
                low, frac, key, gain = rise
                values |= {"entropy": h, "entropy_low": low, "rise_frac": frac, "acc_gain": gain}
                if (
                    cfg.explosion_rise_frac is not None
                    and frac > cfg.explosion_rise_frac
                    and h - low > cfg.explosion_rise_min
                    and gain < cfg.entropy_drop_min_acc_gain
                ):
                    critical = True
                    parts.append(
                        f"entropy/mean rose {frac:.0%} within {cfg.entropy_drop_window} steps"
                        f" ({low:.3g} -> {h:.3g} nats{self._means()}) while {key} changed"
                        f" {gain:+.3f}"
                    )
        len_base = self._baseline(LENGTH)
        if cfg.explosion_length_mult is not None and LENGTH in now and len_base is not None:
            evaluated, n = True, now[LENGTH]
            values |= {"length": n, "length_initial": len_base}
            if n > cfg.explosion_length_mult * len_base:
                mult = cfg.explosion_length_mult
                parts.append(f"length/mean {n:.4g} above {mult:g}x its initial {len_base:.4g}")
        if not evaluated:
            return None
        return bool(parts), "critical" if critical else "warning", values, "; ".join(parts)

    def _check_repetition(self, step: int, now: dict[str, float]) -> _Check:
        base = self._baseline(REPETITION)
        if REPETITION not in now or base is None:
            return None
        r, limit = now[REPETITION], self.config.repetition_rise_threshold
        values = {"repetition": r, "repetition_initial": base, "rise": r - base}
        msg = (
            f"gen/repetition (share of repeated 4-grams) rose to {r:.3g} from {base:.3g}"
            f" (+{r - base:.3g} > {limit:g}): the model loops"
        )
        return r - base > limit, "warning", values, msg

    def _last_shares(self, key: str, n: int, now: dict[str, float]) -> list[float] | None:
        """``key``'s values at the last ``n`` steps, this one last; None unless this step
        logged it and its history holds ``n`` values (the rules that need a share to hold for
        several steps in a row: truncation, no_signal)."""
        hist = self._history.get(key)
        if key not in now or hist is None or len(hist) < n:
            return None
        return [v for _, v in hist]

    def _check_truncation(self, step: int, now: dict[str, float]) -> _Check:
        n, limit = self.config.truncation_steps, self.config.truncation_frac
        shares = self._last_shares(TRUNCATED, n, now)
        if shares is None:
            return None
        values = {"truncated_frac": now[TRUNCATED], "min_over_steps": min(shares), "steps": n}
        msg = (
            f"{now[TRUNCATED]:.0%} of completions hit max_new_tokens ({min(shares):.0%} or more "
            f"for {n} steps): rewards score cut-off answers. Raise rollout.max_new_tokens, or "
            f"penalise length (rollout.overlong_shaping=true)"
        )
        return min(shares) > limit, "warning", values, msg

    def _check_no_signal(self, step: int, now: dict[str, float]) -> _Check:
        key = NO_SIGNAL if NO_SIGNAL in now else ZERO_VAR
        n, limit = self.config.no_signal_steps, self.config.no_signal_frac
        shares = self._last_shares(key, n, now)
        if shares is None:
            return None
        values = {key.split("/")[1]: now[key], "min_over_steps": min(shares), "steps": n}
        seen = []
        if "acc/train" in now:
            seen.append(f"acc/train {now['acc/train']:.2f}")
            values["acc"] = now["acc/train"]
        if ENTROPY in now:
            seen.append(f"entropy {now[ENTROPY]:.3g} nats{self._means(alone=True)}")
            values["entropy"] = now[ENTROPY]
        state = f" ({', '.join(seen)})" if seen else ""
        lasting = (
            f"every group, {n} steps in a row"
            if min(shares) >= 1.0
            else f"{min(shares):.0%} or more for {n} steps"
        )
        whose = "the update's prompt groups" if key == NO_SIGNAL else "prompt groups"
        msg = (
            f"{now[key]:.0%} of {whose} earned one reward per group ({lasting}):"
            f" zero advantage, so the update learns nothing from them{state}. Near acc 1 the"
            f" prompts are solved (harder ones, or stop); at low entropy the policy answers"
            f" each prompt one way: raise rollout.group_size or rollout.temperature, or use a"
            f" reward that tells the answers apart"
        )
        return min(shares) >= limit, "warning", values, msg
