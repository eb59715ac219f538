"""The collapse detector's configuration (``control.detector_kwargs``): the seven rules'
thresholds, windows, smoothing and actions, checked on construction. The rules themselves
are in :mod:`entropy_rl.control.detector`, which re-exports these names."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

ACTIONS = ("none", "stop", "raise_eps_high", "raise_entropy_coef", "rollback")
RULES = (
    "entropy_drop",
    "entropy_floor",
    "exploration_collapse",
    "entropy_explosion",
    "repetition_rise",
    "truncation",
    "no_signal",
)


@dataclass
class DetectorConfig:
    """Thresholds, windows and actions of the seven rules; every field has a default.

    Actions are one of ``ACTIONS``: none, stop, raise_eps_high, raise_entropy_coef, rollback.
    """

    entropy_drop_enabled: bool = True
    """Run the entropy_drop rule."""
    entropy_drop_window: int = 10
    """Steps back over which the drop is measured: from the window's peak to now."""
    entropy_drop_frac: float = 0.5
    """Fires when (peak - now) / peak exceeds this fraction, in (0, 1)."""
    entropy_drop_min: float = 0.1
    """...and by more than this many nats: after a collapse, 0.1 -> 0.04 is -60% of nothing
    (SmolLM2 on trap-chat logged two such warnings a run after its real one at step 8)."""
    entropy_drop_min_acc_gain: float = 0.02
    """...and accuracy gained less than this over the window: mean of the newer half of the
    window's accuracy values minus the mean of the older half."""
    entropy_drop_action: str = "none"
    """Action reported with entropy_drop events (severity warning)."""

    entropy_floor_enabled: bool = True
    """Run the entropy_floor rule."""
    entropy_floor_value: float = 0.05
    """Fires when entropy/mean is below this many nats..."""
    entropy_floor_before_frac: float = 0.5
    """...at a step before this fraction of total_steps, in (0, 1]."""
    entropy_floor_action: str = "none"
    """Action reported with entropy_floor events (severity critical)."""

    exploration_collapse_enabled: bool = True
    """Run the exploration_collapse rule (on evaluation steps only)."""
    exploration_distinct_min: float = 1.0
    """Fires when eval/distinct_answers (per prompt) falls to <= this from a baseline above it."""
    exploration_passk_window: int = 3
    """Number of evaluations compared for the pass@K-vs-pass@1 check (first vs last), >= 2."""
    exploration_passk_max_gain: float = -0.025
    """pass@K at the largest K counts as stalled when it gained at most this over the window...
    Default: it must *fall* by more than 2.5 points; smaller moves are evaluation noise (on the
    default addition run pass@8 went 0.977 -> 0.961, two prompts of 128, and fired a false
    alarm at 0.0). Set 0.0 to flag any stall."""
    exploration_pass1_min_gain: float = 0.05
    """...while pass@1 (eval/pass@1, else acc/eval) gained at least this."""
    exploration_passk_saturated: float = 0.98
    """pass@K at or above this is saturated, not stalled: the pass@K check is then skipped."""
    exploration_collapse_action: str = "none"
    """Action reported with exploration_collapse events (severity warning)."""

    entropy_explosion_enabled: bool = True
    """Run the entropy_explosion rule."""
    explosion_entropy_ceiling: float | None = None
    """Absolute ceiling on entropy/mean in nats; None disables this check."""
    explosion_entropy_mult: float | None = 3.0
    """Fires when entropy/mean exceeds this multiple of its initial value; None disables."""
    explosion_rise_frac: float | None = 0.5
    """Fires when entropy/mean rose by more than this fraction of the window's minimum within
    ``entropy_drop_window`` steps (and by more than ``explosion_rise_min`` nats) while accuracy
    gained less than ``entropy_drop_min_acc_gain``; None disables. The multiple of the initial
    value alone cannot fire where 3x the start exceeds what the vocabulary allows (wordpick:
    3.5 nats at the start, ln 3053 = 8.0 at most): there an entropy bonus took entropy from
    2.8 to 6.4 nats in two steps while accuracy fell from 0.43 to 0.07."""
    explosion_rise_min: float = 0.25
    """Smallest rise in nats the relative check counts (0.02 -> 0.04 is +100% and noise). At 32
    samples a step a batch's entropy swings by tenths of a nat: on 31 healthy or collapsed
    SmolLM2 runs, 0.1 flagged 19 "explosions" of 0.1-0.2 nats (0.38 -> 0.58 in one that went on
    learning), 0.25 none; the entropy bonus's real one on wordpick rose 3.6 nats."""
    explosion_length_mult: float | None = 2.0
    """Fires when length/mean exceeds this multiple of its initial value; None disables."""
    entropy_explosion_action: str = "none"
    """Action reported with entropy_explosion events (critical when entropy crossed its
    ceiling, warning when only the length did)."""

    repetition_rise_enabled: bool = True
    """Run the repetition_rise rule."""
    repetition_rise_threshold: float = 0.2
    """Fires when gen/repetition (share of repeated 4-grams, in [0, 1]) exceeds its initial
    value by more than this, in (0, 1)."""
    repetition_rise_action: str = "none"
    """Action reported with repetition_rise events (severity warning)."""

    truncation_enabled: bool = True
    """Run the truncation rule."""
    truncation_frac: float = 0.5
    """Fires when length/truncated_frac (share of completions that hit max_new_tokens) is above
    this, in (0, 1]..."""
    truncation_steps: int = 3
    """...at this many consecutive steps."""
    truncation_action: str = "none"
    """Action reported with truncation events (severity warning)."""

    no_signal_enabled: bool = True
    """Run the no_signal rule."""
    no_signal_frac: float = 0.9
    """Fires when groups/no_signal_frac (share of the update's prompt groups whose samples all
    earned the same reward: zero advantage, no gradient; 1 when dynamic sampling kept none) is
    at or above this, in (0, 1]; on a stream without it (TRL, older runs) groups/zero_var_frac
    (TRL's frac_reward_zero_std). The trainer turns the rule off where equal rewards still
    carry a signal: an advantage without a group baseline (w_reinforce, gae) or groups of one
    sample..."""
    no_signal_steps: int = 5
    """...at this many consecutive steps. On the 24 SmolLM2 trap-chat runs (4 prompts a step)
    every group agreed at 5 steps in a row from step 13-24 of PPO's trapped runs; the 6 healthy
    curve runs and the default run never stayed at 0.9 for 5 steps."""
    no_signal_action: str = "none"
    """Action reported with no_signal events (severity warning)."""

    smooth_steps: int = 1
    """``entropy/mean`` and ``acc/train`` enter every rule as the mean of their last this-many
    per-step values (1: as logged). A batch of a few dozen samples swings a step's entropy by
    tenths of a nat: on six healthy SmolLM2 runs at 32 samples a step, 3 kept 3 of the 8
    drop / explosion events (docs/experiments.md#smollm2-curve) and delayed trap-chat's real
    collapses by about a step. The ``small-instruct`` preset sets 3."""

    accuracy_keys: tuple[str, ...] = ("acc/train", "acc/eval")
    """Accuracy metrics for entropy_drop, in order of preference (first with >= 2 values in
    the window is used)."""
    baseline_steps: int = 1
    """A metric's initial value is the mean of its first this-many observations."""
    cooldown_steps: int = 20
    """Minimum steps between two events of the same rule."""
    rearm_steps: int = 3
    """A rule re-arms after its condition was false at this many consecutive evaluations."""

    def __post_init__(self) -> None:
        self.accuracy_keys = tuple(self.accuracy_keys)
        for rule in RULES:
            action = getattr(self, f"{rule}_action")
            if action not in ACTIONS:
                raise ValueError(f"{rule}_action must be one of {ACTIONS}, got {action!r}")
        for name, low in (
            ("entropy_drop_window", 1),
            ("exploration_passk_window", 2),
            ("baseline_steps", 1),
            ("cooldown_steps", 0),
            ("rearm_steps", 1),
            ("truncation_steps", 1),
            ("no_signal_steps", 1),
            ("smooth_steps", 1),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        for name, lo, hi in (
            ("entropy_drop_frac", 0.0, 1.0),
            ("entropy_floor_before_frac", 0.0, 1.0),
            ("repetition_rise_threshold", 0.0, 1.0),
            ("truncation_frac", 0.0, 1.0),
            ("no_signal_frac", 0.0, 1.0),
        ):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and lo < v <= hi):
                raise ValueError(f"{name} must be in ({lo}, {hi}], got {v!r}")
        for name in (
            "entropy_drop_min",
            "explosion_rise_min",
            "entropy_drop_min_acc_gain",
            "entropy_floor_value",
            "exploration_distinct_min",
            "exploration_passk_max_gain",
            "exploration_pass1_min_gain",
            "exploration_passk_saturated",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        for name in (
            "explosion_entropy_ceiling",
            "explosion_entropy_mult",
            "explosion_rise_frac",
            "explosion_length_mult",
        ):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v < math.inf):
                raise ValueError(f"{name} must be a positive number or None, got {v!r}")
        if not self.accuracy_keys:
            raise ValueError("accuracy_keys must name at least one metric")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetectorConfig:
        """From a config mapping; unknown keys raise ValueError listing the valid ones."""
        if "explosion_repetition_rise" in d:
            raise ValueError(
                "explosion_repetition_rise is now repetition_rise_threshold (the repetition_rise"
                " rule, with its own repetition_rise_action); rename it"
            )
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown detector options {unknown}; valid: {valid}")
        return cls(**d)

    def action_for(self, rule: str) -> str | None:
        """The configured action of ``rule``; None for ``"none"``."""
        action = getattr(self, f"{rule}_action")
        return None if action == "none" else str(action)
