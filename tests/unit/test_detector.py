"""Tests for entropy_rl.control.detector: each rule on a synthetic stream, cooldown, state."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import pytest

from entropy_rl.control.detector import CollapseDetector, DetectorConfig, Event


def run(stream: Iterable[dict], total_steps: int = 200, **cfg) -> tuple[list[Event], list[bool]]:
    det = CollapseDetector(DetectorConfig(**cfg), total_steps)
    events, healthy = [], []
    for row in stream:
        events += det.observe(row)
        healthy.append(det.is_healthy)
    return events, healthy


def fired(events: list[Event]) -> list[tuple[int, str]]:
    return [(e.step, e.rule) for e in events]


def healthy_stream(steps: int = 200) -> list[dict]:
    """Slow steady entropy decrease (0.7 -> 0.36) with improving, noisy accuracy."""
    rows = []
    for k in range(1, steps + 1):
        row = {
            "step": k,
            "entropy/mean": 0.7 * math.exp(-k / 300) * (1 + 0.03 * math.sin(k)),
            "acc/train": 0.3 + 0.5 * (1 - math.exp(-k / 60)) + 0.02 * math.sin(3 * k),
            "length/mean": 120 + 10 * math.sin(k / 7),
            "gen/repetition": 0.05 + 0.01 * math.sin(k / 5),
        }
        if k % 20 == 0:
            j = k / 20
            row |= {
                "eval/distinct_answers": 6.0 - 0.2 * j,
                "eval/pass@1": 0.3 + 0.04 * j,
                "eval/pass@4": 0.5 + 0.03 * j,
                "eval/pass@16": 0.7 + 0.02 * j,
            }
        rows.append(row)
    return rows


def test_healthy_run_stays_quiet() -> None:
    events, healthy = run(healthy_stream())
    assert events == []
    assert all(healthy)


def drop_stream(acc_rising: bool) -> list[dict]:
    # flat 0.7 until step 20, then x0.8 per step down to 0.1: 0.56, 0.448, 0.358 (drop 48.8%
    # of the 0.7 peak), 0.287 (59%) at step 24
    rows = []
    for k in range(1, 61):
        h = 0.7 if k <= 20 else max(0.7 * 0.8 ** (k - 20), 0.1)
        acc = 0.5 + (0.02 * (k - 20) if acc_rising and k > 20 else 0.0)
        rows.append({"step": k, "entropy/mean": h, "acc/train": min(acc, 0.95)})
    return rows


def test_entropy_drop_fires_once_when_accuracy_flat() -> None:
    events, healthy = run(drop_stream(acc_rising=False))
    assert fired(events) == [(24, "entropy_drop")]
    e = events[0]
    assert e.severity == "warning" and e.action is None
    assert e.values["drop_frac"] == pytest.approx(1 - 0.8**4)  # (0.7 - 0.7 * 0.8^4) / 0.7
    assert e.values["acc_gain"] == 0.0
    assert healthy[22] and not healthy[23]  # steps 23 and 24
    # by step 60 the window holds only the 0.1 plateau: healthy again
    assert healthy[-1]


def test_entropy_drop_quiet_when_accuracy_improves() -> None:
    # acc rises 0.02 per step: the half-window gain is ~0.1 > 0.02
    events, _ = run(drop_stream(acc_rising=True))
    assert events == []


def test_entropy_drop_needs_a_fall_of_entropy_drop_min_nats() -> None:
    # after a collapse: 0.1 nats until step 20, then 0.04 (-60%, but 0.06 nats < 0.1)
    rows = [
        {"step": k, "entropy/mean": 0.1 if k <= 20 else 0.04, "acc/train": 0.5}
        for k in range(1, 30)
    ]
    assert fired(run(rows, entropy_floor_enabled=False)[0]) == []
    # the same fall counts once the bound is below it (0.06 > 0.05)
    events, _ = run(rows, entropy_floor_enabled=False, entropy_drop_min=0.05)
    assert fired(events) == [(21, "entropy_drop")]
    assert events[0].values["drop_frac"] == pytest.approx(0.6)


def test_entropy_drop_skipped_without_accuracy() -> None:
    rows = [{"step": r["step"], "entropy/mean": r["entropy/mean"]} for r in drop_stream(False)]
    events, _ = run(rows)
    assert events == []


def test_entropy_floor_before_half_of_training() -> None:
    # H_k = 0.501 - 0.005 k: 0.051 at step 90, 0.046 at step 91; accuracy rising so the
    # entropy_drop rule stays quiet
    rows = [
        {"step": k, "entropy/mean": 0.501 - 0.005 * k, "acc/train": 0.2 + 0.005 * k}
        for k in range(1, 100)
    ]
    events, _ = run(rows, total_steps=200, entropy_floor_action="raise_entropy_coef")
    assert fired(events) == [(91, "entropy_floor")]
    assert events[0].severity == "critical" and events[0].action == "raise_entropy_coef"
    assert events[0].values["progress"] == pytest.approx(91 / 200)
    # with 150 planned steps the floor applies only before step 75: never fires
    events, healthy = run(rows, total_steps=150)
    assert events == [] and all(healthy)


def test_exploration_collapse_distinct_answers() -> None:
    distinct = [6.0, 4.0, 2.5, 1.5, 1.0, 1.0, 1.2, 0.8]  # evaluated at steps 10, 20, ...
    rows = []
    for k in range(1, 81):
        row: dict = {"step": k}
        if k % 10 == 0:
            row["eval/distinct_answers"] = distinct[k // 10 - 1]
        rows.append(row)
    events, healthy = run(rows)
    assert fired(events) == [(50, "exploration_collapse")]  # 1.0 <= 1 at the 5th eval
    assert "distinct_answers" in events[0].message
    assert not healthy[-1]  # still collapsed at the last eval (0.8)
    # a single-answer task starts at <= 1 distinct answer: "falling to" 1 never happens
    flat = [{"step": k, "eval/distinct_answers": 1.0} for k in range(1, 30)]
    assert run(flat)[0] == []


def passk_rows(pass1: list[float], passk: list[float]) -> list[dict]:
    return [
        {"step": 10 * (i + 1), "eval/pass@1": p1, "eval/pass@4": 0.5, "eval/pass@16": pk}
        for i, (p1, pk) in enumerate(zip(pass1, passk, strict=True))
    ]


def test_exploration_collapse_passk_stalls_while_pass1_rises() -> None:
    rows = passk_rows([0.3, 0.35, 0.4, 0.45, 0.5], [0.9, 0.88, 0.86, 0.85, 0.84])
    events, _ = run(rows)
    # window of 3 evals: at step 30 pass@16 moved 0.86 - 0.9 = -0.04 <= -0.025 while pass@1
    # rose 0.4 - 0.3 = 0.1 >= 0.05
    assert fired(events) == [(30, "exploration_collapse")]
    assert events[0].values["passk_gain"] == pytest.approx(-0.04)
    assert "eval/pass@16" in events[0].message  # the largest k is used
    # a -0.01 wobble is evaluation noise by default, a stall when max_gain is 0
    noisy = passk_rows([0.3, 0.35, 0.4, 0.45, 0.5], [0.9, 0.9, 0.89, 0.88, 0.88])
    assert run(noisy)[0] == []
    assert fired(run(noisy, exploration_passk_max_gain=0.0)[0]) == [(30, "exploration_collapse")]
    rising = passk_rows([0.3, 0.35, 0.4, 0.45, 0.5], [0.9, 0.92, 0.93, 0.95, 0.96])
    assert run(rising)[0] == []
    saturated = passk_rows([0.3, 0.35, 0.4, 0.45, 0.5], [0.99, 0.99, 0.99, 0.99, 0.99])
    assert run(saturated)[0] == []


def test_entropy_explosion_entropy_ceiling_is_critical() -> None:
    # baseline 0.5 -> ceiling 3 x 0.5 = 1.5; from step 31 +0.12 per step: 1.46 at 38, 1.58 at 39
    rows = [
        {"step": k, "entropy/mean": 0.5 + 0.12 * max(0, k - 30), "acc/train": 0.5}
        for k in range(1, 45)
    ]
    # (the sudden-rise check would fire first on this ramp: tested on its own below)
    events, _ = run(rows, entropy_explosion_action="rollback", explosion_rise_frac=None)
    assert fired(events) == [(39, "entropy_explosion")]
    assert events[0].severity == "critical" and events[0].action == "rollback"
    assert events[0].values["entropy_ceiling"] == pytest.approx(1.5)
    # an absolute ceiling below the relative one wins: min(1.0, 1.5) -> 0.5 + 0.12 * 5 = 1.1
    events, _ = run(rows, explosion_entropy_ceiling=1.0, explosion_rise_frac=None)
    assert fired(events) == [(35, "entropy_explosion")]


def test_entropy_explosion_sudden_rise_where_the_ceiling_cannot_be_reached() -> None:
    # wordpick with an entropy bonus (measured): 3.53 at the start, so 3x = 10.6 nats, above
    # ln(3053) = 8.0; entropy slid to 2.8 by step 30, then 6.4 at 32 while acc fell 0.43 -> 0.07
    h = {k: 3.53 - 0.025 * k for k in range(1, 31)} | {31: 2.79, 32: 6.38, 33: 6.26, 34: 5.1}
    acc = {k: 0.3 + 0.005 * k for k in range(1, 32)} | {32: 0.07, 33: 0.11, 34: 0.2}
    rows = [{"step": k, "entropy/mean": h[k], "acc/train": acc[k]} for k in range(1, 35)]
    events, _ = run(rows)
    assert fired(events) == [(32, "entropy_explosion")]
    ev = events[0]
    assert ev.severity == "critical"
    # window minimum: h[31] = 2.79 (h[30] = 2.78 is 2 steps before... within the window too)
    low = min(h[k] for k in range(32 - 10, 33))
    assert ev.values["entropy_low"] == pytest.approx(low)
    assert ev.values["rise_frac"] == pytest.approx((6.38 - low) / low)
    assert "rose" in ev.message
    # the same rise while accuracy improves is learning, not an explosion
    improving = [{**r, "acc/train": 0.3 + 0.02 * r["step"]} for r in rows]
    assert fired(run(improving)[0]) == []
    # +150% of a tiny entropy (0.02 -> 0.05 nats) is below explosion_rise_min (0.25 nats)
    tiny = [
        {"step": k, "entropy/mean": 0.02 if k < 20 else 0.05, "acc/train": 0.5}
        for k in range(1, 30)
    ]
    assert fired(run(tiny, entropy_floor_enabled=False)[0]) == []
    # a slow rise under a controller (1.0 -> 1.3 over 10 steps: +30%) stays quiet
    slow = [
        {"step": k, "entropy/mean": 1.0 + 0.03 * max(0, k - 20), "acc/train": 0.5}
        for k in range(1, 31)
    ]
    assert fired(run(slow)[0]) == []


def test_entropy_explosion_needs_a_rise_of_explosion_rise_min_nats() -> None:
    # a 32-sample batch's swing late in a healthy run: 0.38 until step 20, then 0.58 nats
    # (+53%, 0.2 nats) with flat accuracy: quiet at the default 0.25, an explosion at 0.1
    rows = [
        {"step": k, "entropy/mean": 0.38 if k <= 20 else 0.58, "acc/train": 0.6}
        for k in range(1, 30)
    ]
    assert fired(run(rows)[0]) == []
    events, _ = run(rows, explosion_rise_min=0.1)
    assert fired(events) == [(21, "entropy_explosion")]
    assert events[0].values["rise_frac"] == pytest.approx(0.2 / 0.38)
    with pytest.raises(ValueError, match="explosion_rise_min"):
        DetectorConfig(explosion_rise_min=float("nan"))


def test_entropy_explosion_length_and_repetition_are_warnings() -> None:
    # length 100 doubles past 200 at step 31 (100 + 10 * 11 = 210); repetition stays 0.1
    rows = [
        {"step": k, "length/mean": 100 + 10 * max(0, k - 20), "gen/repetition": 0.1}
        for k in range(1, 40)
    ]
    events, _ = run(rows)
    assert fired(events) == [(31, "entropy_explosion")] and events[0].severity == "warning"
    # repetition 0.05 -> rises 0.03 per step after step 10: 0.05 + 0.03 * 7 = 0.26 > 0.05 + 0.2
    rep = [{"step": k, "gen/repetition": 0.05 + 0.03 * max(0, k - 10)} for k in range(1, 30)]
    events, _ = run(rep)
    assert fired(events) == [(17, "repetition_rise")] and events[0].severity == "warning"
    assert events[0].values == pytest.approx({"repetition": 0.26, "repetition_initial": 0.05,
                                              "rise": 0.21})  # fmt: skip
    assert events[0].action is None
    events, _ = run(rep, repetition_rise_action="stop", repetition_rise_threshold=0.25)
    # 0.05 + 0.03 * 9 = 0.32 is the first rise above 0.25 (0.29 - 0.05 = 0.24 at step 18)
    assert fired(events) == [(19, "repetition_rise")] and events[0].action == "stop"
    assert run(rep, repetition_rise_enabled=False)[0] == []  # entropy_explosion does not read it
    with pytest.raises(
        ValueError, match="explosion_repetition_rise is now repetition_rise_threshold"
    ):
        DetectorConfig.from_dict({"explosion_repetition_rise": 0.2})
    with pytest.raises(ValueError, match="repetition_rise_threshold must be in"):
        DetectorConfig(repetition_rise_threshold=1.5)


def floor_toggle_rows() -> list[dict]:
    below = {10, 11, 12, 14, *range(18, 41)}
    return [{"step": k, "entropy/mean": 0.01 if k in below else 0.3} for k in range(1, 45)]


def test_cooldown_and_rearm() -> None:
    rows = floor_toggle_rows()
    off = {"entropy_drop_enabled": False, "entropy_explosion_enabled": False}
    # fires at 10; 13 is one quiet step (rearm needs 3) so 14 is the same episode; 15-17
    # re-arm it, but at 18 only 8 steps passed since 10 (cooldown 20): fires at 30
    events, _ = run(rows, cooldown_steps=20, rearm_steps=3, **off)
    assert fired(events) == [(10, "entropy_floor"), (30, "entropy_floor")]
    events, _ = run(rows, cooldown_steps=0, rearm_steps=3, **off)
    assert fired(events) == [(10, "entropy_floor"), (18, "entropy_floor")]
    events, _ = run(rows, cooldown_steps=0, rearm_steps=1, **off)
    assert [s for s, _ in fired(events)] == [10, 14, 18]


def test_missing_metrics_and_implicit_steps() -> None:
    det = CollapseDetector(DetectorConfig(), total_steps=10)
    assert det.observe({}) == [] and det.observe({"acc/train": 0.5, "loss/total": "n/a"}) == []
    assert det.observe({"entropy/mean": math.nan}) == []
    ev = det.observe({"entropy/mean": 0.001})  # implicit step 4 of 10: under the floor
    assert fired(ev) == [(4, "entropy_floor")]
    assert det.last_healthy_step == 3 and not det.is_healthy


def test_event_json_schema() -> None:
    e = Event(7, "entropy_floor", "critical", {"entropy": 0.01, "x": math.nan}, "low", None)
    d = json.loads(e.to_json())
    assert d == {
        "step": 7,
        "rule": "entropy_floor",
        "severity": "critical",
        "values": {"entropy": 0.01, "x": None},
        "message": "low",
        "action": None,
    }


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="entropy_drop_action"):
        DetectorConfig(entropy_drop_action="panic")
    with pytest.raises(ValueError, match="entropy_drop_window"):
        DetectorConfig(entropy_drop_window=0)
    with pytest.raises(ValueError, match="entropy_drop_frac"):
        DetectorConfig(entropy_drop_frac=1.5)
    with pytest.raises(ValueError, match="explosion_length_mult"):
        DetectorConfig(explosion_length_mult=-2.0)
    with pytest.raises(ValueError, match="valid"):
        DetectorConfig.from_dict({"entropy_flor_value": 0.1})
    assert DetectorConfig.from_dict({"cooldown_steps": 5}).cooldown_steps == 5
    with pytest.raises(ValueError, match="total_steps"):
        CollapseDetector(None, 0)


def test_state_round_trip_resumes_identically() -> None:
    rows = healthy_stream(60) + [
        {"step": k, "entropy/mean": 0.7 * 0.6 ** (k - 60), "acc/train": 0.5} for k in range(61, 90)
    ]
    full, _ = run(rows)
    assert full  # the tail collapses: drop (flat accuracy) and floor events
    a = CollapseDetector(DetectorConfig(), 200)
    first = [e for r in rows[:62] for e in a.observe(r)]
    b = CollapseDetector(DetectorConfig(), 200)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    rest_a = [e for r in rows[62:] for e in a.observe(r)]
    rest_b = [e for r in rows[62:] for e in b.observe(r)]
    assert rest_a == rest_b and first + rest_b == full
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match="state"):
        b.load_state_dict({"step": 1})


def test_state_from_before_the_repetition_rule_loads_with_it_armed() -> None:
    rep = [{"step": k, "gen/repetition": 0.05 + 0.03 * max(0, k - 10)} for k in range(1, 30)]
    det = CollapseDetector(DetectorConfig(), total_steps=200)
    for row in rep[:10]:
        det.observe(row)
    state = det.state_dict()
    del state["rules"]["repetition_rise"]  # a checkpoint written before the rule existed
    again = CollapseDetector(DetectorConfig(), total_steps=200)
    again.load_state_dict(state)
    assert fired([e for row in rep[10:] for e in again.observe(row)]) == [(17, "repetition_rise")]


def _blip_and_fall() -> list[dict]:
    """entropy 1.0 for 3 steps, a one-batch dip to 0.2 at step 4, back to 1.0, then a sustained
    fall to 0.3 from step 8; accuracy flat at 0.5."""
    hs = [1.0, 1.0, 1.0, 0.2, 1.0, 1.0, 1.0, 0.3, 0.3, 0.3]
    return [{"step": k, "entropy/mean": h, "acc/train": 0.5} for k, h in enumerate(hs, start=1)]


def test_smoothing_ignores_a_one_batch_dip_and_delays_a_real_fall() -> None:
    raw, _ = run(_blip_and_fall(), entropy_floor_enabled=False, cooldown_steps=0, rearm_steps=1)
    # as logged: the dip is an 80% drop from the peak 1.0, the step after it a 400% rise (the
    # pattern of the SmolLM2 runs' false alarms); the fall fires again at step 8
    assert fired(raw) == [(4, "entropy_drop"), (5, "entropy_explosion"), (8, "entropy_drop")]
    smooth, _ = run(_blip_and_fall(), smooth_steps=3, entropy_floor_enabled=False)
    # 3-step means: step 4 (1 + 1 + 0.2) / 3 = 0.733, a 27% drop (under 50%); the fall:
    # step 8 (1 + 1 + 0.3) / 3 = 0.767, step 9 0.533 (47%), step 10 0.3 (70% < peak 1.0)
    assert fired(smooth) == [(10, "entropy_drop")]
    assert smooth[0].values["entropy"] == pytest.approx(0.3, abs=1e-12)
    assert "(1 -> 0.3 nats, 3-step means)" in smooth[0].message
    assert "step means" not in raw[0].message


def test_smoothing_state_round_trips_and_old_states_load() -> None:
    rows = _blip_and_fall()
    cfg = DetectorConfig(smooth_steps=3, entropy_floor_enabled=False)
    full = CollapseDetector(cfg, 200)
    whole = [e for r in rows for e in full.observe(r)]
    a = CollapseDetector(cfg, 200)
    for r in rows[:8]:
        a.observe(r)
    state = json.loads(json.dumps(a.state_dict()))
    assert state["raw"]["entropy/mean"] == [1.0, 1.0, 0.3]
    b = CollapseDetector(cfg, 200)
    b.load_state_dict(state)
    assert [e for r in rows[8:] for e in b.observe(r)] == whole
    del state["raw"]  # a checkpoint from before smoothing: the means restart from the next step
    old = CollapseDetector(cfg, 200)
    old.load_state_dict(state)
    # step 9's mean is its own 0.3 alone: 70% under the window's peak 1.0, a step earlier
    assert fired([e for r in rows[8:] for e in old.observe(r)]) == [(9, "entropy_drop")]
    with pytest.raises(ValueError, match="smooth_steps must be an int >= 1"):
        DetectorConfig(smooth_steps=0)


def test_a_step_without_entropy_mean_is_read_from_entropy_rollout() -> None:
    # DAPO once every group agrees: no update, no entropy/mean; the sampler's entropy remains
    rows = [{"step": 1, "entropy/mean": 1.0, "acc/train": 0.5},
            {"step": 2, "entropy/rollout": 0.01, "acc/train": 0.5}]  # fmt: skip
    events, _ = run(rows, total_steps=10)
    assert fired(events) == [(2, "entropy_drop"), (2, "entropy_floor")]
    assert events[0].values["entropy"] == 0.01
    # both present: entropy/mean is the one read
    both = [rows[0], {**rows[1], "entropy/mean": 0.9}]
    assert run(both, total_steps=10)[0] == []


def test_the_floor_message_says_when_its_value_is_a_mean() -> None:
    rows = [{"step": k, "entropy/mean": 0.01} for k in (1, 2)]
    [ev] = run(rows, total_steps=10, smooth_steps=2)[0]
    assert ev.rule == "entropy_floor" and "0.01 nats (2-step mean) is under the floor" in ev.message
