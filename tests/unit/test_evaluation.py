"""Tests for entropy_rl.control.evaluation."""

from __future__ import annotations

import math
from itertools import combinations

import pytest

from entropy_rl.control.evaluation import EntropyPerformanceFit, eval_summary, pass_at_k


def test_pass_at_k_hand_values() -> None:
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-15)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-15)  # pass@1 = c / n
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every 3-subset holds a correct one


def test_pass_at_k_matches_exact_binomials_and_enumeration() -> None:
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    # brute force over subsets for one case: n=6, c=2 (samples 0 and 1 correct), k=3
    subsets = list(combinations(range(6), 3))
    hit = sum(1 for s in subsets if 0 in s or 1 in s) / len(subsets)
    assert pass_at_k(6, 2, 3) == pytest.approx(hit, abs=1e-15)
    # large n stays finite where C(n, k) would overflow a float
    # n=2000, c=1, k=1000: 1 - C(1999,1000)/C(2000,1000) = 1 - 1000/2000 = 0.5
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5, abs=1e-12)
    assert 0.0 < pass_at_k(2000, 3, 10) < 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, 1, 5), (4, 1, 0), (0, 0, 1), (4, -1, 1)])
def test_pass_at_k_bad_input(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_eval_summary_hand_worked() -> None:
    correct = [[True, False, True, True], [False, False, False, True]]
    answers = [["12", "7", "21", "12"], [None, "3", "3", "5"]]
    completions = [["a b c", "a b a b", "x", "a b"], ["p q", "p q", "p q", "r s t"]]
    out = eval_summary(
        correct, answers, completions, ks=(1, 2, 4, 16), greedy_correct=[True, False]
    )
    # 4 of 8 correct
    assert out["eval/avg@4"] == pytest.approx(0.5)
    assert out["acc/eval"] == pytest.approx(0.5)
    assert out["eval/pass@1"] == pytest.approx(0.5)
    # pass@2: prompt 0 (c=3): 1 - C(1,2)/C(4,2) = 1; prompt 1 (c=1): 1 - C(3,2)/C(4,2) = 0.5
    assert out["eval/pass@2"] == pytest.approx(0.75)
    assert out["eval/pass@4"] == pytest.approx(1.0)
    assert "eval/pass@16" not in out  # k > n is skipped
    # correct answers: prompt 0 {"12", "21"} -> 2, prompt 1 {"5"} -> 1: mean 1.5
    assert out["eval/distinct_answers"] == pytest.approx(1.5)
    # all parsed answers: {"12","7","21"} -> 3, {"3","5"} -> 2 (None not counted): mean 2.5
    assert out["eval/distinct_answers_all"] == pytest.approx(2.5)
    # prompt 0 bigrams: (a b)(b c) | (a b)(b a)(a b) | - | (a b) -> 6 bigrams, 3 distinct = 0.5
    # prompt 1: (p q) x3, (r s)(s t) -> 5 bigrams, 3 distinct = 0.6; mean 0.55
    assert out["eval/distinct_2"] == pytest.approx(0.55)
    assert out["eval/greedy_acc"] == pytest.approx(0.5)


def test_eval_summary_character_units_and_no_bigrams() -> None:
    out = eval_summary([[True, True]], [["1", "1"]], [["12", "12"]], ks=(1,), tokenize=list)
    # chars: "12" -> (1,2) twice: 1 distinct of 2
    assert out["eval/distinct_2"] == pytest.approx(0.5)
    assert out["eval/distinct_answers"] == 1.0
    words = eval_summary([[True, True]], [["1", "1"]], [["12", "12"]], ks=(1,))
    assert math.isnan(words["eval/distinct_2"])  # one word each: no bigram at all


def test_eval_summary_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same prompts"):
        eval_summary([[True]], [], [["x"]])
    with pytest.raises(ValueError, match="prompt 1"):
        eval_summary([[True], [True, False]], [["1"], ["1", "2"]], [["x"], ["x", "y"]])
    with pytest.raises(ValueError, match="empty"):
        eval_summary([], [], [])
    with pytest.raises(ValueError, match="ks"):
        eval_summary([[True]], [["1"]], [["x"]], ks=(0,))
    with pytest.raises(ValueError, match="greedy_correct"):
        eval_summary([[True]], [["1"]], [["x"]], greedy_correct=[True, True])


def test_entropy_performance_fit_recovers_known_law() -> None:
    a, b = 0.3, 0.9
    fit = EntropyPerformanceFit()
    for h in (0.1, 0.3, 0.5, 0.7, 1.0):
        fit.add(h, -a * math.exp(h) + b)
    out = fit.fit()
    assert out["entropy_law/a"] == pytest.approx(a, abs=1e-12)
    assert out["entropy_law/b"] == pytest.approx(b, abs=1e-12)
    assert out["entropy_law/ceiling"] == pytest.approx(0.6, abs=1e-12)  # b - a
    assert out["entropy_law/r2"] == pytest.approx(1.0, abs=1e-12)
    assert out["entropy_law/n"] == 5.0


def test_entropy_performance_fit_hand_worked_noisy() -> None:
    # x = exp(H) = 1, 2, 3 (H = 0, ln 2, ln 3); R = 1, 0, 0.5
    # mean x = 2, mean R = 0.5; Sxy = (-1)(0.5) + 0 + (1)(0) = -0.5; Sxx = 2 -> slope -0.25
    # a = 0.25, b = 0.5 + 0.25 * 2 = 1.0; fitted 0.75, 0.5, 0.25 -> residuals 0.25, -0.5, 0.25
    # SS_res = 0.0625 + 0.25 + 0.0625 = 0.375; SS_tot = 0.25 + 0.25 + 0 = 0.5 -> r2 = 0.25
    fit = EntropyPerformanceFit()
    for h, r in ((0.0, 1.0), (math.log(2), 0.0), (math.log(3), 0.5)):
        fit.add(h, r)
    out = fit.fit()
    assert out["entropy_law/a"] == pytest.approx(0.25, abs=1e-12)
    assert out["entropy_law/b"] == pytest.approx(1.0, abs=1e-12)
    assert out["entropy_law/r2"] == pytest.approx(0.25, abs=1e-12)


def test_entropy_performance_fit_needs_points_and_spread() -> None:
    fit = EntropyPerformanceFit()
    fit.add(0.5, 0.2)
    fit.add(0.6, 0.3)
    assert math.isnan(fit.fit()["entropy_law/a"])  # 2 points
    flat = EntropyPerformanceFit()
    for r in (0.1, 0.2, 0.3):
        flat.add(0.5, r)
    assert math.isnan(flat.fit()["entropy_law/ceiling"])  # no spread in H
    with pytest.raises(ValueError, match="finite"):
        flat.add(math.nan, 0.1)
    restored = EntropyPerformanceFit()
    restored.load_state_dict(fit.state_dict())
    restored.add(0.7, 0.1)
    fit.add(0.7, 0.1)
    assert restored.fit() == fit.fit()
    with pytest.raises(ValueError, match="state"):
        restored.load_state_dict({})
