"""The run directory: one process at a time, a start that never blocks a retry, resume from the
newest intact checkpoint, and every config segment kept.

Layout of ``RUN_DIR`` (docs/run-directory.md has the whole story):

- ``run.lock``: ``flock``-ed by the process that trains it, with its pid, host and start time
  inside. The kernel drops the lock when the process dies, so a killed run's lock is taken over
  by the next one; a live one refuses the newcomer, naming its pid.
- ``config.yaml``: the config of the first segment; ``config.step_N.yaml``: the config of the
  segment that resumed at step N (one per resume). Resume compares the new config with the
  segment that produced its checkpoint: a change that alters the trajectory (see
  :func:`entropy_rl.train.config_changes.classify_changes`) needs ``allow_config_change`` and is logged in ``events.jsonl``.
- ``metrics.jsonl``, ``events.jsonl`` (exists from the start), ``samples.jsonl``: a resume moves
  the lines of the steps after its checkpoint to ``<name>.orphaned`` (appended, never deleted).
- ``checkpoints/``: train.checkpoint.

Claiming: a fresh run may take a directory that holds no complete checkpoint and no completed
step (a run that failed at start-up, or an empty directory); one that does is refused, pointing
at ``--resume``. Resume of a run without an intact checkpoint starts it again from step 0.

- ``manifest.json``: the sha256 of every config segment as this module wrote it, and of the
  reward's source file(s). A resume refuses a config segment that differs from it (edited by
  hand, or by someone else: a config names the reward code a resume imports) and warns, with an
  event, when the reward's source changed (the trajectory changes with it).

What this module does not do: it never deletes a log line or an intact checkpoint, never
deletes through a symbolic link (a linked ``checkpoints/`` is refused), and never runs code from
the directory: configs are read with yaml's safe loader and a reward whose file lies inside the
run directory is refused before anything imports it. The manifest detects edits; it is no
signature (whoever can write the directory can rewrite it too), so the last line of defence is
that no code inside the directory is run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import yaml

from entropy_rl.errors import UserError
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.config import Config, yaml_load
from entropy_rl.train.config_changes import Change, classify_changes
from entropy_rl.train.logging import JsonlLogger, append_lines

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
LOG_FILES = ("metrics.jsonl", "events.jsonl", "samples.jsonl")
_SEGMENT = re.compile(r"^config\.step_(\d+)\.yaml$")


class RunDirWarning(UserWarning):
    """Something in the run directory was repaired or skipped (a damaged checkpoint)."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def disk_error(e: OSError, where: Path, *, setup: bool = False) -> UserError | None:
    """The one-line UserError for an OSError the machine caused (disk full, read-only file
    system; with ``setup``, also permission denied), None for any other."""
    what = e.filename or where
    if e.errno in ckpt.DISK_FULL:
        return ckpt.DiskFullError(
            f"no space left on device (ENOSPC) writing {what}: free space, then continue with "
            f"entropy-rl train --resume {where} (it goes on from the last checkpoint)"
        )
    if e.errno == errno.EROFS or (setup and e.errno in (errno.EACCES, errno.EPERM)):
        return UserError(
            f"cannot write {what}: {os.strerror(e.errno or 0)}; a run directory must be "
            "writable: choose another --out (or copy the run elsewhere to resume it)"
        )
    return None


def _setup_failed(e: OSError, where: Path) -> NoReturn:
    err = disk_error(e, where, setup=True)
    if err is None:
        raise e
    raise err from e


def _check_writable(path: Path) -> None:
    """Raise the one-line error of :func:`disk_error` unless ``path``, or the nearest existing
    folder above it, is writable (a read-only mount or missing permission); a UserError when it,
    or a path above it, is a file."""
    target = next(p for p in (path, *path.parents) if p.exists())
    if not target.is_dir():
        what = "is a file" if target == path else f"cannot be made: {target} is a file"
        raise UserError(f"run directory {path} {what}, not a folder; choose another --out")
    if os.statvfs(target).f_flag & os.ST_RDONLY:
        _setup_failed(OSError(errno.EROFS, os.strerror(errno.EROFS)), path)
    if not os.access(target, os.W_OK | os.X_OK):
        _setup_failed(OSError(errno.EACCES, os.strerror(errno.EACCES)), path)


