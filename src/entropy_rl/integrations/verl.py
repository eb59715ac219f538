"""verl integration (``pip install 'entropy-rl[verl]'``, verl 0.9): our policy losses in verl's
registry, and a target-entropy controller for a verl trainer hook.

``register_with_verl()`` adds ``erl_ppo``, ``erl_clip_cov``, ``erl_kl_cov``, ``erl_cispo``,
``erl_gspo`` and ``erl_gpg`` to verl's ``POLICY_LOSS_REGISTRY``; select one with
``actor_rollout_ref.actor.policy_loss.loss_mode=erl_clip_cov``. Each has verl 0.9's policy-loss
signature::

    fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
       config=None, rollout_is_weights=None) -> (pg_loss, metrics)

and reads its hyperparameters from verl's actor config at every call, with verl's meanings:
``clip_ratio`` / ``clip_ratio_low`` / ``clip_ratio_high`` -> eps_low / eps_high (ppo, clip_cov,
cispo, gspo), ``clip_ratio_c`` -> dual_clip_c (ppo, as verl's ``vanilla``),
``policy_loss.clip_cov_ratio`` / ``clip_cov_lb`` / ``clip_cov_ub`` -> clip_cov's clip_ratio /
cov_lower / cov_upper, ``policy_loss.kl_cov_ratio`` / ``ppo_kl_coef`` -> kl_cov's kl_cov_frac /
kl_cov_coef (fractions, like ours). Normalisation follows verl's ``agg_loss`` with
``config.global_batch_info`` (dp_size, batch_num_tokens, global_batch_size,
loss_scale_factor), so the loss is invariant to data parallelism as verl's are; ``token-sum``
is not supported. Metrics are ours (``clip/upper_frac``, ``ratio/abs_dev``, ``kl/old_approx``,
...; verl prefixes them ``actor/``). Differences from verl's own losses: those of
``entropy_rl.ops.losses`` (e.g. verl's kl_cov penalises ``max(1, int(ratio*N))`` tokens, ours
``round(ratio*N)``).

``VerlEntropyControl`` runs one of our controllers on verl's per-step metrics (see its
docstring and docs/integrations.md for the hook).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import FrozenInstanceError
from typing import Any

import torch

from entropy_rl.control.controllers import EntropyController
from entropy_rl.errors import MissingExtraError
from entropy_rl.integrations._names import is_our_name, map_metrics
from entropy_rl.ops.losses import policy_loss

__all__ = ["VERL_LOSSES", "VerlEntropyControl", "make_verl_loss", "register_with_verl"]

VERL_LOSSES = ("ppo", "clip_cov", "kl_cov", "cispo", "gspo", "gpg")
"""Our losses registered in verl, each as ``erl_<name>``."""

_CLIPPED = ("ppo", "clip_cov", "cispo", "gspo")
VerlLossFn = Callable[..., tuple[torch.Tensor, dict[str, Any]]]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` for a dataclass, DictConfig, namespace or dict; ``default`` when absent/None."""
    if obj is None:
        return default
    value = obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)
    return default if value is None else value


def _hparams(name: str, config: Any) -> dict[str, Any]:
    """Our hyperparameters of loss ``name`` from verl's actor config (module docstring)."""
    kw: dict[str, Any] = {}
    if name in _CLIPPED:
        eps = _get(config, "clip_ratio", 0.2)
        kw["eps_low"] = float(_get(config, "clip_ratio_low", eps))
        kw["eps_high"] = float(_get(config, "clip_ratio_high", eps))
    pl = _get(config, "policy_loss")
    if name == "ppo":
        kw["dual_clip_c"] = float(_get(config, "clip_ratio_c", 3.0))
    elif name == "clip_cov":
        kw["clip_ratio"] = float(_get(pl, "clip_cov_ratio", 2e-4))
        kw["cov_lower"] = float(_get(pl, "clip_cov_lb", 1.0))
        kw["cov_upper"] = float(_get(pl, "clip_cov_ub", 5.0))
    elif name == "kl_cov":
        kw["kl_cov_frac"] = float(_get(pl, "kl_cov_ratio", 2e-4))
        kw["kl_cov_coef"] = float(_get(pl, "ppo_kl_coef", 1.0))
    return kw


def _normalisers(config: Any, mask: torch.Tensor) -> dict[str, Any]:
    """verl's ``agg_loss(..., dp_size, batch_num_tokens, global_batch_size, loss_scale_factor)``
    as our ``aggregate`` counts: verl divides by ``batch_num_tokens`` (or ``global_batch_size``)
    and multiplies by ``dp_size``, i.e. divides by the per-rank share of the global count."""
    info = _get(config, "global_batch_info", {}) or {}
    dp = float(_get(info, "dp_size", 1))
    tokens, seqs = _get(info, "batch_num_tokens"), _get(info, "global_batch_size")
    factor = _get(info, "loss_scale_factor")
    return {
        "num_tokens": None if tokens is None else float(tokens) / dp,
        "num_seqs": None if seqs is None else float(seqs) / dp,
        "max_len": int(factor) if factor is not None else int(mask.shape[-1]),
    }


