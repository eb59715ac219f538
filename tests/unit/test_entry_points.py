"""`entropy-rl --version`, `python -m entropy_rl` and the one home of the loggers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import entropy_rl
from entropy_rl import cli

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', text, flags=re.M)
    assert match is not None, "pyproject.toml has no version line"
    return match.group(1)


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"entropy-rl {_pyproject_version()}\n"
    assert entropy_rl.__version__ == _pyproject_version()


def test_python_dash_m_runs_the_cli() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-m", "entropy_rl", "explain-clip", "0.4", "--eps-low", "0.2"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    # The seed's example: floor of 0.4 under eps_low 0.2 is 0.8 * 0.4 = 0.32.
    row = next(line.split() for line in out.stdout.splitlines() if line.split()[:1] == ["0.4"])
    assert row[1] == "0.32"
    bad = subprocess.run(
        [sys.executable, "-m", "entropy_rl", "no-such-command"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_loggers_have_one_home() -> None:
    import entropy_rl.integrations as integrations
    import entropy_rl.integrations.trackers as trackers
    import entropy_rl.train.logging as logging_

    for name in trackers.__all__:
        assert getattr(trackers, name) is getattr(logging_, name), name
    for name in ("LOGGER_NAMES", "MLflowLogger", "WandbLogger", "make_loggers"):
        assert getattr(integrations, name) is getattr(logging_, name), name
    source = (ROOT / "src/entropy_rl/train/logging.py").read_text()
    assert "entropy_rl.integrations" not in source  # no import back: no cycle
