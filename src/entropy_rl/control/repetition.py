"""Repetition in generated completions: how collapse into loops looks to a user.

A policy that degenerates (too high a learning rate, an entropy explosion or collapse) starts
repeating itself: "The answer is 27. The answer is 27. The answer is 27...". Two measures per
completion, over its token ids (EOS included, padding excluded):

* `repeated_ngram_share`, Welleck et al. 2020 ("Neural Text Generation with Unlikelihood
  Training", ICLR; their seq-rep-n): of the L - n + 1 n-grams of a completion of L tokens, the
  share that already occurred earlier in the same completion,

      rep_n = 1 - |distinct n-grams| / (L - n + 1)        (0 when L < n)

  Natural text scores near 0; a completion that loops a unit scores close to 1.
* `longest_repeat`: the length in tokens of the longest stretch in which a unit of p tokens
  (1 <= p <= max_period) repeats back to back, at least twice in full. With r_p the longest run
  of consecutive positions i where t_i = t_{i-p}, the stretch is r_p + p tokens, counted when
  r_p >= p; the result is the maximum over p, 0 when nothing repeats.

`repetition_metrics` aggregates a step's completions: ``gen/repetition`` (mean rep_n, the
metric the collapse detector's ``repetition_rise`` rule reads) and
``gen/longest_repeat`` (mean longest repeat, tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["longest_repeat", "repeated_ngram_share", "repetition_metrics"]


def repeated_ngram_share(ids: torch.Tensor, mask: torch.Tensor, *, n: int = 4) -> torch.Tensor:
    """Share of each row's n-grams that occurred earlier in the row: 1 - distinct / total.

    Args:
        ids: (B, L) token ids.
        mask: (B, L) bool, True on a row's tokens: a prefix of the row (right padding).
        n: n-gram length in tokens.

    Returns:
        (B,) float32 in [0, 1]; 0 for a row with fewer than n tokens.

    Example: tokens a b c a b c a (L = 7), n = 2: the 6 bigrams ab bc ca ab bc ca hold 3
    distinct ones, so 1 - 3 / 6 = 0.5.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = torch.zeros(ids.shape[0])
    for b, row in enumerate(ids.tolist()):
        tokens = row[: int(mask[b].sum())]
        total = len(tokens) - n + 1
        if total > 0:
            distinct = len(set(zip(*(tokens[k:] for k in range(n)), strict=False)))
            out[b] = 1.0 - distinct / total
    return out


def longest_repeat(ids: torch.Tensor, mask: torch.Tensor, *, max_period: int = 32) -> torch.Tensor:
    """Tokens in each row's longest stretch of a p-token unit repeated back to back (>= twice).

    For each period p: eq_i = [t_i = t_{i-p}] on positions where both tokens are real; the run
    ending at i is i - (last position <= i where eq is false); r_p its maximum; the stretch is
    r_p + p when r_p >= p (one full copy after the first), else nothing.

    Args:
        ids: (B, L) token ids.
        mask: (B, L) bool, True on real tokens.
        max_period: longest unit length searched.

    Returns:
        (B,) int64: max over p of r_p + p, 0 when no unit repeats.

    Example: x a b a b a y (L = 7): p = 2 matches at positions 3, 4, 5 (a b a against the
    a b a two earlier), r_2 = 3 >= 2, stretch 3 + 2 = 5 (a b a b a); p = 1 has no match
    and p = 3, 4 no run of >= p matches, so the result is 5.
    """
    if max_period < 1:
        raise ValueError(f"max_period must be >= 1, got {max_period}")
    batch, length = ids.shape
    mask = mask.bool()
    best = torch.zeros(batch, dtype=torch.long)
    for p in range(1, min(max_period, length // 2) + 1):
        eq = (ids[:, p:] == ids[:, :-p]) & mask[:, p:] & mask[:, :-p]  # (B, L - p)
        pos = torch.arange(length - p).expand(batch, -1)
        last_break = torch.where(eq, -1, pos).cummax(dim=1).values  # (B, L - p)
        run = (pos - last_break).max(dim=1).values  # (B,) longest run of matches r_p
        best = torch.maximum(best, torch.where(run >= p, run + p, 0))
    return best


def repetition_metrics(
    completion_ids: Sequence[Sequence[int]], *, n: int = 4, max_period: int = 32
) -> dict[str, float]:
    """``gen/repetition`` (mean repeated n-gram share) and ``gen/longest_repeat`` (mean longest
    repeated stretch, tokens) over a step's completions; {} when there are none."""
    if not completion_ids:
        return {}
    width = max(1, max(len(c) for c in completion_ids))
    ids = torch.zeros(len(completion_ids), width, dtype=torch.long)
    mask = torch.zeros(len(completion_ids), width, dtype=torch.bool)
    for b, c in enumerate(completion_ids):
        ids[b, : len(c)] = torch.tensor(list(c), dtype=torch.long)
        mask[b, : len(c)] = True
    share = repeated_ngram_share(ids, mask, n=n)
    longest = longest_repeat(ids, mask, max_period=max_period)
    return {
        "gen/repetition": float(share.mean()),
        "gen/longest_repeat": float(longest.float().mean()),
    }
