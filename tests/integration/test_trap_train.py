"""The task hooks in the trainer: trap's start, rollout and evaluation metrics reach the log
(a 2-layer random model, 2 steps); a task without hooks logs none and no extra step-0 row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entropy_rl.train.config import build_config

pytest.importorskip("transformers")


def _run(model_dir: Path, out: Path, task: str, eval_every: int) -> list[dict]:
    from entropy_rl.train.trainer import Trainer

    overrides = {
        "data.task": task, "model.path": str(model_dir), "run.out_dir": str(out),
        "run.steps": 2, "run.progress": False, "run.threads": 1, "rollout.prompts_per_step": 4,
        "rollout.group_size": 4, "rollout.dynamic_sampling": False, "eval.every": eval_every,
        "eval.n_prompts": 16, "eval.samples": 2,
    }  # fmt: skip
    cfg = build_config(preset="ppo", overrides=[f"{k}={v}" for k, v in overrides.items()])
    Trainer(cfg).fit()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_trap_metrics_reach_the_log(tiny_model_dir: Path, tmp_path: Path, capsys):
    rows = _run(tiny_model_dir, tmp_path / "trap", "trap", eval_every=2)
    assert [r["step"] for r in rows] == [0, 1, 2]
    start = rows[0]
    # the exact prior and the step-0 evaluation score the same 16 prompts with the same weights
    assert start["trap/prior_p"] == pytest.approx(start["trap/p_prob_eval"], rel=1e-6)
    assert 0.0 < start["trap/prior_p_min"] <= start["trap/prior_p"] <= start["trap/prior_p_max"]
    assert "start: trap/prior_p " in capsys.readouterr().err
    for row in rows[1:]:
        assert 0.0 <= row["trap/p_frac"] <= row["trap/valid_frac"] <= 1.0
    for key in ("p_frac", "valid_frac", "trapped", "never_p", "distinct_p"):
        assert f"trap/{key}_eval" in rows[2]
    assert "trap/prior_p" not in rows[2]  # measured once, at the start


def test_task_without_hooks_logs_no_step_zero_row(tiny_model_dir: Path, tmp_path: Path):
    rows = _run(tiny_model_dir, tmp_path / "add", "addition", eval_every=0)
    assert [r["step"] for r in rows] == [1, 2]
    assert not any(k.startswith("trap/") for r in rows for k in r)
