"""The FLOP count behind vs_trl.py's compute-limit line (benchmarks/step_limit.py), with
hand-worked numbers."""

from __future__ import annotations

import pytest

from benchmark_scripts import load_benchmark

sl = load_benchmark("step_limit")

SMALL = {"matmul_params": 100, "head_params": 10, "layers": 2, "d_attn": 4}


def test_step_flops_hand_worked() -> None:
    # W = 200, Hd = 20, A(ctx) = 2 * 4 * 4 * ctx = 32 ctx
    # prompts: n = 2: 2 * 180 + A(2) * 2 / 2 = 360 + 64 = 424; n = 4: 720 + A(4) * 2 = 976
    # T = 8 over 4 rows: F = 4 fed, c = 2, context 3 + 1 = 4: A = 128
    gen, upd = sl.step_flops(**SMALL, prompt_lens=[2, 4], rows=4, completion_tokens=8, passes=1)
    assert gen == pytest.approx(1400 + 2 * 20 + 4 * (200 + 128))  # 2752
    assert upd == pytest.approx(3 * (1400 + 4 * (180 + 128) + 8 * 20))  # 8376
    _, upd2 = sl.step_flops(**SMALL, prompt_lens=[2, 4], rows=4, completion_tokens=8, passes=2)
    assert upd2 == pytest.approx(2 * upd)


def test_step_flops_counts_each_prompt_once() -> None:
    # twice the rows at the same completion length (2 tokens a row): the prompt's work is
    # counted once either way, so only the 4 more fed tokens differ: 4 * (200 + A(4 + 1))
    gen4, upd4 = sl.step_flops(**SMALL, prompt_lens=[4], rows=4, completion_tokens=8, passes=1)
    gen8, upd8 = sl.step_flops(**SMALL, prompt_lens=[4], rows=8, completion_tokens=16, passes=1)
    assert gen8 - gen4 == pytest.approx(4 * (200 + 160))
    # update: 4 more fed tokens (no head) and 8 more heads
    assert upd8 - upd4 == pytest.approx(3 * (4 * (180 + 160) + 8 * 20))
