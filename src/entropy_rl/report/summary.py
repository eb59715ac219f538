"""Numbers and words for the report: per-run summary, the R-H fit, the headline sentence.

Everything here is computed from ``RunData`` (load.py) with numpy only; the figures and the
HTML page reuse these numbers so the text and the pictures cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from entropy_rl.report.load import RunData

__all__ = [
    "EntropyFit",
    "RunSummary",
    "delta_pairs",
    "fit_entropy_performance",
    "headline",
    "summarize",
]


@dataclass(frozen=True)
class EntropyFit:
    """Least-squares fit of R = -a * exp(H) + b; at H = 0 the law's ceiling is b - a.

    Cui et al. 2025 ("The Entropy Mechanism of RL for Reasoning LMs") fit validation reward R
    against policy entropy H over a run with this form; b - a is the performance the run would
    reach if it spent all its entropy.
    """

    a: float
    b: float
    r2: float  # coefficient of determination of the fit (nan when R is constant)
    n: int  # points fitted

    @property
    def ceiling(self) -> float:
        """R at H = 0: -a * exp(0) + b = b - a."""
        return self.b - self.a

    def predict(self, entropy: np.ndarray) -> np.ndarray:
        """R_hat = -a * exp(H) + b, elementwise over ``entropy`` (any shape)."""
        return -self.a * np.exp(entropy) + self.b


def fit_entropy_performance(entropy: np.ndarray, performance: np.ndarray) -> EntropyFit | None:
    """Fit R = -a * exp(H) + b by least squares of R on x = exp(H); None if undetermined.

    entropy, performance: shape (n,), paired points (H_i, R_i). The fit itself is
    ``control.evaluation.EntropyPerformanceFit`` (the one place the law is computed) when
    that module imports, else the same regression here. Undetermined: fewer than 3 points
    or all H equal.
    """
    h = np.asarray(entropy, dtype=float)
    r = np.asarray(performance, dtype=float)
    if h.shape != r.shape or h.ndim != 1:
        raise ValueError(
            f"entropy and performance must be 1-D arrays of one shape, got {h.shape}, {r.shape}"
        )
    try:
        from entropy_rl.control.evaluation import EntropyPerformanceFit
    except ImportError:
        return _lstsq_fit(h, r)
    law = EntropyPerformanceFit()
    for hi, ri in zip(h.tolist(), r.tolist(), strict=True):
        law.add(hi, ri)
    out = law.fit()
    if not math.isfinite(out["entropy_law/a"]):
        return None
    return EntropyFit(
        a=out["entropy_law/a"], b=out["entropy_law/b"], r2=out["entropy_law/r2"], n=h.size
    )


def _lstsq_fit(h: np.ndarray, r: np.ndarray) -> EntropyFit | None:
    """Fallback: [s, b] = lstsq([exp(H), 1], R), a = -s; r2 = 1 - SS_res / SS_tot."""
    if h.size < 3 or np.ptp(h) == 0.0:
        return None
    x = np.exp(h)
    design = np.stack([x, np.ones_like(x)], axis=1)  # (n, 2)
    (slope, intercept), *_ = np.linalg.lstsq(design, r, rcond=None)
    resid = r - (slope * x + intercept)
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else math.nan
    return EntropyFit(a=float(-slope), b=float(intercept), r2=r2, n=int(h.size))


def delta_pairs(run: RunData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps k, predicted_{k-1}, actual_k): each prediction against the change it predicts.

    ``entropy/predicted_delta`` at row k-1 is -lr * Cov_{k-1}(log pi, A), the change the update
    of step k-1 should cause, H_k - H_{k-1}: that is ``entropy/actual_delta`` at row k
    (control.monitor.EntropyDynamics). Pairing the two from the same row would compare each
    prediction with the previous change. Only consecutive steps pair; each array shape (n,).
    """
    p_steps, pred = run.series("entropy/predicted_delta")
    by_step = dict(zip(p_steps.tolist(), pred.tolist(), strict=True))
    a_steps, act = run.series("entropy/actual_delta")
    keep = [i for i, s in enumerate(a_steps.tolist()) if s - 1 in by_step]
    steps = a_steps[keep]
    return steps, np.array([by_step[s - 1] for s in steps.tolist()], float), act[keep]


MIN_FIT_POINTS = 5  # fewer points than this and the extrapolation to H = 0 is noise