def restore_rng(state: dict[str, Any], rng: random.Random, dist: Any, where: Path) -> None:
    """Set this rank's global RNGs and its sampling ``rng`` from a checkpoint's state; with
    another number of processes than wrote it, keep the fresh seeds (and warn)."""
    per_rank = state.get("rank_rng", [state])  # a 1-process checkpoint holds its RNG at the top
    if len(per_rank) == dist.world_size:
        mine = per_rank[dist.rank]
        ckpt.set_rng_state(mine["rng"])
        rng.setstate(mine["trainer_rng"])
    elif dist.is_main:
        warnings.warn(
            f"{where} was written by {len(per_rank)} process(es), resuming on "
            f"{dist.world_size}: weights, optimizer, schedule and controller state are "
            "restored, the sampling RNG is not (the run goes on, but will not match an "
            f"unbroken {len(per_rank)}-process run)",
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- the lock


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/run.lock`` (no-op where fcntl does not exist)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def acquire(self, *, record: bool = True) -> str | None:
        """Take the lock; returns a note when it took over a dead process's lock. Raises
        UserError naming the holder when a live process holds it. ``record``: write this
        process's pid, host and start time into the lock file."""
        if self.fd is not None:
            return None
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            _setup_failed(e, self.path.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder()
            who = f"process {h.get('pid', '?')} on {h.get('host', '?')}"
            since = f" (since {h['started']})" if "started" in h else ""
            raise UserError(
                f"{self.path.parent} is in use by {who}{since}; wait for it to end or stop it, "
                "or choose another --out"
            ) from None
        self.fd = fd
        if not record:
            return None
        old = self.holder()  # left by a holder that died: a clean release empties the file
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode() + b"\n", 0)
        except OSError as e:
            self.release()
            _setup_failed(e, self.path.parent)
        if old.get("pid") not in (None, os.getpid()):
            return (
                f"took over the lock of process {old['pid']} on {old.get('host', '?')}, "
                "which ended without releasing it"
            )
        return None

    def release(self, *, clear: bool = True) -> None:
        if self.fd is None:
            return
        if clear:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None

    def probe(self) -> None:
        """Raise like :meth:`acquire` if a live process holds the lock; hold nothing after."""
        if self.fd is None and self.path.parent.is_dir():
            self.acquire(record=False)
            self.release(clear=False)

    def __del__(self) -> None:
        self.release()


# ----------------------------------------------------------------------------- config segments


def segments(run_dir: Path) -> dict[int, Path]:
    """Config segments by the step they start after: {0: config.yaml, N: config.step_N.yaml}."""
    out = {0: run_dir / CONFIG_FILE} if (run_dir / CONFIG_FILE).is_file() else {}
    for p in run_dir.glob("config.step_*.yaml"):
        m = _SEGMENT.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def current_config(run_dir: Path) -> Path | None:
    """The newest config segment of ``run_dir`` (what ``--resume`` starts from)."""
    seg = segments(run_dir)
    return seg[max(seg)] if seg else None


def _config_dict(cfg: Config) -> dict[str, Any]:
    d = yaml_load(cfg.to_yaml())
    return d if isinstance(d, dict) else {}


# ----------------------------------------------------------------------------- the directory


def holds_run(path: Path) -> bool:
    """True when the directory ``path`` holds a run that a fresh start may not take (a complete
    checkpoint or a logged step): ``--resume`` continues it, from step 0 when no checkpoint
    survived."""
    return bool(ckpt.step_dirs(path)) or _count_steps(path / "metrics.jsonl") > 0


def _count_steps(path: Path) -> int:
    """Lines of ``path`` (a metrics.jsonl) with step >= 1."""
    if not path.is_file():
        return 0
    n = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            n += int(json.loads(line).get("step", 0) >= 1)
        except (ValueError, AttributeError, TypeError):
            continue
    return n


def _orphan(path: Path) -> None:
    dest = path.with_name(path.name + ".orphaned")
    if dest.exists():
        dest = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.orphaned")
    os.replace(path, dest)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def reward_sources(cfg: Config) -> dict[str, str]:
    """{file: sha256} of the source files of ``data.reward`` (none for built-in rewards)."""
    if cfg.data.reward is None:
        return {}
    from entropy_rl.tasks.combine import parse_reward_specs
    from entropy_rl.tasks.rewards import reward_source

    out = {}
    for spec in parse_reward_specs(cfg.data.reward):
        path = reward_source(spec.fn)
        if path is not None and path.is_file():
            out[str(path)] = ckpt.sha256_file(path)
    return out


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


class RunDir:
    """The run directory of one trainer process (only the main rank touches it).

    ``check()`` early (fails fast: busy, claimed, unwritable), ``open()`` when the trainer is
    built (takes the lock, tidies, picks the checkpoint, checks the config), ``record()`` after
    the state is loaded (truncates the lost steps' logs, writes the config segment), and
    ``release()`` when training ends.
    """

    def __init__(self, path: Path, *, resume: bool, allow_config_change: bool = False) -> None:
        self.path = path
        self.resume = resume
        self.allow_config_change = allow_config_change
        self.lock = RunLock(path)
        self.checkpoint: Path | None = None
        self._damaged: list[tuple[Path, str]] = []
        self._changes: tuple[list[Change], list[Change]] = ([], [])

    # -- before any work
    def check(self, cfg: Config) -> None:
        """Fail fast: an unwritable path, a live process on the directory, a fresh run on a
        directory that holds one, a config change that needs the flag (against the newest
        complete checkpoint; :meth:`open` checks again against the newest intact one)."""
        _check_writable(self.path)  # created only by open(): a failed start leaves nothing
        self._check_links()
        self._check_reward(cfg)
        self.lock.probe()
        if self.resume:
            self._verify_configs()
            done = ckpt.step_dirs(self.path)
            self._check_config(cfg, ckpt.step_of(done[0]) if done else 0)
        else:
            self._check_claim()

    def _check_links(self) -> None:
        """Refuse a ``checkpoints/`` that is a symbolic link: tidying and pruning delete there,
        and nothing here deletes through a link (it may lead to another run's folder)."""
        link = self.path / "checkpoints"
        if link.is_symlink():
            raise UserError(
                f"{link} is a symbolic link (to {os.readlink(link)}); entropy-rl deletes "
                "unfinished and old checkpoints there and does not delete through links: "
                "make it a real folder, or put the whole run directory on that disk with --out"
            )

    def _check_reward(self, cfg: Config) -> None:
        """A reward whose source lies inside the run directory is refused before any import:
        a resume must not run code that the directory itself holds."""
        for src in reward_sources(cfg):
            if _inside(Path(src), self.path):
                raise UserError(
                    f"data.reward {cfg.data.reward!r}: its file {src} lies inside the run "
                    f"directory {self.path}; entropy-rl runs no code from a run directory: move "
                    "the reward elsewhere (e.g. beside your config) and name it there"
                )

    # -- the manifest: what this module wrote, and the reward's source
    def _manifest(self) -> dict[str, Any] | None:
        path = self.path / MANIFEST_FILE
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path} is unreadable ({e}); restore it from a copy of the run") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("configs"), dict):
            raise UserError(f"{path} is not a run manifest; restore it from a copy of the run")
        return doc

    def _write_manifest(self, doc: dict[str, Any]) -> None:
        ckpt.atomic_write_text(self.path / MANIFEST_FILE, json.dumps(doc, indent=1) + "\n")

    def _verify_configs(self) -> None:
        """Every config segment as this module wrote it (its sha256 in the manifest)."""
        doc = self._manifest()
        segs = segments(self.path)
        if doc is None:
            if segs:
                warnings.warn(
                    f"{self.path} has no {MANIFEST_FILE} (a run of entropy-rl 0.1.0): its config "
                    "files cannot be checked for edits; one is written now",
                    RunDirWarning, stacklevel=4,
                )  # fmt: skip
            return
        for p in segs.values():
            allowed = doc["configs"].get(p.name)
            if allowed is None or ckpt.sha256_file(p) not in allowed:
                what = "was not written by the run" if allowed is None else "was edited"
                raise UserError(
                    f"{p} {what} (its sha256 is not the one in {MANIFEST_FILE}); restore it, and "
                    f"give a change on the command line instead: entropy-rl train --resume "
                    f"{self.path} section.key=value"
                )

    def _write_segment(self, name: str, cfg: Config, *, fresh: bool = False) -> None:
        """Write config segment ``name`` and record it (and the reward's source) in the
        manifest; the manifest first, accepting the old and the new file until both are
        written, so a kill in between leaves a directory that still verifies."""
        text = cfg.to_yaml()
        doc = None if fresh else self._manifest()
        doc = doc or {"format": 1, "configs": {}}
        live = {p.name for p in segments(self.path).values()}
        doc["configs"] = {k: v for k, v in doc["configs"].items() if k in live or k == name}
        old = self.path / name
        before = [ckpt.sha256_file(old)] if old.is_file() else []
        doc["configs"][name] = [*before, _sha256_text(text)]
        doc["reward"] = {"spec": cfg.data.reward, "sources": reward_sources(cfg)}
        self._write_manifest(doc)
        ckpt.atomic_write_text(old, text)
        doc["configs"][name] = [_sha256_text(text)]
        self._write_manifest(doc)

    def _reward_changed(self, cfg: Config, step: int) -> None:
        """Warn, with an event, when a reward file differs from the one the run recorded."""
        doc = self._manifest() or {}
        before = (doc.get("reward") or {}).get("sources") or {}
        now = reward_sources(cfg)
        changed = sorted(f for f in now if f in before and before[f] != now[f])
        if not changed:
            return
        msg = (f"the reward's source {', '.join(changed)} changed since the run recorded it: "
               f"the trajectory from step {step} on differs from an unbroken run's")  # fmt: skip
        warnings.warn(msg, RunDirWarning, stacklevel=4)
        event = {"step": step, "rule": "reward_changed", "severity": "warning", "values": {},
                 "message": msg, "action": None, "files": changed}  # fmt: skip
        append_lines(self.path / "events.jsonl", [json.dumps(event)])

    def _check_claim(self) -> None:
        done = ckpt.step_dirs(self.path)
        steps = _count_steps(self.path / "metrics.jsonl")
        if done or steps:
            what = f"checkpoint {done[0].name}" if done else f"{steps} logged step(s)"
            raise UserError(
                f"{self.path} already holds a run ({what}); continue it with "
                f"--resume {self.path}, or choose another --out"
            )

    def _check_config(self, cfg: Config, step: int) -> None:
        self._changes = ([], [])
        seg = {n: p for n, p in segments(self.path).items() if n <= step}
        if step == 0 or not seg:  # nothing trained survives: any config may start it again
            return
        base = seg[max(seg)]
        try:
            old = yaml.safe_load(base.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{base} is not valid YAML ({e}); fix or delete it") from e
        free, altering = classify_changes(old, _config_dict(cfg))
        if altering and not self.allow_config_change:
            raise UserError(
                f"--resume {self.path}: {', '.join(map(str, altering))} would change the run's "
                f"trajectory from step {step} on; pass --allow-config-change to accept (kept in "
                f"config.step_{step}.yaml and events.jsonl), or drop the change"
            )
        self._changes = (free, altering)

    # -- when the trainer is built
    def open(self, cfg: Config, dist: Any) -> Path | None:
        """Main rank: take the lock, tidy the checkpoints, pick the checkpoint to resume from
        (None: start at step 0) and check the config; every rank gets the checkpoint's path.
        The caller must :meth:`release` if anything after this fails."""
        path = self._open(cfg) if dist.is_main else None
        if dist.enabled:
            import torch.distributed

            box = [str(path) if path is not None else None]
            torch.distributed.broadcast_object_list(box, src=0)
            path = Path(box[0]) if box[0] is not None else None
        return path

    def _open(self, cfg: Config) -> Path | None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _setup_failed(e, self.path)
        note = self.lock.acquire()
        try:
            if note:
                _say(f"{self.path}: {note}")
            self._check_links()
            self._tidy()
            if not self.resume:
                self._check_claim()
                return None
            self.checkpoint, self._damaged = ckpt.find_intact(self.path)
            step = ckpt.step_of(self.checkpoint) if self.checkpoint else 0
            for bad, why in self._damaged:
                fallback = self.checkpoint.name if self.checkpoint else "step 0 (none is intact)"
                warnings.warn(
                    f"checkpoint {bad} is damaged ({why}); resuming from {fallback} instead "
                    f"(the damaged one moves to checkpoints/damaged-{bad.name})",
                    RunDirWarning, stacklevel=3,
                )  # fmt: skip
            self._check_config(cfg, step)
            return self.checkpoint
        except BaseException:
            self.lock.release()
            raise

    def _tidy(self) -> None:
        """Finish or remove what a kill during a checkpoint write left behind."""
        root = self.path / "checkpoints"
        removed: list[str] = []
        for old in sorted(root.glob(".old-step_*")):  # killed between the two renames of a re-save
            if old.is_symlink():  # not ours: never delete through (or rename) a link
                continue
            final = root / old.name[len(".old-") :]
            if not final.exists() and ckpt.verify(old) is None:
                os.replace(old, final)
            else:
                shutil.rmtree(old, ignore_errors=True)
                removed.append(old.name)
        for tmp in sorted(root.glob(".tmp-step_*")):
            if tmp.is_symlink():
                continue
            final = root / tmp.name[len(".tmp-") :].rsplit("-", 1)[0]
            if not final.exists() and ckpt.verify(tmp) is None:  # complete, rename pending
                os.replace(tmp, final)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp.name)
        if removed:
            _say(f"removed {len(removed)} unfinished checkpoint write(s): {', '.join(removed)}")

    # -- after the trainer state is loaded
    def record(self, cfg: Config, step: int) -> None:
        """Truncate the logs of lost steps, write this segment's config, create events.jsonl.
        A full or read-only disk is the one-line error of :func:`disk_error`."""
        try:
            for bad, _ in self._damaged:
                dest = bad.with_name(f"damaged-{bad.name}")
                shutil.rmtree(dest, ignore_errors=True)
                os.replace(bad, dest)
            if step == 0:
                self._start_afresh(cfg)
            else:
                self._continue(cfg, step)
            (self.path / "events.jsonl").touch()
        except OSError as e:
            _setup_failed(e, self.path)

    def _start_afresh(self, cfg: Config) -> None:
        lost = _count_steps(self.path / "metrics.jsonl")
        had_run = (self.path / CONFIG_FILE).exists()
        for name in LOG_FILES:
            JsonlLogger.truncate_after(self.path / name, -1)
        for n, p in segments(self.path).items():
            if n > 0:
                _orphan(p)
        self._write_segment(CONFIG_FILE, cfg, fresh=True)
        if self.resume:
            where = f"{self.path}/checkpoints"
            _say(f"no intact checkpoint in {where}: starting the run again from step 0"
                 + (f" ({lost} logged step(s) moved to metrics.jsonl.orphaned)" if lost else ""))  # fmt: skip
        elif had_run:
            _say(f"{self.path} held a run that never completed a step: starting it afresh "
                 "(its logs moved to *.orphaned)")  # fmt: skip

    def _continue(self, cfg: Config, step: int) -> None:
        lost = JsonlLogger.truncate_after(self.path / "metrics.jsonl", step)
        for name in LOG_FILES[1:]:
            JsonlLogger.truncate_after(self.path / name, step)
        for n, p in segments(self.path).items():
            if n > step:
                _orphan(p)
        self._reward_changed(cfg, step)
        self._write_segment(f"config.step_{step}.yaml", cfg)
        free, altering = self._changes
        said = f"resuming {self.path} at step {step}"
        if lost:
            said += f"; {lost} line(s) of later steps moved to metrics.jsonl.orphaned"
        changes = [*free, *altering]
        said += (
            f"; config changes: {', '.join(map(str, changes))}" if changes else "; config unchanged"
        )
        _say(said)
        if altering:
            event = {
                "step": step, "rule": "config_change", "severity": "warning", "values": {},
                "message": f"resumed with {', '.join(map(str, altering))} "
                           "(--allow-config-change): the trajectory changes from here",
                "action": None, "changes": {c.key: [c.old, c.new] for c in altering},
            }  # fmt: skip
            append_lines(self.path / "events.jsonl", [json.dumps(event)])

    def release(self) -> None:
        self.lock.release()
