"""verl integration (``pip install 'entropy-rl[verl]'``, verl 0.9): our policy losses in verl's
registry, and our presets and controllers through a verl trainer hook.

``register_with_verl()`` adds ``erl_ppo``, ``erl_clip_cov``, ``erl_kl_cov``, ``erl_cispo``,
``erl_gspo``, ``erl_gpg`` and ``erl_entropic`` to verl's ``POLICY_LOSS_REGISTRY``; select one
with
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

Settings: every ``erl_*`` loss then overlays, at every call, the dict ``erl_settings`` of the
actor config (our names: the loss's keyword hyperparameters, e.g. ``eps_low``, ``eps_high``,
``pos_weight``). :class:`VerlEntropyControl` fills it: from a preset (its loss's
hyperparameters, e.g. the clip widths) and from a controller's ``settings()`` after every step,
with :meth:`VerlEntropyControl.apply_to` on the worker's actor config (which also sets
verl's own ``entropy_coeff`` / ``clip_ratio_low`` / ``clip_ratio_high``). A config entry
``+entropy_rl.preset=rate-clip`` names the preset: ``VerlEntropyControl.from_verl_config``
reads it and refuses at start, in one line naming the preset and verl, what the run's config
cannot express. docs/integrations.md shows the hook.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import FrozenInstanceError
from typing import Any

import torch

from entropy_rl.control.controllers import (
    LOSS_SETTINGS,
    EntropyController,
    controller_settings,
    require_settings,
)
from entropy_rl.control.detector import CollapseDetector, DetectorConfig, Event
from entropy_rl.errors import MissingExtraError
from entropy_rl.integrations._names import is_our_name, map_metrics
from entropy_rl.integrations._presets import HostPreset, host_preset
from entropy_rl.ops.losses import POLICY_LOSSES, policy_loss

__all__ = [
    "VERL_LOSSES",
    "VerlEntropyControl",
    "apply_settings",
    "make_verl_loss",
    "register_with_verl",
    "verl_host",
]

VERL_LOSSES = ("ppo", "clip_cov", "kl_cov", "cispo", "gspo", "gpg", "entropic")
"""Our losses registered in verl, each as ``erl_<name>``."""

SETTINGS_FIELD = "erl_settings"
"""The actor-config attribute our losses read their settings from at every call."""
# our setting -> verl's own actor-config field with the same meaning
_VERL_FIELDS = {
    "entropy_coef": "entropy_coeff",
    "eps_low": "clip_ratio_low",
    "eps_high": "clip_ratio_high",
}
# our advantage estimator -> (algorithm.adv_estimator, algorithm.norm_adv_by_std_in_grpo)
_VERL_ADVANTAGE = {"grpo": ("grpo", True), "dr_grpo": ("grpo", False), "rloo": ("rloo", None)}

_CLIPPED = ("ppo", "clip_cov", "cispo", "gspo", "entropic")
VerlLossFn = Callable[..., tuple[torch.Tensor, dict[str, Any]]]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` for a dataclass, DictConfig, namespace or dict; ``default`` when absent/None."""
    if obj is None:
        return default
    value = obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)
    return default if value is None else value


def _loss_hparam_names(name: str) -> tuple[str, ...]:
    return tuple(inspect.signature(POLICY_LOSSES[name]).parameters)[4:]


def _hparams(name: str, config: Any) -> dict[str, Any]:
    """Our hyperparameters of loss ``name`` from verl's actor config (module docstring), with
    the ``erl_settings`` overlay."""
    kw = _verl_hparams(name, config)
    settings = _get(config, SETTINGS_FIELD, {}) or {}
    return kw | {k: v for k, v in settings.items() if k in _loss_hparam_names(name)}


