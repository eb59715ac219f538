"""compare's scheduler: seed-major order, a slot refilled by whichever run ends first, failures
reported with their logs (commands are short Python processes, no training)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from entropy_rl.errors import UserError
from entropy_rl.experiments import compare as cmp


def _sleep(seconds: float, code: int = 0) -> list[str]:
    return [sys.executable, "-c", f"import time, sys; time.sleep({seconds}); sys.exit({code})"]


def _wait_for(flag: Path) -> list[str]:
    """A job that ends 0.5 s after ``flag`` exists (at most 60 s)."""
    code = (f"import os, time\nt = time.time()\nwhile not os.path.exists({str(flag)!r}) and "
            "time.time() - t < 60:\n    time.sleep(0.01)\ntime.sleep(0.5)")  # fmt: skip
    return [sys.executable, "-c", code]


def _touch(flag: Path) -> list[str]:
    return [sys.executable, "-c", f"open({str(flag)!r}, 'w').close()"]


def test_a_free_slot_is_refilled_when_any_run_ends_not_only_the_oldest(tmp_path: Path) -> None:
    log: list[str] = []
    flag = tmp_path / "c-ran"
    # a ends only after c has run; b ends at once: c must start in b's slot while a still runs
    todo = [(tmp_path / "a" / "seed0", _wait_for(flag)), (tmp_path / "b" / "seed0", _sleep(0.0)),
            (tmp_path / "c" / "seed0", _touch(flag))]  # fmt: skip
    failed = cmp.run_jobs(todo, jobs=2, log=log.append, poll_s=0.05)
    assert failed == []
    events = [line.split()[0] + " " + Path(line.split()[1]).parent.name for line in log]
    assert events == ["start a", "start b", "done b", "start c", "done c", "done a"]
    assert (tmp_path / "a" / "seed0.log").exists() and (tmp_path / "a" / "seed0").is_dir()


def test_a_failing_run_is_returned_and_the_others_still_run(tmp_path: Path) -> None:
    log: list[str] = []
    todo = [
        (tmp_path / "a" / "seed0", _sleep(0.0, code=3)),
        (tmp_path / "b" / "seed0", _sleep(0.0)),
    ]
    failed = cmp.run_jobs(todo, jobs=1, log=log.append, poll_s=0.01)
    assert failed == [tmp_path / "a" / "seed0"]
    assert log[1].startswith("FAILED") and log[-1].startswith("done") and "b" in log[-1]


def test_stopping_compare_stops_its_runs(tmp_path: Path) -> None:
    """SIGTERM to compare (kill, a job scheduler) stops the runs it started instead of leaving
    them training on their own; the previous SIGTERM handler is back afterwards."""
    pid_file = tmp_path / "child.pid"
    child = [sys.executable, "-c",
             f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
             "time.sleep(60)"]  # fmt: skip
    before = signal.getsignal(signal.SIGTERM)
    log: list[str] = []

    def stop_once_started() -> None:
        for _ in range(3000):  # the child has started once it wrote its pid (<= 30 s)
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Thread(target=stop_once_started)
    timer.start()
    with pytest.raises(SystemExit) as stopped:
        cmp.run_jobs([(tmp_path / "a" / "seed0", child)], jobs=1, log=log.append, poll_s=0.05)
    timer.join()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert log == [f"start {tmp_path / 'a' / 'seed0'}", f"stopped {tmp_path / 'a' / 'seed0'}"]
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(int(pid_file.read_text()), 0)
    assert signal.getsignal(signal.SIGTERM) == before


def test_compare_queues_runs_seed_major(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queued: list[tuple[Path, list[str]]] = []

    def fake_run_jobs(todo, *, jobs, log=print, poll_s=0.5):
        queued.extend(todo)
        return [todo[0][0]]  # the first fails: compare must say so after summarising

    monkeypatch.setattr(cmp, "run_jobs", fake_run_jobs)
    settings = [cmp.parse_setting(["ppo", "ppo"]), cmp.parse_setting(["nc", "narrow-clip"])]
    with pytest.raises(UserError, match=r"1 runs failed.*ppo/seed0\.log"):
        cmp.compare(
            settings,
            seeds=2,
            steps=3,
            out_dir=tmp_path,
            common=["data.task=trap"],
            jobs=2,
            log=lambda _: None,
        )
    order = [(r.parent.name, r.name) for r, _ in queued]
    assert order == [("ppo", "seed0"), ("nc", "seed0"), ("ppo", "seed1"), ("nc", "seed1")]
    assert all(cmd[-1] == "run.threads=1" and "data.task=trap" in cmd for _, cmd in queued)


def _the_queued_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """The one (run, command) a 5-step, 1-seed ``ppo`` study in ``tmp_path`` queues."""
    queued: list[tuple[Path, list[str]]] = []
    monkeypatch.setattr(cmp, "run_jobs", lambda todo, **_: queued.extend(todo) or [todo[0][0]])
    with pytest.raises(UserError):
        cmp.compare([cmp.parse_setting(["ppo", "ppo"])], seeds=1, steps=5, out_dir=tmp_path,
                    common=[], log=lambda _: None)  # fmt: skip
    [one] = queued
    return one


def test_a_longer_study_resumes_a_shorter_run_with_the_new_step_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "ppo" / "seed0"
    (run / "checkpoints" / "step_000002").mkdir(parents=True)
    (run / "checkpoints" / "step_000002" / "COMPLETE").touch()  # and no logged step
    where, cmd = _the_queued_run(tmp_path, monkeypatch)
    assert where == run and cmd[-4:] == ["--resume", str(run), "--no-progress", "run.steps=5"]


@pytest.mark.parametrize("logged", [True, False])
def test_a_run_stopped_before_its_first_checkpoint_is_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: bool
) -> None:
    """A run killed before any checkpoint (a full disk at its first save) holds logged steps,
    which a fresh start may not take: compare continues it with --resume (from step 0). A
    directory with no logged step (a run that failed at start-up) starts afresh."""
    run = tmp_path / "ppo" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("run: {steps: 5}\n")
    (run / "metrics.jsonl").write_text("".join(f'{{"step": {s}}}\n' for s in range(3 * logged)))
    where, cmd = _the_queued_run(tmp_path, monkeypatch)
    assert where == run and ("--resume" in cmd) == logged


class _Queued(Exception):
    pass


@pytest.mark.parametrize("extra", [[], ["--set", "run.keep_checkpoints=3"]])
def test_the_cli_keeps_one_checkpoint_per_run_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    from entropy_rl import cli

    queued: list[list[str]] = []

    def fake_run_jobs(todo, **_):
        queued.extend(cmd for _, cmd in todo)
        raise _Queued

    monkeypatch.setattr(cmp, "run_jobs", fake_run_jobs)
    with pytest.raises(_Queued):
        cli.main(["compare", "--preset", "ppo", "--seeds", "1", "--out", str(tmp_path), *extra])
    [cmd] = queued
    keeps = [a for a in cmd if a.startswith("run.keep_checkpoints=")]
    # the last one wins: the default first, a user's --set after it
    assert keeps == ["run.keep_checkpoints=1", *extra[1:]]


def test_without_steps_a_run_is_finished_at_the_step_its_config_plans(tmp_path: Path) -> None:
    run = tmp_path / "ppo" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(f'{{"step": {s}}}\n' for s in range(13)))
    assert cmp.finished_run(run, None)  # no config: any logged step (an older layout)
    (run / "config.yaml").write_text("run:\n  steps: 30\n")
    assert cmp.planned_steps(run) == 30
    assert not cmp.finished_run(run, None)  # stopped at step 12 of 30: resume it, do not reuse
    assert cmp.finished_run(run, 12) and not cmp.finished_run(run, 13)
    (run / "config.step_12.yaml").write_text("run:\n  steps: 12\n")  # resumed with fewer steps
    assert cmp.planned_steps(run) == 12 and cmp.finished_run(run, None)


def test_jobs_below_one_is_a_config_error(tmp_path: Path) -> None:
    from entropy_rl.errors import ConfigError

    with pytest.raises(ConfigError, match="--jobs must be an integer >= 1, got 0"):
        cmp.compare([cmp.parse_setting(["ppo", "ppo"])], seeds=1, out_dir=tmp_path, common=[],
                    jobs=0)  # fmt: skip


def test_a_run_that_stopped_short_is_left_out_of_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for label, last in (("ppo", 3), ("nc", 2)):  # nc's run failed at step 2 of 3
        d = tmp_path / label / "seed0"
        d.mkdir(parents=True)
        rows = "".join(f'{{"step": {s}, "entropy/mean": 1.0, "reward/mean": 0.5}}\n'
                       for s in range(1, last + 1))  # fmt: skip
        (d / "metrics.jsonl").write_text(rows)
    monkeypatch.setattr(cmp, "run_jobs", lambda todo, **_: [r for r, _ in todo])
    settings = [cmp.parse_setting(["ppo", "ppo"]), cmp.parse_setting(["nc", "narrow-clip"])]
    with pytest.raises(UserError, match="1 runs failed"):
        cmp.compare(settings, seeds=1, steps=3, out_dir=tmp_path, common=[], log=lambda _: None)
    md = (tmp_path / "compare.md").read_text()
    assert "| ppo | 1 |" in md and "| nc | 0 |" in md  # not compared over 2 steps
