"""Held-out evaluation metrics and the entropy-performance fit.

``eval_summary`` turns n samples per prompt (their correctness, extracted final answers and
completion texts) into the ``eval/*`` and ``acc/eval`` metrics of ``docs/metrics.md``.
``EntropyPerformanceFit`` fits Cui et al.'s law R = -a * exp(H) + b across a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["EntropyPerformanceFit", "eval_summary", "pass_at_k"]


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, Codex).

    pass@k = 1 - C(n-c, k) / C(n, k), the probability that k samples drawn without
    replacement from the n contain at least one correct one. Evaluated as the product
    1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the huge binomials; it is 1 when
    n - c < k (every k-subset holds a correct sample).

    Raises ValueError unless 0 <= c <= n and 1 <= k <= n.
    """
    _check_int("n", n, 1)
    _check_int("c", c, 0)
    _check_int("k", k, 1)
    if c > n:
        raise ValueError(f"c (correct samples) must be <= n, got c={c}, n={n}")
    if k > n:
        raise ValueError(f"k must be <= n (cannot draw {k} of {n} samples)")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _distinct_ngram_ratio(
    texts: Sequence[str], n: int, tokenize: Callable[[str], Sequence[str]]
) -> tuple[int, int]:
    """(#distinct n-grams, #n-grams) pooled over ``texts``."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        toks = list(tokenize(text))
        for i in range(len(toks) - n + 1):
            seen.add(tuple(toks[i : i + n]))
            total += 1
    return len(seen), total


def eval_summary(
    correct: list[list[bool]],
    answers: list[list[str | None]],
    completions: list[list[str]],
    *,
    ks: Sequence[int] = (1, 4, 16),
    greedy_correct: Sequence[bool] | None = None,
    tokenize: Callable[[str], Sequence[str]] = str.split,
) -> dict[str, float]:
    """Evaluation metrics from n samples for each of P held-out prompts.

    Args:
        correct: ``[P][n]`` whether sample j of prompt i is correct.
        answers: ``[P][n]`` the extracted final answer, ``None`` when none could be parsed.
            Answers are compared as given: normalise them in the task's extractor.
        completions: ``[P][n]`` completion texts.
        ks: the k of pass@k; those above n are skipped.
        greedy_correct: optional ``[P]`` correctness of the greedy completion.
        tokenize: splits a completion into units for distinct-2 (default: whitespace
            words; pass ``list`` for characters, e.g. for character-level tasks).

    Returns:
        ``eval/avg@n`` and ``acc/eval``: mean correctness over all P * n samples.
        ``eval/pass@k`` for every k in ``ks`` with k <= n: mean over prompts of
            :func:`pass_at_k` (n, c_i, k).
        ``eval/distinct_answers``: mean over prompts of the number of distinct answers among
            the prompt's *correct* samples (0 for a prompt with none): how many different
            right answers the policy still finds. Diversity collapse drives it towards 1 on
            tasks with many valid answers.
        ``eval/distinct_answers_all``: the same over all samples with a parsed answer.
        ``eval/distinct_2``: mean over prompts of (distinct bigrams / bigrams) pooled over the
            prompt's n completions; prompts whose completions hold no bigram are skipped
            (nan if none has one).
        ``eval/greedy_acc``: mean of ``greedy_correct``, when given.

    All prompts must have the same n >= 1; the three lists must have matching shapes.
    """
    p = len(correct)
    if p == 0:
        raise ValueError("correct is empty: need at least one prompt")
    if len(answers) != p or len(completions) != p:
        raise ValueError(
            f"correct, answers and completions must list the same prompts, got lengths"
            f" {p}, {len(answers)}, {len(completions)}"
        )
    n = len(correct[0])
    if n == 0:
        raise ValueError("prompts need at least one sample, got n = 0")
    for i in range(p):
        sizes = (len(correct[i]), len(answers[i]), len(completions[i]))
        if sizes != (n, n, n):
            raise ValueError(
                f"every prompt needs n = {n} samples in correct/answers/completions;"
                f" prompt {i} has {sizes}"
            )
    for k in ks:
        _check_int("each k in ks", k, 1)
    if greedy_correct is not None and len(greedy_correct) != p:
        raise ValueError(
            f"greedy_correct must have one entry per prompt ({p}), got {len(greedy_correct)}"
        )

    counts = [sum(bool(x) for x in row) for row in correct]
    acc = sum(counts) / (p * n)
    out: dict[str, float] = {f"eval/avg@{n}": acc, "acc/eval": acc}
    for k in sorted(set(ks)):
        if k <= n:
            out[f"eval/pass@{k}"] = sum(pass_at_k(n, c, k) for c in counts) / p

    right = [
        len({a for a, ok in zip(ans, cor, strict=True) if ok and a is not None})
        for ans, cor in zip(answers, correct, strict=True)
    ]
    everything = [len({a for a in ans if a is not None}) for ans in answers]
    out["eval/distinct_answers"] = sum(right) / p
    out["eval/distinct_answers_all"] = sum(everything) / p

    ratios = []
    for texts in completions:
        distinct, total = _distinct_ngram_ratio(texts, 2, tokenize)
        if total > 0:
            ratios.append(distinct / total)
    out["eval/distinct_2"] = sum(ratios) / len(ratios) if ratios else math.nan
    if greedy_correct is not None:
        out["eval/greedy_acc"] = sum(bool(x) for x in greedy_correct) / p
    return out


class EntropyPerformanceFit:
    """Least-squares fit of R = -a * exp(H) + b over the (H, R) points of a run (Cui et al. 2025).

    H is the policy entropy (``entropy/mean``) and R the held-out performance (e.g.
    ``acc/eval``) at the same step. With x = exp(H) this is linear regression R = b + s * x,
    s = -a:  s = sum (x - mean x)(R - mean R) / sum (x - mean x)^2,  b = mean R - s * mean x.
    The predicted ceiling, performance at H = 0 (entropy exhausted), is b - a.
    ``r2`` = 1 - SS_res / SS_tot. All values are nan until 3 points exist whose exp(H) differ
    (relative spread of x above 1e-9); r2 is also nan while every R is equal.
    """

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def add(self, entropy: float, performance: float) -> None:
        """Add one (H, R) point; both must be finite."""
        h, r = float(entropy), float(performance)
        if not (math.isfinite(h) and math.isfinite(r)):
            raise ValueError(
                f"entropy and performance must be finite, got ({entropy}, {performance})"
            )
        self.points.append((h, r))

    def fit(self) -> dict[str, float]:
        """``entropy_law/{a, b, ceiling, r2, n}`` from the points so far."""
        nan = math.nan
        out = {"entropy_law/a": nan, "entropy_law/b": nan, "entropy_law/ceiling": nan}
        out |= {"entropy_law/r2": nan, "entropy_law/n": float(len(self.points))}
        if len(self.points) < 3:
            return out
        xs = [math.exp(h) for h, _ in self.points]
        ys = [r for _, r in self.points]
        m = len(xs)
        mx, my = sum(xs) / m, sum(ys) / m
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx <= (1e-9 * mx) ** 2 * m:
            return out
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        b = my - slope * mx
        a = -slope
        ss_res = sum((y - (b + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
        ss_tot = sum((y - my) ** 2 for y in ys)
        out["entropy_law/a"], out["entropy_law/b"], out["entropy_law/ceiling"] = a, b, b - a
        out["entropy_law/r2"] = 1.0 - ss_res / ss_tot if ss_tot > 0 else nan
        return out

    def state_dict(self) -> dict[str, Any]:
        """The points, as plain lists (JSON- and torch.save-friendly)."""
        return {"points": [list(p) for p in self.points]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; raises ValueError on a malformed dict."""
        try:
            points = [(float(h), float(r)) for h, r in state["points"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an EntropyPerformanceFit state dict: {exc!r}") from exc
        self.points = points
