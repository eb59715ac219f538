"""The run directory under real training (2-layer random model): evaluation that never changes
training, one process per run, recovery from kills, damage, a full disk, config changes and a
malicious state file."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from entropy_rl.errors import UserError
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.config import build_config
from entropy_rl.train.rundir import RunDirWarning

pytest.importorskip("transformers")

NOT_COMPARED = ("time/", "throughput/")
EVAL_KEYS = ("acc/eval", "eval/", "entropy_law/")


def _overrides(model_dir: Path, out: Path, steps: int = 3, **extra: object) -> list[str]:
    base = {
        "model.path": str(model_dir), "run.out_dir": str(out), "run.steps": steps,
        "run.progress": False, "run.save_every": 2, "run.threads": 1,
        "rollout.prompts_per_step": 2, "rollout.group_size": 4, "rollout.dynamic_sampling": False,
        "algo.micro_batch_size": 8, "algo.warmup_steps": 1, "algo.lr": 1e-3,
        "eval.every": 2, "eval.n_prompts": 2, "eval.samples": 2,
    } | extra  # fmt: skip
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in base.items()]


def _trainer(model_dir: Path, out: Path, steps: int = 3, *, resume: bool = False,
             allow: bool = False, **extra: object):  # fmt: skip
    from entropy_rl.train.trainer import Trainer

    cfg = build_config(preset="dapo", overrides=_overrides(model_dir, out, steps, **extra))
    return Trainer(cfg, resume=resume, allow_config_change=allow)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_numbers(a: list[dict], b: list[dict], *, ignore: tuple[str, ...] = EVAL_KEYS) -> None:
    """Rows of equal steps carry the same keys and bitwise equal numbers (time and the keys
    starting with ``ignore`` excepted)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    skip = NOT_COMPARED + ignore
    for ra, rb in zip(a, b, strict=True):
        ka = {k: v for k, v in ra.items() if not k.startswith(skip)}
        kb = {k: v for k, v in rb.items() if not k.startswith(skip)}
        assert ka == kb, ra["step"]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return ckpt.load_weights(run / "checkpoints" / f"step_{step:06d}")


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- evaluation


def test_training_does_not_depend_on_eval_every(tiny_model_dir: Path, tmp_path: Path):
    every = {}
    for n in (0, 1):
        _trainer(tiny_model_dir, tmp_path / f"e{n}", 3, **{"eval.every": n}).fit()
        every[n] = _rows(tmp_path / f"e{n}" / "metrics.jsonl")
    assert "acc/eval" in every[1][-1] and "acc/eval" not in every[0][-1]
    _same_numbers([r for r in every[1] if r["step"] > 0], every[0])
    _same_weights(_weights(tmp_path / "e0", 3), _weights(tmp_path / "e1", 3))


def test_stop_and_extend_equals_unbroken_after_a_final_evaluation(
    tiny_model_dir: Path, tmp_path: Path
):
    full, part = tmp_path / "full", tmp_path / "part"
    _trainer(tiny_model_dir, full, 5).fit()
    _trainer(tiny_model_dir, part, 3).fit()  # step 3 is its last: it evaluates there
    assert "acc/eval" in _rows(part / "metrics.jsonl")[-1]
    _trainer(tiny_model_dir, part, 5, resume=True).fit()  # run.steps 3 -> 5: no flag needed
    a, b = _rows(full / "metrics.jsonl"), _rows(part / "metrics.jsonl")
    _same_numbers(a, b)  # training numbers, every step
    # evaluations too, but the running entropy-law fit, which got one more point at step 3
    _same_numbers([r for r in a if r["step"] != 3], [r for r in b if r["step"] != 3],
                  ignore=("entropy_law/",))  # fmt: skip
    _same_weights(_weights(full, 5), _weights(part, 5))
    assert sorted(p.name for p in part.glob("config*")) == ["config.step_3.yaml", "config.yaml"]


# ----------------------------------------------------------------------------- one process


