"""One of our presets as another framework's trainer (TRL, verl) reads it.

A preset (``entropy_rl/presets/<name>.yaml``) names a policy loss with its hyperparameters
(the clip widths among them), an aggregation, an advantage estimator, a controller and the
detector's settings; a few also set rollout options of our own trainer (DAPO's dynamic
sampling). :class:`HostPreset` holds the parts a host applies: the loss, its clip widths,
the controller and the detector. Whatever else the preset sets is listed in ``extras``, and a
host refuses a preset whose extras it cannot express (one line naming the preset and the host)
rather than dropping them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from entropy_rl.control.controllers import EntropyController, make_controller, require_settings
from entropy_rl.train.config import build_config, load_preset

__all__ = ["HostPreset", "host_preset"]

# preset entries a host reads through HostPreset's fields; anything else is an extra
_READ = {
    "algo": ("loss", "loss_kwargs", "agg", "advantage", "advantage_kwargs"),
    "control": ("controller", "controller_kwargs", "detector", "detector_kwargs"),
}


@dataclass(frozen=True)
class HostPreset:
    """The parts of preset ``name`` a host applies (defaults filled in, validated)."""

    name: str
    loss: str
    """Policy loss (``entropy_rl.ops.losses``), e.g. ``ppo``."""
    loss_kwargs: dict[str, Any]
    """Its hyperparameters, e.g. ``{eps_low: 0.2, eps_high: 0.2}``: the clip widths."""
    agg: str
    """Loss aggregation (``token-mean``, ...)."""
    advantage: str
    """Advantage estimator (``grpo``, ``dr_grpo``, ...)."""
    controller: str
    """Controller kind (``none``, ``rate``, ...)."""
    controller_kwargs: dict[str, Any]
    detector: bool
    """Whether the preset runs the collapse detector."""
    detector_kwargs: dict[str, Any]
    extras: tuple[str, ...]
    """Dotted names of the preset's other entries (e.g. ``rollout.dynamic_sampling``)."""

    @property
    def source(self) -> str:
        return f"preset {self.name!r}"

    def make_controller(
        self, total_steps: int | None, overrides: Mapping[str, Any] | None = None
    ) -> EntropyController:
        """The preset's controller for a run of ``total_steps`` optimizer steps; ``overrides``
        replace entries of its ``controller_kwargs`` (as ``control.controller_kwargs.*=`` does
        on our command line, e.g. the target schedule for your model)."""
        kwargs = {**self.controller_kwargs, **dict(overrides or {})}
        return make_controller(self.controller, total_steps=total_steps, **kwargs)

    def refuse_extras(self, host: str, expressible: Iterable[str] = (), fix: str = "") -> None:
        """Refuse (ValueError, one line) the extras the host cannot express."""
        require_settings(self.extras, expressible, source=self.source, host=host, fix=fix)


def host_preset(name: str) -> HostPreset:
    """Read and validate preset ``name`` (as ``build_config(preset=name)`` does).

    Raises:
        ConfigError: an unknown preset (the message lists the available ones).
    """
    raw: Mapping[str, Any] = load_preset(name)
    cfg = build_config(preset=name)
    extras = []
    for section, entries in raw.items():
        if section == "preset":
            continue
        keys = entries if isinstance(entries, Mapping) else {"": entries}
        extras += [f"{section}.{k}" for k in keys if k not in _READ.get(section, ())]
    if cfg.algo.advantage_kwargs:  # only W-REINFORCE's pos_weight today
        extras.append("algo.advantage_kwargs")
    return HostPreset(
        name=name,
        loss=cfg.algo.loss,
        loss_kwargs=dict(cfg.algo.loss_kwargs),
        agg=cfg.algo.agg,
        advantage=cfg.algo.advantage,
        controller=cfg.control.controller,
        controller_kwargs=dict(cfg.control.controller_kwargs),
        detector=cfg.control.detector,
        detector_kwargs=dict(cfg.control.detector_kwargs),
        extras=tuple(extras),
    )
