"""report.forecast: each predictor's r and slope against the entropy change, its verdict, the
panel (no forecast line for a weak predictor) and the HTML table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from entropy_rl.report.forecast import (
    MIN_PAIRS,
    PREDICTIVE_R,
    draw_forecast,
    forecast_scores,
    needs_forecast,
    verdict,
)
from entropy_rl.report.load import load_run


def _write(run: Path, rows: list[dict]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


# predictor x = (1, 2, 3, 4), change y = (1, 3, 2, 4), repeated 3 times (n = 12):
# deviations from the means (2.5, 2.5): dx = (-1.5, -0.5, 0.5, 1.5), dy = (-1.5, 0.5, -0.5, 1.5)
# s_xy = 3 * (2.25 - 0.25 - 0.25 + 2.25) = 12, s_xx = s_yy = 3 * 5 = 15
# r = 12 / 15 = 0.8, slope = s_xy / s_xx = 0.8
X = [1.0, 2.0, 3.0, 4.0] * 3
Y = [1.0, 3.0, 2.0, 4.0] * 3
# a second predictor w = (2, -1, -1, 2) (x3): mean 0.5, dw = (1.5, -1.5, -1.5, 1.5),
# s_wy = 3 * (-2.25 - 0.75 + 0.75 + 2.25) = 0: r = 0, slope = 0; its sign matches y's (all > 0)
# at half the steps
W = [2.0, -1.0, -1.0, 2.0] * 3


def _same_batch_run(root: Path, name: str = "fc") -> Path:
    rows = [
        {"step": k + 1, "entropy/predicted_delta": w, "entropy/first_order_delta": x,
         "entropy/delta_same_batch": y}
        for k, (x, y, w) in enumerate(zip(X, Y, W, strict=True))
    ]  # fmt: skip
    rows.append({"step": 13, "entropy/predicted_delta": 5.0})  # no measured change: not paired
    return _write(root / name, rows)


def test_scores_hand_worked(tmp_path: Path) -> None:
    scores = {s.name: s for s in forecast_scores(load_run(_same_batch_run(tmp_path)))}
    fo, cov = scores["first order, in hindsight"], scores["Cov(log π, A)"]
    assert (fo.n, cov.n) == (12, 12)
    assert fo.r == pytest.approx(0.8, rel=1e-12) and fo.slope == pytest.approx(0.8, rel=1e-12)
    assert cov.r == pytest.approx(0.0, abs=1e-15) and cov.slope == pytest.approx(0.0, abs=1e-15)
    assert (fo.same_sign, cov.same_sign) == (1.0, 0.5)
    assert (fo.verdict, cov.verdict) == ("predictive", "not predictive")
    assert fo.target == cov.target == "entropy/delta_same_batch"


def test_verdict_thresholds() -> None:
    assert (PREDICTIVE_R, MIN_PAIRS) == (0.5, 10)
    assert verdict(0.5, 10) == "predictive"
    assert verdict(0.49, 100) == "not predictive"
    assert verdict(-0.9, 100) == "not predictive"  # the wrong sign is no forecast
    assert verdict(math.nan, 50) == "not predictive"
    assert verdict(0.99, 9) == "too few steps"


def test_runs_without_the_same_batch_change_keep_the_next_step_pairing(tmp_path: Path) -> None:
    # predicted_delta at step k-1 against actual_delta at step k: pairs (x_k, y_{k+1})
    rows = [
        {"step": k + 1, "entropy/predicted_delta": x, "entropy/actual_delta": None}
        for k, x in enumerate(X)
    ]
    for k, y in enumerate(Y):
        if k + 1 < len(rows):
            rows[k + 1]["entropy/actual_delta"] = y
    run = load_run(_write(tmp_path / "old", rows))
    (score,) = forecast_scores(run)
    assert score.name == "Cov(log π, A), next step's prompts"
    assert score.target == "entropy/actual_delta" and score.n == 11  # the first Y has no pair
    assert needs_forecast([run]) is None
    empty = load_run(_write(tmp_path / "none", [{"step": 1, "entropy/mean": 1.0}]))
    assert forecast_scores(empty) == [] and needs_forecast([empty]) is not None


def test_panel_draws_a_line_only_for_a_predictive_predictor(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from entropy_rl.report._style import new_figure

    run = load_run(_same_batch_run(tmp_path))
    fig = new_figure(11, 4.4)
    notes = draw_forecast(fig, [run])
    assert notes == []
    cov_ax, fo_ax = fig.axes
    assert cov_ax.get_title() == "Cov(log π, A): not predictive"
    assert fo_ax.get_title() == "first order, in hindsight: predictive"
    texts = [t.get_text() for t in fo_ax.texts] + [t.get_text() for t in cov_ax.texts]
    assert texts == ["r = 0.80  (n = 12)", "r = 0.00  (n = 12)"]

    def fit_lines(ax: object) -> int:  # lines other than the axhline / axvline at 0
        return sum(len(ln.get_xdata()) == 2 and ln.get_xdata()[0] != ln.get_xdata()[1]
                   and ln.get_ydata()[0] != ln.get_ydata()[1] for ln in ax.get_lines())  # type: ignore[attr-defined]  # fmt: skip

    assert (fit_lines(cov_ax), fit_lines(fo_ax)) == (0, 1)


def test_html_table_states_each_verdict(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from entropy_rl.report.html import write_report

    page = write_report([_same_batch_run(tmp_path)], tmp_path / "out").read_text()
    assert "<h2>Entropy forecast</h2>" in page
    assert (
        "<td>first order, in hindsight</td><td>entropy/delta_same_batch</td><td class='num'>12</td>"
        in page
    )
    first = "<td class='num'>0.80</td><td class='num'>0.8</td><td class='num'>100%</td>"
    assert first + "<td>predictive</td>" in page
    assert "<td class='num'>50%</td><td>not predictive</td>" in page


def test_demo_runs_show_both_verdicts(tmp_path: Path) -> None:
    from entropy_rl.report.demo import make_demo_runs

    healthy, collapsing = (forecast_scores(load_run(d)) for d in make_demo_runs(tmp_path))
    assert [(s.name, s.n, s.verdict) for s in healthy] == [
        ("Cov(log π, A)", 29, "not predictive"),  # every 4th of 120 steps, the last unpaired
        ("first order, in hindsight", 29, "predictive"),
    ]
    assert [s.verdict for s in collapsing] == ["predictive", "predictive"]
