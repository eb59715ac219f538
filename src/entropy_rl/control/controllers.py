"""Entropy controllers: decide the entropy-bonus coefficient or the upper clip each step.

Every controller has ``update(step, metrics) -> dict`` (called once per RL step with that
step's metrics, returning ``control/*`` metrics), the properties ``entropy_coef`` and
``eps_high`` (``None`` = "not controlled here: use the configured value"), and
``state_dict`` / ``load_state_dict`` for resume. The measured entropy is
``metrics["entropy/mean"]``: the mean token entropy of the step's rollout.

Timing: the value read after ``update(step, ...)`` is applied to the next policy update. When
the trainer measures the rollout's entropy inside the update (the usual case), the controller
therefore acts one step late; every controller here tolerates that.

``make_controller(kind, **kwargs)`` builds one from a config: kinds ``none``, ``fixed``,
``adaptive`` and ``target``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

__all__ = [
    "ACTUATOR_DEFAULTS",
    "CONTROLLER_KINDS",
    "AdaptiveEntropyCoef",
    "EntropyController",
    "FixedEntropyBonus",
    "NoController",
    "PIEntropyController",
    "TargetSchedule",
    "make_controller",
]

ENTROPY_KEY = "entropy/mean"
SCHEDULE_KINDS = ("constant", "linear", "cosine", "piecewise")


def _finite(name: str, value: object, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class TargetSchedule:
    """Target entropy H_target(step) in nats; call it: ``schedule(step) -> float``.

    With f = clamp(step / total_steps, 0, 1) the fraction of training done:

    * ``constant``: ``start`` at every step.
    * ``linear``: start + (end - start) * g,
    * ``cosine``: end + (start - end) * (1 + cos(pi * g)) / 2 (midpoint = (start + end) / 2),
      where g = clamp((f - hold_frac) / (1 - hold_frac), 0, 1): the target is held at
      ``start`` for the first ``hold_frac`` of training, then moves to ``end``.
    * ``piecewise``: ``points`` = ((f_0, v_0), (f_1, v_1), ...), f strictly increasing in
      [0, 1], linearly interpolated; v_0 before f_0 and the last v after the last f.

    Build with the class methods, or ``from_dict`` for a YAML config.
    """

    kind: Literal["constant", "linear", "cosine", "piecewise"]
    """One of constant, linear, cosine, piecewise."""
    start: float = 0.0
    """Target at the start (nats); the only value for ``constant``."""
    end: float = 0.0
    """Target at the end of training (linear and cosine)."""
    total_steps: int | None = None
    """Steps over which f goes 0 -> 1; required except for ``constant``."""
    hold_frac: float = 0.0
    """Fraction of training held at ``start`` before the linear/cosine move, in [0, 1)."""
    points: tuple[tuple[float, float], ...] = field(default_factory=tuple)
    """(fraction, target) knots of ``piecewise``."""

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {self.kind!r}; valid: {SCHEDULE_KINDS}")
        _finite("start", self.start, low=0.0)
        _finite("end", self.end, low=0.0)
        hold = _finite("hold_frac", self.hold_frac, low=0.0)
        if hold >= 1.0:
            raise ValueError(f"hold_frac must be in [0, 1), got {hold}")
        if self.kind != "constant":
            t = self.total_steps
            if isinstance(t, bool) or not isinstance(t, int) or t < 1:
                raise ValueError(f"{self.kind} schedule needs total_steps, an int >= 1, got {t!r}")
        if self.kind == "piecewise":
            pts = tuple((float(f), float(v)) for f, v in self.points)
            if not pts:
                raise ValueError("piecewise schedule needs at least one (fraction, value) point")
            for f, v in pts:
                if not 0.0 <= f <= 1.0:
                    raise ValueError(f"piecewise fractions must lie in [0, 1], got {f}")
                _finite("piecewise value", v, low=0.0)
            if any(b[0] <= a[0] for a, b in pairwise(pts)):
                raise ValueError(f"piecewise fractions must be strictly increasing, got {pts}")
            object.__setattr__(self, "points", pts)

    @classmethod
    def constant(cls, value: float) -> TargetSchedule:
        return cls("constant", start=value, end=value)

    @classmethod
    def linear(
        cls, start: float, end: float, total_steps: int, *, hold_frac: float = 0.0
    ) -> TargetSchedule:
        return cls("linear", start=start, end=end, total_steps=total_steps, hold_frac=hold_frac)

    @classmethod
    def cosine(
        cls, start: float, end: float, total_steps: int, *, hold_frac: float = 0.0
    ) -> TargetSchedule:
        return cls("cosine", start=start, end=end, total_steps=total_steps, hold_frac=hold_frac)

    @classmethod
    def piecewise(cls, points: Sequence[Sequence[float]], total_steps: int) -> TargetSchedule:
        pts = tuple((float(p[0]), float(p[1])) for p in points)
        return cls(
            "piecewise", start=pts[0][1] if pts else 0.0, total_steps=total_steps, points=pts
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, total_steps: int | None = None) -> TargetSchedule:
        """From a config mapping, e.g. ``{"kind": "linear", "start": 0.6, "end": 0.3}``.

        ``total_steps`` fills in the mapping's when it has none. ``value`` is accepted as an
        alias of ``start`` for ``constant``.
        """
        d = dict(d)
        kind = d.pop("kind", None)
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
        if "value" in d:
            d["start"] = d.pop("value")
        if kind == "constant":
            d.setdefault("end", d.get("start", 0.0))
        else:
            d.setdefault("total_steps", total_steps)
        if kind == "piecewise" and "points" in d:
            d["points"] = tuple((float(p[0]), float(p[1])) for p in d["points"])
            d.setdefault("start", d["points"][0][1] if d["points"] else 0.0)
        allowed = {"start", "end", "total_steps", "hold_frac", "points"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"unknown schedule keys {sorted(unknown)}; allowed {sorted(allowed)}")
        return cls(kind, **d)

    def __call__(self, step: float) -> float:
        if self.kind == "constant":
            return self.start
        assert self.total_steps is not None  # checked in __post_init__
        f = min(max(step / self.total_steps, 0.0), 1.0)
        if self.kind == "piecewise":
            pts = self.points
            if f <= pts[0][0]:
                return pts[0][1]
            for (f0, v0), (f1, v1) in pairwise(pts):
                if f <= f1:
                    return v0 + (v1 - v0) * (f - f0) / (f1 - f0)
            return pts[-1][1]
        g = min(max((f - self.hold_frac) / (1.0 - self.hold_frac), 0.0), 1.0)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * g
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * g))


def _as_schedule(
    target: float | TargetSchedule | Mapping[str, Any], total_steps: int | None
) -> TargetSchedule:
    if isinstance(target, TargetSchedule):
        return target
    if isinstance(target, Mapping):
        return TargetSchedule.from_dict(target, total_steps=total_steps)
    return TargetSchedule.constant(_finite("target", target, low=0.0))


def _measured(metrics: Mapping[str, float], key: str) -> float:
    if key not in metrics:
        raise ValueError(f"controller needs the measured entropy {key!r} in metrics")
    return _finite(key, metrics[key])


# --------------------------------------------------------------------------- controllers


class EntropyController:
    """Base class and the ``none`` kind: controls nothing, logs nothing."""

    @property
    def entropy_coef(self) -> float | None:
        """Coefficient c of the loss term -c * agg(H) for the next update; None = config's."""
        return None

    @property
    def eps_high(self) -> float | None:
        """Upper clip range for the next update; None = the configured value."""
        return None

    @property
    def eps_low(self) -> float | None:
        """Lower clip range for the next update; None = the configured value."""
        return None

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
        self.coef = _finite("coef", coef, low=0.0)

    @property
    def entropy_coef(self) -> float:
        return self.coef

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
        self.schedule = _as_schedule(target, total_steps)
        self.delta = _finite("delta", delta, low=0.0)
        self.c_min = _finite("c_min", c_min, low=0.0)
        self.c_max = _finite("c_max", c_max, low=self.c_min)
        c0 = _finite("c_init", c_init)
        if not self.c_min <= c0 <= self.c_max:
            raise ValueError(f"c_init must lie in [c_min, c_max] = [{c_min}, {c_max}], got {c0}")
        self.c = c0
        self.applied = 0.0

    @property
    def entropy_coef(self) -> float:
        return self.applied

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
        try:
            c, applied = float(state["c"]), float(state["applied"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an AdaptiveEntropyCoef state dict: {exc!r}") from exc
        self.c, self.applied = c, applied


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
        self.schedule = _as_schedule(schedule, total_steps)
        self.actuator = actuator
        self.kp = _finite("kp", d["kp"] if kp is None else kp)
        self.ki = _finite("ki", d["ki"] if ki is None else ki)
        self.out_min = _finite("out_min", d["out_min"] if out_min is None else out_min)
        self.out_max = _finite("out_max", d["out_max"] if out_max is None else out_max)
        self.init = _finite("init", d["init"] if init is None else init)
        if actuator == "entropy_coef" and self.out_min < 0:
            raise ValueError(f"entropy_coef out_min must be >= 0, got {self.out_min}")
        if actuator in ("eps_high", "eps") and self.out_min <= 0:
            raise ValueError(f"{actuator} out_min must be > 0, got {self.out_min}")
        if not self.out_min <= self.init <= self.out_max:
            raise ValueError(
                f"need out_min <= init <= out_max, got {self.out_min}, {self.init}, {self.out_max}"
            )
        self.integral_limit = (
            None if integral_limit is None else _finite("integral_limit", integral_limit, low=0.0)
        )
        self.integral = 0.0
        self.output = self.init

    @property
    def entropy_coef(self) -> float | None:
        return self.output if self.actuator == "entropy_coef" else None

    @property
    def eps_high(self) -> float | None:
        return self.output if self.actuator in ("eps_high", "eps") else None

    @property
    def eps_low(self) -> float | None:
        return self.output if self.actuator == "eps" else None

    def _clamp_integral(self, value: float) -> float:
        if self.ki != 0.0:
            a, b = (self.out_min - self.init) / self.ki, (self.out_max - self.init) / self.ki
            value = min(max(value, min(a, b)), max(a, b))
        if self.integral_limit is not None:
            value = min(max(value, -self.integral_limit), self.integral_limit)
        return value

    def update(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        h = _measured(metrics, ENTROPY_KEY)
        target = self.schedule(step)
        error = target - h
        self.integral = self._clamp_integral(self.integral + error)
        raw = self.init + self.kp * error + self.ki * self.integral
        self.output = min(max(raw, self.out_min), self.out_max)
        sides = ("eps_high", "eps_low") if self.actuator == "eps" else (self.actuator,)
        return {**{f"control/{k}": self.output for k in sides}, "control/target_entropy": target}

    def state_dict(self) -> dict[str, Any]:
        return {"integral": self.integral, "output": self.output}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            integral, output = float(state["integral"]), float(state["output"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a PIEntropyController state dict: {exc!r}") from exc
        self.integral, self.output = integral, output


# --------------------------------------------------------------------------- factory

_KINDS: dict[str, type[EntropyController]] = {
    "none": NoController,
    "fixed": FixedEntropyBonus,
    "adaptive": AdaptiveEntropyCoef,
    "target": PIEntropyController,
}
CONTROLLER_KINDS = tuple(_KINDS)


def make_controller(
    kind: str, *, total_steps: int | None = None, **kwargs: Any
) -> EntropyController:
    """Build a controller from a config: ``make_controller("target", schedule={...}, ...)``.

    Kinds: ``none`` (:class:`NoController`), ``fixed`` (:class:`FixedEntropyBonus`, kwarg
    ``coef``), ``adaptive`` (:class:`AdaptiveEntropyCoef`), ``target``
    (:class:`PIEntropyController`; ``schedule`` a number, a TargetSchedule or a mapping for
    :meth:`TargetSchedule.from_dict`). ``total_steps`` is accepted by every kind and used by
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
