"""The detector's truncation rule: most completions cut at max_new_tokens for several steps."""

from __future__ import annotations

import pytest

from entropy_rl.control.detector import CollapseDetector, DetectorConfig


def _feed(shares: list[float], **cfg: object) -> list[tuple[int, dict[str, float], str]]:
    det = CollapseDetector(DetectorConfig.from_dict(cfg), total_steps=100)
    out = []
    for step, share in enumerate(shares, start=1):
        for e in det.observe({"step": step, "length/truncated_frac": share}):
            if e.rule == "truncation":
                out.append((e.step, e.values, e.message))
    return out


def test_fires_once_after_three_steps_above_half() -> None:
    # steps 1-2 above 0.5, step 3 at 0.4 breaks the run; steps 4, 5, 6 above: fires at step 6
    fired = _feed([0.9, 0.8, 0.4, 0.7, 0.6, 0.97, 0.95, 0.99])
    assert [f[0] for f in fired] == [6]  # once: the rule stays silent while it holds
    assert fired[0][0] == 6
    _, values, msg = fired[0]
    assert values == {"truncated_frac": 0.97, "min_over_steps": 0.6, "steps": 3}
    assert msg.startswith("97% of completions hit max_new_tokens (60% or more for 3 steps)")
    assert "rollout.max_new_tokens" in msg and "overlong_shaping" in msg


def test_exactly_at_the_share_does_not_fire_and_settings_apply() -> None:
    assert _feed([0.5] * 10) == []  # "above" 0.5: half cut is not most
    assert [f[0] for f in _feed([0.3] * 5, truncation_frac=0.25, truncation_steps=5)] == [5]
    assert _feed([0.9] * 10, truncation_enabled=False) == []


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="truncation_frac must be in"):
        DetectorConfig(truncation_frac=0.0)
    with pytest.raises(ValueError, match="truncation_steps must be an int >= 1"):
        DetectorConfig(truncation_steps=0)
    with pytest.raises(ValueError, match="truncation_action must be one of"):
        DetectorConfig(truncation_action="shout")
    assert DetectorConfig(truncation_action="stop").action_for("truncation") == "stop"
