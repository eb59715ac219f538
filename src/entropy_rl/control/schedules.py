"""Target-entropy schedules: ``TargetSchedule(step) -> nats``, used by the controllers.

``TargetSchedule`` is also re-exported from :mod:`entropy_rl.control.controllers`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

__all__ = ["SCHEDULE_KINDS", "TargetSchedule", "as_schedule", "finite"]

SCHEDULE_KINDS = ("constant", "linear", "cosine", "piecewise")


def finite(name: str, value: object, *, low: float | None = None) -> float:
    """``value`` as a float; ValueError unless it is a finite number (and >= ``low``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return float(value)


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
        finite("start", self.start, low=0.0)
        finite("end", self.end, low=0.0)
        hold = finite("hold_frac", self.hold_frac, low=0.0)
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
                finite("piecewise value", v, low=0.0)
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


def as_schedule(
    target: float | TargetSchedule | Mapping[str, Any], total_steps: int | None
) -> TargetSchedule:
    """A schedule from a number (constant), a mapping (``TargetSchedule.from_dict``) or itself."""
    if isinstance(target, TargetSchedule):
        return target
    if isinstance(target, Mapping):
        return TargetSchedule.from_dict(target, total_steps=total_steps)
    return TargetSchedule.constant(finite("target", target, low=0.0))
