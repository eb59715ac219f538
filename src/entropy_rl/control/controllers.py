"""Entropy controllers: decide the entropy bonus, the clip or the loss's token weights each step.

Every controller has ``update(step, metrics) -> dict`` (called once per RL step with that
step's metrics, returning ``control/*`` metrics), ``settings()`` and ``state_dict`` /
``load_state_dict`` for resume.

``settings()`` is the one way a controller says what it sets: ``{name: value}`` for the next
update, names from ``SETTINGS`` (clip bounds on both sides, the bonus coefficient, the loss's
token weights, the advantage shaping). A setting it does not return keeps the host's configured
value. Its keys are fixed at construction (``update`` changes values, never names), so a host
(our trainer, TRL's trainer, verl's registered loss) checks at start that it can express every
one of them and refuses in one line otherwise. ``entropy_coef``, ``eps_high``, ``eps_low`` and
``loss_overrides()`` are read-only views of ``settings()``. The measured entropy is ``metrics["entropy/mean"]``: the mean
token entropy of the step's rollout.

Timing: the value read after ``update(step, ...)`` is applied to the next policy update. When
the trainer measures the rollout's entropy inside the update (the usual case), the controller
therefore acts one step late; every controller here tolerates that.

``make_controller(kind, **kwargs)`` builds one from a config: kinds ``none``, ``fixed``,
``adaptive``, ``target``, ``rate`` and ``entropic``. Target schedules live in
:mod:`entropy_rl.control.schedules` (``TargetSchedule`` is re-exported here).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from entropy_rl.control.schedules import TargetSchedule, as_schedule, finite

__all__ = [
    "ACTUATOR_DEFAULTS",
    "CONTROLLER_KINDS",
    "LOSS_SETTINGS",
    "SETTINGS",
    "AdaptiveEntropyCoef",
    "EntroPICController",
    "EntropyController",
    "EntropyRateController",
    "FixedEntropyBonus",
    "NoController",
    "PIEntropyController",
    "TargetSchedule",
    "controller_settings",
    "loss_overrides",
    "make_controller",
    "require_settings",
]

ENTROPY_KEY = "entropy/mean"

SETTINGS: dict[str, str] = {
    "entropy_coef": "coefficient c of the loss term -c * agg(H) (the entropy bonus)",
    "eps_low": "lower clip range: the ratio's floor is 1 - eps_low",
    "eps_high": "upper clip range: the ratio's ceiling is 1 + eps_high",
    "pos_weight": "loss weight of confident positive-advantage tokens (the entropic loss)",
    "neg_weight": "loss weight of confident negative-advantage tokens (the entropic loss)",
    "entropy_adv_alpha": "advantage shaping A + min(alpha * H_old, |A| / kappa) (Cheng et al.)",
}
"""Every setting a controller may decide, with what it means (the same in every host)."""
LOSS_SETTINGS = ("eps_low", "eps_high", "pos_weight", "neg_weight")
"""The settings that are keyword hyperparameters of the policy loss (``algo.loss_kwargs``)."""


def _measured(metrics: Mapping[str, float], key: str) -> float:
    if key not in metrics:
        raise ValueError(f"controller needs the measured entropy {key!r} in metrics")
    return finite(key, metrics[key])


def _state_floats(state: Mapping[str, Any], keys: tuple[str, ...], what: str) -> list[float]:
    """``float(state[k])`` for each key; a ValueError naming ``what`` when one is missing or
    not a number (a state dict of another controller, or a damaged one)."""
    try:
        return [float(state[k]) for k in keys]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not {what} state dict: {exc!r}") from exc


# --------------------------------------------------------------------------- controllers


class EntropyController:
    """Base class and the ``none`` kind: controls nothing, logs nothing."""

    def settings(self) -> dict[str, float]:
        """What this controller sets for the next update, ``{name: value}`` with names from
        ``SETTINGS``; the same keys from construction on. ``{}`` = nothing."""
        return {}

    @property
    def entropy_coef(self) -> float | None:
        """``settings()["entropy_coef"]``; None = the configured value."""
        return self.settings().get("entropy_coef")

    @property
    def eps_high(self) -> float | None:
        """``settings()["eps_high"]``; None = the configured value."""
        return self.settings().get("eps_high")

    @property
    def eps_low(self) -> float | None:
        """``settings()["eps_low"]``; None = the configured value."""
        return self.settings().get("eps_low")

    def loss_overrides(self) -> dict[str, float]:
        """The policy-loss hyperparameters among ``settings()`` (``LOSS_SETTINGS``: the clip
        bounds, EntroPIC's ``pos_weight`` / ``neg_weight``); ``{}`` = none."""
        return {k: v for k, v in self.settings().items() if k in LOSS_SETTINGS}

    def update(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """Observe step ``step``'s metrics; return the ``control/*`` metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class NoController(EntropyController):
    """Kind ``none``: the trainer keeps its configured entropy_coef and eps_high."""


class FixedEntropyBonus(EntropyController):
    """Kind ``fixed``: a constant bonus coefficient c >= 0 (loss -= c * agg(H)).

    Fragile (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs"): 1e-4..1e-3
    does little, 1e-2 made entropy explode. Kept as the baseline the adaptive and target
    controllers are compared with.
    """

    def __init__(self, coef: float) -> None:
        self.coef = finite("coef", coef, low=0.0)

    def settings(self) -> dict[str, float]:
        return {"entropy_coef": self.coef}

    def update(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        return {"control/entropy_coef": self.coef}


class AdaptiveEntropyCoef(EntropyController):
    """Kind ``adaptive``: Skywork-OR1's adaptive entropy control (He et al. 2025).

    With e_k the step's measured entropy and H_target the target:
        applied coefficient  alpha_k = c_k * 1[e_k < H_target]
        c_{k+1} = clip(c_k + delta if e_k < H_target, c_k - delta if e_k > H_target, c_min, c_max)
    so the bonus is only on while entropy is under the target, and its strength ramps by
    ``delta`` per step. Defaults are the paper's (Skywork-OR1 report, sec. 4): target 0.2 nats,
    delta 1e-4, c in [0, 5e-3], c_0 = 0 (so the very first step adds no bonus).
    ``target`` may also be a :class:`TargetSchedule` (a target that moves over training,
    the open request TRL #5584). ``entropy_coef`` is 0 until the first update.
    """

    def __init__(
        self,
        *,
        target: float | TargetSchedule | Mapping[str, Any] = 0.2,
        delta: float = 1e-4,
        c_min: float = 0.0,
        c_max: float = 5e-3,
        c_init: float = 0.0,
        total_steps: int | None = None,
    ) -> None:
        self.schedule = as_schedule(target, total_steps)
        self.delta = finite("delta", delta, low=0.0)
        self.c_min = finite("c_min", c_min, low=0.0)
        self.c_max = finite("c_max", c_max, low=self.c_min)
        c0 = finite("c_init", c_init)
        if not self.c_min <= c0 <= self.c_max:
            raise ValueError(f"c_init must lie in [c_min, c_max] = [{c_min}, {c_max}], got {c0}")
        self.c = c0
        self.applied = 0.0

    def settings(self) -> dict[str, float]:
        return {"entropy_coef": self.applied}

    def update(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        h = _measured(metrics, ENTROPY_KEY)
        target = self.schedule(step)
        self.applied = self.c if h < target else 0.0
        if h < target:
            self.c = min(self.c + self.delta, self.c_max)
        elif h > target:
            self.c = max(self.c - self.delta, self.c_min)
        return {"control/entropy_coef": self.applied, "control/target_entropy": target}

    def state_dict(self) -> dict[str, Any]:
        return {"c": self.c, "applied": self.applied}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.c, self.applied = _state_floats(state, ("c", "applied"), "an AdaptiveEntropyCoef")


ACTUATOR_DEFAULTS: dict[str, dict[str, float]] = {
    # Entropy bonus. A 0.1-nat error asks for 0.01 at once; 0.05 is the ceiling. A fixed 1e-2
    # made entropy explode in Cui et al., but under feedback the coefficient falls as soon as
    # entropy passes the target. In a simulated plant H' = H - drift + g * c the gains track a
    # ramp for g from 0.3 to 10 nats per unit coefficient per step (tests/unit/test_controllers).
    "entropy_coef": {"kp": 0.1, "ki": 0.01, "out_min": 0.0, "out_max": 0.05, "init": 0.0},
    # Upper clip. 0.28 is DAPO's clip-higher; 0.2 (symmetric PPO) is the floor, 1.0 (ratio up to
    # 2, Clip-Cov's widened clip) the ceiling. The clip moves entropy far less per unit than the
    # bonus does, hence gains 10x larger.
    "eps_high": {"kp": 1.0, "ki": 0.1, "out_min": 0.2, "out_max": 1.0, "init": 0.28},
    # Both clip bounds, eps_low = eps_high = u: the width of the trust region. NEGATIVE gains:
    # entropy under its target narrows the clip. Measured on wordpick (README): a fixed
    # symmetric 0.1 held entropy at 2.38 nats vs 1.86 at 0.2, while raising eps_high lowered it.
    "eps": {"kp": -0.5, "ki": -0.05, "out_min": 0.02, "out_max": 0.3, "init": 0.2},
}


class PIEntropyController(EntropyController):
    """Kind ``target``: a PI controller that makes the rollout entropy follow a schedule.

    e_k = H_target(step) - H_k (H_k = ``entropy/mean`` of the step's rollout, nats)
    I_k = clamp(I_{k-1} + e_k) (anti-windup, below)
    u_k = clamp(init + kp * e_k + ki * I_k, out_min, out_max)

    u drives ``actuator``: ``"entropy_coef"`` (the bonus; ``eps_high`` stays the config's),
    ``"eps_high"`` (the upper clip; ``entropy_coef`` stays the config's) or ``"eps"`` (both clip
    bounds, eps_low = eps_high = u, with negative default gains: a narrower trust region when
    entropy is under its target). Defaults per actuator are in ``ACTUATOR_DEFAULTS``; the value
    is ``init`` until the first update.

    Anti-windup: I is clamped so that ki * I alone stays inside [out_min - init,
    out_max - init] (and |I| <= ``integral_limit`` when given). While the output is pinned at
    a bound the integral cannot grow past what that bound needs, so the output leaves the
    bound on the first step the error changes sign.

    Caveats for ``eps_high``: the clip is inert when updates are on-policy (ratio == 1: one
    epoch, one mini-batch), and the direction is not guaranteed. DAPO reports that raising
    eps_high raises entropy, but docs/experiments.md measured the opposite on a 1M-parameter
    model with large per-rollout updates. For such a plant pass negative ``kp`` and ``ki``.
    """

    def __init__(
        self,
        schedule: float | TargetSchedule | Mapping[str, Any],
        *,
        actuator: Literal["entropy_coef", "eps_high", "eps"] = "entropy_coef",
        kp: float | None = None,
        ki: float | None = None,
        out_min: float | None = None,
        out_max: float | None = None,
        init: float | None = None,
        integral_limit: float | None = None,
        total_steps: int | None = None,
    ) -> None:
        if actuator not in ACTUATOR_DEFAULTS:
            raise ValueError(
                f"actuator must be one of {sorted(ACTUATOR_DEFAULTS)}, got {actuator!r}"
            )
        d = ACTUATOR_DEFAULTS[actuator]
        self.schedule = as_schedule(schedule, total_steps)
        self.actuator = actuator
        self.kp = finite("kp", d["kp"] if kp is None else kp)
        self.ki = finite("ki", d["ki"] if ki is None else ki)
        self.out_min = finite("out_min", d["out_min"] if out_min is None else out_min)
        self.out_max = finite("out_max", d["out_max"] if out_max is None else out_max)
        self.init = finite("init", d["init"] if init is None else init)
        if actuator == "entropy_coef" and self.out_min < 0:
            raise ValueError(f"entropy_coef out_min must be >= 0, got {self.out_min}")
        if actuator in ("eps_high", "eps") and self.out_min <= 0:
            raise ValueError(f"{actuator} out_min must be > 0, got {self.out_min}")
        if not self.out_min <= self.init <= self.out_max:
            raise ValueError(
                f"need out_min <= init <= out_max, got {self.out_min}, {self.init}, {self.out_max}"
            )
        self.integral_limit = (
            None if integral_limit is None else finite("integral_limit", integral_limit, low=0.0)
        )
        self.integral = 0.0
        self.output = self.init

    def settings(self) -> dict[str, float]:
        sides = ("eps_low", "eps_high") if self.actuator == "eps" else (self.actuator,)
        return dict.fromkeys(sides, self.output)

    def _clamp_integral(self, value: float) -> float:
        if self.ki != 0.0:
            a, b = (self.out_min - self.init) / self.ki, (self.out_max - self.init) / self.ki
            value = min(max(value, min(a, b)), max(a, b))
        if self.integral_limit is not None:
            value = min(max(value, -self.integral_limit), self.integral_limit)
        return value

    def _pi_step(self, error: float) -> dict[str, float]:
        """One PI step on ``error``; returns the actuator's ``control/*`` metrics."""
        self.integral = self._clamp_integral(self.integral + error)
        raw = self.init + self.kp * error + self.ki * self.integral
        self.output = min(max(raw, self.out_min), self.out_max)
        return self._outputs()

    def _outputs(self) -> dict[str, float]:
        sides = ("eps_high", "eps_low") if self.actuator == "eps" else (self.actuator,)
        return {f"control/{k}": self.output for k in sides}

    def update(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        h = _measured(metrics, ENTROPY_KEY)
        target = self.schedule(step)
        return {**self._pi_step(target - h), "control/target_entropy": target}

    def state_dict(self) -> dict[str, Any]:
        return {"integral": self.integral, "output": self.output}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.integral, self.output = _state_floats(
            state, ("integral", "output"), "a PIEntropyController"
        )


# The rate controller's default gains are the level controller's (ACTUATOR_DEFAULTS) times
# these: a rate error of 0.01 nats per step counts like a level error of 0.03 nats, and the
# integral of the rate error (the drift from the scheduled path) 40x more than a level integral.
# Tuned for ``eps`` (kp -1.5, ki -2, beta 0.2) on the simulated plant H' = H (1 - g u),
# g 0.1-0.3, with measurement noise of 0.01-0.035 nats (a 16 x 16 digit-sum batch's entropy
# wanders by about 0.035 from step to step). Only the clip: at these scales the entropy bonus,
# a far stronger actuator, oscillates on plants the level controller handles.
RATE_KP_SCALE, RATE_KI_SCALE = 3.0, 40.0


class EntropyRateController(PIEntropyController):
    """Kind ``rate``: PI control of the RATE of entropy change to the schedule's slope.

    A level controller (kind ``target``) parks its actuator at a bound when the level is out
    of reach: where entropy falls below the schedule even under the narrowest clip, ``eps``
    sits at its floor and the controller is a fixed narrow clip in disguise. This one asks
    entropy to fall at the schedule's pace, whatever its level:

        s_k = H_target(k + 1) - H_target(k)          scheduled change per step (nats)
        d_k = H_k - H_{k-1}                          measured change (H = ``entropy/mean``)
        r_k = r_{k-1} + beta * (d_k - r_{k-1})       smoothed rate (EMA; r = d at the first)
        e_k = s_k - r_k                              rate error
        I_k = clamp(I_{k-1} + e_k),   u_k = clamp(init + kp * e_k + ki * I_k, out_min, out_max)

    The first step only records H (no rate yet; u stays ``init``). Actuator ``eps`` (both clip
    bounds, the default) or ``eps_high``; bounds and the anti-windup clamp are those of
    :class:`PIEntropyController`, except that ``eps`` widens at most to ``init`` (0.2) unless
    ``out_max`` says otherwise. Default gains are the level controller's gains
    times ``RATE_KP_SCALE`` = 3 and ``RATE_KI_SCALE`` = 40 (for ``eps``: kp = -1.5, ki = -2,
    so entropy falling 0.01 nats per step faster than scheduled narrows the clip by 0.015 at
    once and by 0.02 more for every 0.01 nats it has drifted below the scheduled path).

    Why it leaves the bounds: the integral of the rate error is the drift from the scheduled
    path, clamped so that ki * I alone stays inside the output range. Entropy that falls too
    fast pushes the clip to its floor; as soon as it falls slower than scheduled (the fall of
    a collapsing policy slows down by itself) e_k changes sign and the clip widens again,
    towards ``out_max`` if the policy stops moving. It limits how fast entropy falls; it does
    not hold a level: entropy below the target is not raised, and where the policy falls more
    slowly than scheduled the clip goes to ``out_max`` (for ``eps`` PPO's 0.2: never looser).
    ``beta`` trades noise for lag: per-step entropy differences compare different prompts.
    """

    def __init__(
        self,
        schedule: float | TargetSchedule | Mapping[str, Any],
        *,
        actuator: Literal["eps", "eps_high"] = "eps",
        kp: float | None = None,
        ki: float | None = None,
        out_min: float | None = None,
        out_max: float | None = None,
        init: float | None = None,
        integral_limit: float | None = None,
        beta: float = 0.2,
        total_steps: int | None = None,
    ) -> None:
        if actuator not in ("eps", "eps_high"):
            raise ValueError(f"the rate controller drives eps or eps_high, got {actuator!r}")
        d = ACTUATOR_DEFAULTS[actuator]
        kp = d["kp"] * RATE_KP_SCALE if kp is None else kp
        ki = d["ki"] * RATE_KI_SCALE if ki is None else ki
        if actuator == "eps" and out_max is None:
            out_max = d["init"] if init is None else init
        super().__init__(
            schedule, actuator=actuator, kp=kp, ki=ki, out_min=out_min, out_max=out_max,
            init=init, integral_limit=integral_limit, total_steps=total_steps,
        )  # fmt: skip
        self.beta = finite("beta", beta)
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {beta!r}")
        self.prev_entropy: float | None = None
        self.rate: float | None = None

    def update(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        h = _measured(metrics, ENTROPY_KEY)
        target = self.schedule(step)
        slope = self.schedule(step + 1) - target
        out = {"control/target_entropy": target, "control/target_rate": slope}
        if self.prev_entropy is None:
            self.prev_entropy = h
            return {**self._outputs(), **out}
        change, self.prev_entropy = h - self.prev_entropy, h
        self.rate = change if self.rate is None else self.rate + self.beta * (change - self.rate)
        return {**self._pi_step(slope - self.rate), **out, "control/entropy_rate": self.rate}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "prev_entropy": self.prev_entropy, "rate": self.rate}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        try:
            prev, rate = state["prev_entropy"], state["rate"]
            self.prev_entropy = None if prev is None else float(prev)
            self.rate = None if rate is None else float(rate)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an EntropyRateController state dict: {exc!r}") from exc


class EntroPICController(EntropyController):
    """Kind ``entropic``: EntroPIC (Yang et al. 2025, arXiv 2511.15248, "EntroPIC: Towards
    Stable Long-Term Training of LLMs via Entropy Stabilization with Proportional-Integral
    Control").

    PI control of entropy through the loss weights of positive- and negative-advantage tokens
    the policy is already confident about (the ``entropic`` policy loss weights tokens with
    pi_theta(o_t) > ``prob_threshold``, 0.95). With the error measured the authors' way round,
    e_k = H_k - H_target(step) (entropy ABOVE the target is positive):

        I_k     = clamp(I_{k-1} + e_k)                              (anti-windup, below)
        alpha_k = clamp(kp * e_k + ki * I_k, -alpha_max, alpha_max)
        pos_weight = 1 + alpha_k,    neg_weight = 1 - alpha_k       (``loss_overrides()``)

    Why this sign: pushing a confident token up lowers entropy, pushing it down raises it.
    Entropy above target -> alpha > 0 -> confident positive tokens reinforced harder and
    confident negative tokens penalised more gently -> entropy falls. Below target the reverse:
    positive samples down-weighted, negative ones up-weighted, and entropy rises.

    Defaults are the authors': kp = 1, ki = 0.01, |alpha| <= 1 (so both weights stay in
    [0, 2]); their target is 0.1 nats for Qwen3-8B sampled at temperature 0.6 (set yours from a
    baseline run's entropy). ``alpha`` is 0 (plain PPO weights) until the first update.

    Differences from the authors' verl code: (1) alpha is computed once per RL step from the
    rollout's ``entropy/mean`` and applied to the next update; theirs is recomputed per
    micro-batch from the entropy of the policy being updated. (2) Their integral is unbounded;
    ours is clamped so that ki * I alone stays in [-alpha_max, alpha_max] (and |I| <=
    ``integral_limit`` when given), so alpha leaves a bound on the first step the error changes
    sign. (3) The integral includes the current error (theirs adds it after computing alpha).
    """

    def __init__(
        self,
        target: float | TargetSchedule | Mapping[str, Any],
        *,
        kp: float = 1.0,
        ki: float = 0.01,
        alpha_max: float = 1.0,
        integral_limit: float | None = None,
        total_steps: int | None = None,
    ) -> None:
        self.schedule = as_schedule(target, total_steps)
        self.kp = finite("kp", kp)
        self.ki = finite("ki", ki)
        self.alpha_max = finite("alpha_max", alpha_max, low=0.0)
        if self.alpha_max > 1.0:
            raise ValueError(f"alpha_max must be <= 1 (so 1 - alpha >= 0), got {alpha_max}")
        self.integral_limit = (
            None if integral_limit is None else finite("integral_limit", integral_limit, low=0.0)
        )
        self.integral = 0.0
        self.alpha = 0.0

    def settings(self) -> dict[str, float]:
        return {"pos_weight": 1.0 + self.alpha, "neg_weight": 1.0 - self.alpha}

    def update(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        h = _measured(metrics, ENTROPY_KEY)
        target = self.schedule(step)
        error = h - target
        i = self.integral + error
        if self.ki != 0.0:
            bound = self.alpha_max / abs(self.ki)
            i = min(max(i, -bound), bound)
        if self.integral_limit is not None:
            i = min(max(i, -self.integral_limit), self.integral_limit)
        self.integral = i
        raw = self.kp * error + self.ki * self.integral
        self.alpha = min(max(raw, -self.alpha_max), self.alpha_max)
        return {"control/entropic_alpha": self.alpha, "control/target_entropy": target}

    def state_dict(self) -> dict[str, Any]:
        return {"integral": self.integral, "alpha": self.alpha}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.integral, self.alpha = _state_floats(
            state, ("integral", "alpha"), "an EntroPICController"
        )


# --------------------------------------------------------------------------- factory

_KINDS: dict[str, type[EntropyController]] = {
    "none": NoController,
    "fixed": FixedEntropyBonus,
    "adaptive": AdaptiveEntropyCoef,
    "target": PIEntropyController,
    "rate": EntropyRateController,
    "entropic": EntroPICController,
}
CONTROLLER_KINDS = tuple(_KINDS)
SCHEDULED_KINDS = tuple(
    k for k, cls in _KINDS.items() if "total_steps" in inspect.signature(cls.__init__).parameters
)
"""Kinds whose schedule may span ``run.steps`` (changing it changes their targets)."""


def make_controller(
    kind: str, *, total_steps: int | None = None, **kwargs: Any
) -> EntropyController:
    """Build a controller from a config: ``make_controller("target", schedule={...}, ...)``.

    Kinds: ``none`` (:class:`NoController`), ``fixed`` (:class:`FixedEntropyBonus`, kwarg
    ``coef``), ``adaptive`` (:class:`AdaptiveEntropyCoef`), ``target``
    (:class:`PIEntropyController`; ``schedule`` a number, a TargetSchedule or a mapping for
    :meth:`TargetSchedule.from_dict`), ``rate`` (:class:`EntropyRateController`, same
    ``schedule``; its slope is tracked), ``entropic`` (:class:`EntroPICController`, ``target``
    like ``schedule``; pair it with the ``entropic`` policy loss). ``total_steps`` is accepted
    by every kind and used by
    schedules that need it. Unknown kinds or keyword arguments raise ValueError listing the
    valid ones.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown controller kind {kind!r}; valid kinds: {CONTROLLER_KINDS}")
    cls = _KINDS[kind]
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"controller {kind!r} got unknown arguments {unknown}; allowed: {allowed}")
    if "total_steps" in params:
        kwargs["total_steps"] = total_steps
    try:
        return cls(**kwargs)
    except TypeError as exc:  # e.g. a missing required argument
        raise ValueError(f"controller {kind!r}: {exc}; allowed arguments: {allowed}") from exc


def controller_settings(controller: object) -> dict[str, float]:
    """``controller.settings()`` as floats, checked against ``SETTINGS``; ``{}`` for None.

    Duck-typed controllers (the trainer accepts any object with ``update``) without
    ``settings()`` are read through their ``entropy_coef`` / ``eps_high`` / ``eps_low``
    attributes (None = not set) and ``loss_overrides()``.

    Raises:
        ValueError: a setting name outside ``SETTINGS`` (a controller bug: names the valid ones).
    """
    if controller is None:
        return {}
    fn = getattr(controller, "settings", None)
    if callable(fn):
        raw = dict(fn())
    else:
        raw = {k: getattr(controller, k, None) for k in ("entropy_coef", "eps_low", "eps_high")}
        extra = getattr(controller, "loss_overrides", None)
        raw |= dict(extra()) if callable(extra) else {}
    unknown = sorted(set(raw) - set(SETTINGS))
    if unknown:
        raise ValueError(
            f"{type(controller).__name__} sets {unknown}, which no host knows; valid: {list(SETTINGS)}"
        )
    return {str(k): float(v) for k, v in raw.items() if v is not None}


def loss_overrides(controller: object) -> dict[str, float]:
    """The policy-loss hyperparameters among ``controller_settings(controller)`` (clip bounds
    included): what a host merges into the loss's keyword arguments for the next update."""
    return {k: v for k, v in controller_settings(controller).items() if k in LOSS_SETTINGS}


def require_settings(
    sets: Iterable[str], expressible: Iterable[str], *, source: str, host: str, fix: str = ""
) -> None:
    """Refuse at start, in one line, a controller setting the host cannot express.

    Args:
        sets: names of the settings the controller decides (a ``settings()`` dict will do).
        expressible: the settings the host applies.
        source: what the settings come from, e.g. ``"preset 'rate-clip'"``.
        host: the host, e.g. ``"TRL's GRPOTrainer with loss_type='cispo'"``.
        fix: how to get a host that can, appended after ``; ``.

    Raises:
        ValueError: naming the source, the host, the settings it cannot express and the ones
            it can.
    """
    can = set(expressible)
    missing = [k for k in sets if k not in can]
    if missing:
        tail = f"; {fix}" if fix else ""
        raise ValueError(
            f"{source} sets {', '.join(missing)}, which {host} cannot express"
            f" (it applies {', '.join(sorted(can)) or 'none'}){tail}"
        )
