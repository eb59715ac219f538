"""Tests for entropy_rl.control.controllers: hand-worked updates, schedules, a simulated plant."""

from __future__ import annotations

import math
import random

import pytest

from entropy_rl.control.controllers import (
    CONTROLLER_KINDS,
    SETTINGS,
    AdaptiveEntropyCoef,
    EntroPICController,
    EntropyRateController,
    FixedEntropyBonus,
    NoController,
    PIEntropyController,
    TargetSchedule,
    controller_settings,
    loss_overrides,
    make_controller,
    require_settings,
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
        lambda: EntropyRateController(sched),
        lambda: EntroPICController(sched),
    ):
        a = make()
        for k in range(10):
            a.update(k, m(0.6 - 0.02 * k))
        b = make()
        b.load_state_dict(a.state_dict())
        for k in range(10, 20):
            assert a.update(k, m(0.6 - 0.02 * k)) == b.update(k, m(0.6 - 0.02 * k))
        assert (a.entropy_coef, a.eps_high) == (b.entropy_coef, b.eps_high)
        assert a.loss_overrides() == b.loss_overrides()
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
    rate = make_controller(
        "rate", schedule={"kind": "linear", "start": 1.5, "end": 0.5}, total_steps=100
    )
    assert isinstance(rate, EntropyRateController) and rate.eps_low == rate.eps_high == 0.2
    ent = make_controller("entropic", target=1.0, kp=2.0)
    assert isinstance(ent, EntroPICController) and ent.kp == 2.0
    assert loss_overrides(ent) == {"pos_weight": 1.0, "neg_weight": 1.0}  # alpha 0 at first
    assert loss_overrides(pi) == {"eps_high": 0.28} and loss_overrides(object()) == {}


# --------------------------------------------------------------------------- EntroPIC


def test_entropic_hand_worked() -> None:
    c = EntroPICController(1.0)  # kp 1, ki 0.01, |alpha| <= 1
    assert c.loss_overrides() == {"pos_weight": 1.0, "neg_weight": 1.0}
    assert (c.entropy_coef, c.eps_high, c.eps_low) == (None, None, None)
    # H = 1.3 above the target: e = H - target = 0.3, I = 0.3, alpha = 0.3 + 0.003 = 0.303
    assert c.update(1, m(1.3)) == {
        "control/entropic_alpha": pytest.approx(0.303, abs=1e-12),
        "control/target_entropy": 1.0,
    }
    assert c.loss_overrides() == pytest.approx({"pos_weight": 1.303, "neg_weight": 0.697})
    # H = 0.5 below: e = -0.5, I = -0.2, alpha = -0.5 - 0.002 = -0.502: positives down-weighted
    c.update(2, m(0.5))
    assert c.loss_overrides() == pytest.approx({"pos_weight": 0.498, "neg_weight": 1.502})
    # H = 3.0: e = 2, I = 1.8, alpha = 2.018 -> clamped to 1: weights (2, 0)
    assert c.update(3, m(3.0))["control/entropic_alpha"] == 1.0
    assert c.loss_overrides() == {"pos_weight": 2.0, "neg_weight": 0.0}


def test_entropic_anti_windup_and_schedule() -> None:
    c = EntroPICController(1.0, kp=1.0, ki=0.5)  # |I| <= alpha_max / ki = 2
    for k in range(10):  # e = +1 for 10 steps: I would be 10 without the clamp
        c.update(k, m(2.0))
    assert c.integral == 2.0 and c.alpha == 1.0
    # e = -0.5: I = 1.5, alpha = -0.5 + 0.75 = 0.25, off the bound at once
    # (unclamped: I = 9.5, alpha = -0.5 + 4.75 -> still pinned at 1)
    assert c.update(10, m(0.5))["control/entropic_alpha"] == pytest.approx(0.25, abs=1e-12)
    s = EntroPICController({"kind": "linear", "start": 1.4, "end": 0.8}, total_steps=10)
    # step 5: target 1.1; H = 1.1 -> e = 0 -> alpha 0
    assert s.update(5, m(1.1)) == {"control/entropic_alpha": 0.0, "control/target_entropy": 1.1}
    with pytest.raises(ValueError, match="alpha_max"):
        EntroPICController(1.0, alpha_max=1.5)
    with pytest.raises(ValueError, match="entropy/mean"):
        s.update(1, {})


# --------------------------------------------------------------------------- rate


