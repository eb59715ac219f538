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


def test_help_and_version_import_neither_torch_nor_transformers() -> None:
    """``entropy-rl --help`` / ``--version`` answer at once: the public API loads on use."""
    code = (
        "import sys, contextlib, io\nfrom entropy_rl import cli\n"
        "for argv in (['--version'], ['--help'], ['train', '--help'], ['compare', '--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        cli.main(argv)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]", out.stderr


def test_every_public_name_resolves_lazily() -> None:
    from entropy_rl.ops.losses import policy_loss
    from entropy_rl.train.trainer import Trainer

    assert entropy_rl.policy_loss is policy_loss and entropy_rl.Trainer is Trainer
    for name in entropy_rl.__all__:
        assert getattr(entropy_rl, name).__name__ == name, name
    assert set(entropy_rl.__all__) <= set(dir(entropy_rl))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = entropy_rl.nope
