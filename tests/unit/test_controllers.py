"""Tests for entropy_rl.control.controllers: hand-worked updates, schedules, a simulated plant."""

from __future__ import annotations

import math

import pytest

from entropy_rl.control.controllers import (
    AdaptiveEntropyCoef,
    FixedEntropyBonus,
    NoController,
    PIEntropyController,
    TargetSchedule,
    make_controller,
)


def m(h: float) -> dict[str, float]:
    return {"entropy/mean": h}


def test_fixed_and_none() -> None:
    c = FixedEntropyBonus(2e-3)
    assert c.update(1, m(0.5)) == {"control/entropy_coef": 2e-3}
    assert c.entropy_coef == 2e-3 and c.eps_high is None
    n = NoController()
    assert n.update(1, {}) == {} and n.entropy_coef is None and n.eps_high is None
    with pytest.raises(ValueError, match="coef"):
        FixedEntropyBonus(-1e-3)


def test_adaptive_hand_worked() -> None:
    c = AdaptiveEntropyCoef(target=0.2, delta=1e-4, c_max=3e-4)
    assert c.entropy_coef == 0.0
    # (measured H, applied alpha_k = c_k * [H < 0.2], c_{k+1})
    expected = [
        (0.3, 0.0, 0.0),  # above target: no bonus, c = max(0 - 1e-4, 0) = 0
        (0.1, 0.0, 1e-4),  # below: alpha = c_k = 0, c rises by delta
        (0.1, 1e-4, 2e-4),
        (0.1, 2e-4, 3e-4),
        (0.1, 3e-4, 3e-4),  # c_{k+1} = min(4e-4, c_max 3e-4)
        (0.25, 0.0, 2e-4),  # above: bonus off, c falls by delta
        (0.2, 0.0, 2e-4),  # exactly at target: bonus off, c unchanged
        (0.1, 2e-4, 3e-4),
    ]
    for step, (h, alpha, c_next) in enumerate(expected, start=1):
        out = c.update(step, m(h))
        assert out == {
            "control/entropy_coef": pytest.approx(alpha, abs=1e-15),
            "control/target_entropy": 0.2,
        }
        assert c.entropy_coef == pytest.approx(alpha, abs=1e-15)
        assert c.c == pytest.approx(c_next, abs=1e-15)


def test_adaptive_follows_a_schedule_and_needs_entropy() -> None:
    c = AdaptiveEntropyCoef(target=TargetSchedule.linear(0.6, 0.2, 100), c_init=1e-3)
    # step 50: target 0.4; H = 0.5 is above it -> no bonus
    assert c.update(50, m(0.5)) == {"control/entropy_coef": 0.0, "control/target_entropy": 0.4}
    # step 0: target 0.6; H = 0.5 is below -> bonus c = 1e-3 - 1e-4 (lowered at step 50)
    assert c.update(0, m(0.5))["control/entropy_coef"] == pytest.approx(9e-4, abs=1e-15)
    with pytest.raises(ValueError, match="entropy/mean"):
        c.update(1, {"acc/train": 0.5})
    with pytest.raises(ValueError, match="c_init"):
        AdaptiveEntropyCoef(c_init=1.0)


def test_schedules_endpoints_and_midpoints() -> None:
    lin = TargetSchedule.linear(0.8, 0.4, 100)
    assert (lin(0), lin(50), lin(100), lin(150), lin(-5)) == pytest.approx(
        (0.8, 0.6, 0.4, 0.4, 0.8)
    )
    cos = TargetSchedule.cosine(1.0, 0.2, 100)
    assert cos(0) == pytest.approx(1.0) and cos(100) == pytest.approx(0.2)
    assert cos(50) == pytest.approx(0.6)  # midpoint = mean of the endpoints
    # quarter: 0.2 + 0.8 * (1 + cos(pi / 4)) / 2 = 0.2 + 0.8 * 0.853553 = 0.882843
    assert cos(25) == pytest.approx(0.2 + 0.8 * (1 + math.sqrt(0.5)) / 2, abs=1e-12)
    held = TargetSchedule.linear(0.8, 0.4, 100, hold_frac=0.5)
    # held at 0.8 for f <= 0.5, then g = (f - 0.5) / 0.5: f = 0.75 -> g = 0.5 -> 0.6
    assert (held(40), held(50), held(75), held(100)) == pytest.approx((0.8, 0.8, 0.6, 0.4))
    pw = TargetSchedule.piecewise([(0.2, 1.0), (0.5, 0.4), (1.0, 0.3)], 10)
    # before 0.2 -> 1.0; f = 0.35 -> 1.0 + (0.4 - 1.0) * 0.5 = 0.7; f = 0.75 -> 0.35
    assert (pw(0), pw(2), pw(3.5), pw(5), pw(7.5), pw(10)) == pytest.approx(
        (1.0, 1.0, 0.7, 0.4, 0.35, 0.3)
    )
    assert TargetSchedule.constant(0.3)(12345) == 0.3


