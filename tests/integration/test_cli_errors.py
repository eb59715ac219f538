"""What the CLI does with errors: a UserError (the user's to fix) is one line on stderr and exit
code 2; anything else is our bug and keeps its traceback. Model paths are checked locally
before transformers (and its hub retries) sees them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entropy_rl import cli
from entropy_rl.errors import MissingExtraError, UserError
from entropy_rl.models import check_model_dir, is_local_path

pytest.importorskip("transformers")


def _train_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, *overrides: str) -> str:
    """Run ``entropy-rl train`` in-process; assert exit 2 and one stderr line; return it."""
    t0 = time.perf_counter()
    rc = cli.main(["train", "--out", str(tmp_path / "run"), "--no-progress", *overrides])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("entropy-rl train: error: ")
    assert took < 10  # no hub retries
    assert not (tmp_path / "run").exists()  # nothing left behind
    return lines[0]


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    return d


def test_is_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for local in ("/abs/model", "./m", "../m", "~/m", ".", "a/b/c"):
        assert is_local_path(local), local
    for hub in ("gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert not is_local_path(hub), hub
    (tmp_path / "HuggingFaceTB").mkdir()  # the first component exists here: local
    assert is_local_path("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_missing_model_paths_fail_at_once(capsys, tmp_path, monkeypatch) -> None:
    line = _train_error(capsys, tmp_path, "model.path=/no/such/model")
    assert "model.path /no/such/model: no such directory" in line
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for rel in ("./nope", "../nope-xyz", "runs/nope"):  # relative, first component exists
        line = _train_error(capsys, tmp_path, f"model.path={rel}")
        assert f"model.path {rel}: no such directory" in line, line


def test_broken_model_directories_name_what_is_wrong(capsys, tmp_path, model_copy) -> None:
    weights = next(model_copy.glob("*.safetensors"))
    (model_copy / "config.json").write_text("{not json")
    line = _train_error(capsys, tmp_path, f"model.path={model_copy}")
    assert f"{model_copy / 'config.json'} is not valid JSON" in line
    (model_copy / "config.json").write_text("[1, 2]")
    assert "must hold a JSON object" in _train_error(capsys, tmp_path, f"model.path={model_copy}")
    (model_copy / "config.json").unlink()
    assert "no config.json there" in _train_error(capsys, tmp_path, f"model.path={model_copy}")
    assert "is a file" in _train_error(capsys, tmp_path, f"model.path={weights}")


def test_missing_tokenizer_and_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    assert check_model_dir(d) == d
    for f in d.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(UserError, match="no tokenizer there"):
        check_model_dir(d)
    shutil.copytree(tiny_model_dir, tmp_path / "w")
    next((tmp_path / "w").glob("*.safetensors")).unlink()
    with pytest.raises(UserError, match="no weights there"):
        check_model_dir(tmp_path / "w")


def test_a_bug_keeps_its_traceback(monkeypatch, tiny_model_dir, tmp_path) -> None:
    """A ValueError from inside training is ours, not the user's: it propagates."""
    import entropy_rl.train.trainer as trainer_module

    def broken_fit(self: object) -> dict[str, float]:
        raise ValueError("too many dimensions 'str'")  # issue 10's chat-path bug, say

    monkeypatch.setattr(trainer_module.Trainer, "fit", broken_fit)
    with pytest.raises(ValueError, match="too many dimensions"):
        cli.main(["train", "--out", str(tmp_path / "r"), f"model.path={tiny_model_dir}"])


def test_missing_extra_is_one_line_naming_it(capsys, monkeypatch, tmp_path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "entropy/mean": 0.5}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import -> ImportError
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["entropy-rl report: error: the entropy-rl report needs matplotlib: "
                   "pip install 'entropy-rl[report]'"]  # fmt: skip
    assert issubclass(MissingExtraError, ImportError)  # `except ImportError` callers still work


def test_user_errors_of_other_commands(capsys, tmp_path) -> None:
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["compare", "--out", str(tmp_path)]) == 2
    assert "give at least one --preset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: usage + one error line, exit 2
        cli.main(["explain-clip", "0.9", "1.5"])
    assert e.value.code == 2 and "must be a probability in (0, 1]" in capsys.readouterr().err