def _verl_hparams(name: str, config: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if name in _CLIPPED:
        eps = _get(config, "clip_ratio", 0.2)
        kw["eps_low"] = float(_get(config, "clip_ratio_low", eps))
        kw["eps_high"] = float(_get(config, "clip_ratio_high", eps))
    pl = _get(config, "policy_loss")
    if name in ("ppo", "entropic"):
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


def verl_host(loss_mode: str, calculate_entropy: bool = True) -> tuple[str, set[str], str]:
    """What a verl run with ``policy_loss.loss_mode=loss_mode`` can apply of a controller's
    settings: (the host in words, the settings it expresses, how to get one that expresses more).

    Our ``erl_*`` losses take every loss setting they have as a keyword; verl's own losses read
    only their clip fields. ``entropy_coef`` is verl's ``entropy_coeff``, applied only when the
    actor computes the entropy: ``calculate_entropy`` must be on from the start."""
    host = f"verl's loss_mode {loss_mode!r}"
    can: set[str] = {"entropy_coef"} if calculate_entropy else set()
    fix = "use an erl_* loss_mode (register_with_verl)"
    if not calculate_entropy:
        host += " without calculate_entropy"
        fix = "set actor_rollout_ref.actor.calculate_entropy=True"
    ours = loss_mode.removeprefix("erl_")
    if loss_mode.startswith("erl_") and ours in VERL_LOSSES:
        can |= {k for k in LOSS_SETTINGS if k in _loss_hparam_names(ours)}
    return host, can, fix


def _set_field(config: Any, field: str, value: Any) -> None:
    """``config.field = value`` on a DictConfig, dict, namespace or verl's frozen BaseConfig."""
    if isinstance(config, Mapping) and not hasattr(config, "__dataclass_fields__"):
        config[field] = value  # type: ignore[index]
        return
    try:
        setattr(config, field, value)
    except FrozenInstanceError:  # verl's BaseConfig freezes its fields after construction
        object.__setattr__(config, field, value)


def apply_settings(actor_config: Any, settings: Mapping[str, float]) -> None:
    """Make ``settings`` (our names) the ones in force on a worker's actor config.

    Everything goes into ``actor_config.erl_settings`` (replaced as a whole), which the
    ``erl_*`` losses overlay on their hyperparameters at every call; ``entropy_coef``,
    ``eps_low`` and ``eps_high`` also go to verl's own fields (``entropy_coeff``: verl adds the
    bonus itself; ``clip_ratio_*``: what verl logs and its own losses read)."""
    _set_field(actor_config, SETTINGS_FIELD, {str(k): float(v) for k, v in settings.items()})
    for name, field in _VERL_FIELDS.items():
        if name in settings:
            _set_field(actor_config, field, float(settings[name]))


class VerlEntropyControl:
    """One of our presets or controllers in a verl run (driver side).

    Call :meth:`update` once per training step with the metrics dict verl's ``fit`` loop
    builds (``actor/entropy`` is its rollout entropy); it runs the controller and the detector
    and returns our ``control/*`` metrics to merge into that dict before ``logger.log``.
    :attr:`settings` is then what the actor must use for the next update (the preset's loss
    hyperparameters and the controller's ``settings()``); send it to the workers (the batch's
    ``meta_info``) and call :func:`apply_settings` there on the actor config the loss reads
    (docs/integrations.md shows the hook). :meth:`apply_to` does that for a config in this
    process; :attr:`overrides` gives verl's own fields as config keys. verl computes the
    entropy (and applies a bonus) only when ``actor.calculate_entropy`` is on or
    ``entropy_coeff != 0`` at start: set ``calculate_entropy=True``.

    Args:
        controller: from ``entropy_rl.control.controllers.make_controller``, or None.
        preset: one of our presets (its controller, built for ``total_steps``, and its
            detector), or None; not together with ``controller``.
        controller_kwargs: entries replacing the preset controller's arguments.
        total_steps: verl's ``trainer.total_training_steps``, for the preset's schedule.
        print_events: print one line per detector event.
    """

    def __init__(
        self,
        controller: EntropyController | None = None,
        *,
        preset: str | None = None,
        controller_kwargs: Mapping[str, Any] | None = None,
        total_steps: int | None = None,
        print_events: bool = True,
    ) -> None:
        self.preset: HostPreset | None = None if preset is None else host_preset(preset)
        self.detector: CollapseDetector | None = None
        if self.preset is not None:
            if controller is not None:
                raise ValueError(f"preset {preset!r} brings its controller: leave out controller=")
            if self.preset.controller != "none":
                controller = self.preset.make_controller(total_steps, controller_kwargs)
            if self.preset.detector:
                cfg = DetectorConfig.from_dict(self.preset.detector_kwargs)
                self.detector = CollapseDetector(cfg, total_steps=max(int(total_steps or 1), 1))
        elif not isinstance(controller, EntropyController):
            raise ValueError(f"controller must be an EntropyController, got {type(controller)}")
        self.controller = controller
        self.print_events = print_events
        self.events: list[Event] = []

    @classmethod
    def from_verl_config(
        cls, config: Any, total_steps: int | None = None
    ) -> VerlEntropyControl | None:
        """The preset named by the config entry ``entropy_rl.preset`` (Hydra:
        ``+entropy_rl.preset=rate-clip``, and optionally ``+entropy_rl.controller_kwargs``),
        checked against the run's config; None without it.
        ``total_steps`` (verl's ``RayPPOTrainer.total_training_steps``) defaults to the
        config's ``trainer.total_training_steps`` when that is set.

        Raises:
            ValueError: the run's config cannot express the preset (one line: preset, verl,
                and the config key to change).
        """
        name = _get(_get(config, "entropy_rl"), "preset")
        if name is None:
            return None
        steps = total_steps or _get(_get(config, "trainer"), "total_training_steps")
        steps = int(steps) if steps is not None and int(steps) > 0 else None
        kwargs = _get(_get(config, "entropy_rl"), "controller_kwargs")
        kwargs = None if kwargs is None else {str(k): v for k, v in dict(kwargs).items()}
        control = cls(preset=str(name), controller_kwargs=kwargs, total_steps=steps)
        control.check(config)
        return control

    @property
    def source(self) -> str:
        if self.preset is not None:
            return self.preset.source
        return f"the controller ({type(self.controller).__name__})"

    def check(self, config: Any) -> None:
        """Refuse at start what verl's config (the whole trainer config) cannot express."""
        actor = _get(_get(config, "actor_rollout_ref"), "actor")
        loss_mode = str(_get(_get(actor, "policy_loss"), "loss_mode", "vanilla"))
        calc = bool(_get(actor, "calculate_entropy", False))
        host, can, fix = verl_host(loss_mode, calculate_entropy=calc)
        p = self.preset
        if p is not None:
            p.refuse_extras(host, fix="verl has its own options for these; set them there")
            key = "actor_rollout_ref.actor"
            if loss_mode != f"erl_{p.loss}":
                raise ValueError(
                    f"{p.source} uses our {p.loss!r} loss, but the run has {host}; set"
                    f" {key}.policy_loss.loss_mode=erl_{p.loss} (after register_with_verl())"
                )
            agg = _get(actor, "loss_agg_mode", "token-mean")
            if agg != p.agg:
                raise ValueError(
                    f"{p.source} aggregates with {p.agg}, the run with {agg!r}; set"
                    f" {key}.loss_agg_mode={p.agg}"
                )
            algo = _get(config, "algorithm")
            est, std = (
                _get(algo, "adv_estimator", "gae"),
                _get(algo, "norm_adv_by_std_in_grpo", True),
            )
            want = _VERL_ADVANTAGE.get(p.advantage)
            if want is None or est != want[0] or (want[1] is not None and bool(std) != want[1]):
                how = (
                    "verl has no such estimator"
                    if want is None
                    else (
                        f"set algorithm.adv_estimator={want[0]}"
                        + (
                            ""
                            if want[1] is None
                            else f" algorithm.norm_adv_by_std_in_grpo={want[1]}"
                        )
                    )
                )
                raise ValueError(
                    f"{p.source} uses the {p.advantage!r} advantage, which verl's"
                    f" adv_estimator={est!r} (norm_adv_by_std_in_grpo={std}) does not compute; {how}"
                )
        require_settings(
            controller_settings(self.controller), can, source=self.source, host=host, fix=fix
        )

    def update(self, step: int, verl_metrics: Mapping[str, Any]) -> dict[str, float]:
        """Map verl's metrics to ours, run the controller and the detector; return the
        controller's ``control/*`` metrics (events go to :attr:`events`).

        Raises:
            ValueError: no ``actor/entropy`` in the metrics (turn on ``calculate_entropy``).
        """
        ours = map_metrics(verl_metrics, naming="verl")
        if "entropy/mean" not in ours:
            raise ValueError(
                "verl metrics have no actor/entropy; set actor_rollout_ref.actor.calculate_entropy=True"
            )
        measured = {k: v for k, v in ours.items() if is_our_name(k)}
        out = {} if self.controller is None else self.controller.update(int(step), measured)
        if self.detector is not None:
            events = self.detector.observe({**measured, **out, "step": int(step)})
            self.events += events
            if self.print_events:
                from entropy_rl.integrations.watch import format_event

                for event in events:
                    print(format_event(event), flush=True)
        return out

    @property
    def settings(self) -> dict[str, float]:
        """What the actor uses for the next update, our names: the preset's loss
        hyperparameters, then the controller's ``settings()`` over them."""
        base = {} if self.preset is None else dict(self.preset.loss_kwargs)
        return base | controller_settings(self.controller)

    @property
    def overrides(self) -> dict[str, float]:
        """The settings verl's own config fields carry, as verl config keys."""
        return {
            f"actor_rollout_ref.actor.{field}": float(self.settings[name])
            for name, field in _VERL_FIELDS.items()
            if name in self.settings
        }

    def apply_to(self, actor_config: Any) -> None:
        """:func:`apply_settings` with :attr:`settings` on an actor config in this process."""
        apply_settings(actor_config, self.settings)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.controller is not None:
            state = {"controller": self.controller.state_dict()}
        if self.detector is not None:
            state["detector"] = self.detector.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.controller is not None:
            # older states are the controller's own dict
            self.controller.load_state_dict(state.get("controller", state))
        if self.detector is not None and "detector" in state:
            self.detector.load_state_dict(state["detector"])