def test_schedule_from_dict_and_validation() -> None:
    s = TargetSchedule.from_dict({"kind": "cosine", "start": 0.6, "end": 0.2}, total_steps=40)
    assert s == TargetSchedule.cosine(0.6, 0.2, 40)
    assert TargetSchedule.from_dict({"kind": "constant", "value": 0.25})(7) == 0.25
    pw = TargetSchedule.from_dict(
        {"kind": "piecewise", "points": [[0, 0.5], [1, 0.1]]}, total_steps=2
    )
    assert pw(1) == pytest.approx(0.3)
    bad = [
        ({"kind": "linear", "start": 0.6, "end": 0.2}, "total_steps"),
        ({"kind": "sigmoid"}, "kind"),
        ({"kind": "linear", "start": 0.6, "end": 0.2, "total_steps": 5, "tau": 1}, "tau"),
        ({"kind": "linear", "start": -0.1, "end": 0.2, "total_steps": 5}, "start"),
        ({"kind": "cosine", "start": 1, "end": 0, "total_steps": 5, "hold_frac": 1.0}, "hold"),
        ({"kind": "piecewise", "points": [[0.5, 1.0], [0.5, 0.2]], "total_steps": 5}, "increasing"),
        ({"kind": "piecewise", "points": [[1.5, 1.0]], "total_steps": 5}, r"\[0, 1\]"),
    ]
    for d, match in bad:
        with pytest.raises(ValueError, match=match):
            TargetSchedule.from_dict(d)


def test_pi_hand_worked_entropy_coef() -> None:
    c = PIEntropyController(0.5, kp=0.1, ki=0.01)  # init 0, bounds [0, 0.05]
    assert c.entropy_coef == 0.0 and c.eps_high is None
    # H = 0.3: e = 0.2, I = 0.2, u = 0.1 * 0.2 + 0.01 * 0.2 = 0.022
    assert c.update(1, m(0.3)) == {
        "control/entropy_coef": pytest.approx(0.022, abs=1e-15),
        "control/target_entropy": 0.5,
    }
    # H = 0.4: e = 0.1, I = 0.3, u = 0.01 + 0.003 = 0.013
    assert c.update(2, m(0.4))["control/entropy_coef"] == pytest.approx(0.013, abs=1e-15)
    # H = 0.6: e = -0.1, I = 0.2, u = -0.01 + 0.002 < 0 -> clamped to 0
    assert c.update(3, m(0.6))["control/entropy_coef"] == 0.0
    assert c.integral == pytest.approx(0.2, abs=1e-15)


def test_pi_hand_worked_eps_high() -> None:
    c = PIEntropyController(0.5, actuator="eps_high")  # kp 1, ki 0.1, init 0.28, [0.2, 1]
    assert c.eps_high == 0.28 and c.entropy_coef is None
    # H = 0.45: e = 0.05, I = 0.05, u = 0.28 + 0.05 + 0.005 = 0.335
    out = c.update(1, m(0.45))
    assert out == {
        "control/eps_high": pytest.approx(0.335, abs=1e-12),
        "control/target_entropy": 0.5,
    }


def test_pi_hand_worked_eps_both_bounds() -> None:
    c = PIEntropyController(0.5, actuator="eps")  # kp -0.5, ki -0.05, init 0.2, [0.02, 0.3]
    assert c.eps_high == c.eps_low == 0.2 and c.entropy_coef is None
    # H = 0.4 under the target: e = 0.1, I = 0.1, u = 0.2 - 0.05 - 0.005 = 0.145 (narrower)
    out = c.update(1, m(0.4))
    assert out == {
        "control/eps_high": pytest.approx(0.145, abs=1e-12),
        "control/eps_low": pytest.approx(0.145, abs=1e-12),
        "control/target_entropy": 0.5,
    }
    assert c.eps_high == c.eps_low == pytest.approx(0.145, abs=1e-12)
    # far under: e = 1.0, I = 1.1, u = 0.2 - 0.5 - 0.055 < 0.02 -> the floor 0.02
    assert c.update(2, m(-0.5))["control/eps_low"] == 0.02
    assert c.integral == pytest.approx(1.1)  # inside the anti-windup range [-2, 3.6]
    # above the target widens it: H = 1.0, e = -0.5, I = 0.6, u = 0.2 + 0.25 - 0.03 = 0.42
    # -> the ceiling 0.3
    assert c.update(3, m(1.0))["control/eps_high"] == 0.3
    with pytest.raises(ValueError, match="eps out_min must be > 0"):
        PIEntropyController(0.5, actuator="eps", out_min=0.0)


def _run_plant(ctrl: PIEntropyController, *, gain: float, drift: float, steps: int) -> list[float]:
    """Plant H_{k+1} = H_k - drift + gain * u; the value set at step k acts one step later
    (the trainer measures entropy inside the update). Returns |H_k - target_k| per step."""
    h, applied, errs = 0.8, ctrl.output, []
    for k in range(steps):
        errs.append(abs(ctrl.schedule(k) - h))
        ctrl.update(k, m(h))
        offset = ctrl.init if ctrl.actuator == "eps_high" else 0.0
        h = h - drift + gain * (applied - offset)
        applied = ctrl.output
    return errs


