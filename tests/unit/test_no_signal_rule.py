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


def test_the_updates_share_is_read_in_place_of_the_sampled_one() -> None:
    """Dynamic sampling keeps only groups with signal: 100% of sampled groups may agree while
    the update learns from the kept ones (groups/no_signal_frac 0), so the rule reads the
    update's share where the trainer logs it."""
    rows = [{"groups/zero_var_frac": 1.0, "groups/no_signal_frac": 0.0}] * 6
    det = CollapseDetector(DetectorConfig(), total_steps=100)
    assert all(det.observe({"step": i + 1, **r}) == [] for i, r in enumerate(rows))
    det = CollapseDetector(DetectorConfig(), total_steps=100)
    none_kept = {"groups/zero_var_frac": 1.0, "groups/no_signal_frac": 1.0}
    fired = [e for i in range(5) for e in det.observe({"step": i + 1, **none_kept})]
    assert [(e.step, e.values["no_signal_frac"]) for e in fired] == [(5, 1.0)]
    assert "of the update's prompt groups" in fired[0].message


@pytest.mark.parametrize(
    ("overrides", "enabled"),
    [
        ([], True),  # grpo, groups of 8
        (["algo.advantage=w_reinforce"], False),  # a failing group gets -1 each: a signal
        (["algo.advantage=rloo"], True),
        (["rollout.group_size=1", "rollout.dynamic_sampling=false"], False),
        (["algo.advantage=w_reinforce", "control.detector_kwargs.no_signal_enabled=true"], True),
    ],
)
def test_the_trainer_turns_the_rule_off_where_equal_rewards_carry_a_signal(
    overrides: list[str], enabled: bool
) -> None:
    from entropy_rl.train.config import build_config
    from entropy_rl.train.parts import build_detector

    det = build_detector(build_config(preset="grpo", overrides=overrides))
    assert det is not None and det.config.no_signal_enabled is enabled
