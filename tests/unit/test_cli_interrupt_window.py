"""A signal in the window after Trainer() returned and before fit() takes over the handlers
(step 0, nothing trained): the CLI says so in one line and exits as for Ctrl-C."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

import entropy_rl.train.trainer as trainer_module
from entropy_rl.cli import main


class _InterruptedAtOnce:
    """A Trainer whose fit() is interrupted before it installs its signal handlers."""

    def __init__(self, cfg, **kw):
        self.run_dir = Path(cfg.run.out_dir)
        self.dist = SimpleNamespace(is_main=True)
        self.step = 0

    def fit(self):
        raise KeyboardInterrupt


def test_a_signal_before_fit_takes_over_says_nothing_trained(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setattr(trainer_module, "Trainer", _InterruptedAtOnce)
    before = signal.getsignal(signal.SIGTERM)
    try:
        code = main(["train", "--out", str(tmp_path / "run"), "--steps", "1"])
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert code == 130
    assert (
        f"nothing trained yet; continue with: entropy-rl train --resume {tmp_path / 'run'}" in err
    )
    assert "not saved" not in err
