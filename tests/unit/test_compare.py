"""compare: run summaries, the range and permutation verdicts, Holm's adjustment, and the table
(hand-made rows)."""

from __future__ import annotations

import math

import pytest

from entropy_rl.experiments.compare import (
    add_learning_speed,
    adjust_family,
    compare_seeds,
    first_reach,
    format_comparison,
    format_reach,
    holm_adjust,
    judged_metrics,
    parse_setting,
    reward_curve,
    steps_to_reference_reward,
    summarise_run,
    table,
    trailing_mean,
    verdict,
)


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
                     "clip/lower_frac": 0.02, "ratio/abs_dev": 0.1,
                     "kl/old_approx": 0.001 * step if step != 3 else None})  # fmt: skip
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
    # steps 1, 2, 4, 5 (step 3 logged no update KL): (1 + 2 + 4 + 5) / 4 x 0.001
    assert s["update_kl"] == pytest.approx(0.003)
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


def test_complete_separation_of_six_seeds_reads_significant():
    # ranges 0.15 and 0.29 cover the gap 0.62 - 0.395 = 0.225, so the range rule says nothing;
    # every other seed is above every reference seed: p = 2 / 924
    ref = [0.31, 0.39, 0.42, 0.46, 0.35, 0.44]
    other = [0.55, 0.58, 0.60, 0.79, 0.50, 0.70]
    assert verdict(ref, other) == "no difference"
    c = compare_seeds(ref, other)
    assert (c["verdict"], c["rule"]) == ("higher", "perm")
    assert c["gap"] == pytest.approx(0.225) and c["p"] == pytest.approx(2 / 924)
    assert 0.0 < c["low"] < 0.225 < c["high"]
    # alone, a family of one: Holm's p is the raw p
    assert format_comparison(c).startswith(
        "higher (perm): +0.225, p 0.0022, Holm 0.0022, 95% CI [+"
    )
    assert compare_seeds(other, ref)["verdict"] == "lower"


def test_single_outlier_is_no_difference():
    # eleven 0s and one 1: every split of the pooled seeds has the same |gap|, p = 1
    c = compare_seeds([0.0] * 6, [0.0] * 5 + [1.0])
    assert (c["verdict"], c["rule"], c["p"]) == ("no difference", "", 1.0)
    assert format_comparison(c).startswith("no difference: +0.167, p 1, Holm 1, 95% CI [+0, +")


def test_range_rule_still_decides_with_three_seeds():
    # gap 0.4 > both ranges (0.2, 0.1): "range", although 3 vs 3 can reach only p = 2/20
    c = compare_seeds([0.3, 0.4, 0.5], [0.75, 0.8, 0.85])
    assert (c["verdict"], c["rule"], c["p"]) == ("higher", "range", pytest.approx(0.1))
    # separated but inside the ranges: p = 0.1 >= 0.05, so no rule fires
    c = compare_seeds([0.3, 0.4, 0.5], [0.55, 0.6, 0.65])
    assert (c["verdict"], c["rule"]) == ("no difference", "")
    c = compare_seeds([1.95], [1.97])
    assert format_comparison(c) == "n/a (1 seed)" and math.isnan(c["p"])


def test_extra_metrics_reach_summary_and_table():
    rows = _rows()
    rows[-1]["trap/p_prob_eval"] = 0.6
    s = summarise_run(rows, extra=("trap/p_prob_eval", "trap/absent"))
    assert s["trap/p_prob_eval"] == 0.6 and math.isnan(s["trap/absent"])
    res = {
        "ppo": [{"trap/p_prob_eval": v} for v in (0.31, 0.39, 0.42, 0.46, 0.35, 0.44)],
        "narrow": [{"trap/p_prob_eval": v} for v in (0.55, 0.58, 0.60, 0.79, 0.50, 0.70)],
    }
    lines = table(res, extra=("trap/p_prob_eval",)).splitlines()
    head = lines[0].split(" | ")
    assert "trap/p_prob_eval" in head and head[-1] == "vs ppo: trap/p_prob_eval |"
    # std: deviations from 0.62 are -.07 -.04 -.02 .17 -.12 .08, sum of squares .0566 / 5 -> .106
    assert "| narrow | 6 |" in lines[3] and "0.62 ± 0.106" in lines[3]
    # the VERDICT_ON columns have no values here: one comparison in the family
    assert "| higher (perm): +0.225, p 0.0022, Holm 0.0022, 95% CI [+" in lines[3]
    assert lines[-1].startswith("Holm: p adjusted over the 1 comparisons of this table")


