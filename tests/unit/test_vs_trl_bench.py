"""The FLOP count behind benchmarks/vs_trl.py's compute-limit line, with hand-worked numbers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vs_trl.py"


def _load() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))  # as when run as a script: its sibling decode.py
    spec = importlib.util.spec_from_file_location("vs_trl_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


vs = _load()

SMALL = {"matmul_params": 100, "head_params": 10, "layers": 2, "d_attn": 4}


def test_step_flops_hand_worked() -> None:
    # W = 200, Hd = 20, A(ctx) = 2 * 4 * 4 * ctx = 32 ctx
    # prompts: n = 2: 2 * 180 + A(2) * 2 / 2 = 360 + 64 = 424; n = 4: 720 + A(4) * 2 = 976
    # tokens: n_bar 3, c = 8 / 4 = 2, ctx 3 + 1 = 4: 8 * (200 + 128) = 2624
    gen, upd = vs.step_flops(**SMALL, prompt_lens=[2, 4], rows=4, completion_tokens=8, passes=1)
    assert gen == pytest.approx(1400 + 2 * 20 + 2624)  # 4064
    assert upd == pytest.approx(3 * (1400 + 2624))  # 12072
    _, upd2 = vs.step_flops(**SMALL, prompt_lens=[2, 4], rows=4, completion_tokens=8, passes=2)
    assert upd2 == pytest.approx(2 * upd)


def test_step_flops_counts_each_prompt_once() -> None:
    # a longer prompt adds its positions once, whatever the group size: rows 4 -> 8 with the
    # same completion tokens changes only the attention context (c = 1 instead of 2)
    gen4, _ = vs.step_flops(**SMALL, prompt_lens=[4], rows=4, completion_tokens=8, passes=1)
    gen8, _ = vs.step_flops(**SMALL, prompt_lens=[4], rows=8, completion_tokens=8, passes=1)
    # tokens: 8 * (200 + 32 * (4 + 1)) = 2880 at rows 4; 8 * (200 + 32 * 4.5) = 2752 at rows 8
    assert gen4 - gen8 == pytest.approx(2880 - 2752)
