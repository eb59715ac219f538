"""What would act on a detector event in the framework a run comes from: one line per
(rule, host), printed by ``entropy-rl watch`` under each event.

Each line names a preset (the lever docs/experiments.md measured against that failure) or a
detector setting, written the way that host takes it: ``EntropyCallback(...)`` for TRL, the
``+entropy_rl.preset=...`` config entry for verl (docs/integrations.md shows its hook),
``--preset`` / ``control.detector_kwargs.*`` for our trainer.
"""

from __future__ import annotations

from entropy_rl.control.detector import RULES

__all__ = ["HOSTS", "event_hint"]

HOSTS = {"trl": "TRL", "verl": "verl", "entropy_rl": "entropy-rl"}
"""Metric namings (``integrations._names``) -> the host's name in the hint."""

# rule -> (preset or None, what it does about the rule, the action to set on the rule)
_LEVERS: dict[str, tuple[str | None, str, str]] = {
    "entropy_drop": (
        "rate-clip",
        "narrows the clip while entropy falls faster than scheduled",
        "raise_eps_high",
    ),
    "entropy_floor": (
        "target-schedule",
        "raises the entropy bonus while entropy is under its target",
        "raise_entropy_coef",
    ),
    "exploration_collapse": (
        "narrow-clip",
        "clip 0.02: small updates kept rare answers alive in the trap study",
        "stop",
    ),
    "entropy_explosion": (
        "target-clip",
        "narrows the clip while entropy is above its target",
        "stop",
    ),
}
_NO_PRESET = (None, "", "stop")  # a rule no preset answers (repetition_rise): stop the run
# rules a host's own option answers, not a preset
_HOST_OPTION = {
    "truncation": {
        "trl": "raise GRPOConfig(max_completion_length=...), or mask_truncated_completions=True",
        "verl": "raise data.max_response_length",
        "entropy_rl": "raise rollout.max_new_tokens, or rollout.overlong_shaping=true",
    },
    "no_signal": {
        "trl": "raise GRPOConfig(num_generations=...) or temperature, or harder prompts if solved",
        "verl": "raise actor_rollout_ref.rollout.n or its temperature, or harder prompts if solved",
        "entropy_rl": "raise rollout.group_size or rollout.temperature, or harder prompts if "
        "solved",
    },
}


def _preset_text(host: str, preset: str) -> str:
    if host == "trl":
        return f'EntropyCallback(preset="{preset}")'
    if host == "verl":
        return f"+entropy_rl.preset={preset}"
    return f"--preset {preset}"


def _setting_text(host: str, rule: str, action: str) -> str:
    key = f"{rule}_action"
    if host == "trl":
        return f'EntropyCallback(detector_kwargs={{"{key}": "{action}"}})'
    if host == "verl":  # verl's hook records events; acting on them is the hook's own code
        return f"stop or adjust from the hook on a {rule} event ({key}: {action})"
    return f"control.detector_kwargs.{key}={action}"


def event_hint(rule: str, naming: str) -> str:
    """``in TRL: EntropyCallback(preset="rate-clip") narrows the clip ...; or ...``.

    Raises:
        ValueError: an unknown rule or naming (our bug: both come from our own tables).
    """
    if rule not in RULES or naming not in HOSTS:
        raise ValueError(f"no hint for rule {rule!r} in {naming!r}")
    if rule in _HOST_OPTION:
        return f"in {HOSTS[naming]}: {_HOST_OPTION[rule][naming]}"
    preset, why, action = _LEVERS.get(rule, _NO_PRESET)
    setting = _setting_text(naming, rule, action)
    if preset is None:
        return f"in {HOSTS[naming]}: {setting}"
    return f"in {HOSTS[naming]}: {_preset_text(naming, preset)} {why}; or {setting}"
