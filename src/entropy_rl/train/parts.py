"""The trainer's parts built from its config, each checked before any work: the entropy
controller, the collapse detector, the optimizer and its warm-up, the device; and
``validate_algo``, which calls the loss and the advantage estimator once so a wrong name or
hyperparameter is a one-line ConfigError at start-up."""

from __future__ import annotations

from typing import Any

import torch

from entropy_rl.control.controllers import EntropyController, loss_overrides, make_controller
from entropy_rl.control.detector import CollapseDetector, DetectorConfig
from entropy_rl.ops.advantages import GROUP_BASELINED, available_advantages, compute_advantages
from entropy_rl.ops.losses import policy_loss
from entropy_rl.train.config import AlgoConfig, Config, ConfigError


def build_controller(cfg: Config) -> EntropyController:
    """The entropy controller of ``control.controller`` / ``control.controller_kwargs``; its
    ValueError as a ConfigError."""
    ctl = cfg.control
    try:
        return make_controller(ctl.controller, total_steps=cfg.run.steps, **ctl.controller_kwargs)
    except ValueError as e:
        raise ConfigError(f"control: {e}") from e


def validate_algo(cfg: Config, controller: Any = None) -> None:
    """Fail before any work if the loss, its hyperparameters or the advantage estimator are wrong:
    one call of each on a 1x1 batch raises the registry's own ValueError, as a ConfigError.

    The loss is called with the hyperparameters the controller (``controller``, else the
    configured one) sets too (``loss_overrides``: clip bounds, EntroPIC's weights), so a
    controller that sets a bound the loss does not have (``rate`` on ``gpg``) stops here."""
    if cfg.algo.advantage not in available_advantages():
        raise ConfigError(
            f"algo.advantage={cfg.algo.advantage!r} is unknown; choose one of {available_advantages()}"
        )
    ctl = cfg.control  # a controller may set loss hyperparameters: the loss must accept them
    try:
        sets = loss_overrides(build_controller(cfg) if controller is None else controller)
    except ValueError as e:  # a setting no host knows
        raise ConfigError(f"control: {e}") from e
    one = torch.zeros(2, 1)
    try:
        g = cfg.rollout.group_size  # one group of the configured size (grpo needs >= 2)
        compute_advantages(
            cfg.algo.advantage, torch.arange(float(g)), group_size=g, **cfg.algo.advantage_kwargs
        )
        policy_loss(
            cfg.algo.loss, logprobs=one, old_logprobs=one, advantages=torch.zeros(2), mask=torch.ones(2, 1),
            agg=cfg.algo.agg, max_len=1, **{**cfg.algo.loss_kwargs, **sets},
        )  # fmt: skip
    except (ValueError, TypeError) as e:
        hint = f" (control.controller={ctl.controller!r} sets {sorted(sets)})" if sets else ""
        if "group_size" in str(e):
            hint += f" (rollout.group_size={cfg.rollout.group_size})"
        raise ConfigError(f"algo: {e}{hint}") from e


def pick_device(name: str) -> torch.device:
    """``run.device``: ``auto`` is CUDA where available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def group_baselined(cfg: Config) -> bool:
    """True when a prompt group whose samples earned one reward gets zero advantage, so that
    the detector's ``no_signal`` rule applies: a group baseline (``ops.advantages.
    GROUP_BASELINED``) over groups of at least 2."""
    return cfg.algo.advantage in GROUP_BASELINED and cfg.rollout.group_size >= 2


def build_detector(cfg: Config) -> CollapseDetector | None:
    """The collapse detector of ``control.detector_kwargs``, None when ``control.detector`` is
    off; a bad rule or threshold is a ConfigError."""
    if not cfg.control.detector:
        return None
    kwargs = dict(cfg.control.detector_kwargs)
    if "no_signal_enabled" not in kwargs and not group_baselined(cfg):
        kwargs["no_signal_enabled"] = False  # equal rewards in a group still carry a signal
    try:
        det_cfg = DetectorConfig.from_dict(kwargs)
    except ValueError as e:
        raise ConfigError(f"control.detector_kwargs: {e}") from e
    return CollapseDetector(det_cfg, total_steps=cfg.run.steps)


def build_optimizer(model: torch.nn.Module, algo: AlgoConfig, *, fused: bool) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters with ``algo``'s lr, betas and weight decay.

    ``fused`` (CPU and CUDA, unsharded): one kernel over all parameters instead of a loop of
    small ops, the same update rule (``benchmarks/optimizer.py``: x4.8 per step on SmolLM2 on
    a 2-core CPU). Sharded (DTensor) parameters and other devices take the default."""
    return torch.optim.AdamW(
        model.parameters(), lr=algo.lr, betas=algo.betas, weight_decay=algo.weight_decay,
        fused=True if fused else None,
    )  # fmt: skip


def warmup_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the optimizer's lr over ``warmup_steps`` RL steps, then constant:
    lr_s = lr * min(1, (s + 1) / max(warmup_steps, 1))."""
    warm = max(warmup_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
