"""Which predictor forecasts the entropy change of an update? Scores, verdicts and the panel.

The target is ``entropy/delta_same_batch`` (train.forecast): the change of the rollout batch's
entropy that the step's update caused, measured on that batch. Each predictor logged on the same
row is scored over the steps where both are finite, by Pearson's r, the least-squares slope of
the change on the prediction, and how often the two share their sign (a weak test when the
entropy falls at nearly every step: any always-negative number passes it):

- ``entropy/predicted_delta``: -lr * optimizer steps * Cov(log pi, A) (Cui et al. 2025), known
  before the update from the sampled tokens' log-probs and advantages;
- ``entropy/first_order_delta``: -Cov_p(log p, d log p) over the whole vocabulary with the
  update's actual logit change (ops.entropy_change); not a forecast (it needs the updated
  weights) but the ceiling of any first-order, covariance-shaped one.

Runs without the same-batch change (logged before it existed, or ``control.forecast_every=0``)
keep the old pairing, ``predicted_delta`` of step k-1 against ``entropy/actual_delta`` of step k
(the entropy of step k's prompts minus step k-1's: other prompts), scored and labelled as such.

A predictor is called *predictive* when r >= ``PREDICTIVE_R`` (0.5: it explains at least a
quarter of the step-to-step variance of the change) over at least ``MIN_PAIRS`` (10) steps; the
panel then draws its least-squares line. Below that the panel draws only the points and says
"not predictive": a weak predictor is not drawn as a forecast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from entropy_rl.report._style import color, style_legend
from entropy_rl.report.load import RunData
from entropy_rl.report.summary import delta_pairs, fmt

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.figure import FigureBase

__all__ = [
    "MIN_PAIRS",
    "PREDICTIVE_R",
    "PREDICTORS",
    "TARGET",
    "ForecastScore",
    "forecast_scores",
    "predictor_pairs",
    "verdict",
]

TARGET = "entropy/delta_same_batch"
NEXT_STEP = "next-step"  # the old pairing's name in PREDICTORS
PREDICTIVE_R = 0.5
MIN_PAIRS = 10

PREDICTORS: tuple[tuple[str, str, str], ...] = (
    # (name, predictor key, axis label)
    ("Cov(log π, A)", "entropy/predicted_delta", "−lr·steps·Cov(log π, A)  (Cui et al.)"),
    (
        "first order, in hindsight",
        "entropy/first_order_delta",
        "−Cov_p(log p, Δlog p), exact over V",
    ),
)


@dataclass(frozen=True)
class ForecastScore:
    """One predictor of one run against the entropy change it should explain."""

    run: str
    name: str  # "Cov(log π, A)", "first order, in hindsight", or the next-step pairing
    key: str  # the predictor's metric key
    target: str  # TARGET, or "entropy/actual_delta" for the next-step pairing
    n: int  # steps paired
    r: float  # Pearson r (nan: fewer than 3 pairs or a constant series)
    slope: float  # least-squares slope of target on predictor (nan where r is)
    same_sign: float  # fraction of the n steps where predictor and change share their sign

    @property
    def verdict(self) -> str:
        return verdict(self.r, self.n)


def verdict(r: float, n: int) -> str:
    """``predictive`` (r >= PREDICTIVE_R over n >= MIN_PAIRS steps), ``not predictive``, or
    ``too few steps`` (n < MIN_PAIRS)."""
    if n < MIN_PAIRS:
        return "too few steps"
    return "predictive" if math.isfinite(r) and r >= PREDICTIVE_R else "not predictive"


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(Pearson r, slope of y on x) = (s_xy / sqrt(s_xx s_yy), s_xy / s_xx); nan, nan for
    fewer than 3 points or a constant series."""
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    dx, dy = x - x.mean(), y - y.mean()
    sxy, sxx, syy = float(dx @ dy), float(dx @ dx), float(dy @ dy)
    return sxy / math.sqrt(sxx * syy), sxy / sxx