def test_holm_adjust_hand_worked():
    # sorted 0.01, 0.03, 0.04: 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; max(0.06, 1 x 0.04) = 0.06
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06], abs=1e-15)
    # the running max: 2 x 0.01 = 0.02 > 1 x 0.011, so the second is lifted to 0.02
    assert holm_adjust([0.011, 0.01]) == pytest.approx([0.02, 0.02], abs=1e-15)
    # capped at 1: 2 x 0.6 = 1.2 -> 1
    assert holm_adjust([0.6, 0.7]) == [1.0, 1.0]
    # a comparison that could not be made is not counted: m = 2, [2 x 0.02, max(0.04, 0.5)]
    out = holm_adjust([0.02, math.nan, 0.5])
    assert out[0] == pytest.approx(0.04, abs=1e-15) and math.isnan(out[1]) and out[2] == 0.5
    assert holm_adjust([]) == [] and holm_adjust([0.2]) == [0.2]


def test_the_verdict_uses_the_holm_adjusted_p():
    # 4 vs 4, every "other" seed above every reference seed: p = 2 / C(8, 4) = 2/70 = 0.0286.
    # Gap 0.605 - 0.4125 = 0.1925 is inside the ranges (0.2 and 0.23): only the test decides.
    ref = [0.30, 0.40, 0.45, 0.50]
    other = [0.52, 0.55, 0.60, 0.75]
    alone = compare_seeds(ref, other)
    assert (alone["verdict"], alone["rule"]) == ("higher", "perm")
    assert alone["p"] == alone["p_holm"] == pytest.approx(2 / 70, abs=1e-12)
    # two such comparisons in one family: Holm 2 x 2/70 = 0.057 >= 0.05, so neither stands
    pair = [compare_seeds(ref, other), compare_seeds(ref, other)]
    adjust_family(pair)
    for c in pair:
        assert (c["verdict"], c["rule"]) == ("no difference", "")
        assert c["p"] == pytest.approx(2 / 70) and c["p_holm"] == pytest.approx(4 / 70)
    assert format_comparison(pair[0]).startswith("no difference: +0.193, p 0.029, Holm 0.057")
    # a range verdict is about the gap's size, not a p-value: it stays (gap 1.24 > 0.3)
    far = compare_seeds(ref, [1.5, 1.6, 1.7, 1.8])
    na = compare_seeds([1.0], [2.0])  # n/a: no p, not counted, left alone
    adjust_family([far, na, *pair])
    assert (far["verdict"], far["rule"]) == ("higher", "range")
    assert far["p_holm"] == pytest.approx(3 * 2 / 70) and na["verdict"] == "n/a (1 seed)"


def test_table_adjusts_over_all_its_comparisons():
    # two settings x one metric, both 4 vs 4 complete separations: each raw p 2/70 would pass
    # alone; the table's family of 2 gives Holm 4/70 = 0.057 and no verdict
    res = {
        "ppo": [{"m": v} for v in (0.30, 0.40, 0.45, 0.50)],
        "a": [{"m": v} for v in (0.52, 0.55, 0.60, 0.75)],
        "b": [{"m": v} for v in (0.52, 0.55, 0.60, 0.75)],
    }
    lines = table(res, extra=("m",)).splitlines()
    assert "| no difference: +0.193, p 0.029, Holm 0.057, 95% CI [+" in lines[3]
    assert lines[4].split(" | ")[-1] == lines[3].split(" | ")[-1]
    assert lines[-1].startswith("Holm: p adjusted over the 2 comparisons of this table")


def test_permutation_p_matches_scipy():
    # reference check: scipy's exact permutation test of the difference of means. Its two-sided
    # p is twice the smaller one-sided p, ours counts |d| >= |d_obs|; the two agree when the
    # groups have equal sizes (the null distribution of the gap is then symmetric), which is
    # the case checked here (with unequal sizes they differ: 4 vs 6 seeds can give 0.53 vs 0.58)
    import numpy as np

    stats = pytest.importorskip("scipy.stats")
    cases = [([0.31, 0.39, 0.42, 0.46, 0.35, 0.44], [0.55, 0.58, 0.60, 0.79, 0.50, 0.70]),
             ([0.30, 0.40, 0.45, 0.50], [0.52, 0.55, 0.60, 0.75]),
             ([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 3.0, 4.0, 5.0, 9.0])]  # fmt: skip
    for ref, other in cases:
        ref_p = stats.permutation_test(
            (ref, other), lambda x, y, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis),
            permutation_type="independent", n_resamples=np.inf, vectorized=True,
        ).pvalue  # fmt: skip
        assert compare_seeds(ref, other)["p"] == pytest.approx(ref_p, abs=1e-12)