def test_rate_hand_worked() -> None:
    # linear 1.5 -> 0.5 over 100 steps: scheduled change s = -0.01 per step
    c = EntropyRateController(TargetSchedule.linear(1.5, 0.5, 100))
    # eps: kp -0.5 * 3 = -1.5, ki -0.05 * 40 = -2, init 0.2, bounds [0.02, 0.2], beta 0.2
    assert (c.kp, c.ki, c.out_min, c.out_max, c.beta) == (-1.5, -2.0, 0.02, 0.2, 0.2)
    # step 0: no rate yet, the clip stays at init
    out = c.update(0, m(1.5))
    assert out == pytest.approx(
        {"control/eps_high": 0.2, "control/eps_low": 0.2, "control/target_entropy": 1.5,
         "control/target_rate": -0.01}, abs=1e-12
    )  # fmt: skip
    # step 1: d = -0.03, r = -0.03 (the first rate), e = -0.01 + 0.03 = 0.02, I = 0.02,
    # u = 0.2 - 1.5 * 0.02 - 2 * 0.02 = 0.13 (falling 3x too fast: narrower)
    out = c.update(1, m(1.47))
    assert out["control/entropy_rate"] == pytest.approx(-0.03, abs=1e-12)
    assert out["control/eps_low"] == pytest.approx(0.13, abs=1e-12)
    # step 2: d = -0.01, r = -0.03 + 0.2 * 0.02 = -0.026, e = 0.016, I = 0.036,
    # u = 0.2 - 0.024 - 0.072 = 0.104
    assert c.update(2, m(1.46))["control/eps_high"] == pytest.approx(0.104, abs=1e-12)
    # step 3: flat, d = 0, r = -0.026 + 0.2 * 0.026 = -0.0208, e = 0.0108, I = 0.0468,
    # u = 0.2 - 0.0162 - 0.0936 = 0.0902
    assert c.update(3, m(1.46))["control/eps_high"] == pytest.approx(0.0902, abs=1e-12)
    with pytest.raises(ValueError, match="beta"):
        EntropyRateController(0.5, beta=0.0)
    with pytest.raises(ValueError, match="eps or eps_high"):
        EntropyRateController(0.5, actuator="entropy_coef")  # type: ignore[arg-type]


def test_rate_anti_windup_leaves_the_floor_when_the_error_turns() -> None:
    # constant target (slope 0), integral only, no smoothing: u = 0.2 - 3 * I,
    # I clamped to [0, (0.02 - 0.2) / -3] = [0, 0.06]
    c = EntropyRateController(1.0, kp=0.0, ki=-3.0, beta=1.0)
    c.update(0, m(1.0))
    # d = -0.1 twice: e = +0.1, I = 0.1 -> 0.06 (clamped), u = 0.2 - 0.18 = 0.02 (the floor)
    assert c.update(1, m(0.9))["control/eps_low"] == pytest.approx(0.02, abs=1e-12)
    assert c.update(2, m(0.8))["control/eps_low"] == pytest.approx(0.02, abs=1e-12)
    assert c.integral == pytest.approx(0.06, abs=1e-12)
    # entropy turns up by 0.01: e = -0.01, I = 0.05, u = 0.2 - 0.15 = 0.05, off the floor at
    # once (unclamped, I = 0.19 would hold the floor for 14 more such steps)
    assert c.update(3, m(0.81))["control/eps_low"] == pytest.approx(0.05, abs=1e-12)


def _run_multiplicative_plant(ctrl, *, h0: float, steps: int, noise: float = 0.0) -> list[float]:
    """Plant H_{k+1} = H_k * (1 - g * u_k) with g = 0.1: entropy only falls, faster under a wider
    clip (u = 0.2 costs 3% a step, the floor 0.02 0.2%). The value set at step k acts one step
    later; ``noise`` is the std of a measurement error (other prompts each step).
    Returns the clip width applied at each step."""
    rng = random.Random(0)
    h, applied, widths = h0, ctrl.output, []
    for k in range(steps):
        ctrl.update(k, m(h + rng.gauss(0.0, noise)))
        widths.append(applied)
        h *= 1.0 - 0.1 * applied
        applied = ctrl.output
    return widths


def test_level_controller_parks_where_rate_controller_tracks() -> None:
    # entropy starts at 0.9, under a cosine target 1.4 -> 0.8, and can only fall: the level is
    # out of reach, so the level controller sits at its floor all run (a fixed 0.02 clip)
    sched = TargetSchedule.cosine(1.4, 0.8, 100)
    level = PIEntropyController(sched, actuator="eps")
    assert all(u == 0.02 for u in _run_multiplicative_plant(level, h0=0.9, steps=100)[2:])
    # the rate controller follows the schedule's slope instead (up to 0.0094 nats a step
    # mid-run, which needs u = 0.0094 / (0.1 H) ~ 0.13 at H ~ 0.7)
    rate = EntropyRateController(sched, actuator="eps")
    widths = _run_multiplicative_plant(rate, h0=0.9, steps=100)
    h, changes = 0.9, []
    for u in widths:
        changes.append(-h * 0.1 * u)
        h *= 1.0 - 0.1 * u
    slope_err = [abs(changes[k] - (sched(k + 1) - sched(k))) for k in range(15, 95)]
    assert sum(slope_err) / len(slope_err) < 0.0015
    assert sum(0.02 < u < 0.2 for u in widths[15:95]) >= 70  # off the bounds