def predictor_pairs(run: RunData, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, predicted, actual), each (n,): ``key`` against TARGET on the same row, or for
    ``key == NEXT_STEP`` the old pairing (report.summary.delta_pairs)."""
    if key == NEXT_STEP:
        return delta_pairs(run)
    return run.paired(key, TARGET)


def forecast_scores(run: RunData) -> list[ForecastScore]:
    """Every predictor the run logged with its target: the same-batch predictors when the run
    has TARGET, else the next-step pairing (when it has >= 3 pairs)."""
    if run.has(TARGET):
        todo = [(name, key, key, TARGET) for name, key, _ in PREDICTORS if run.has(key)]
    else:
        todo = [(f"{PREDICTORS[0][0]}, next step's prompts", NEXT_STEP, PREDICTORS[0][1],
                 "entropy/actual_delta")]  # fmt: skip
    out = []
    for name, pair_key, key, target in todo:
        _, x, y = predictor_pairs(run, pair_key)
        if x.size < 3:
            continue
        r, slope = _fit(x, y)
        same_sign = float(np.mean(np.sign(x) == np.sign(y)))
        out.append(ForecastScore(run.label, name, key, target, int(x.size), r, slope, same_sign))
    return out


# --------------------------------------------------------------------------- the report panel


def needs_forecast(runs: Sequence[RunData]) -> str | None:
    if any(forecast_scores(r) for r in runs):
        return None
    return (
        f"no run logged {TARGET} with a predictor, or entropy/predicted_delta and the next"
        " step's entropy/actual_delta, for >= 3 steps"
    )


def draw_forecast(fig: FigureBase, runs: Sequence[RunData]) -> list[str]:
    """One scatter per predictor: each run's (predicted, actual) points, its r, n and verdict;
    the least-squares line only for predictive ones."""
    from matplotlib.ticker import MaxNLocator

    scores = {r.label: forecast_scores(r) for r in runs}
    names = list(dict.fromkeys(s.name for ss in scores.values() for s in ss))
    axes = np.atleast_1d(fig.subplots(1, len(names), squeeze=False)[0])
    drawn_line = False
    for ax, name in zip(axes, names, strict=True):
        verdicts = {s.verdict for ss in scores.values() for s in ss if s.name == name}
        uniform = len(verdicts) == 1  # then the title says it once, else each run's line does
        row = 0
        for run in runs:
            score = next((s for s in scores[run.label] if s.name == name), None)
            if score is None:
                continue
            pair_key = NEXT_STEP if score.target != TARGET else score.key
            _, x, y = predictor_pairs(run, pair_key)
            good = score.verdict == "predictive"
            ax.scatter(x, y, s=16, color=color(run), alpha=0.7 if good else 0.35, lw=0)
            if good:
                xs = np.array([x.min(), x.max()])
                ax.plot(xs, y.mean() + score.slope * (xs - x.mean()), color=color(run), lw=1.5)
                drawn_line = True
            text = f"r = {fmt(score.r)}  (n = {score.n})" + (
                "" if uniform else f": {score.verdict}"
            )
            if len(runs) > 1:  # the seeds of a setting share a colour: name the run
                text = f"{run.label}: {text}"
            ax.text(
                0.03, 0.97 - 0.08 * row, text, transform=ax.transAxes, color=color(run),
                va="top", fontsize=10 if len(runs) == 1 else 8.5,
                fontweight="bold" if good else "normal",
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1},
            )  # fmt: skip
            row += 1
        label = next(lbl for nm, _, lbl in PREDICTORS if name.startswith(nm))
        ax.set_title(name + (f": {verdicts.pop()}" if uniform else ""))
        ax.set_xlabel(("previous step's " if "next step" in name else "") + label)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(4))
    same = any(s.target == TARGET for ss in scores.values() for s in ss)
    axes[0].set_ylabel(
        "Δ entropy of the update's own batch" if same else "Δ entropy, next step's prompts"
    )
    if drawn_line:
        style_legend(axes[-1], [(f"least squares (r ≥ {PREDICTIVE_R})", {"lw": 1.5})])
    return [
        f"{r.label}: no predictor paired with its entropy change on >= 3 steps"
        for r in runs
        if not scores[r.label]
    ]