def test_a_second_trainer_on_a_directory_in_use_is_refused(tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    first = _trainer(tiny_model_dir, out, 2)
    assert (out / "events.jsonl").read_text() == ""  # exists from the start
    with pytest.raises(UserError, match=f"in use by process {os.getpid()} "):
        _trainer(tiny_model_dir, out, 2, resume=True)
    first.fit()  # its lock is released when training ends
    assert _trainer(tiny_model_dir, out, 3, resume=True).step == 2


# ----------------------------------------------------------------------------- recovery


def test_resume_without_a_checkpoint_starts_again_from_step_0(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "run"
    killed = _trainer(tiny_model_dir, out, 2, **{"run.save_every": 0})
    killed.save = lambda: None  # type: ignore[method-assign]  # died before any checkpoint
    killed.fit()
    lost = _rows(out / "metrics.jsonl")
    with pytest.raises(UserError, match=r"already holds a run \(2 logged step\(s\)\); continue"):
        _trainer(tiny_model_dir, out, 2)
    again = _trainer(tiny_model_dir, out, 2, resume=True, **{"run.save_every": 0})
    assert again.step == 0
    assert "starting the run again from step 0 (2 logged step(s) moved to metrics.jsonl.orphaned)" \
        in capsys.readouterr().err  # fmt: skip
    again.fit()
    assert _rows(out / "metrics.jsonl.orphaned") == lost
    _same_numbers(_rows(out / "metrics.jsonl"), lost, ignore=())


def test_a_start_up_failure_leaves_nothing_that_blocks_a_retry(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "bad_reward.py").write_text(
        "def boom(prompt, completion, **f):\n    raise OSError('down')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    with pytest.raises(Exception, match="down"):
        _trainer(tiny_model_dir, out, 1, **{"data.reward": "bad_reward:boom"}).fit()
    _trainer(tiny_model_dir, out, 1).fit()  # the same command, reward fixed
    assert [r["step"] for r in _rows(out / "metrics.jsonl")] == [0, 1]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(
    tiny_model_dir: Path, tmp_path: Path, damage: str
):
    out = tmp_path / "run"
    _trainer(tiny_model_dir, out, 4).fit()
    before = _rows(out / "metrics.jsonl")
    weights = out / "checkpoints" / "step_000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-7] ^= 0x10  # one bit of the last tensor: safetensors alone would load it
    weights.write_bytes(bytes(data))
    with pytest.warns(RunDirWarning, match=r"step_000004 is damaged .*resuming from step_000002"):
        trainer = _trainer(tiny_model_dir, out, 4, resume=True)
    assert trainer.step == 2
    assert (out / "checkpoints" / "damaged-step_000004").is_dir()
    trainer.fit()
    _same_numbers(_rows(out / "metrics.jsonl"), before, ignore=())  # steps 3, 4 redone
    assert [r["step"] for r in _rows(out / "metrics.jsonl.orphaned")] == [3, 4]


def test_disk_full_while_checkpointing_ends_in_one_line_and_keeps_the_last_checkpoint(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    out = tmp_path / "run"
    _trainer(tiny_model_dir, out, 2).fit()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_state", full)
    trainer = _trainer(tiny_model_dir, out, 4, resume=True, **{"run.save_every": 1})
    with pytest.raises(ckpt.DiskFullError) as info:
        trainer.fit()
    msg = str(info.value)
    assert "\n" not in msg and "(ENOSPC)" in msg and "step_000003" in msg
    assert "step_000002 is the last intact checkpoint" in msg
    monkeypatch.undo()
    resumed = _trainer(tiny_model_dir, out, 4, resume=True)  # lock released, step 2 intact
    assert resumed.step == 2


def test_resume_with_a_trajectory_change_needs_the_flag_and_keeps_every_segment(
    tiny_model_dir: Path, tmp_path: Path
):
    out = tmp_path / "run"
    _trainer(tiny_model_dir, out, 2).fit()
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "run.lock"}
    with pytest.raises(UserError, match=r"rollout.group_size 4 -> 8 would change .*--allow-config"):
        _trainer(tiny_model_dir, out, 3, resume=True, **{"rollout.group_size": 8})
    assert files == {p.name: p.read_bytes() for p in out.iterdir() if p.name in files}
    assert not (out / "config.step_2.yaml").exists()  # refused before anything changed
    _trainer(tiny_model_dir, out, 3, resume=True, allow=True, **{"rollout.group_size": 8}).fit()
    assert "group_size: 4" in (out / "config.yaml").read_text()
    assert "group_size: 8" in (out / "config.step_2.yaml").read_text()
    (event,) = [e for e in _rows(out / "events.jsonl") if e["rule"] == "config_change"]
    assert event["step"] == 2  # (the random model also trips the detector's truncation rule)
    assert event["changes"] == {"rollout.group_size": [4, 8]}  # run.steps 2 -> 3 is free


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_resume_refuses_a_state_file_that_carries_code(tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    _trainer(tiny_model_dir, out, 2).fit()
    latest = out / "checkpoints" / "step_000002"
    state = ckpt.load_state(latest)
    marker = tmp_path / "code_ran"
    (latest / ckpt.STATE_JSON).unlink()
    (latest / ckpt.STATE_TENSORS).unlink()
    torch.save({**state, "controller": _Evil(marker)}, latest / ckpt.LEGACY_STATE)
    ckpt.write_manifest(latest)  # a careful attacker keeps the manifest consistent
    with pytest.raises(UserError, match=r"refusing to load .*state.pt"):
        _trainer(tiny_model_dir, out, 3, resume=True)
    assert not marker.exists()
    with pytest.raises(UserError, match="refusing"):  # and the lock was released on the way out
        _trainer(tiny_model_dir, out, 3, resume=True)


# ----------------------------------------------------------------------------- real kills


def _sigint_as_in_a_terminal() -> None:
    """The child starts with SIGINT at its default, as a command typed in a terminal does
    (Python then turns it into KeyboardInterrupt). A test run started in the background by a
    shell without job control inherits SIGINT ignored, and a child would keep ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(args: list[str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "entropy_rl.cli", "train", "--no-progress", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)  # fmt: skip


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_at_random_points_then_resume_equals_an_unbroken_run(
    tiny_model_dir: Path, tmp_path: Path
):
    seed = random.randrange(10_000)
    rng = random.Random(seed)
    steps, out = 6, tmp_path / "killed"
    extra = {"run.save_every": 1, "eval.every": 3}
    _trainer(tiny_model_dir, tmp_path / "unbroken", steps, **extra).fit()
    args = _overrides(tiny_model_dir, out, steps, **extra)
    proc, kills, errs = _cli(args), 0, []
    while kills < 2:
        target = _lines(out / "metrics.jsonl") + rng.randint(1, 2)
        deadline = time.time() + 120
        while _lines(out / "metrics.jsonl") < target and proc.poll() is None:
            assert time.time() < deadline, proc.communicate()[1]
            time.sleep(0.02)
        if kills == 0 and proc.poll() is None:  # a second process is refused, naming the first
            proc.send_signal(signal.SIGSTOP)  # paused, it still holds the lock
            other = _cli(["--resume", str(out)])
            assert (
                other.wait(120) == 2 and f"in use by process {proc.pid}" in other.communicate()[1]
            )
            proc.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.0, 0.2))  # anywhere: inside a step, or a checkpoint write
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        errs.append(proc.communicate()[1])
        kills += 1
        proc = _cli(["--resume", str(out)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (seed, err)
    assert not [e for e in [*errs, err] if "%|" in e]  # --no-progress: no third-party bars either
    _same_numbers(_rows(tmp_path / "unbroken" / "metrics.jsonl"), _rows(out / "metrics.jsonl"),
                  ignore=())  # fmt: skip
    _same_weights(_weights(tmp_path / "unbroken", steps), _weights(out, steps))


@pytest.fixture
def mount(tmp_path: Path):
    """mount(args, where): a real mount for the test's duration (root only, else skip)."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    done: list[Path] = []

    def _mount(args: list[str], where: Path) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mount", *args, str(where)], capture_output=True).returncode:
            pytest.skip(f"cannot mount {args}")
        done.append(where)
        return where

    yield _mount
    for where in reversed(done):
        subprocess.run(["umount", str(where)], check=False)


def _last_line(err: str) -> str:
    return [x for x in err.strip().splitlines() if x.strip()][-1]


@pytest.mark.slow
def test_a_real_full_disk_and_a_read_only_directory_end_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, mount
):
    small = mount(
        ["-t", "tmpfs", "-o", "size=900k", "tmpfs"], tmp_path / "small"
    )  # ~2.5 checkpoints
    out = small / "run"
    proc = _cli(_overrides(tiny_model_dir, out, 8, **{"run.save_every": 1}))
    _, err = proc.communicate(timeout=300)
    line = _last_line(err)
    assert proc.returncode == 2 and line.startswith("entropy-rl train: error: no space left"), err
    assert "(ENOSPC)" in line and "is the last intact checkpoint" in line
    intact, damaged = ckpt.find_intact(out)
    assert intact is not None and intact.name in line and damaged == []
    assert not list((out / "checkpoints").glob(".tmp-*"))

    done = tmp_path / "done"
    _trainer(tiny_model_dir, done, 2).fit()
    ro = mount(["--bind", "-o", "ro", str(done)], tmp_path / "ro")
    proc = _cli(["--resume", str(ro), "--steps", "3"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Read-only file system; a run directory must be" in _last_line(
        err
    )


# ----------------------------------------------------------------------------- stop signals

SIGNAL_RUN = {"run.save_every": 4, "eval.every": 3}  # step 4's checkpoint, evaluations at 3 and 5


@pytest.fixture(scope="module")
def unbroken(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unbroken") / "run"
    _trainer(tiny_model_dir, out, 5, **SIGNAL_RUN).fit()
    return out


def _wait_for(cond, proc: subprocess.Popen[str]) -> None:
    deadline = time.time() + 120
    while not cond() and proc.poll() is None:
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.01)


def _resume_equals(unbroken: Path, out: Path, args: list[str] | None = None) -> None:
    proc = _cli(args or ["--resume", str(out)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    for name in ("metrics.jsonl", "events.jsonl", "samples.jsonl"):  # every row, once each
        _same_numbers(_rows(unbroken / name), _rows(out / name), ignore=())
    _same_weights(_weights(unbroken, 5), _weights(out, 5))
    assert ckpt.load_state(out / "checkpoints" / "step_000005")["step"] == 5


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("moment", ["start-up", "training"])
def test_a_stop_signal_saves_the_step_it_finishes_and_the_resume_equals_an_unbroken_run(
    tiny_model_dir: Path, tmp_path: Path, unbroken: Path, sig: signal.Signals, moment: str
):
    seed = random.randrange(10_000)
    rng = random.Random(seed)
    out = tmp_path / "run"
    args = _overrides(tiny_model_dir, out, 5, **SIGNAL_RUN)
    proc = _cli(args)
    if moment == "start-up":  # the run directory is claimed, the model may still be loading
        _wait_for(lambda: (out / "run.lock").exists(), proc)
    else:  # after step 0 or 1 was logged, then anywhere: rollout, update, evaluation, a save
        at = rng.randint(1, 2)
        _wait_for(lambda: _lines(out / "metrics.jsonl") >= at, proc)
        time.sleep(rng.uniform(0.0, 0.3))
    assert proc.poll() is None, seed
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (seed, err)
    assert "Traceback" not in err, (seed, err)
    logged = [r["step"] for r in _rows(out / "metrics.jsonl")] if moment == "training" else []
    if logged and logged[-1] > 0:  # the step in progress was finished, logged and saved
        step = logged[-1]
        assert logged == list(range(step + 1)), seed
        assert f"{sig.name}: finishing step {step}, then saving" in err
        assert f"step {step} saved; continue with: entropy-rl train --resume {out}" in err
        assert ckpt.latest_checkpoint(out) == out / "checkpoints" / f"step_{step:06d}"
    elif "nothing was trained; run the same command again" in err:  # stopped in Trainer()
        assert ckpt.latest_checkpoint(out) is None
        _resume_equals(unbroken, out, args)
        return
    else:  # in fit(), before step 1: nothing trained, nothing saved
        assert "nothing trained yet; continue with: entropy-rl train --resume" in err, (seed, err)
        assert ckpt.latest_checkpoint(out) is None
    _resume_equals(unbroken, out)


def test_a_second_signal_stops_at_once_and_the_resume_goes_on_from_the_last_checkpoint(
    tiny_model_dir: Path, tmp_path: Path, unbroken: Path
):
    out = tmp_path / "run"
    proc = _cli(_overrides(tiny_model_dir, out, 5, **SIGNAL_RUN))
    _wait_for(lambda: _lines(out / "metrics.jsonl") >= 2, proc)  # inside step 2 (or later)
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    seen = []  # the second signal once the first was handled (two at once arrive as one)
    while not seen or "SIGTERM: finishing step" not in seen[-1]:
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == 143, err
    assert "stopped at once during step " in err and "not saved; continue with" in err, err
    assert "Traceback" not in err, err
    assert ckpt.latest_checkpoint(out) is None  # the first save is step 4's
    _resume_equals(unbroken, out)


def test_disk_full_while_logging_ends_in_one_line_without_a_torn_line(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    out = tmp_path / "run"
    trainer = _trainer(tiny_model_dir, out, 4)
    fd, real = trainer.loggers[0]._fd, os.write

    def filling(f: int, data: bytes) -> int:  # step 3's row: half of it fits, then ENOSPC
        if f == fd and data.startswith(b'{"step": 3,'):
            real(f, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, data)

    monkeypatch.setattr(os, "write", filling)
    with pytest.raises(ckpt.DiskFullError) as info:
        trainer.fit()  # the loggers' close in fit's finally no longer hides it
    monkeypatch.undo()
    assert str(info.value) == (
        f"no space left on device (ENOSPC) writing {out / 'metrics.jsonl'}: free space, then "
        f"continue with entropy-rl train --resume {out} (it goes on from the last checkpoint)"
    )
    assert (out / "metrics.jsonl").read_text().endswith("\n")  # whole lines only
    assert [r["step"] for r in _rows(out / "metrics.jsonl")] == [0, 1, 2]
    resumed = _trainer(tiny_model_dir, out, 4, resume=True)  # from step 2 (run.save_every=2)
    assert resumed.step == 2
    resumed.fit()
    assert [r["step"] for r in _rows(out / "metrics.jsonl")] == [0, 1, 2, 3, 4]
