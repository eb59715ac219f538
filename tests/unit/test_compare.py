"""compare: run summaries, the seed-range verdict, and the table (hand-made metric rows)."""

from __future__ import annotations

import math

import pytest

from entropy_rl.experiments.compare import parse_setting, summarise_run, table, verdict


def _rows() -> list[dict]:
    rows = [
        {
            "step": 0,
            "acc/eval": 0.3,
            "eval/pass@1": 0.3,
            "eval/pass@8": 0.9,
            "eval/distinct_answers": 6.0,
        }
    ]
    # entropy 1.0, 0.8, 0.6, 0.45, 0.3: half of the first step's 1.0 is first reached at step 4
    for step, h in enumerate([1.0, 0.8, 0.6, 0.45, 0.3], start=1):
        rows.append({"step": step, "entropy/mean": h, "clip/upper_frac": 0.01 * step,
                     "clip/lower_frac": 0.02, "ratio/abs_dev": 0.1})  # fmt: skip
    rows[-1] |= {
        "acc/eval": 0.7,
        "eval/pass@1": 0.7,
        "eval/pass@8": 0.95,
        "eval/distinct_answers": 2.0,
    }
    return rows


def test_summarise_run_hand_worked():
    s = summarise_run(_rows())
    assert s["start_entropy"] == 1.0
    assert s["final_entropy"] == pytest.approx((0.6 + 0.45 + 0.3) / 3)  # last 3 steps
    assert s["steps_to_collapse"] == 4.0  # 0.45 <= 0.5 * 1.0
    assert s["upper_clip"] == pytest.approx(0.03)  # mean of 0.01..0.05
    assert s["lower_clip"] == pytest.approx(0.02)
    assert (s["acc"], s["start_acc"], s["pass@1"], s["pass@k"], s["k"]) == (
        0.7,
        0.3,
        0.7,
        0.95,
        8.0,
    )
    assert (s["distinct"], s["start_distinct"]) == (2.0, 6.0)


def test_never_collapsing_run_reports_nan():
    rows = [{"step": s, "entropy/mean": 1.0 - 0.01 * s} for s in range(1, 6)]
    assert math.isnan(summarise_run(rows)["steps_to_collapse"])


def test_verdict_uses_the_seed_range():
    # ranges: ref 0.30-0.50 (0.2), other 0.55-0.65 (0.1); gap of means 0.6 - 0.4 = 0.2 <= 0.2
    assert verdict([0.3, 0.4, 0.5], [0.55, 0.6, 0.65]) == "no difference"
    # gap 0.8 - 0.4 = 0.4 > 0.2: higher
    assert verdict([0.3, 0.4, 0.5], [0.75, 0.8, 0.85]) == "higher"
    assert verdict([0.75, 0.8, 0.85], [0.3, 0.4, 0.5]) == "lower"
    assert verdict([math.nan], [0.5]) == "n/a"
    # one seed has no range: a gap of 0.02 must not read "higher"
    assert verdict([1.95], [1.97]) == "n/a (1 seed)"
    assert verdict([0.3, 0.4], [0.9, math.nan]) == "n/a (1 seed)"


def test_table_marks_reference_and_formats_spread():
    res = {
        "ppo": [
            {"final_entropy": 0.4, "upper_clip": 0.01},
            {"final_entropy": 0.6, "upper_clip": 0.03},
        ],
        "dapo": [
            {"final_entropy": 0.5, "upper_clip": 0.02},
            {"final_entropy": 0.5, "upper_clip": 0.02},
        ],
    }
    md = table(res)
    lines = md.splitlines()
    assert lines[0].startswith("| setting | seeds | final_entropy")
    assert "| ppo | 2 | 0.5 ± 0.141 |" in lines[2]  # std of (0.4, 0.6) = 0.1414
    assert "(reference)" in lines[2]
    assert "2.0% ± 0.0%" in lines[3] and "no difference" in lines[3]


def test_parse_setting():
    s = parse_setting(["loose", "ppo", "algo.loss_kwargs.eps_high=0.5"])
    assert (s.label, s.preset, s.overrides) == ("loose", "ppo", ["algo.loss_kwargs.eps_high=0.5"])
    with pytest.raises(ValueError, match="LABEL PRESET"):
        parse_setting(["only"])
