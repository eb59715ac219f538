"""Repetition measures of completions (control.repetition) and the detector rule that reads them."""

from __future__ import annotations

import pytest
import torch

from entropy_rl.control.detector import CollapseDetector, DetectorConfig
from entropy_rl.control.repetition import (
    longest_repeat,
    repeated_ngram_share,
    repetition_metrics,
)


def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), 99)  # padding 99 equals itself: the mask must hide it
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = True
    return ids, mask


def test_repeated_ngram_share_hand_values():
    rows = [
        [1, 2, 3, 1, 2, 3, 1],  # bigrams 12 23 31 12 23 31: 3 distinct of 6 -> 1 - 3/6 = 0.5
        [1, 2, 3, 4, 5],  # all distinct -> 0
        [7, 7, 7, 7],  # bigrams 77 77 77: 1 distinct of 3 -> 1 - 1/3
        [5],  # fewer than n tokens: no bigram -> 0
    ]
    ids, mask = _batch(rows)
    got = repeated_ngram_share(ids, mask, n=2)
    torch.testing.assert_close(got, torch.tensor([0.5, 0.0, 2 / 3, 0.0]), atol=1e-7, rtol=0)
    # n = 4 on row 0: 4-grams 1231 2312 3123 1231: 3 distinct of 4 -> 0.25
    assert repeated_ngram_share(ids[:1], mask[:1], n=4).item() == pytest.approx(0.25, abs=1e-7)
    with pytest.raises(ValueError, match="n must be >= 1"):
        repeated_ngram_share(ids, mask, n=0)


def test_longest_repeat_hand_values():
    rows = [
        [8, 1, 2, 1, 2, 1, 9],  # p = 2 matches at 3, 4, 5: r = 3 >= 2 -> 3 + 2 = 5 (1 2 1 2 1)
        [1, 2, 3, 4, 5, 6],  # nothing repeats -> 0
        [4, 4],  # p = 1: r = 1 >= 1 -> 2
        [1, 2, 3, 1, 2],  # p = 3: r = 2 < 3, the unit never repeats in full -> 0
        [1, 2, 3, 1, 2, 3, 1, 2, 3, 1],  # p = 3: r = 7 -> 10 (p = 6: r = 4 < 6)
        [5, 5, 5, 1, 2, 3, 4, 1, 2, 3, 4],  # p = 1: 3; p = 4: r = 4 -> 8; max 8
    ]
    ids, mask = _batch(rows)
    assert longest_repeat(ids, mask, max_period=8).tolist() == [5, 0, 2, 0, 10, 8]
    # a unit longer than max_period is not searched: row 5's 4-token unit with max_period 3
    assert longest_repeat(ids[5:], mask[5:], max_period=3).tolist() == [3]
    with pytest.raises(ValueError, match="max_period must be >= 1"):
        longest_repeat(ids, mask, max_period=0)


def test_padding_is_not_a_repeat():
    ids, mask = _batch([[1, 2], [1, 2, 3, 4, 5, 6, 7, 8]])  # row 0 padded with six 99s
    assert longest_repeat(ids, mask).tolist() == [0, 0]
    assert repeated_ngram_share(ids, mask, n=2).tolist() == [0.0, 0.0]


def test_repetition_metrics_aggregate():
    # shares 0.5 and 0 (n = 2, rows of test_repeated_ngram_share_hand_values): mean 0.25;
    # longest repeats 7 (1 2 3 1 2 3 1: p = 3 matches at 3..6, r = 4 -> 4 + 3) and 0: mean 3.5
    got = repetition_metrics([[1, 2, 3, 1, 2, 3, 1], [1, 2, 3, 4, 5]], n=2)
    assert got == {"gen/repetition": 0.25, "gen/longest_repeat": 3.5}
    assert repetition_metrics([]) == {}
    assert repetition_metrics([[]]) == {"gen/repetition": 0.0, "gen/longest_repeat": 0.0}


def _looping_completion(loop_len: int, length: int = 40, offset: int = 0) -> list[int]:
    """`length` tokens: distinct tokens, then a 5-token unit (10..14) repeated for the last
    `loop_len` tokens."""
    prefix = [100 + offset * 1000 + i for i in range(length - loop_len)]
    return prefix + [10 + i % 5 for i in range(loop_len)]


def test_looping_completion_measures():
    # loop of R = 14 tokens in 40: of the 37 4-grams, those inside the loop start at loop
    # offsets 0..R-4, and the ones at 5..R-4 repeat the 4-gram 5 tokens earlier: R - 8 = 6
    # -> 6 / 37 (the 4-grams across the prefix/loop border are distinct); stretch 14 tokens
    c = _looping_completion(14)
    got = repetition_metrics([c])
    assert got["gen/repetition"] == pytest.approx(6 / 37, abs=1e-7)
    assert got["gen/longest_repeat"] == 14.0


def test_detector_fires_when_completions_start_looping():
    # 8 completions per step, each 40 tokens ending in a loop of R tokens: gen/repetition =
    # (R - 8) / 37. Flat run: R = 14 every step (6/37 = 0.162). Looping run: R = 14 up to step
    # 5, then 2 more tokens per step: R - 8 = 6 + 2 (k - 5), a rise of 2 (k - 5) / 37 that
    # passes repetition_rise_threshold = 0.2 at k = 9 (8 / 37 = 0.216; k = 8 gives 0.162).
    def stream(looping: bool) -> list[dict[str, float]]:
        rows = []
        for k in range(1, 16):
            loop = 14 + (2 * max(0, k - 5) if looping else 0)
            comps = [_looping_completion(loop, offset=j) for j in range(8)]
            rows.append({"step": k, **repetition_metrics(comps)})
        return rows

    looping = stream(True)
    assert looping[8]["gen/repetition"] - looping[0]["gen/repetition"] == pytest.approx(8 / 37)
    cfg = DetectorConfig()
    assert cfg.repetition_rise_threshold == 0.2
    det = CollapseDetector(cfg, total_steps=15)
    events = [e for row in looping for e in det.observe(row)]
    assert [(e.step, e.rule, e.severity) for e in events] == [(9, "repetition_rise", "warning")]
    assert events[0].values == pytest.approx(
        {"repetition": 14 / 37, "repetition_initial": 6 / 37, "rise": 8 / 37}
    )  # R = 22 at k = 9: (22 - 8) / 37
    assert events[0].message == (
        "gen/repetition (share of repeated 4-grams) rose to 0.378 from 0.162 (+0.216 > 0.2):"
        " the model loops"
    )
    det = CollapseDetector(DetectorConfig(), total_steps=15)
    assert [e for row in stream(False) for e in det.observe(row)] == []