@pytest.mark.parametrize(("gain", "tol"), [(0.3, 0.025), (1.0, 0.002), (3.0, 0.002), (10.0, 0.006)])
def test_pi_tracks_linear_schedule_on_simulated_plant(gain: float, tol: float) -> None:
    # target 0.8 -> 0.4 over 300 steps (slope -0.00133/step) against a drift of 0.005/step:
    # holding the ramp needs u = (0.005 - 0.00133) / gain; default gains, settling 60 steps
    ctrl = PIEntropyController(TargetSchedule.linear(0.8, 0.4, 300))
    errs = _run_plant(ctrl, gain=gain, drift=0.005, steps=300)
    assert max(errs[60:]) < tol
    # without the integral term a proportional controller keeps a steady-state error:
    # at gain 1 it settles near (0.005 - 0.00133) / (0.1 * 1) = 0.0367 below the target
    p_only = PIEntropyController(TargetSchedule.linear(0.8, 0.4, 300), ki=0.0)
    assert max(_run_plant(p_only, gain=gain, drift=0.005, steps=300)[60:]) > tol


def test_pi_tracks_with_eps_high_actuator() -> None:
    # plant: entropy responds to eps_high - 0.28 with gain 0.1 per unit per step
    ctrl = PIEntropyController(TargetSchedule.linear(0.8, 0.4, 300), actuator="eps_high")
    errs = _run_plant(ctrl, gain=0.1, drift=0.005, steps=300)
    assert max(errs[60:]) < 0.002


def test_pi_anti_windup() -> None:
    c = PIEntropyController(1.0, kp=0.1, ki=0.01)  # bounds [0, 0.05], init 0
    for k in range(200):  # unreachable target: error +1 for 200 steps
        c.update(k, m(0.0))
    assert c.entropy_coef == 0.05
    # integral clamped at (out_max - init) / ki = 0.05 / 0.01 = 5, not 200
    assert c.integral == pytest.approx(5.0)
    # entropy overshoots: e = -0.2 -> I = 4.8, u = 0.1 * (-0.2) + 0.01 * 4.8 = 0.028 < 0.05
    assert c.update(200, m(1.2))["control/entropy_coef"] == pytest.approx(0.028, abs=1e-12)
    limited = PIEntropyController(1.0, kp=0.0, ki=0.001, integral_limit=3.0)
    for k in range(10):
        limited.update(k, m(0.0))
    assert limited.integral == 3.0 and limited.entropy_coef == pytest.approx(0.003)


def test_pi_validation() -> None:
    with pytest.raises(ValueError, match="actuator"):
        PIEntropyController(0.5, actuator="temperature")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init"):
        PIEntropyController(0.5, init=0.5)
    with pytest.raises(ValueError, match="out_min"):
        PIEntropyController(0.5, out_min=-0.1)
    with pytest.raises(ValueError, match="kp"):
        PIEntropyController(0.5, kp=math.nan)


def test_state_round_trip() -> None:
    sched = TargetSchedule.cosine(0.7, 0.3, 50)
    for make in (
        lambda: AdaptiveEntropyCoef(target=sched),
        lambda: PIEntropyController(sched),
        lambda: PIEntropyController(sched, actuator="eps_high"),
    ):
        a = make()
        for k in range(10):
            a.update(k, m(0.6 - 0.02 * k))
        b = make()
        b.load_state_dict(a.state_dict())
        for k in range(10, 20):
            assert a.update(k, m(0.6 - 0.02 * k)) == b.update(k, m(0.6 - 0.02 * k))
        assert (a.entropy_coef, a.eps_high) == (b.entropy_coef, b.eps_high)
        with pytest.raises(ValueError, match="state"):
            b.load_state_dict({})


def test_make_controller() -> None:
    assert isinstance(make_controller("none", total_steps=10), NoController)
    assert make_controller("fixed", coef=1e-3).entropy_coef == 1e-3
    ad = make_controller(
        "adaptive", target={"kind": "linear", "start": 0.5, "end": 0.1}, total_steps=4
    )
    assert isinstance(ad, AdaptiveEntropyCoef)
    assert ad.update(2, m(1.0))["control/target_entropy"] == pytest.approx(0.3)
    pi = make_controller(
        "target",
        schedule={"kind": "cosine", "start": 0.6, "end": 0.2},
        actuator="eps_high",
        total_steps=100,
    )
    assert isinstance(pi, PIEntropyController) and pi.eps_high == 0.28
    assert pi.update(50, m(0.4))["control/target_entropy"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="valid kinds"):
        make_controller("pid")
    with pytest.raises(ValueError, match="unknown arguments"):
        make_controller("fixed", coef=1e-3, target=0.2)
    with pytest.raises(ValueError, match="coef"):
        make_controller("fixed")
    with pytest.raises(ValueError, match="total_steps"):
        make_controller("target", schedule={"kind": "linear", "start": 0.6, "end": 0.2})
