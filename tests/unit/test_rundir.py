"""The run directory: the lock, claiming, config segments, tidying after a kill, disk errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("safetensors")
pytest.importorskip("fcntl")

from entropy_rl.errors import UserError
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.config import Config, build_config
from entropy_rl.train.config_changes import classify_changes
from entropy_rl.train.distributed import DistInfo
from entropy_rl.train.rundir import (
    RunDir,
    RunDirWarning,
    RunLock,
    current_config,
    disk_error,
)


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path):
    first = RunLock(tmp_path)
    assert first.acquire() is None
    second = RunLock(tmp_path)  # another open file description: flock conflicts even in-process
    with pytest.raises(UserError, match=rf"in use by process {os.getpid()} on .*choose another"):
        second.acquire()
    first.release()
    assert second.acquire() is None
    second.release()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path: Path):
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom entropy_rl.train.rundir import RunLock\n"
        "lock = RunLock(Path(sys.argv[1]))\nlock.acquire()\nprint('locked', flush=True)\ntime.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        with pytest.raises(UserError, match=f"in use by process {proc.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock = RunLock(tmp_path)
    note = lock.acquire()
    assert note is not None and f"took over the lock of process {proc.pid}" in note
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / "run.lock").read_text() == ""  # a clean release: nothing to take over
    assert RunLock(tmp_path).acquire() is None


def _cfg(*overrides: str) -> dict:
    return json.loads(json.dumps(build_config(overrides=list(overrides)).to_dict()))


def _keys(changes) -> list[str]:
    return [c.key for c in changes]


def test_changes_are_split_by_whether_they_alter_the_trajectory():
    base = _cfg()
    free, alter = classify_changes(
        base, _cfg("run.steps=300", "eval.every=5", "run.progress=false")
    )
    assert (_keys(free), alter) == (["eval.every", "run.progress", "run.steps"], [])
    free, alter = classify_changes(base, _cfg("rollout.group_size=4", "run.threads=2"))
    assert (free, _keys(alter)) == ([], ["rollout.group_size", "run.threads"])
    # a detector that acts reads evaluations and run.steps: then they alter the trajectory
    acting = _cfg("control.detector_kwargs={entropy_drop_action: stop}")
    free, alter = classify_changes(acting, {**acting, "eval": _cfg("eval.every=5")["eval"]})
    assert (free, _keys(alter)) == ([], ["eval.every"])
    # a scheduled controller spans run.steps
    target = _cfg("control.controller=target", "control.controller_kwargs={schedule: 0.5}")
    steps = _cfg("control.controller=target", "control.controller_kwargs={schedule: 0.5}",
                 "run.steps=300")  # fmt: skip
    assert _keys(classify_changes(target, steps)[1]) == ["run.steps"]
    # so do the rate controller (rate-clip) and EntroPIC: their slopes are set by run.steps
    for kind in ("rate", "entropic"):
        kw = (
            "{schedule: {kind: linear, start: 1.5, end: 0.5}}"
            if kind == "rate"
            else "{target: 0.5}"
        )
        a = _cfg(f"control.controller={kind}", f"control.controller_kwargs={kw}")
        b = _cfg(f"control.controller={kind}", f"control.controller_kwargs={kw}", "run.steps=300")
        assert _keys(classify_changes(a, b)[1]) == ["run.steps"], kind


def _write_metrics(run: Path, steps: list[int]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in steps))


def test_a_directory_is_claimable_until_a_step_completes(tmp_path: Path):
    cfg = Config()
    run = tmp_path / "run"
    _write_metrics(run, [0])  # a run that failed at start-up: only the step-0 evaluation
    (run / "config.yaml").write_text("run: {}\n")
    d = RunDir(run, resume=False)
    d.check(cfg)
    assert d._open(cfg) is None
    d.record(cfg, 0)
    d.release()
    assert (run / "metrics.jsonl").read_text() == ""
    assert (run / "metrics.jsonl.orphaned").read_text() == '{"step": 0}\n'
    assert (run / "events.jsonl").is_file()
    _write_metrics(run, [0, 1])
    with pytest.raises(UserError, match=r"already holds a run \(1 logged step\(s\)\); continue"):
        RunDir(run, resume=False).check(cfg)


def test_config_segments_and_the_base_of_a_resume(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    first = build_config(overrides=["run.steps=3"])
    (run / "config.yaml").write_text(first.to_yaml())
    d = RunDir(run, resume=True)
    d._check_config(build_config(overrides=["run.steps=6"]), 3)  # free
    with pytest.raises(UserError, match=r"rollout.group_size 8 -> 4 would change .* step 3 on"):
        d._check_config(build_config(overrides=["rollout.group_size=4"]), 3)
    d._check_config(build_config(overrides=["rollout.group_size=4"]), 0)  # nothing to keep
    d.allow_config_change = True
    second = build_config(overrides=["rollout.group_size=4"])
    d._check_config(second, 3)
    d.record(second, 3)
    assert current_config(run) == run / "config.step_3.yaml"
    assert "group_size: 8" in (run / "config.yaml").read_text()  # the first segment's, kept
    event = json.loads((run / "events.jsonl").read_text())
    assert event["rule"] == "config_change" and event["changes"] == {"rollout.group_size": [8, 4]}
    # resumed again from step 2 (the step-3 checkpoint lost): segment 3 no longer applies
    d2 = RunDir(run, resume=True)
    d2._check_config(first, 2)
    d2.record(first, 2)
    assert sorted(p.name for p in run.glob("config*")) == [
        "config.step_2.yaml", "config.step_3.yaml.orphaned", "config.yaml",
    ]  # fmt: skip


def _complete_dir(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights")
    ckpt.write_manifest(d)
    (d / ckpt.COMPLETE).write_text("1")
    return d


def test_resume_removes_half_written_checkpoints_and_finishes_complete_ones(tmp_path: Path):
    root = tmp_path / "checkpoints"
    half = root / ".tmp-step_000004-x1"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half")
    _complete_dir(root, ".tmp-step_000003-y2")  # killed between COMPLETE and the rename
    d = RunDir(tmp_path, resume=True)
    assert d._open(Config()) == root / "step_000003"
    d.release()
    assert sorted(p.name for p in root.iterdir()) == ["step_000003"]


def test_disk_errors_become_one_line_user_errors(tmp_path: Path):
    full = disk_error(OSError(errno.ENOSPC, "No space left", str(tmp_path / "m")), tmp_path)
    assert isinstance(full, UserError) and "(ENOSPC) writing" in str(full)
    ro = disk_error(OSError(errno.EROFS, "Read-only file system"), tmp_path)
    assert str(ro) == (
        f"cannot write {tmp_path}: Read-only file system; a run directory must be writable: "
        "choose another --out (or copy the run elsewhere to resume it)"
    )
    assert disk_error(OSError(errno.EACCES, "denied"), tmp_path) is None  # e.g. a reward's file
    assert disk_error(OSError(errno.ENOENT, "missing"), tmp_path) is None


def test_an_unwritable_out_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    class ReadOnly:  # what statvfs reports for a folder on a read-only mount
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(
        UserError, match=r"cannot write .*/out: Read-only file system; a run directory"
    ):
        RunDir(tmp_path / "out", resume=False).check(Config())
    assert not (tmp_path / "out").exists()  # the check creates nothing


def test_a_failed_mkdir_at_open_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(
        UserError, match=r"cannot write .*/out: Read-only file system; a run directory"
    ):
        RunDir(tmp_path / "out", resume=False).open(Config(), DistInfo())


def test_quiet_mode_silences_third_party_progress_bars(monkeypatch: pytest.MonkeyPatch):
    hub = pytest.importorskip("huggingface_hub.utils")
    hf_logging = pytest.importorskip("transformers.utils.logging")
    from entropy_rl.train.logging import quiet_progress_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    hub.enable_progress_bars()
    hf_logging.enable_progress_bar()
    try:
        quiet_progress_bars()
        assert hub.are_progress_bars_disabled() and not hf_logging.is_progress_bar_enabled()
    finally:
        hub.enable_progress_bars()
        hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------- what may run


def _started(run: Path, cfg: Config) -> RunDir:
    """A run directory as a first segment leaves it (config.yaml, manifest.json)."""
    d = RunDir(run, resume=False)
    d.check(cfg)
    d._open(cfg)
    d.record(cfg, 0)
    d.release()
    return RunDir(run, resume=True)


def test_a_config_edited_after_the_run_wrote_it_is_refused(tmp_path: Path):
    run = tmp_path / "run"
    cfg = build_config(overrides=["run.steps=3"])
    d = _started(run, cfg)
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["configs"]) == {"config.yaml"}
    d.check(cfg)  # untouched: passes
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("steps: 3", "steps: 4"))
    with pytest.raises(UserError) as info:
        d.check(cfg)
    assert str(info.value) == (
        f"{run}/config.yaml was edited (its sha256 is not the one in manifest.json); restore it, "
        f"and give a change on the command line instead: entropy-rl train --resume {run} "
        "section.key=value"
    )
    (run / "config.yaml").write_text(text)
    (run / "config.step_2.yaml").write_text(text)  # a segment the run never wrote
    with pytest.raises(UserError, match=r"config.step_2.yaml was not written by the run"):
        d.check(cfg)


def test_a_kill_between_the_manifest_and_the_config_write_still_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = tmp_path / "run"
    first = build_config(overrides=["run.steps=3"])
    d = _started(run, first)
    writes = []

    def killed(path: Path, text: str) -> None:  # the manifest is written, then the kill
        writes.append(path.name)
        if path.name != "manifest.json":
            raise KeyboardInterrupt
        real_write(path, text)

    real_write = ckpt.atomic_write_text
    monkeypatch.setattr(ckpt, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        d._write_segment("config.yaml", build_config(overrides=["run.steps=9"]), fresh=True)
    monkeypatch.undo()
    assert writes == ["manifest.json", "config.yaml"]
    d.check(first)  # the old file is still accepted, and the new one would be


def test_a_reward_inside_the_run_directory_is_refused_before_it_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = tmp_path / "run"
    _started(run, Config())
    marker = tmp_path / "code_ran"
    (run / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef f(p, c, **k): return 1\n"
    )
    for spec in (f"{run}/evil.py:f", "evil:f"):  # a path, or a module found from the cwd
        monkeypatch.chdir(run if spec == "evil:f" else tmp_path)
        cfg = build_config(overrides=[f"data.reward={spec}"])
        with pytest.raises(UserError, match=r"its file .*/run/evil.py lies inside the run direc"):
            RunDir(run, resume=True).check(cfg)
        with pytest.raises(UserError, match=r"lies inside the run directory"):
            RunDir(run, resume=False).check(cfg)
    assert not marker.exists()


def test_a_changed_reward_source_is_a_warning_and_an_event(tmp_path: Path):
    run = tmp_path / "run"
    reward = tmp_path / "my_reward.py"
    reward.write_text("def f(p, c, **k):\n    return 1.0\n")
    cfg = build_config(overrides=[f"data.reward={reward}:f"])
    d = _started(run, cfg)
    sources = json.loads((run / "manifest.json").read_text())["reward"]["sources"]
    assert sources == {str(reward): ckpt.sha256_file(reward)}
    d.check(cfg)
    d.record(cfg, 2)  # unchanged: no event
    assert (run / "events.jsonl").read_text() == ""
    reward.write_text("def f(p, c, **k):\n    return 0.5\n")
    d = RunDir(run, resume=True)
    d.check(cfg)
    with pytest.warns(RunDirWarning, match=r"reward's source .*my_reward.py changed since"):
        d.record(cfg, 2)
    (event,) = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert (event["step"], event["rule"], event["files"]) == (2, "reward_changed", [str(reward)])


def test_nothing_is_deleted_through_a_symbolic_link(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    victim = elsewhere / ".tmp-step_000001-abc"
    victim.mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(elsewhere)
    for resume in (False, True):
        with pytest.raises(UserError, match=r"checkpoints is a symbolic link \(to .*elsewhere\)"):
            RunDir(run, resume=resume).check(Config())
        with pytest.raises(UserError, match=r"does not delete through links"):
            RunDir(run, resume=resume)._open(Config())
    assert victim.is_dir()
    (run / "checkpoints").unlink()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".tmp-step_000002-x").symlink_to(victim)  # a link among the writes
    d = RunDir(run, resume=True)
    assert d._open(Config()) is None
    d.release()
    assert victim.is_dir()


def test_an_out_that_is_a_file_or_below_one_is_named_as_such(tmp_path: Path):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    with pytest.raises(UserError, match=rf"^run directory {tool} is a file, not a folder; choose"):
        RunDir(tool, resume=False).check(Config())
    with pytest.raises(UserError, match=rf"run directory {tool}/x/y cannot be made: {tool} is a"):
        RunDir(tool / "x" / "y", resume=False).check(Config())


def test_rows_a_resume_cannot_read_are_set_aside_not_fatal(tmp_path: Path):
    from entropy_rl.train.logging import JsonlLogger

    log = tmp_path / "metrics.jsonl"
    rows = ['{"step": 0}', '{"step": 1}', '{"step": "x"}', '{"step": 2}', '{"step": 1.5}',
            "[1]", '{"step": 3, "reward/me']  # fmt: skip
    log.write_text("\n".join(rows))  # the last line torn by a kill: no newline
    assert JsonlLogger.truncate_after(log, 2) == 4
    assert log.read_text() == '{"step": 0}\n{"step": 1}\n{"step": 2}\n'
    assert (tmp_path / "metrics.jsonl.orphaned").read_text().splitlines() == [
        '{"step": "x"}',
        '{"step": 1.5}',
        "[1]",
        '{"step": 3, "reward/me',
    ]


def test_samples_rows_are_written_once_each_even_beyond_the_prompts_of_a_step(tmp_path: Path):
    from types import SimpleNamespace

    pytest.importorskip("transformers")
    from entropy_rl.train.trainer import Trainer

    cfg = build_config(overrides=["run.log_samples=5", "rollout.group_size=3"])
    examples = [SimpleNamespace(prompt=f"p{k}") for k in range(2)]  # 2 prompts x 3 completions
    samples = SimpleNamespace(examples=examples, texts=[f"c{i}" for i in range(6)],
                              rewards=[float(i) for i in range(6)])  # fmt: skip
    host = SimpleNamespace(cfg=cfg, run_dir=tmp_path, step=7)
    Trainer._write_samples(host, samples)  # type: ignore[arg-type]
    rows = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    # rows 0, 3 (each prompt's first), then 1, 4 (each one's second), then 2
    assert [(r["prompt"], r["completion"], r["reward"]) for r in rows] == [
        ("p0", "c0", 0.0), ("p1", "c3", 3.0), ("p0", "c1", 1.0), ("p1", "c4", 4.0),
        ("p0", "c2", 2.0),
    ]  # fmt: skip
    assert {r["step"] for r in rows} == {7}


def test_a_log_line_is_appended_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from entropy_rl.train.logging import JsonlLogger, append_lines

    log = JsonlLogger(tmp_path / "m.jsonl")
    log.log(1, {"step": 1})
    real = os.write

    def full(fd: int, data: bytes) -> int:
        real(fd, data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as info:
        log.log(2, {"step": 2})
    assert info.value.filename == str(tmp_path / "m.jsonl")
    with pytest.raises(OSError):
        append_lines(tmp_path / "m.jsonl", ['{"step": 3}'])
    monkeypatch.undo()
    log.close()  # nothing buffered: no second error from closing
    assert (tmp_path / "m.jsonl").read_text() == '{"step": 1}\n'


def test_a_full_disk_while_recording_the_start_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = tmp_path / "run"
    d = RunDir(run, resume=False)
    d._open(Config())

    def full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt, "atomic_write_text", full)
    with pytest.raises(ckpt.DiskFullError, match=rf"\(ENOSPC\) writing {run}/manifest.json: free"):
        d.record(Config(), 0)
    d.release()