def test_trailing_mean_hand_worked():
    assert trailing_mean([0.0, 1.0, 2.0, 3.0], 2) == [0.0, 0.5, 1.5, 2.5]
    assert trailing_mean([4.0, 2.0, 0.0], 10) == [4.0, 3.0, 2.0]  # fewer than the window


def test_reward_curve_skips_the_evaluation_only_step_zero():
    rows = [{"step": 0, "acc/eval": 0.1}] + [
        {"step": s, "reward/mean": r} for s, r in zip((1, 2, 3), (0.2, 0.4, 0.9), strict=True)
    ]
    steps, vals = reward_curve(rows, window=2)
    assert steps == [1, 2, 3] and vals == pytest.approx([0.2, 0.3, 0.65])


def test_steps_to_reference_reward_hand_worked():
    # reference ends at 0.6 and 0.8 (target 0.7); "fast" reaches it at steps 2 and 3, "slow"
    # at step 4 on one seed and never on the other
    curves = {
        "ref": [([1, 2, 3, 4], [0.1, 0.3, 0.5, 0.6]), ([1, 2, 3, 4], [0.2, 0.4, 0.7, 0.8])],
        "fast": [([1, 2, 3, 4], [0.5, 0.7, 0.9, 0.9]), ([1, 2, 3, 4], [0.3, 0.6, 0.75, 0.8])],
        "slow": [([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.7]), ([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.69])],
    }
    target, reach = steps_to_reference_reward(curves, "ref")
    assert target == pytest.approx(0.7)
    assert reach["ref"][0] != reach["ref"][0]  # 0.6 never reaches 0.7: nan
    assert reach["ref"][1] == 3.0
    assert reach["fast"] == [2.0, 3.0]
    assert reach["slow"][0] == 4.0 and math.isnan(reach["slow"][1])
    assert format_reach(reach["fast"]) == "2.5 (2/2 seeds)"  # median of 2 and 3
    assert format_reach(reach["slow"]) == "4 (1/2 seeds)"
    assert format_reach([math.nan]) == "never (0/1 seeds)"
    assert format_reach([]) == "n/a"  # a setting with no finished run
    assert math.isnan(first_reach([1, 2], [0.1, 0.2], 0.5))


def test_learning_speed_column_in_the_table():
    rows = {
        "ppo": [[{"step": s, "reward/mean": r} for s, r in enumerate((0.2, 0.5, 0.6), 1)]],
        "narrow": [[{"step": s, "reward/mean": r} for s, r in enumerate((0.1, 0.1, 0.9), 1)]],
    }
    results = {label: [summarise_run(r) for r in runs] for label, runs in rows.items()}
    add_learning_speed(results, rows)
    # ppo's 10-step trailing mean ends at (0.2 + 0.5 + 0.6) / 3 = 0.433; narrow's curve is
    # 0.1, 0.1, 0.367: never reaches it; ppo reaches its own final value at step 3
    assert results["ppo"][0]["ref_reward"] == pytest.approx(1.3 / 3)
    lines = table(results).splitlines()
    assert "steps to ppo's final reward (0.433, 10-step mean)" in lines[0]
    assert "| 3 (1/1 seeds) |" in lines[2] and "| never (0/1 seeds) |" in lines[3]


def test_no_train_summarises_only_finished_runs(tmp_path):
    import json

    from entropy_rl.experiments.compare import Setting, compare

    def write(label: str, seed: int, last: int) -> None:
        d = tmp_path / label / f"seed{seed}"
        d.mkdir(parents=True)
        rows = [
            {"step": s, "entropy/mean": 1.0, "reward/mean": 0.1 * s} for s in range(1, last + 1)
        ]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("ppo", 0, 3)
    write("ppo", 1, 2)  # still running: left out
    write("narrow", 0, 3)
    settings = [Setting("ppo", "ppo"), Setting("narrow", "ppo", ["algo.lr=1"])]
    logged: list[str] = []
    md, results = compare(settings, seeds=3, out_dir=tmp_path, common=[], steps=3, train=False,
                          log=logged.append)  # fmt: skip
    assert logged == []  # nothing started, nothing reused
    assert [len(results["ppo"]), len(results["narrow"])] == [1, 1]
    assert results["narrow"][0]["steps_to_ref_reward"] == 3.0  # 0.2 = ppo's trailing mean at 3
    assert "| ppo | 1 |" in md and (tmp_path / "compare.md").read_text() == md + "\n"


