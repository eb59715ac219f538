"""Pretraining with the shipped settings reproduces the shipped starting point (slow: minutes).

Run with ``pytest -m slow tests/integration/test_pretrain.py``.
"""

from __future__ import annotations

import json

import pytest

from entropy_rl.tasks.pretrain import builtin_checkpoint, pretrain

# Allowed gap between a fresh run and the shipped pretrain.json. With the recorded seed and
# thread count the run is deterministic on one machine (the shipped runs reproduced their
# exploration runs' losses to 4 decimals); the tolerances are for other BLAS / CPUs, where
# float order changes the trajectory. Both checkpoints stop mid-way up a steep accuracy curve:
# in the explored addition run, 25 steps moved T = 1 accuracy by up to 0.17 and greedy by up
# to 0.16 (128 prompts); digitsum greedy is over only 16 prompts and moved 0.44 -> 0.81 ->
# 0.75 between steps 400, 450 and 500, while its T = 1 validity moved 0.23 -> 0.31 -> 0.32.
TOL = {
    "addition": {"greedy_acc": 0.2, "sample_acc": 0.2, "entropy_mean": 0.12},
    "digitsum": {"greedy_acc": 0.3, "sample_acc": 0.08, "entropy_mean": 0.05},
}


@pytest.mark.slow
@pytest.mark.parametrize("task_name", ["addition", "digitsum"])
def test_pretrain_reproduces_shipped_start(task_name, tmp_path):
    shipped = json.loads((builtin_checkpoint(task_name) / "pretrain.json").read_text())
    settings = dict(shipped["settings"])
    settings.pop("betas")
    record = pretrain(
        task_name,
        out_dir=tmp_path,
        task_kwargs=shipped["task_kwargs"],
        eval_samples=int(shipped["start"]["n_samples"]),
        **settings,
    )
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "pretrain.json").read_text())["start"] == record["start"]
    for key, tol in TOL[task_name].items():
        got, want = record["start"][key], shipped["start"][key]
        assert abs(got - want) <= tol, f"{task_name} {key}: got {got:.3f}, shipped {want:.3f}"
