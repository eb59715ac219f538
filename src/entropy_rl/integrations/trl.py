"""TRL integration (``pip install 'entropy-rl[trl]'``): our monitor, detector, controllers and
policy losses inside TRL's ``GRPOTrainer``.

* :class:`EntropyCallback` reads what GRPOTrainer logs, maps it onto our names, runs the
  collapse detector and (optionally) an entropy controller, writes ``metrics.jsonl`` and
  ``events.jsonl``, adds our names to the logs (so TRL's trackers record them), and acts:
  it applies every setting the controller states (``settings()``: both clip bounds, the bonus
  coefficient, the loss weights) to the trainer, or stops training.
  ``EntropyCallback(preset="rate-clip")`` takes one of our presets: its loss (checked against
  the trainer's), clip widths, controller and detector.
* :class:`EntropyGRPOTrainer` replaces GRPOTrainer's policy loss by one of ours
  (``entropy_loss="clip_cov"``, ``"kl_cov"``, ``"cispo"``, ``"gspo"``, ``"gpg"``, ``"ppo"``,
  ``"entropic"``) and logs our entropy statistics and Cov(log pi, A) at every optimizer step;
  ``EntropyGRPOTrainer(preset="clip-cov", ...)`` takes the loss from a preset and attaches an
  ``EntropyCallback`` with the preset's controller and detector.

Where the trainer cannot express a setting of the controller or the preset (TRL's
``loss_type="cispo"``, whose ``epsilon_high`` caps the ratio itself; EntroPIC's token weights
outside ``EntropyGRPOTrainer(entropy_loss="entropic")``; advantage shaping anywhere in TRL),
``attach`` refuses in one line naming the preset (or controller) and the trainer.

Checked against TRL 1.16: ``GRPOTrainer.__init__`` caches ``args.epsilon`` and
``args.epsilon_high`` as ``self.epsilon_low`` / ``self.epsilon_high`` and the loss reads those
attributes, so changing ``trainer.args.epsilon_high`` after construction does nothing: the
callback sets the attribute. The entropy bonus is applied only when ``self._entropy_bonus_enabled``
(fixed at ``__init__`` from ``entropy_coef != 0``), so the callback also sets that flag when it
turns a bonus on. With ``loss_type="cispo"`` TRL's ``epsilon_high`` is an absolute cap on the
ratio, not ``1 + eps``; the callback refuses to control it there.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from entropy_rl.control.controllers import (
    LOSS_SETTINGS,
    EntropyController,
    controller_settings,
    require_settings,
)
from entropy_rl.control.detector import RULES, CollapseDetector, DetectorConfig, Event
from entropy_rl.control.monitor import entropy_stats, logp_adv_covariance
from entropy_rl.errors import MissingExtraError
from entropy_rl.integrations._names import is_our_name, map_metrics
from entropy_rl.integrations._presets import HostPreset, host_preset
from entropy_rl.integrations.watch import format_event
from entropy_rl.ops.kl import kl_estimate
from entropy_rl.ops.losses import AGG_MODES, POLICY_LOSSES, aggregate, policy_loss

try:
    from transformers import TrainerCallback
    from trl import GRPOTrainer
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError(
        "entropy_rl.integrations.trl needs TRL: pip install 'entropy-rl[trl]'"
    ) from exc

__all__ = ["EntropyCallback", "EntropyGRPOTrainer", "trl_host"]

# Losses whose clip widths default to the trainer's epsilon / epsilon_high (same meaning as
# TRL's grpo/dapo clip). CISPO and GSPO keep their own defaults: TRL's values mean other things.
_EPS_FROM_TRAINER = ("ppo", "clip_cov")
# TRL 1.16 loss types that clip the ratio to [1 - epsilon_low, 1 + epsilon_high] (our eps_low,
# eps_high). cispo caps the ratio at epsilon_high itself; sapo and vespo have no hard clip.
_TRL_RATIO_CLIP = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
# our ppo loss under an aggregation -> the TRL loss_type computing the same loss (TRL's grpo:
# per-sequence token means; dapo: tokens of the accumulated batch; dr_grpo: / max length)
_TRL_LOSS_FOR_AGG = {
    "token-mean": "dapo",
    "seq-mean-token-mean": "grpo",
    "seq-mean-token-sum-norm": "dr_grpo",
}
# our advantage estimator -> TRL scale_rewards values that compute it
_TRL_SCALE_REWARDS = {"grpo": ("group", True), "dr_grpo": ("none", False)}
_MM_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def _append_jsonl(path: Path, obj: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(obj), allow_nan=False) + "\n")


def trl_host(trainer: Any) -> tuple[str, set[str], str]:
    """What a TRL trainer can apply of a controller's settings: (the host in words, the
    settings it expresses, how to get one that expresses more)."""
    if isinstance(trainer, EntropyGRPOTrainer):
        name = trainer.entropy_loss
        hparams = inspect.signature(POLICY_LOSSES[name]).parameters
        can = {"entropy_coef"} | {k for k in LOSS_SETTINGS if k in hparams}
        fix = "pick an entropy_loss that has them (entropic has the clip bounds and the weights)"
        return f"EntropyGRPOTrainer with entropy_loss={name!r}", can, fix
    loss_type = getattr(trainer, "loss_type", None)
    can = set()
    host = f"TRL's GRPOTrainer with loss_type={loss_type!r}"
    fix = "use EntropyGRPOTrainer(preset=...) or (entropy_loss=...) for our losses"
    if getattr(trainer, "use_adaptive_entropy", False):
        host += " and use_adaptive_entropy on"
        fix = "turn TRL's use_adaptive_entropy off (the controller sets entropy_coef)"
    else:
        can.add("entropy_coef")
    if loss_type in _TRL_RATIO_CLIP:
        can |= {"eps_low", "eps_high"}
    elif loss_type == "cispo":
        fix = (
            "TRL's cispo caps the ratio at epsilon_high itself, not at 1 + eps: use loss_type"
            " dapo, grpo, dr_grpo or bnpo, or EntropyGRPOTrainer(entropy_loss='cispo')"
        )
    return host, can, fix


class EntropyCallback(TrainerCallback):
    """Detector, controller and our metric names for a TRL ``GRPOTrainer`` run.

    Usage::

        cb = EntropyCallback(preset="rate-clip")  # or controller=..., detector_kwargs=...
        trainer = GRPOTrainer(..., callbacks=[cb])
        cb.attach(trainer)  # checks the trainer can do what is asked, then acts on it
        trainer.train()

    Acts once per log call (``logging_steps``; TRL averages its metrics over that window),
    with ``entropy/mean`` = TRL's ``entropy``. After each logged step the controller's
    ``settings()`` go to the trainer, for the optimizer steps that follow: ``entropy_coef``
    -> ``trainer.entropy_coef`` (and TRL's bonus switch), ``eps_low`` / ``eps_high`` ->
    ``trainer.epsilon_low`` / ``trainer.epsilon_high``, and under :class:`EntropyGRPOTrainer`
    every loss setting (EntroPIC's ``pos_weight`` / ``neg_weight`` too) -> its loss's keyword
    arguments. Event actions: ``stop`` ends training; ``raise_eps_high`` adds
    ``eps_high_step`` to ``trainer.epsilon_high`` (at most ``eps_high_max``);
    ``raise_entropy_coef`` adds ``entropy_coef_step`` to ``trainer.entropy_coef`` (at most
    ``entropy_coef_max``); ``rollback`` is not possible from a callback and is only recorded.
    docs/experiments.md: whether raising eps_high raises entropy depends on the regime.

    A ``preset`` (one of ``entropy_rl.train.config.available_presets()``) gives the loss, the
    clip widths, the controller (built for the run's ``max_steps``) and the detector settings
    (``detector_kwargs`` given here override them). On a plain ``GRPOTrainer`` the preset's
    loss must be TRL's own: our ``ppo`` loss is TRL's ``loss_type`` ``dapo`` / ``grpo`` /
    ``dr_grpo`` for the preset's ``token-mean`` / ``seq-mean-token-mean`` /
    ``seq-mean-token-sum-norm``, and its advantage ``grpo`` / ``dr_grpo`` is
    ``scale_rewards`` ``"group"`` / ``"none"``; the clip widths are written to the trainer.
    Other losses need ``EntropyGRPOTrainer(preset=...)``. ``attach`` refuses, in one line
    naming the preset and the trainer, what the trainer cannot express.

    Args:
        run_dir: where ``metrics.jsonl`` / ``events.jsonl`` go (our names); default
            ``<output_dir>/entropy-rl``. Written by the main process only.
        preset: one of our presets, or None.
        controller_kwargs: entries replacing the preset controller's arguments (e.g.
            ``{"schedule": {"kind": "linear", "start": 1.6, "end": 1.4}}`` for your model).
        detector_kwargs: :class:`DetectorConfig` fields. ``accuracy_keys`` default to ours plus
            ``reward/mean`` (TRL logs no accuracy).
        controller: an entropy controller, or None (not together with a preset's).
        eps_high_step, eps_high_max, entropy_coef_step, entropy_coef_max: event actions' sizes.
        print_events: print one line per event (main process).
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        preset: str | None = None,
        controller_kwargs: Mapping[str, Any] | None = None,
        detector_kwargs: Mapping[str, Any] | None = None,
        controller: EntropyController | None = None,
        eps_high_step: float = 0.05,
        eps_high_max: float = 1.0,
        entropy_coef_step: float = 1e-3,
        entropy_coef_max: float = 1e-2,
        print_events: bool = True,
    ) -> None:
        self.preset: HostPreset | None = None if preset is None else host_preset(preset)
        if controller_kwargs is not None and (
            self.preset is None or self.preset.controller == "none"
        ):
            raise ValueError("controller_kwargs goes with a preset that has a controller")
        self.controller_kwargs = dict(controller_kwargs or {})
        kw = dict(detector_kwargs or {})
        if self.preset is not None:
            if controller is not None and self.preset.controller != "none":
                raise ValueError(
                    f"preset {preset!r} brings its own controller ({self.preset.controller!r});"
                    " pass controller= or a preset with a controller, not both"
                )
            kw = {**self.preset.detector_kwargs, **kw}
        kw.setdefault("accuracy_keys", (*DetectorConfig().accuracy_keys, "reward/mean"))
        self.detector_config = DetectorConfig.from_dict(kw)
        self.use_detector = self.preset is None or self.preset.detector
        for name, value in (
            ("eps_high_step", eps_high_step),
            ("eps_high_max", eps_high_max),
            ("entropy_coef_step", entropy_coef_step),
            ("entropy_coef_max", entropy_coef_max),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.controller = controller
        self.eps_high_step, self.eps_high_max = float(eps_high_step), float(eps_high_max)
        self.entropy_coef_step = float(entropy_coef_step)
        self.entropy_coef_max = float(entropy_coef_max)
        self.print_events = print_events
        self.trainer: Any = None
        self.detector: CollapseDetector | None = None
        self.events: list[Event] = []
        self._main = True

    # ------------------------------------------------------------------ wiring

    @property
    def source(self) -> str:
        """What the settings come from, for error messages."""
        if self.preset is not None and self.preset.controller != "none":
            return self.preset.source
        return f"the controller ({type(self.controller).__name__})"

    def _needs_trainer(self) -> bool:
        cfg = self.detector_config
        acts = {cfg.action_for(r) for r in RULES}
        return (
            self.preset is not None
            or bool(controller_settings(self.controller))
            or bool(acts & {"raise_eps_high", "raise_entropy_coef"})
        )

    def attach(self, trainer: Any) -> EntropyCallback:
        """Give the callback its trainer (TRL passes none to callbacks); returns self.

        Applies a preset's clip widths, builds its controller when the trainer's
        ``args.max_steps`` is set (else at ``on_train_begin``), checks that the trainer can
        express every setting, registers the callback if the trainer does not have it yet, and
        moves it first in the trainer's callback list so that the reporting callbacks (wandb,
        TensorBoard, ...) see the metrics it adds to the logs.

        Raises:
            ValueError: the trainer cannot express a setting of the preset or the controller
                (one line naming both and how to fix it).
        """
        self.trainer = trainer
        if self.preset is not None:
            self._apply_preset(trainer)
            steps = int(getattr(trainer.args, "max_steps", -1) or -1)
            if steps > 0 and self.preset.controller != "none":
                self.controller = self.preset.make_controller(steps, self.controller_kwargs)
        self._check_settings()
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    def _check_settings(self) -> None:
        if self.controller is None or self.trainer is None:
            return
        host, can, fix = trl_host(self.trainer)
        require_settings(
            controller_settings(self.controller), can, source=self.source, host=host, fix=fix
        )

    def _apply_preset(self, trainer: Any) -> None:
        """The preset's loss is the trainer's, its clip widths go to the trainer."""
        p = self.preset
        assert p is not None
        host, _, _ = trl_host(trainer)
        p.refuse_extras(host, fix="TRL has its own options for these; set them there")
        fix = f"build the trainer as EntropyGRPOTrainer(preset={p.name!r}, ...)"
        scale = getattr(trainer, "scale_rewards", "group")
        if scale not in _TRL_SCALE_REWARDS.get(p.advantage, ()):
            want = {"grpo": "'group'", "dr_grpo": "'none'"}.get(p.advantage)
            how = f"set GRPOConfig(scale_rewards={want})" if want else "TRL has no such estimator"
            raise ValueError(
                f"{p.source} uses the {p.advantage!r} advantage, which {host} with"
                f" scale_rewards={scale!r} does not compute; {how}"
            )
        if isinstance(trainer, EntropyGRPOTrainer):
            have = (trainer.entropy_loss, trainer.entropy_loss_agg, trainer.entropy_loss_kwargs)
            if have != (p.loss, p.agg, p.loss_kwargs):
                raise ValueError(
                    f"{p.source} uses loss {p.loss!r} ({p.agg}, {p.loss_kwargs}) but {host} runs"
                    f" {have[0]!r} ({have[1]}, {have[2]}); {fix}"
                )
        else:
            want_type = _TRL_LOSS_FOR_AGG.get(p.agg) if p.loss == "ppo" else None
            if want_type is None:
                raise ValueError(
                    f"{p.source} uses our {p.loss!r} loss with {p.agg}, which TRL's GRPOTrainer"
                    f" does not have; {fix}"
                )
            if trainer.loss_type != want_type:
                raise ValueError(
                    f"{p.source} uses the PPO loss with {p.agg}, TRL's loss_type={want_type!r},"
                    f" but this is {host}; set GRPOConfig(loss_type={want_type!r}) or {fix}"
                )
            other = sorted(set(p.loss_kwargs) - {"eps", "eps_low", "eps_high"})
            if other:
                raise ValueError(f"{p.source} sets {other}, which {host} cannot express; {fix}")
        eps = p.loss_kwargs.get("eps")
        low, high = p.loss_kwargs.get("eps_low", eps), p.loss_kwargs.get("eps_high", eps)
        if low is not None and p.loss in _EPS_FROM_TRAINER:
            trainer.epsilon_low = float(low)
        if high is not None and p.loss in _EPS_FROM_TRAINER:
            trainer.epsilon_high = float(high)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._needs_trainer() and self.trainer is None:
            raise ValueError(
                "EntropyCallback with a preset, a controller or a raise_* action needs the"
                " trainer: call callback.attach(trainer) before trainer.train()"
            )
        total = state.max_steps if state.max_steps and state.max_steps > 0 else 1
        if self.preset is not None and self.controller is None and self.preset.controller != "none":
            self.controller = self.preset.make_controller(int(total), self.controller_kwargs)
            self._check_settings()
        self.detector = CollapseDetector(self.detector_config, total_steps=int(total))
        self._main = bool(state.is_world_process_zero)
        if self.run_dir is None:
            self.run_dir = Path(args.output_dir) / "entropy-rl"
        if self._main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ per log

    def apply_settings(self, settings: Mapping[str, float]) -> None:
        """Set a controller's settings on the trainer (checked at ``attach``)."""
        t = self.trainer
        for name, value in settings.items():
            if name == "entropy_coef":
                self._set_entropy_coef(value)
            elif name in ("eps_low", "eps_high"):
                setattr(t, "epsilon_low" if name == "eps_low" else "epsilon_high", float(value))
            if isinstance(t, EntropyGRPOTrainer) and name in LOSS_SETTINGS:
                t.loss_settings[name] = float(value)

    def _apply_controller(self, step: int, ours: dict[str, float]) -> dict[str, float]:
        ctrl = self.controller
        if ctrl is None or "entropy/mean" not in ours:
            return {}
        out = ctrl.update(step, ours)
        self.apply_settings(controller_settings(ctrl))
        return out

    def settings_in_force(self) -> dict[str, float]:
        """The trainer's settings for the next optimizer step, under our names."""
        t = self.trainer
        now = {"entropy_coef": float(t.entropy_coef)}
        if isinstance(t, EntropyGRPOTrainer):
            hp = t._loss_hparams()
            now |= {k: float(hp[k]) for k in LOSS_SETTINGS if k in hp}
        elif getattr(t, "loss_type", None) in _TRL_RATIO_CLIP:
            now |= {"eps_low": float(t.epsilon_low), "eps_high": float(t.epsilon_high)}
        return now

    def _set_entropy_coef(self, value: float) -> None:
        self.trainer.entropy_coef = float(value)
        if hasattr(self.trainer, "_entropy_bonus_enabled"):  # TRL fixes it at __init__
            self.trainer._entropy_bonus_enabled = True

    def _act(self, event: Event, control: Any) -> None:
        if event.action == "stop":
            control.should_training_stop = True
        elif event.action == "raise_eps_high":
            eps = float(self.trainer.epsilon_high)
            self.apply_settings({"eps_high": min(eps + self.eps_high_step, self.eps_high_max)})
        elif event.action == "raise_entropy_coef":
            coef = float(self.trainer.entropy_coef)
            self._set_entropy_coef(min(coef + self.entropy_coef_step, self.entropy_coef_max))

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is None or self.detector is None or "train_runtime" in logs:
            return
        step = int(state.global_step)
        mapped = map_metrics({**logs, "step": step}, naming="trl")
        ours = {k: v for k, v in mapped.items() if is_our_name(k) and k != "step"}
        if not ours:  # an eval-only row: nothing for the detector
            return
        ours |= self._apply_controller(step, ours)
        events = self.detector.observe({"step": step, **ours}) if self.use_detector else []
        for event in events:
            self._act(event, control)
        if self.trainer is not None:
            ours |= {f"control/{k}": v for k, v in self.settings_in_force().items()}
        added = {k: v for k, v in ours.items() if k not in logs}
        logs.update(added)
        if state.log_history and state.log_history[-1].get("step") == step:
            state.log_history[-1].update(added)
        self.events += events
        if not self._main:
            return
        assert self.run_dir is not None
        _append_jsonl(self.run_dir / "metrics.jsonl", {"step": step, **ours})
        for event in events:
            _append_jsonl(self.run_dir / "events.jsonl", event.to_dict())
            if self.print_events:
                print(format_event(event), flush=True)


class EntropyGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with one of our policy losses and our entropy metrics.

    Overrides only ``_compute_loss``: the per-token log-probs and entropies come from TRL's
    ``_get_per_token_logps_and_entropies`` as usual; the loss is
    ``policy_loss(entropy_loss, ...)`` from ``entropy_rl.ops.losses`` (+ ``beta`` * k3 KL to the
    reference, - ``entropy_coef`` * token-mean entropy, as TRL does). Normalisation matches
    TRL's: ``token-mean`` divides by the tokens of the accumulation window (TRL's ``dapo``, so
    ``entropy_loss="ppo"`` reproduces ``loss_type="dapo"``); the ``seq-mean-*`` modes average
    over the micro-batch's sequences and divide by the accumulation steps (``grpo`` /
    ``dr_grpo`` with ``max_len = max_completion_length``). ``args.loss_type`` is ignored.

    Logged every step under our names: the loss's metrics (``clip/*``, ``ratio/*``,
    ``kl/old_approx``, ``loss/policy``, e.g. ``clip/cov_frac``), ``entropy_stats``
    (``entropy/mean``, quantiles, ``entropy/surprisal``, ...), ``cov/logp_adv`` (rollout
    log-probs against advantages) and ``kl/ref`` when ``beta != 0``. Values are this process's
    (not gathered across ranks).

    For ``ppo`` and ``clip_cov`` the clip widths not given in ``entropy_loss_kwargs`` are read
    from ``self.epsilon_low`` / ``self.epsilon_high`` at every step. ``loss_settings`` (set by
    :class:`EntropyCallback` from a controller's ``settings()``: clip bounds, EntroPIC's
    weights) override both at every step.

    ``preset="clip-cov"`` takes the loss, its hyperparameters and the aggregation from one of
    our presets (then leave ``entropy_loss*`` out) and attaches
    ``EntropyCallback(preset=..., **callback_kwargs)`` (as ``self.entropy_callback``), which
    runs the preset's controller and detector.

    Args:
        preset: one of our presets, or None.
        entropy_loss: a name from ``entropy_rl.ops.losses.POLICY_LOSSES`` (default ``ppo``).
        entropy_loss_kwargs: that loss's keyword hyperparameters.
        entropy_loss_agg: one of ``AGG_MODES`` (default ``token-mean``).
        callback_kwargs: more arguments of the preset's :class:`EntropyCallback`.
        *args, **kwargs: ``GRPOTrainer``'s.

    Raises:
        ValueError: unknown loss, hyperparameter or agg mode; a TRL option this loss path does
            not implement (top_entropy_quantile < 1, off_policy_mask_threshold, vLLM
            importance-sampling correction, sequence-level importance sampling, delta,
            use_bias_correction_kl, use_adaptive_entropy, a MoE aux loss).
    """

    def __init__(
        self,
        *args: Any,
        preset: str | None = None,
        entropy_loss: str | None = None,
        entropy_loss_kwargs: Mapping[str, Any] | None = None,
        entropy_loss_agg: str | None = None,
        callback_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if preset is not None:
            p = host_preset(preset)
            given = [
                name
                for name, value in (
                    ("entropy_loss", entropy_loss),
                    ("entropy_loss_kwargs", entropy_loss_kwargs),
                    ("entropy_loss_agg", entropy_loss_agg),
                )
                if value is not None
            ]
            if given:
                raise ValueError(f"preset {preset!r} sets the loss: leave out {', '.join(given)}")
            entropy_loss, entropy_loss_kwargs, entropy_loss_agg = p.loss, p.loss_kwargs, p.agg
        elif callback_kwargs is not None:
            raise ValueError("callback_kwargs goes with preset=; pass your own EntropyCallback")
        entropy_loss = entropy_loss or "ppo"
        entropy_loss_agg = entropy_loss_agg or "token-mean"
        if entropy_loss not in POLICY_LOSSES:
            raise ValueError(
                f"unknown entropy_loss {entropy_loss!r}; available: {', '.join(sorted(POLICY_LOSSES))}"
            )
        allowed = list(inspect.signature(POLICY_LOSSES[entropy_loss]).parameters)[4:]
        loss_kwargs = dict(entropy_loss_kwargs or {})
        unknown = sorted(set(loss_kwargs) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown entropy_loss_kwargs {unknown} for {entropy_loss!r}; allowed: {allowed}"
            )
        if entropy_loss_agg not in AGG_MODES:
            raise ValueError(
                f"unknown entropy_loss_agg {entropy_loss_agg!r}; allowed: {', '.join(AGG_MODES)}"
            )
        super().__init__(*args, **kwargs)
        self.entropy_loss = entropy_loss
        self.entropy_loss_kwargs = loss_kwargs
        self.entropy_loss_agg = entropy_loss_agg
        self.loss_settings: dict[str, float] = {}
        targs: Any = self.args  # a GRPOConfig
        unsupported = {
            "top_entropy_quantile < 1": self.top_entropy_quantile < 1.0,
            "off_policy_mask_threshold": self.off_policy_mask_threshold is not None,
            "vllm_importance_sampling_correction": bool(
                self.use_vllm and self.vllm_importance_sampling_correction
            ),
            "importance_sampling_level='sequence' (use entropy_loss='gspo')": (
                self.importance_sampling_level != "token"
            ),
            "delta": targs.delta is not None,
            "use_bias_correction_kl": bool(self.beta != 0.0 and targs.use_bias_correction_kl),
            "use_adaptive_entropy (use EntropyCallback with a controller)": bool(
                self.use_adaptive_entropy
            ),
            "a MoE router aux loss": bool(self.aux_loss_enabled),
        }
        bad = [name for name, on in unsupported.items() if on]
        if bad:
            raise ValueError(f"EntropyGRPOTrainer does not implement: {', '.join(bad)}")
        self.entropy_callback: EntropyCallback | None = None
        if preset is not None:
            cb = EntropyCallback(preset=preset, **dict(callback_kwargs or {}))
            self.entropy_callback = cb.attach(self)

    def _loss_hparams(self) -> dict[str, Any]:
        kw = dict(self.entropy_loss_kwargs)
        if self.entropy_loss in _EPS_FROM_TRAINER and "eps" not in kw:
            kw.setdefault("eps_low", float(self.epsilon_low))
            kw.setdefault("eps_high", float(self.epsilon_high))
        return kw | self.loss_settings

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = (
            completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        )
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            **{k: inputs.get(k) for k in _MM_KEYS},
        )  # (B, T) each
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old  # on-policy: TRL skips computing it
        advantages = inputs["advantages"]  # (B,) or (B, T)

        train = bool(model.training)
        targs: Any = self.args
        accum = float(self.current_gradient_accumulation_steps) if train else 1.0
        agg, num_tokens, scale = self.entropy_loss_agg, None, accum
        if agg == "token-mean":  # tokens of the accumulation window, as TRL's "dapo"
            window = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if train:
                window = window * accum / targs.steps_per_generation
            num_tokens, scale = float(window), 1.0
        norm: dict[str, Any] = {"num_tokens": num_tokens, "num_seqs": float(mask.shape[0])}
        norm["max_len"] = self.max_completion_length
        loss, metrics = policy_loss(
            self.entropy_loss,
            logprobs=logps,
            old_logprobs=old,
            advantages=advantages,
            mask=mask,
            agg=agg,
            **norm,
            **self._loss_hparams(),
        )
        loss = loss / scale
        valid = mask != 0
        if self.beta != 0.0:
            kl = kl_estimate(logps, inputs["ref_per_token_logps"], kind="k3")  # KL(pi || ref)
            loss = loss + self.beta * aggregate(kl, mask, agg, **norm) / scale
            metrics["kl/ref"] = float(kl.detach()[valid].mean()) if bool(valid.any()) else 0.0
        coef = float(self.entropy_coef)
        if coef != 0.0:
            loss = loss - coef * aggregate(entropies, mask, "token-mean") / accum

        mode = "train" if train else "eval"
        if bool(valid.any()):
            metrics |= entropy_stats(entropies, logps, mask)
            metrics["cov/logp_adv"] = logp_adv_covariance(old, advantages, mask)
        for key, value in metrics.items():
            if not key.startswith("_count/"):
                self._metrics[mode][key].append(float(value))
        return loss