def test_subprocess_missing_model_exit_2_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "entropy_rl.cli", "train", "--out", str(tmp_path / "r"),
           "model.path=/no/such/model"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "entropy-rl train: error: model.path /no/such/model: no such directory (a local path "
        "must exist; a hub id looks like org/name)"
    ]


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model is loaded: these mistakes are decided by the config alone."""
    import entropy_rl.train.trainer as trainer_module

    def load_model(cfg: object) -> None:
        raise AssertionError("the model was loaded before the config was refused")

    monkeypatch.setattr(trainer_module, "load_model", load_model)


def _files(tmp_path: Path) -> dict[str, Path]:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_bytes(b"run:\n  steps: 1\n  name: \xff\n")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_bytes(b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "\xfe", "answer": "1"}\n')
    null = tmp_path / "null.jsonl"
    null.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": null, "answer": "1"}\n')
    return {"bad_yaml": bad_yaml, "bad_jsonl": bad_jsonl, "null": null}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--preset", "grpo", "rollout.group_size=1"], "algo: scale_by_std needs group_size >= 2 "
         "(the std of one sample is undefined) (rollout.group_size=1)"),
        (["algo.lr=.nan"], "algo.lr must be a finite number, got nan"),
        (["algo.lr=.inf"], "algo.lr must be a finite number, got inf"),
        (["algo.betas=[0.9, 0.99"], "override 'algo.betas=[0.9, 0.99': the value is not valid YAML "
         "(expected ',' or ']', but got '<stream end>'); write plain values, e.g. "
         "algo.betas=[0.9,0.99] (quote the whole override for the shell)"),
        (["algo.lr=!!python/object/apply:os.system [echo]"], "the value is not valid YAML (could not "
         "determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system')"),
        (["algo.mini_batches=1000"], "algo.mini_batches=1000 exceeds the 256 completions of a step "
         "(rollout.prompts_per_step x rollout.group_size); use at most 256"),
        (["--config", "{bad_yaml}"], "config file {bad_yaml} is not UTF-8 text (byte 0xff at offset "
         "24); save it as UTF-8"),  # "run:\n" 5 + "  steps: 1\n" 11 + "  name: " 8 bytes
        (['data.task=""', "data.prompts={bad_jsonl}", "data.reward=last_number"],
         "{bad_jsonl}:2 is not UTF-8 text (byte 0xfe); save the file as UTF-8"),
        (['data.task=""', "data.prompts={null}", "data.reward=last_number"],
         "{null}:2: the prompt column 'prompt' holds null; every record needs a prompt text"),
    ],
)  # fmt: skip
def test_mistakes_the_config_alone_decides_end_in_one_line_before_the_model_loads(
    capsys, tmp_path, no_model_load, args: list[str], expected: str
) -> None:
    files = _files(tmp_path)
    line = _train_error(capsys, tmp_path, *[a.format(**files) for a in args])
    assert expected.format(**files) in line, line


def test_an_out_that_is_a_file_or_below_one_is_named(capsys, tmp_path, no_model_load) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)  # an executable: os.access said "Permission denied", the wrong reason
    for out, what in ((tool, "is a file"), (tool / "sub", f"cannot be made: {tool} is a file")):
        rc = cli.main(["train", "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err == [
            f"entropy-rl train: error: run directory {out} {what}, not a folder; choose another --out"
        ]


def test_a_damaged_model_directory_is_named_before_transformers_reads_it(
    capsys, tmp_path, model_copy
) -> None:
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    line = _train_error(capsys, tmp_path, f"model.path={model_copy}")
    assert line == (
        f"entropy-rl train: error: {weights} is damaged ({len(data) // 2} bytes, its header "
        f"describes {len(data)}); download or save the model again"
    )
    weights.write_bytes(data)
    cfg = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen9"}))
    line = _train_error(capsys, tmp_path, f"model.path={model_copy}")
    assert "config.json: model_type 'qwen9' is not one this transformers knows" in line


def test_compare_no_train_on_a_missing_out_is_one_line(capsys, tmp_path) -> None:
    out = tmp_path / "nope"
    assert cli.main(["compare", "--preset", "grpo", "--no-train", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"entropy-rl compare: error: --no-train summarises the runs under --out {out}, which is "
        "not a folder; give the --out of an earlier compare"
    ]


def test_an_unreachable_dataset_is_one_line(capsys, tmp_path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args: object, **kwargs: object) -> None:  # what datasets raises offline
        raise ConnectionError("Couldn't reach 'no/such' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    line = _train_error(capsys, tmp_path, 'data.task=""', "data.dataset=no/such",
                        "data.reward=last_number")  # fmt: skip
    assert line == (
        "entropy-rl train: error: data.dataset='no/such' could not be loaded (Couldn't reach "
        "'no/such' on the Hub (LocalEntryNotFoundError)); check the name, that the hub is "
        "reachable, or give a local path (or data.prompts=FILE.jsonl)"
    )
