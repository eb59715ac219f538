"""Combined rewards, reward value checks and repetition metrics through the trainer (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entropy_rl.errors import ConfigError
from entropy_rl.tasks.rewards import RewardTypeError
from entropy_rl.train.config import build_config

pytest.importorskip("transformers")

USER_REWARDS = """
def half(prompt, completion, **fields):
    return 0.5


def length(prompt, completion, **fields):
    return len(completion)


def as_text(prompt, completion, **fields):
    return "1.0"
"""


def _train(model_dir: Path, out: Path, **extra: object):
    from entropy_rl.train.trainer import Trainer

    base = {
        "model.path": str(model_dir), "run.out_dir": str(out), "run.steps": 1,
        "run.progress": False, "run.save_every": 0, "rollout.prompts_per_step": 2,
        "rollout.group_size": 2, "rollout.max_new_tokens": 6, "rollout.dynamic_sampling": False,
        "algo.micro_batch_size": 4, "eval.every": 0, "eval.n_prompts": 2, "eval.samples": 2,
    }  # fmt: skip
    base.update(extra)
    overrides = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in base.items()]
    trainer = Trainer(build_config(preset="grpo", overrides=overrides))
    trainer.fit()
    return trainer, [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_combined_rewards_log_each_term_and_repetition(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "rw_train_mod.py").write_text(USER_REWARDS)
    monkeypatch.chdir(tmp_path)  # found in the current directory, no PYTHONPATH
    _, rows = _train(
        tiny_model_dir, tmp_path / "run",
        **{"data.reward": "[rw_train_mod:half, {fn: rw_train_mod:length, name: len}]",
           "data.reward_weights": [2.0, 0.1]},
    )  # fmt: skip
    row = rows[-1]
    assert row["step"] == 1 and row["reward/half"] == 0.5
    # the total is 2 * 0.5 + 0.1 * len(completion) for each sample, and acc/train counts the
    # first reward (0.5, not > 0.5): no sample is correct
    assert row["reward/mean"] == pytest.approx(1.0 + 0.1 * row["reward/len"], abs=1e-6)
    assert row["acc/train"] == 0.0
    assert 0.0 <= row["gen/repetition"] <= 1.0 and row["gen/longest_repeat"] >= 0.0


def test_correct_reward_picks_what_accuracy_counts(tiny_model_dir: Path, tmp_path: Path):
    rw = tmp_path / "rw.py"
    rw.write_text(USER_REWARDS + "\n\ndef one(prompt, completion, **fields):\n    return True\n")
    _, rows = _train(
        tiny_model_dir, tmp_path / "run",
        **{"data.reward": f"[{rw}:half, {rw}:one]", "data.correct_reward": "one"},
    )  # fmt: skip
    assert rows[-1]["acc/train"] == 1.0 and rows[-1]["reward/mean"] == 1.5  # 0.5 + 1


def test_reward_returning_a_string_stops_the_run(tiny_model_dir: Path, tmp_path: Path):
    rw = tmp_path / "rw.py"
    rw.write_text(USER_REWARDS)
    for on_error in ("raise", "zero"):
        with pytest.raises(RewardTypeError, match=r"reward 'as_text' returned '1.0' of type str"):
            _train(
                tiny_model_dir, tmp_path / f"run_{on_error}",
                **{"data.reward": f"{rw}:as_text", "data.reward_on_error": on_error},
            )  # fmt: skip


def test_word_problems_without_model_path_says_set_it(tmp_path: Path):
    from entropy_rl.train.trainer import Trainer

    cfg = build_config(
        preset="grpo", overrides=["data.task=word_problems", f"run.out_dir={tmp_path / 'r'}"]
    )
    with pytest.raises(ConfigError, match=r"set model\.path"):
        Trainer(cfg)