@pytest.mark.parametrize(
    ("noise", "tol", "touches"), [(0.0, 0.01, 0), (0.01, 0.03, 3), (0.035, 0.04, 15)]
)
def test_rate_controller_tracks_the_slope_and_leaves_the_floor(
    noise: float, tol: float, touches: int
) -> None:
    # linear 1.5 -> 0.8 over 100 steps: -0.007 a step; the plant falls 3% a step at u = 0.2,
    # so tracking needs u = 0.07 / H: 0.047 at the start, 0.0875 at the end (inside the bounds)
    rate = EntropyRateController(TargetSchedule.linear(1.5, 0.8, 100))
    widths = _run_multiplicative_plant(rate, h0=1.5, steps=100, noise=noise)
    h = 1.5
    for u in widths:
        h *= 1.0 - 0.1 * u
    assert h == pytest.approx(0.8, abs=tol)  # where the scheduled path ends
    # the first steps overshoot to the floor (u starts at 0.2, 4x too wide); after that the
    # clip stays inside its bounds (noise may touch one: 0.035 nats is a digit-sum batch's
    # step-to-step wander) and widens as H falls (u ~ 1 / H). Without the integral (ki = 0)
    # the same plant ends near 0.22 nats and sits at a bound on 14-24 of these steps.
    assert sum(u in (0.02, 0.2) for u in widths[15:]) <= touches
    assert sum(widths[80:]) / 20 > sum(widths[20:40]) / 20 + 0.01


# --------------------------------------------------------------------------- settings


def test_each_kind_states_its_settings_from_construction_on() -> None:
    sched = {"kind": "linear", "start": 1.5, "end": 0.5}
    expected = {
        "none": ({}, {}),
        "fixed": ({"coef": 1e-3}, {"entropy_coef": 1e-3}),
        "adaptive": ({}, {"entropy_coef": 0.0}),
        "target": ({"schedule": 1.0}, {"entropy_coef": 0.0}),
        "rate": ({"schedule": sched}, {"eps_low": 0.2, "eps_high": 0.2}),
        "entropic": ({"target": 1.0}, {"pos_weight": 1.0, "neg_weight": 1.0}),
    }
    assert set(expected) == set(CONTROLLER_KINDS)
    for kind, (kwargs, first) in expected.items():
        c = make_controller(kind, total_steps=10, **kwargs)
        assert controller_settings(c) == first, kind
        c.update(1, m(3.0))
        c.update(2, m(0.1))
        assert set(controller_settings(c)) == set(first), kind  # values move, names do not
        assert set(first) <= set(SETTINGS)
    eps_high = PIEntropyController(1.0, actuator="eps_high")
    assert eps_high.settings() == {"eps_high": 0.28} and eps_high.eps_low is None


def test_controller_settings_reads_duck_types_and_rejects_unknown_names() -> None:
    class Duck:
        entropy_coef, eps_high = 0.5, None

        def loss_overrides(self) -> dict[str, float]:
            return {"pos_weight": 2}

    assert controller_settings(Duck()) == {"entropy_coef": 0.5, "pos_weight": 2.0}
    assert controller_settings(None) == {} and controller_settings(object()) == {}

    class Typo(NoController):
        def settings(self) -> dict[str, float]:
            return {"eps_hihg": 0.3}

    with pytest.raises(ValueError, match=r"Typo sets \['eps_hihg'\], which no host knows"):
        controller_settings(Typo())


def test_require_settings_names_source_host_and_what_it_can() -> None:
    require_settings({"eps_high": 0.2}, ("eps_high", "eps_low"), source="x", host="y")
    with pytest.raises(ValueError) as info:
        require_settings(
            {"eps_low": 0.2, "eps_high": 0.2},
            ("entropy_coef",),
            source="preset 'rate-clip'",
            host="TRL's loss_type='cispo'",
            fix="use loss_type='dapo'",
        )
    assert str(info.value) == (
        "preset 'rate-clip' sets eps_low, eps_high, which TRL's loss_type='cispo' cannot express"
        " (it applies entropy_coef); use loss_type='dapo'"
    )
