"""`entropy-rl train` argument parsing: overrides may come before, between or after options."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from entropy_rl import cli


class _FakeTrainer:
    """Stands in for train.trainer.Trainer: records the config, trains nothing."""

    seen: ClassVar[list[Any]] = []

    def __init__(self, cfg: Any, resume: bool = False, allow_config_change: bool = False) -> None:
        _FakeTrainer.seen.append(cfg)
        self.run_dir = Path(cfg.run.out_dir)
        self.dist = SimpleNamespace(is_main=True)
        self.step = 0

    def fit(self) -> dict[str, float]:
        return {}


def test_overrides_after_options_are_overrides(monkeypatch, tmp_path) -> None:
    import entropy_rl.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "Trainer", _FakeTrainer)
    _FakeTrainer.seen.clear()
    argv = ["train", "--preset", "ppo", "algo.lr=3e-4", "--steps", "7", "--out", str(tmp_path),
            "eval.every=0", "--no-progress", "data.task=wordpick"]  # fmt: skip
    assert cli.main(argv) == 0
    cfg = _FakeTrainer.seen[-1]
    assert (cfg.algo.lr, cfg.eval.every, cfg.data.task, cfg.run.steps) == (3e-4, 0, "wordpick", 7)


def test_stray_arguments_still_fail(monkeypatch, capsys) -> None:
    import entropy_rl.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "Trainer", _FakeTrainer)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--steps", "2", "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a word without "=" after an option is not an override
        cli.main(["train", "algo.lr=1", "--steps", "2", "oops"])
    with pytest.raises(SystemExit):  # only train takes section.key=value overrides
        cli.main(["presets", "algo.lr=1"])


def test_the_cli_module_does_not_load_torch() -> None:
    """OMP_WAIT_POLICY, set in cli.main, only acts if it is set before torch loads OpenMP."""
    import subprocess
    import sys

    code = "import entropy_rl.cli, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
