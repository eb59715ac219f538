"""The CUDA checks of scripts/gpu_check.py as tests (marker ``cuda``; they skip without a GPU):
fused log-prob + entropy in bf16 and fp32 against float64, token statistics under bf16
autocast, the KV engine against the model's forward, and RL steps in bf16 mixed precision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402

NO_CUDA = "needs a CUDA GPU: run scripts/gpu_check.sh on one"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("name", list(gpu_check.CHECKS))
def test_cuda_check(name: str) -> None:
    gpu_check.CHECKS[name]("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_script_says_no_cuda_and_exits_0() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == (
        "gpu_check: no CUDA device here: nothing checked (use --device cpu to debug)"
    )