def make_verl_loss(name: str) -> VerlLossFn:
    """Our loss ``name`` (one of ``VERL_LOSSES``) with verl 0.9's policy-loss signature."""
    if name not in VERL_LOSSES:
        raise ValueError(f"no verl adapter for loss {name!r}; available: {', '.join(VERL_LOSSES)}")

    def loss_fn(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if rollout_is_weights is not None:
            raise ValueError(
                f"erl_{name} does not apply rollout_is_weights (verl's rollout correction);"
                " turn algorithm.rollout_correction off or use a verl loss"
            )
        loss, metrics = policy_loss(
            name,
            logprobs=log_prob,
            old_logprobs=old_log_prob,
            advantages=advantages,
            mask=response_mask,
            agg=loss_agg_mode,
            **_normalisers(config, response_mask),
            **_hparams(name, config),
        )
        keep = {k: v for k, v in metrics.items() if not k.startswith("_count/")}
        keep.pop("loss/policy", None)  # verl logs actor/pg_loss itself
        return loss, keep

    loss_fn.__name__ = loss_fn.__qualname__ = f"erl_{name}"
    loss_fn.__doc__ = f"entropy_rl.ops.losses '{name}' for verl (see entropy_rl.integrations.verl)."
    return loss_fn


def register_with_verl(
    register: Callable[[str], Callable[[VerlLossFn], VerlLossFn]] | None = None,
) -> list[str]:
    """Register ``erl_<name>`` for every loss of ``VERL_LOSSES``; return the names.

    Args:
        register: verl's ``register_policy_loss`` decorator factory (default: imported from
            ``verl.trainer.ppo.core_algos``). Registering again replaces the entries.

    Raises:
        ImportError: verl is not installed (names the extra).
    """
    if register is None:
        try:
            from verl.trainer.ppo.core_algos import register_policy_loss
        except ImportError as exc:
            raise MissingExtraError(
                "register_with_verl needs verl 0.9: pip install 'entropy-rl[verl]'"
            ) from exc
        register = register_policy_loss
    names = []
    for name in VERL_LOSSES:
        register(f"erl_{name}")(make_verl_loss(name))
        names.append(f"erl_{name}")
    return names


class VerlEntropyControl:
    """One of our entropy controllers on verl's per-step metrics (driver side).

    Call :meth:`update` once per training step with the metrics dict verl's ``fit`` loop
    builds (``actor/entropy`` is its rollout entropy); it returns our ``control/*`` metrics to
    merge into that dict before ``logger.log``. The new value must then reach the actor:
    :attr:`overrides` gives it as verl config keys, and :meth:`apply_to` writes it into an
    actor config object (``entropy_coeff`` or ``clip_ratio_high``). verl runs the actor in Ray
    workers that hold their own config, so a worker-side method has to call ``apply_to`` there;
    docs/integrations.md shows the hook. The ``erl_*`` losses read ``clip_ratio_high`` at every
    call, verl's ``ppo_loss`` reads ``entropy_coeff`` at every call. Note that verl computes the
    entropy (and applies the bonus) only when ``actor.calculate_entropy`` is on or
    ``entropy_coeff != 0`` at start: set ``calculate_entropy=True``.

    Args:
        controller: from ``entropy_rl.control.controllers.make_controller``.
    """

    def __init__(self, controller: EntropyController) -> None:
        if not isinstance(controller, EntropyController):
            raise ValueError(f"controller must be an EntropyController, got {type(controller)}")
        self.controller = controller

    def update(self, step: int, verl_metrics: Mapping[str, Any]) -> dict[str, float]:
        """Map verl's metrics to ours, run the controller; return its ``control/*`` metrics.

        Raises:
            ValueError: no ``actor/entropy`` in the metrics (turn on ``calculate_entropy``).
        """
        ours = map_metrics(verl_metrics, naming="verl")
        if "entropy/mean" not in ours:
            raise ValueError(
                "verl metrics have no actor/entropy; set actor_rollout_ref.actor.calculate_entropy=True"
            )
        measured = {k: v for k, v in ours.items() if is_our_name(k)}
        return self.controller.update(int(step), measured)

    @property
    def overrides(self) -> dict[str, float]:
        """The controlled value as verl config keys (empty for a controller that sets none)."""
        out = {}
        if self.controller.entropy_coef is not None:
            out["actor_rollout_ref.actor.entropy_coeff"] = float(self.controller.entropy_coef)
        if self.controller.eps_high is not None:
            out["actor_rollout_ref.actor.clip_ratio_high"] = float(self.controller.eps_high)
        return out

    def apply_to(self, actor_config: Any) -> None:
        """Set ``entropy_coeff`` / ``clip_ratio_high`` on an actor config in place.

        verl's ``ActorConfig`` freezes these fields after construction; they are written with
        ``object.__setattr__`` (the dataclass stays otherwise untouched). A DictConfig or a
        plain object is set normally.
        """
        for key, value in self.overrides.items():
            field = key.rsplit(".", 1)[1]
            if isinstance(actor_config, Mapping) and not hasattr(
                actor_config, "__dataclass_fields__"
            ):
                actor_config[field] = value  # type: ignore[index]
            else:
                try:
                    setattr(actor_config, field, value)
                except FrozenInstanceError:  # verl's BaseConfig freezes its fields
                    object.__setattr__(actor_config, field, value)

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.controller.load_state_dict(state)
