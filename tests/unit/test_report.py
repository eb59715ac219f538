"""entropy_rl.report: loading run directories, the summary numbers, the HTML page and PNGs."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from entropy_rl.errors import UserError
from entropy_rl.report import (
    TruncatedRunWarning,
    fit_entropy_performance,
    headline,
    load_run,
    load_runs,
    make_demo_runs,
    summarize,
    write_report,
)
from entropy_rl.report._style import color, run_legend
from entropy_rl.report.figures import PANELS
from entropy_rl.report.summary import _lstsq_fit, delta_pairs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PANEL_SLUGS = [p.slug for p in PANELS]


def _write_jsonl(path: Path, rows: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")


def _raw_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """The two synthetic demo runs reported together (rendered once for several tests)."""
    root = tmp_path_factory.mktemp("demo")
    dirs = make_demo_runs(root / "runs", steps=60)
    return dirs, write_report(dirs, root / "out")


# ---- the R-H fit ----------------------------------------------------------------------------


def test_fit_hand_worked() -> None:
    # H = 0, ln 2, ln 3 -> x = exp(H) = 1, 2, 3; R = 0.9, 0.7, 0.5 lies exactly on R = 1.1 - 0.2 x,
    # so slope s = -0.2 -> a = 0.2, b = 1.1, ceiling b - a = 0.9 (= R at H = 0), R^2 = 1.
    h = np.log([1.0, 2.0, 3.0])
    r = np.array([0.9, 0.7, 0.5])
    for fit in (fit_entropy_performance(h, r), _lstsq_fit(h, r)):
        assert fit is not None
        assert fit.a == pytest.approx(0.2, abs=1e-12)
        assert fit.b == pytest.approx(1.1, abs=1e-12)
        assert fit.ceiling == pytest.approx(0.9, abs=1e-12)
        assert fit.r2 == pytest.approx(1.0, abs=1e-12)
        assert fit.predict(np.log(np.array([4.0])))[0] == pytest.approx(1.1 - 0.8, abs=1e-12)


def test_fit_matches_control_evaluation_and_fallback() -> None:
    # The report uses control.evaluation.EntropyPerformanceFit; its local fallback (used when
    # that module cannot be imported) must give the same numbers on noisy data.
    rng = np.random.default_rng(0)
    h = rng.uniform(0.05, 1.2, 40)
    r = 0.9 - 0.25 * np.exp(h) + 0.03 * rng.standard_normal(40)
    a, b = fit_entropy_performance(h, r), _lstsq_fit(h, r)
    assert a is not None and b is not None
    assert (a.a, a.b, a.r2, a.n) == pytest.approx((b.a, b.b, b.r2, b.n), rel=1e-9)
    assert a.a == pytest.approx(0.25, abs=0.03)  # recovers the generating law


def test_fit_fallback_when_evaluation_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "entropy_rl.control.evaluation", None)  # import -> ImportError
    fit = fit_entropy_performance(np.log([1.0, 2.0, 3.0]), np.array([0.9, 0.7, 0.5]))
    assert fit is not None and fit.ceiling == pytest.approx(0.9, abs=1e-12)


def test_fit_undetermined_and_bad_shapes() -> None:
    assert fit_entropy_performance(np.array([0.1, 0.2]), np.array([0.5, 0.6])) is None
    assert fit_entropy_performance(np.full(5, 0.3), np.linspace(0, 1, 5)) is None
    with pytest.raises(ValueError, match="one shape"):
        fit_entropy_performance(np.zeros(3), np.zeros(4))


# ---- loading --------------------------------------------------------------------------------


def test_missing_metrics_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    expected = re.escape(str(tmp_path / "run" / "metrics.jsonl"))
    with pytest.raises(UserError, match=expected):
        load_run(tmp_path / "run")
    with pytest.raises(UserError, match=expected):
        write_report([tmp_path / "run"], tmp_path / "out")
    with pytest.raises(UserError, match="does not exist"):
        load_run(tmp_path / "nope")
    with pytest.raises(UserError, match="at least one RUN_DIR"):
        load_runs([])


def test_truncated_last_line_is_skipped_with_warning(tmp_path: Path) -> None:
    rows = [{"step": s, "entropy/mean": 1.0 / s} for s in (1, 2, 3)]
    _write_jsonl(tmp_path / "metrics.jsonl", rows, tail='{"step": 4, "entropy/me')
    with pytest.warns(TruncatedRunWarning, match="incomplete last line 4"):
        run = load_run(tmp_path)
    assert [r["step"] for r in run.records] == [1, 2, 3]
    assert any("incomplete last line" in n for n in run.notes)


def test_broken_middle_line_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n')
    with pytest.raises(UserError, match="line 2"):
        load_run(tmp_path)


def test_empty_metrics_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no complete step"):
        load_run(tmp_path)


def test_series_skips_missing_null_nan_and_keeps_last_duplicate(tmp_path: Path) -> None:
    lines = [
        '{"step": 1, "entropy/mean": 0.9, "acc/eval": 0.4}',
        '{"step": 2, "entropy/mean": null}',
        '{"step": 3, "entropy/mean": NaN, "acc/eval": "n/a"}',
        '{"step": 4, "entropy/mean": 0.5}',
        '{"step": 4, "entropy/mean": 0.6, "acc/eval": 0.7}',  # resumed run re-logged step 4
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    run = load_run(tmp_path)
    steps, h = run.series("entropy/mean")
    assert steps.tolist() == [1.0, 4.0] and h.tolist() == [0.9, 0.6]
    assert run.series("acc/eval")[1].tolist() == [0.4, 0.7]
    assert not run.has("entropy/p10")
    assert any("step 4 logged twice" in n for n in run.notes)
    assert run.notes[-1] == (  # steps 2 and 3: null and NaN ("n/a", a string, is not a number)
        "metrics.jsonl: 2 step(s) hold non-finite values (NaN / inf, null in the file), first "
        "entropy/mean at step 2; the figures leave those points out"
    )


def test_labels_from_config_and_collisions(tmp_path: Path) -> None:
    configs = {
        "a": "name: grpo-base\nseed: 3\n",
        "b": "preset: dapo\n",
        "c": "",
        "d": "run:\n  name: grpo-base\n  seed: 3\n",  # the trainer's layout
        "e": "preset: dapo\nrun:\n  name: run\n  seed: 0\n",  # default name yields
        "f": "- not a mapping\n",
    }
    for d, cfg in configs.items():
        (tmp_path / d).mkdir()
        _write_jsonl(tmp_path / d / "metrics.jsonl", [{"step": 1}])
        (tmp_path / d / "config.yaml").write_text(cfg)
    # compare's layout: OUT/<setting>/seed0 with the same preset and seed in both configs
    for setting in ("hi", "lo"):
        (tmp_path / setting / "seed0").mkdir(parents=True)
        _write_jsonl(tmp_path / setting / "seed0" / "metrics.jsonl", [{"step": 1}])
        (tmp_path / setting / "seed0" / "config.yaml").write_text("preset: dapo\nseed: 0\n")
    runs = load_runs([tmp_path / d for d in configs])
    compared = load_runs([tmp_path / "hi" / "seed0", tmp_path / "lo" / "seed0"])
    assert [r.label for r in compared] == ["hi seed 0", "lo seed 0"]
    assert [r.label for r in runs] == [
        "grpo-base seed 3 (a)",
        "dapo",
        "c",
        "grpo-base seed 3 (d)",
        "dapo seed 0",
        "f",
    ]


def test_seeds_of_one_setting_share_a_colour_and_a_legend_entry(tmp_path: Path) -> None:
    # compare's layout OUT/<setting>/seed<k>: 2 seeds of "ppo", 1 of "dapo", then 2 more of ppo
    dirs = []
    for setting, seed in [("ppo", 0), ("dapo", 0), ("ppo", 1), ("ppo", 2)]:
        d = tmp_path / setting / f"seed{seed}"
        d.mkdir(parents=True)
        _write_jsonl(d / "metrics.jsonl", [{"step": 1, "entropy/mean": 1.0}])
        (d / "config.yaml").write_text(f"preset: ppo\nrun:\n  name: run\n  seed: {seed}\n")
        dirs.append(d)
    runs = load_runs(dirs)
    assert [r.label for r in runs] == ["ppo seed 0", "dapo seed 0", "ppo seed 1", "ppo seed 2"]
    assert [r.group for r in runs] == ["ppo", "dapo", "ppo", "ppo"]
    assert [r.color_index for r in runs] == [0, 1, 0, 0]
    assert color(runs[0]) == color(runs[3]) == color(0) != color(runs[1])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    legend = run_legend(fig, runs, events=False)
    assert [t.get_text() for t in legend.get_texts()] == ["ppo (3 runs)", "dapo seed 0"]
    plt.close(fig)


def test_entropy_bands_only_for_few_runs(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from entropy_rl.report.figures import MAX_BANDED_RUNS, draw_entropy

    rows = [
        {"step": k, "entropy/mean": 1.0, "entropy/p10": 0.5, "entropy/p90": 1.5} for k in (1, 2)
    ]
    dirs = []
    for k in range(MAX_BANDED_RUNS + 1):
        (tmp_path / f"r{k}").mkdir()
        _write_jsonl(tmp_path / f"r{k}" / "metrics.jsonl", rows)
        dirs.append(tmp_path / f"r{k}")
    for n, bands in [(MAX_BANDED_RUNS, MAX_BANDED_RUNS), (MAX_BANDED_RUNS + 1, 0)]:
        fig = plt.figure()
        notes = draw_entropy(fig, load_runs(dirs[:n]))
        polys = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
        assert len(polys) == bands
        assert any("bands drawn for up to" in x for x in notes) == (bands == 0)
        plt.close(fig)


def test_rh_fit_pools_the_seeds_of_a_setting(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from entropy_rl.report.figures import draw_rh

    # R = -0.5 exp(H) + 2 exactly, 6 points per seed; seeds 0 and 1 of "ppo", one "dapo" run
    dirs = []
    for setting, seed, shift in [("ppo", 0, 0.0), ("ppo", 1, 0.05), ("dapo", 0, 0.02)]:
        d = tmp_path / setting / f"seed{seed}"
        d.mkdir(parents=True)
        hs = [1.5 - 0.2 * k + shift for k in range(6)]
        rows = [
            {"step": k + 1, "entropy/mean": h, "reward/mean": -0.5 * math.exp(h) + 2}
            for k, h in enumerate(hs)
        ]
        _write_jsonl(d / "metrics.jsonl", rows)
        dirs.append(d)
    fig = plt.figure()
    notes = draw_rh(fig, load_runs(dirs))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(titles) == 2 and notes == []
    assert titles[0].startswith("ppo (2 runs)") and "n = 12" in titles[0]
    assert titles[1].startswith("dapo\n") and "n = 6" in titles[1]  # a lone run: its label
    assert "a = 0.50, b = 2.00, R² 1.00" in titles[0]
    plt.close(fig)


def test_delta_pairs_match_prediction_with_next_change(tmp_path: Path) -> None:
    # predicted_delta at step k-1 forecasts actual_delta at step k (control.monitor):
    # step:       1     2     3     4     5(no predicted)
    # predicted: 0.1   0.2   null  0.4
    # actual:    null  -1    -2    -3    -4
    # pairs (k, predicted_{k-1}, actual_k): (2, 0.1, -1), (3, 0.2, -2), (5, 0.4, -4);
    # step 4 has no prediction from step 3.
    pred = [0.1, 0.2, None, 0.4, None]
    act = [None, -1.0, -2.0, -3.0, -4.0]
    rows = [
        {"step": k + 1, "entropy/predicted_delta": p, "entropy/actual_delta": a}
        for k, (p, a) in enumerate(zip(pred, act, strict=True))
    ]
    _write_jsonl(tmp_path / "metrics.jsonl", rows)
    steps, p, a = delta_pairs(load_run(tmp_path))
    assert steps.tolist() == [2.0, 3.0, 5.0]
    assert p.tolist() == [0.1, 0.2, 0.4]
    assert a.tolist() == [-1.0, -2.0, -4.0]


# ---- summary and headline -------------------------------------------------------------------


def _story_run(root: Path) -> Path:
    """Entropy 0.92 -> 0.11 over 40 steps, eval acc 0.41 -> 0.78, one event at step 34."""
    h = np.linspace(0.92, 0.11, 40)
    rows = []
    for s in range(1, 41):
        row = {"step": s, "entropy/mean": float(h[s - 1]), "time/step": 0.5}
        if s == 1:
            row["acc/eval"] = 0.41
        elif s % 10 == 0:
            row["acc/eval"] = {10: 0.55, 20: 0.66, 30: 0.71, 40: 0.78}[s]
        rows.append(row)
    run = root / "story"
    run.mkdir()
    _write_jsonl(run / "metrics.jsonl", rows)
    _write_jsonl(
        run / "events.jsonl",
        [
            {
                "step": 34,
                "rule": "entropy_drop",
                "severity": "warning",
                "values": {},
                "message": "entropy fell fast",
                "action": None,
            }
        ],
    )
    return run


def test_summary_and_headline_numbers(tmp_path: Path) -> None:
    s = summarize(load_run(_story_run(tmp_path)))
    assert (s.entropy_start, s.entropy_end, s.entropy_min_step) == (0.92, 0.11, 40)
    assert s.acc_key == "acc/eval" and (s.acc_start, s.acc_end) == (0.41, 0.78)
    assert s.wall_time_s == pytest.approx(40 * 0.5)  # sum of time/step = 20 s
    assert (s.n_events, s.n_critical) == (1, 0)
    text = headline(s)
    # (0.11 - 0.92) / 0.92 = -0.8804 -> -88%
    assert "entropy fell 0.92 -> 0.11 nats (-88%)" in text
    assert "while eval accuracy rose 0.41 -> 0.78" in text
    assert "1 collapse event at step 34 (entropy_drop)" in text
    assert "Wall time 20.0 s" in text
    assert s.fit is not None and f"b - a = {s.fit.ceiling:.2f}" in text


def test_headline_without_accuracy_or_events(tmp_path: Path) -> None:
    _write_jsonl(
        tmp_path / "metrics.jsonl",
        [{"step": 1, "entropy/mean": 0.5}, {"step": 2, "entropy/mean": 0.51}],
    )
    text = headline(summarize(load_run(tmp_path)))
    # |0.51 - 0.50| = 0.01 <= 5% of 0.50: "held near", not "rose"
    assert text == "Over 2 steps entropy held near 0.51 nats (0.50 -> 0.51); no collapse events."


def test_headline_single_step(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "metrics.jsonl", [{"step": 7, "entropy/mean": 0.004}])
    text = headline(summarize(load_run(tmp_path)))
    # 0.004 < 0.095 prints with 2 significant digits, not as 0.00
    assert text == "Over 1 step entropy was 0.004 nats; no collapse events."


def test_headline_many_events_rebound_and_negative_a(tmp_path: Path) -> None:
    # Entropy 0.8 -> 0.2 -> 0.6 (bottoms out at step 3) while reward goes 0.9 -> 0.5 -> 0.75:
    # reward rises with entropy, so the fitted a < 0 and the law does not apply. Five points,
    # the minimum for a fit (four give none: checked at the end).
    pts = [(1, 0.8, 0.9), (2, 0.5, 0.7), (3, 0.2, 0.5), (4, 0.6, 0.7), (5, 0.6, 0.75)]
    rows = [{"step": s, "entropy/mean": h, "reward/mean": r} for s, h, r in pts]
    _write_jsonl(tmp_path / "metrics.jsonl", rows)
    events = [
        {"step": s, "rule": f"r{s}", "severity": "critical" if s == 2 else "warning"}
        for s in range(1, 7)
    ]
    _write_jsonl(tmp_path / "events.jsonl", events)
    s = summarize(load_run(tmp_path))
    text = headline(s)
    assert "entropy fell 0.80 -> 0.60 nats (-25%)" in text  # (0.6 - 0.8) / 0.8 = -25%
    assert (
        "6 collapse events (1 critical): step 1 (r1), step 2 (r2, critical), step 3 (r3)," in text
    )
    assert "step 4 (r4) and 2 more." in text
    assert "Entropy bottomed out at 0.20 nats (step 3)." in text
    assert s.fit_key == "reward/mean" and s.fit is not None and s.fit.a < 0
    assert "a < 0 means performance did not rise as entropy fell" in text
    assert "5 points with H in 0.20..0.80" in text
    _write_jsonl(tmp_path / "metrics.jsonl", rows[:4])
    assert summarize(load_run(tmp_path)).fit is None


# ---- the HTML report ------------------------------------------------------------------------


def _assert_self_contained(page: str) -> None:
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, flags=re.IGNORECASE)
    assert refs, "expected embedded images"
    assert all(r.startswith("data:image/png;base64,") for r in refs), refs[:3]
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "url(" not in page.lower() and "@import" not in page.lower()


def test_report_on_two_runs(demo_report: tuple[list[Path], Path]) -> None:
    dirs, html_path = demo_report
    assert html_path.name == "report.html" and html_path.is_file()
    page = html_path.read_text(encoding="utf-8")
    _assert_self_contained(page)
    for slug in [*PANEL_SLUGS, "overview"]:
        png = html_path.parent / f"{slug}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, slug
    assert page.count('src="data:image/png;base64,') == len(PANEL_SLUGS)
    # the overview tiles the 7 panels 2 per row: 4 rows, each panel-wide column + 24 px gaps
    from matplotlib import image as mpimg

    panel = mpimg.imread(html_path.parent / "entropy.png")
    overview = mpimg.imread(html_path.parent / "overview.png")
    assert overview.shape[1] == 2 * panel.shape[1] + 3 * 24
    assert overview.shape[0] >= 4 * panel.shape[0] + 5 * 24
    assert "Skipped" not in page
    for d in dirs:
        rows = _raw_rows(d)
        h0, h1 = rows[0]["entropy/mean"], rows[-1]["entropy/mean"]
        # numbers straight from the files, formatted as the headline does
        assert f"fell {h0:.2f} -&gt; " in page
        assert f"{h1:.2f}" in page if h1 >= 0.095 else f"{h1:.2g}" in page
        events = [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()]
        for ev in events:
            assert f"step {ev['step']} ({ev['rule']}" in page
        label = load_run(d).label
        assert label in page
    assert "2 collapse events (1 critical)" in page
    assert "no collapse events" in page  # the healthy run


def test_report_single_run_truncated_line_empty_events(
    demo_report: tuple[list[Path], Path], tmp_path: Path
) -> None:
    run = tmp_path / "live"
    shutil.copytree(demo_report[0][1], run)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 61, "entropy/mean": 0.0')  # being written right now
    (run / "events.jsonl").write_text("")
    with pytest.warns(TruncatedRunWarning):
        html_path = write_report([run], tmp_path / "out", title="Live <run>")
    page = html_path.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert "<title>Live &lt;run&gt;</title>" in page  # title escaped
    assert "No collapse events in any run." in page
    assert "incomplete last line" in page
    assert "Over 60 steps" in page  # the cut-off step 61 is not counted
    assert (tmp_path / "out" / "entropy_position.png").read_bytes()[:8] == PNG_MAGIC


def test_report_skips_panels_without_metrics(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    rows = [{"step": s, "entropy/mean": 1.0 - 0.1 * s, "acc/train": 0.1 * s} for s in range(1, 6)]
    _write_jsonl(run / "metrics.jsonl", rows)
    html_path = write_report([run], tmp_path / "out")
    page = html_path.read_text(encoding="utf-8")
    _assert_self_contained(page)
    drawn = {"entropy", "reward_accuracy"}
    for slug in PANEL_SLUGS:
        assert (tmp_path / "out" / f"{slug}.png").exists() == (slug in drawn), slug
    assert page.count('src="data:image/png;base64,') == len(drawn)
    assert page.count('class="skip"') == len(PANEL_SLUGS) - len(drawn)
    assert "no run logged eval/pass@k" in page
    assert "no run logged entropy/pos_K" in page
    assert "while train accuracy rose 0.10 -&gt; 0.50" in page


def test_missing_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1, "entropy/mean": 0.5}])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'entropy-rl[report]'")):
        write_report([tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_demo_rejects_tiny_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="steps must be >= 10"):
        make_demo_runs(tmp_path, steps=3)


def test_demo_runs_tell_their_story(demo_report: tuple[list[Path], Path]) -> None:
    healthy, collapsing = (summarize(load_run(d)) for d in demo_report[0])
    assert healthy.n_events == 0 and collapsing.n_critical == 1
    assert healthy.entropy_end is not None and collapsing.entropy_end is not None
    assert healthy.entropy_end > 0.4 and collapsing.entropy_end < 0.1
    assert healthy.fit is not None and collapsing.fit is not None
    assert healthy.fit.ceiling > collapsing.fit.ceiling
    assert math.isfinite(healthy.fit.r2) and healthy.fit.r2 > 0.5


def test_close_events_share_one_label(tmp_path: Path) -> None:
    # Events at steps 60 and 62 on a 0..120 axis are 2 apart < 4% of 120 = 4.8: one label
    # naming both rules, coloured as the worse (critical); step 110 gets its own label.
    from entropy_rl.report._style import SEVERITY_COLORS, mark_events, new_figure

    _write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1}])
    _write_jsonl(
        tmp_path / "events.jsonl",
        [
            {"step": 60, "rule": "entropy_drop", "severity": "warning"},
            {"step": 62, "rule": "entropy_floor", "severity": "critical"},
            {"step": 110, "rule": "entropy_drop", "severity": "warning"},
        ],
    )
    ax = new_figure(6, 3).subplots()
    ax.set_xlim(0, 120)
    mark_events(ax, [load_run(tmp_path)], label=True)
    labels = [(t.get_text().strip(), t.get_color()) for t in ax.texts]
    assert labels == [
        ("entropy_drop, entropy_floor", SEVERITY_COLORS["critical"]),
        ("entropy_drop", SEVERITY_COLORS["warning"]),
    ]
    vlines = [ln for ln in ax.lines if ln.get_marker() in ("None", "", None)]
    assert len(vlines) == 3
