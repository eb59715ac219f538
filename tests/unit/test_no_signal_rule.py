"""The detector's no_signal rule: every prompt group earned one reward (zero advantage) for
several steps in a row, so the update learns nothing."""

from __future__ import annotations

import pytest

from entropy_rl.control.detector import CollapseDetector, DetectorConfig


def _feed(
    shares: list[float], extra: dict[str, float] | None = None, **cfg: object
) -> list[tuple[int, dict[str, float], str]]:
    det = CollapseDetector(DetectorConfig.from_dict(cfg), total_steps=100)
    out = []
    for step, share in enumerate(shares, start=1):
        row = {"step": step, "groups/zero_var_frac": share, **(extra or {})}
        for e in det.observe(row):
            if e.rule == "no_signal":
                out.append((e.step, e.values, e.message))
    return out


def test_fires_once_after_five_steps_at_or_above_the_share() -> None:
    # steps 1-4 at >= 0.9, step 5 at 0.75 breaks the run; steps 6-10 at >= 0.9: fires at 10
    shares = [1.0, 0.9, 1.0, 1.0, 0.75, 1.0, 1.0, 0.9, 1.0, 1.0, 1.0, 1.0]
    fired = _feed(shares, {"acc/train": 0.0, "entropy/mean": 0.04})
    assert [f[0] for f in fired] == [10]  # once: silent while it holds
    _, values, msg = fired[0]
    assert values == {"zero_var_frac": 1.0, "min_over_steps": 0.9, "steps": 5,
                      "entropy": 0.04, "acc": 0.0}  # fmt: skip
    assert msg.startswith(
        "100% of prompt groups earned one reward per group (90% or more for 5 steps)"
    )
    assert "(acc/train 0.00, entropy 0.04 nats)" in msg
    assert "rollout.group_size" in msg and "rollout.temperature" in msg
    every = _feed([1.0] * 5)[0][2]
    assert every.startswith("100% of prompt groups earned one reward per group (every group, 5 ")


def test_below_the_share_never_fires_and_settings_apply() -> None:
    assert _feed([0.875] * 20) == []  # 7 of 8 groups agreeing leaves a signal
    fired = _feed([0.5] * 4, no_signal_frac=0.5, no_signal_steps=4)
    assert [f[0] for f in fired] == [4]
    assert "acc/train" not in fired[0][2]  # no accuracy logged: none quoted
    assert _feed([1.0] * 10, no_signal_enabled=False) == []


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="no_signal_frac must be in"):
        DetectorConfig(no_signal_frac=1.5)
    with pytest.raises(ValueError, match="no_signal_steps must be an int >= 1"):
        DetectorConfig(no_signal_steps=0)
    assert DetectorConfig(no_signal_action="stop").action_for("no_signal") == "stop"


def test_resumes_mid_run_from_its_state() -> None:
    """Three agreeing steps before a checkpoint and two after fire at the fifth, as in one
    uninterrupted run."""
    det = CollapseDetector(DetectorConfig(), total_steps=100)
    for step in (1, 2, 3):
        assert det.observe({"step": step, "groups/zero_var_frac": 1.0}) == []
    again = CollapseDetector(DetectorConfig(), total_steps=100)
    again.load_state_dict(det.state_dict())
    assert again.observe({"step": 4, "groups/zero_var_frac": 1.0}) == []
    assert [e.rule for e in again.observe({"step": 5, "groups/zero_var_frac": 1.0})] == [
        "no_signal"
    ]