def test_non_finite_metrics_are_named_not_averaged_quietly():
    nan_run = [{"step": s, "reward/mean": None, "entropy/mean": None} for s in (1, 2, 3)]
    ok_run = [{"step": s, "reward/mean": 0.5, "entropy/mean": 1.0} for s in (1, 2, 3)]
    half = [{"step": 1, "reward/mean": 0.5, "entropy/mean": float("nan")},
            {"step": 2, "reward/mean": 0.5, "entropy/mean": 1.0}]  # fmt: skip
    rows = {"ppo": [nan_run, nan_run], "narrow": [ok_run, half]}
    results = {label: [summarise_run(r) for r in runs] for label, runs in rows.items()}
    assert [r["nonfinite_steps"] for r in results["narrow"]] == [0.0, 1.0]
    add_learning_speed(results, rows)
    lines = table(results).splitlines()
    # the reference logged no finite reward: no target to reach, not "never (0/2 seeds)"
    assert "| steps to ppo's final reward (n/a: its runs logged no finite reward) |" in lines[0]
    speed = lines[0].split(" | ").index("steps to ppo's final reward (n/a: its runs logged no "
                                        "finite reward)")  # fmt: skip
    assert [line.split(" | ")[speed] for line in lines[2:4]] == ["n/a", "n/a"]
    assert "never" not in "\n".join(lines)
    assert [x for x in lines if x.startswith("note: ")] == [
        "note: ppo: 6 step(s) in 2 of its 2 seed(s) logged a non-finite reward or entropy (NaN / "
        "inf, null in metrics.jsonl); the means leave those steps out",
        "note: narrow: 1 step(s) in 1 of its 2 seed(s) logged a non-finite reward or entropy (NaN "
        "/ inf, null in metrics.jsonl); the means leave those steps out",
    ]


def test_a_metric_equal_to_another_in_every_run_is_judged_once():
    # one right answer per prompt: distinct = pass@k in every run; eval/pass@4 = pass@k (k = 4);
    # "gone" is missing everywhere (no data: nothing to merge, and no comparison either)
    def run(h: float, pk: float) -> dict:
        return {"final_entropy": h, "pass@k": pk, "distinct": pk, "eval/pass@4": pk}

    results = {"ppo": [run(0.3, 0.8), run(0.4, 0.9), run(0.2, 0.7)],
               "narrow": [run(0.6, 0.9), run(0.7, 0.8), run(0.6, 0.9)]}  # fmt: skip
    judged, notes = judged_metrics(results, ["final_entropy", "pass@k", "distinct",
                                             "eval/pass@4", "gone"])  # fmt: skip
    assert judged == ["final_entropy", "pass@k", "gone"]
    assert notes == ["distinct equals pass@k in every run: judged once, as pass@k",
                     "eval/pass@4 equals pass@k in every run: judged once, as pass@k"]  # fmt: skip
    results["narrow"][0]["distinct"] = 0.95  # one run differs: both are judged
    assert judged_metrics(results, ["pass@k", "distinct"])[0] == ["pass@k", "distinct"]
    md = table({k: v for k, v in results.items()}, extra=["eval/pass@4"])
    # final_entropy, pass@k, distinct (now different): 3 comparisons, not 4
    assert "over the 3 comparisons" in md and "note: eval/pass@4 equals pass@k" in md
    assert md.splitlines()[0].count("eval/pass@4") == 1  # its column, without a verdict column


def test_steps_without_an_update_count_with_the_rollouts_entropy():
    # DAPO: steps 4-5 kept no group, so they logged entropy/rollout only
    rows = [{"step": s, "entropy/mean": h} for s, h in ((1, 1.0), (2, 0.8), (3, 0.6))]
    rows += [{"step": 4, "entropy/rollout": 0.3}, {"step": 5, "entropy/rollout": 0.0}]
    out = summarise_run(rows)
    assert out["final_entropy"] == pytest.approx((0.6 + 0.3 + 0.0) / 3, abs=1e-12)
    assert out["steps_to_collapse"] == 4.0  # 0.3 <= 0.5 x 1.0
    assert summarise_run(rows[:3])["final_entropy"] == pytest.approx(0.8, abs=1e-12)