def rh_points(run: RunData) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(performance key, steps, H, R) for the R-H fit; key "" if too few points.

    R is eval accuracy where >= MIN_FIT_POINTS steps hold it with entropy/mean, else reward/mean.
    """
    for key in ("acc/eval", "reward/mean"):
        steps, h, r = run.paired("entropy/mean", key)
        if steps.size >= MIN_FIT_POINTS:
            return key, steps, h, r
    return "", np.empty(0), np.empty(0), np.empty(0)


@dataclass(frozen=True)
class RunSummary:
    """The per-run row of the summary table (None where the metric was never logged)."""

    label: str
    steps: int  # number of logged RL steps (step >= 1; step 0 is the pre-training eval)
    last_step: int
    entropy_start: float | None
    entropy_end: float | None
    entropy_min: float | None
    entropy_min_step: int | None
    acc_key: str | None  # "acc/eval" if logged, else "acc/train"
    acc_start: float | None
    acc_end: float | None
    n_events: int
    n_critical: int
    event_list: tuple[tuple[int, str, str], ...]  # (step, rule, severity)
    wall_time_s: float | None  # sum of time/step over logged steps
    fit: EntropyFit | None
    fit_key: str  # the R of the fit: "acc/eval" or "reward/mean" ("" if no fit)
    fit_h_range: tuple[float, float] | None  # (min H, max H) of the fitted points


def summarize(run: RunData) -> RunSummary:
    """Start / end / min entropy, start / end accuracy, events, wall time and the R-H fit."""
    e_steps, ent = run.series("entropy/mean")
    acc_key = next((k for k in ("acc/eval", "acc/train") if run.has(k)), None)
    acc = run.series(acc_key)[1] if acc_key else np.empty(0)
    _, t = run.series("time/step")
    fit_key, _, h, r = rh_points(run)
    imin = int(np.argmin(ent)) if ent.size else None
    return RunSummary(
        label=run.label,
        steps=sum(r["step"] >= 1 for r in run.records),
        last_step=run.last_step,
        entropy_start=float(ent[0]) if ent.size else None,
        entropy_end=float(ent[-1]) if ent.size else None,
        entropy_min=float(ent[imin]) if imin is not None else None,
        entropy_min_step=int(e_steps[imin]) if imin is not None else None,
        acc_key=acc_key,
        acc_start=float(acc[0]) if acc.size else None,
        acc_end=float(acc[-1]) if acc.size else None,
        n_events=len(run.events),
        n_critical=sum(e.severity == "critical" for e in run.events),
        event_list=tuple((e.step, e.rule, e.severity) for e in run.events),
        wall_time_s=float(t.sum()) if t.size else None,
        fit=fit_entropy_performance(h, r) if fit_key else None,
        fit_key=fit_key,
        fit_h_range=(float(h.min()), float(h.max())) if fit_key else None,
    )


def fmt(x: float | None) -> str:
    """Two decimals, or two significant digits below 0.095 so 0.004 does not print as 0.00."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0 or abs(x) >= 0.095:
        return f"{x:.2f}"
    return f"{x:.2g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _change(
    name: str, start: float, end: float, unit: str, *, rel_tol: float, pct: bool = True
) -> str:
    """'entropy fell 0.92 -> 0.11 nats (-88%)' / 'rose' / 'held near'."""
    pct_text = f" ({(end - start) / abs(start) * 100:+.0f}%)" if pct and start != 0 else ""
    if end == start:
        return f"{name} was {fmt(end)}{unit}"
    if abs(end - start) <= rel_tol * max(abs(start), 1e-12):
        return f"{name} held near {fmt(end)}{unit} ({fmt(start)} -> {fmt(end)})"
    verb = "fell" if end < start else "rose"
    return f"{name} {verb} {fmt(start)} -> {fmt(end)}{unit}{pct_text}"


def _events_phrase(s: RunSummary, max_listed: int = 4) -> str:
    if s.n_events == 0:
        return "no collapse events"
    noun = "collapse event" if s.n_events == 1 else "collapse events"
    crit = f" ({s.n_critical} critical)" if s.n_critical and s.n_events > 1 else ""
    items = [
        f"step {step} ({rule}{', critical' if sev == 'critical' else ''})"
        for step, rule, sev in s.event_list[:max_listed]
    ]
    more = f" and {s.n_events - max_listed} more" if s.n_events > max_listed else ""
    at = " at " if s.n_events == 1 else ": "
    return f"{s.n_events} {noun}{crit}{at}{', '.join(items)}{more}"


def headline(s: RunSummary) -> str:
    """The run's story in one paragraph, every number taken from the summary.

    e.g. "entropy fell 0.92 -> 0.11 nats (-88%) while eval accuracy rose 0.41 -> 0.78;
    1 collapse event at step 34 (entropy_drop)."
    """
    parts: list[str] = []
    if s.entropy_start is not None and s.entropy_end is not None:
        parts.append(_change("entropy", s.entropy_start, s.entropy_end, " nats", rel_tol=0.05))
    else:
        parts.append("entropy/mean was not logged")
    if s.acc_key and s.acc_start is not None and s.acc_end is not None:
        name = "eval accuracy" if s.acc_key == "acc/eval" else "train accuracy"
        parts[-1] += " while " + _change(name, s.acc_start, s.acc_end, "", rel_tol=0.02, pct=False)
    text = f"Over {s.steps} step{'s' if s.steps != 1 else ''} {parts[0]}; {_events_phrase(s)}."
    if (
        s.entropy_min is not None
        and s.entropy_end is not None
        and s.entropy_min < 0.9 * s.entropy_end
    ):
        text += f" Entropy bottomed out at {fmt(s.entropy_min)} nats (step {s.entropy_min_step})."
    if s.fit is not None and s.fit_h_range is not None:
        lo, hi = s.fit_h_range
        what = "eval accuracy" if s.fit_key == "acc/eval" else "reward"
        r2 = f"R² {s.fit.r2:.2f}" if math.isfinite(s.fit.r2) else "R constant"
        text += (
            f" Fitting {what} R = -a·exp(H) + b (a = {fmt(s.fit.a)}, b = {fmt(s.fit.b)}, {r2},"
            f" {s.fit.n} points with H in {fmt(lo)}..{fmt(hi)}) puts the ceiling at H = 0 at"
            f" b - a = {fmt(s.fit.ceiling)}"
        )
        text += (
            "; a < 0 means performance did not rise as entropy fell, so the law does not apply."
            if s.fit.a < 0
            else "."
        )
    if s.wall_time_s is not None:
        text += f" Wall time {fmt_duration(s.wall_time_s)}."
    return text
