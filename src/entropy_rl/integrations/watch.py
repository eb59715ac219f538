"""``entropy-rl watch``: run the collapse detector on another framework's metric stream.

Reads a run's metrics while they are written, maps their names onto ours
(``integrations._names``), feeds each new step to :class:`~entropy_rl.control.detector.
CollapseDetector`, and prints one line per event as it fires, with a line under it naming the
preset or detector setting that would act on it in the run's framework (``integrations._hints``:
``EntropyCallback(preset=...)`` for TRL, ``+entropy_rl.preset=...`` for verl). Sources,
detected from the path:

* our ``metrics.jsonl`` (a run directory or the file);
* a TRL output directory: ``trainer_state.json``'s ``log_history``, from the output dir or
  its ``checkpoint-*/`` subdirectories, whichever is newest;
* a TensorBoard event directory (needs ``pip install tensorboard``); TRL's ``train/`` tag
  prefix is dropped;
* a JSONL file of verl metrics: verl's file logger (``{"step": N, "data": {...}}`` per line),
  flat ``{"step": N, "actor/entropy": ...}`` lines, or its console lines
  (``step:N - actor/entropy:0.61 - ...``).

With ``report_dir`` the mapped metrics and the events are written there in our run-directory
layout (``metrics.jsonl``, ``events.jsonl``, ``config.yaml``) and ``entropy_rl.report`` renders
its HTML page at the end.

Accuracy: the entropy_drop rule compares entropy with accuracy. TRL and verl log no training
accuracy, so for them ``reward/mean`` is appended to the detector's ``accuracy_keys`` unless
``detector_kwargs`` sets them; its threshold ``entropy_drop_min_acc_gain`` is then in reward
units. Planned steps (``total_steps``, for the entropy_floor rule) come from the argument, else
TRL's ``max_steps`` or our ``config.yaml``, else (``follow=False``) the last step read; while
following a stream with no known length the entropy_floor rule is off.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import yaml

from entropy_rl.control.detector import CollapseDetector, DetectorConfig, Event
from entropy_rl.errors import ConfigError, MissingExtraError, UserError
from entropy_rl.integrations._hints import event_hint
from entropy_rl.integrations._names import detect_naming, map_metrics

__all__ = ["FORMATS", "MetricStream", "detect_format", "format_event", "parse_stream", "watch"]

FORMATS = ("jsonl", "trl", "tensorboard")
_CONSOLE = re.compile(r"^step:(\d+)( - .*)?$")
_NEVER = 1 << 40  # total_steps for a stream of unknown length (entropy_floor is then disabled)


# --------------------------------------------------------------------------- readers


def _find_trl_states(root: Path) -> list[Path]:
    return [p for p in [root / "trainer_state.json"] if p.is_file()] + sorted(
        root.glob("checkpoint-*/trainer_state.json")
    )


def _find_event_dirs(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("*tfevents*") if p.is_file()})


def detect_format(path: str | Path) -> tuple[str, Path] | None:
    """``(format, source)`` for ``path``, or None when nothing readable is there (yet).

    A directory is, in order of preference: our run dir (``metrics.jsonl``), a TRL output dir
    (``trainer_state.json`` in it or in ``checkpoint-*/``), a TensorBoard log dir (event files
    in it or below: the most recently written directory), or a directory holding exactly one
    ``*.jsonl``. A file is a TRL state file, a TensorBoard event file or a JSONL file.
    """
    p = Path(path)
    if p.is_file():
        if p.name == "trainer_state.json":
            return "trl", p.parent
        if "tfevents" in p.name:
            return "tensorboard", p.parent
        return "jsonl", p
    if not p.is_dir():
        return None
    if (p / "metrics.jsonl").is_file():
        return "jsonl", p / "metrics.jsonl"
    if _find_trl_states(p):
        return "trl", p
    event_dirs = _find_event_dirs(p)
    if event_dirs:
        newest = max(event_dirs, key=lambda d: max(f.stat().st_mtime for f in d.glob("*tfevents*")))
        return "tensorboard", newest
    jsonls = sorted(p.glob("*.jsonl"))
    if len(jsonls) == 1:
        return "jsonl", jsonls[0]
    return None


def _parse_line(line: str) -> dict[str, Any] | None:
    """One JSONL or verl console line -> a raw row; None for a line that holds no metrics."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("{"):
        obj = json.loads(line)  # JSONDecodeError is a ValueError; the caller adds the place
        if not isinstance(obj, dict):
            return None
        data = obj.get("data")
        if isinstance(data, dict):  # verl FileLogger: {"step": N, "data": {...}}
            return {**data, "step": obj.get("step")}
        return obj
    m = _CONSOLE.match(line)
    if m is None:
        return None
    row: dict[str, Any] = {"step": int(m.group(1))}
    for part in (m.group(2) or "").split(" - ")[1:]:
        key, _, value = part.rpartition(":")
        try:
            row[key] = float(value)
        except ValueError:
            continue
    return row


class _JsonlReader:
    """New complete lines of a JSONL file since the last poll (a torn last line waits).

    A file that is not text is refused (UserError): a NUL byte, a "line" longer than
    ``MAX_LINE`` bytes, or, when reading ends, text of which no line is a metrics row."""

    MAX_LINE = 1 << 20  # 1 MiB: a metrics row is a few kB

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lineno = 0
        self.tail = b""
        self.rows = 0
        self.other = 0  # non-empty lines that held no metrics

    def _not_a_stream(self, why: str) -> UserError:
        return UserError(
            f"{self.path}: {why}; not a metric stream: give watch a metrics JSONL, a run or TRL "
            "output directory, or a TensorBoard log directory"
        )

    def poll(self, final: bool) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        if (nul := chunk.find(b"\0")) >= 0:
            raise self._not_a_stream(f"binary data (a NUL byte at offset {self.offset + nul})")
        self.offset += len(chunk)
        lines = (self.tail + chunk).split(b"\n")
        self.tail = lines.pop()
        if len(self.tail) > self.MAX_LINE or any(len(x) > self.MAX_LINE for x in lines):
            raise self._not_a_stream(f"more than {self.MAX_LINE} bytes without a line break")
        parsed = [self._parse(raw) for raw in lines]
        rows = [r for r in parsed if r is not None]
        self.rows += len(rows)
        self.other += sum(
            r is None and raw.strip() != b"" for r, raw in zip(parsed, lines, strict=True)
        )
        if final and self.tail.strip():
            try:  # a last line without its newline: use it if it is whole, else skip it
                row = _parse_line(self.tail.decode("utf-8", errors="replace"))
            except ValueError:
                row = None
            self.tail = b""
            if row is not None:
                rows.append(row)
                self.rows += 1
        if final and self.rows == 0 and self.other:
            raise self._not_a_stream(
                f"none of its {self.other} line(s) is a metrics row (a JSON object or a verl "
                "console line)"
            )
        return rows

    def _parse(self, raw: bytes) -> dict[str, Any] | None:
        self.lineno += 1
        try:
            return _parse_line(raw.decode("utf-8", errors="replace"))
        except ValueError as exc:
            raise UserError(f"{self.path}:{self.lineno}: not a JSON object ({exc})") from exc


class _TrlStateReader:
    """``log_history`` of the newest ``trainer_state.json`` (top level or a checkpoint)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: tuple[Path, float] | None = None
        self.max_steps: int | None = None

    def poll(self, final: bool) -> list[dict[str, Any]]:
        states = []
        for p in _find_trl_states(self.root):
            try:
                states.append((p.stat().st_mtime, p))
            except FileNotFoundError:  # a checkpoint rotated away meanwhile
                continue
        if not states:
            return []
        mtime, newest = max(states)
        if self.seen == (newest, mtime):
            return []
        try:
            state = json.loads(newest.read_text())
        except (ValueError, FileNotFoundError):  # being written or rotated: retry next poll
            return []
        self.seen = (newest, mtime)
        max_steps = state.get("max_steps")
        if isinstance(max_steps, int) and max_steps > 0:
            self.max_steps = max_steps
        return [r for r in state.get("log_history", []) if isinstance(r, dict)]


class _TensorBoardReader:
    """Scalars of one event directory, via tensorboard's EventAccumulator."""

    def __init__(self, directory: Path) -> None:
        try:
            from tensorboard.backend.event_processing.event_accumulator import (
                EventAccumulator,
            )
        except ImportError as exc:
            raise MissingExtraError(
                "reading TensorBoard event files needs tensorboard: "
                "pip install 'entropy-rl[tensorboard]'"
            ) from exc
        self.acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})

    def poll(self, final: bool) -> list[dict[str, Any]]:
        self.acc.Reload()
        rows: dict[int, dict[str, Any]] = {}
        for tag in self.acc.Tags().get("scalars", []):
            key = tag[len("train/") :] if tag.startswith("train/") else tag
            for ev in self.acc.Scalars(tag):
                rows.setdefault(int(ev.step), {"step": int(ev.step)})[key] = float(ev.value)
        return [rows[s] for s in sorted(rows)]


# --------------------------------------------------------------------------- stream


class MetricStream:
    """Rows of a run's metric stream in our names, each step once, in step order.

    ``poll()`` returns the steps that became available since the last call. Rows sharing a
    step are merged (TRL logs train and eval rows separately). While following, a
    TensorBoard stream holds back its newest step (its tags arrive one by one);
    ``poll(final=True)`` releases everything.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format: str | None = None
        self.naming: str | None = None
        self.source: Path | None = None
        self._reader: _JsonlReader | _TrlStateReader | _TensorBoardReader | None = None
        self._pending: dict[int, dict[str, Any]] = {}
        self._last_step: int | None = None
        self._next_index = 1

    @property
    def total_steps(self) -> int | None:
        """Planned steps, when the source says: TRL's ``max_steps`` or our ``run.steps`` (of the
        run's newest config segment: a run resumed with more steps plans those)."""
        if isinstance(self._reader, _TrlStateReader):
            return self._reader.max_steps
        if self.naming == "entropy_rl" and self.source is not None:
            from entropy_rl.train.rundir import current_config

            cfg = current_config(self.source.parent) or self.source.parent / "config.yaml"
            try:
                steps = (yaml.safe_load(cfg.read_text()) or {}).get("run", {}).get("steps")
            except (OSError, yaml.YAMLError, AttributeError):
                return None
            return steps if isinstance(steps, int) and steps > 0 else None
        return None

    def _open(self, final: bool) -> bool:
        found = detect_format(self.path)
        if found is None:
            if final:
                raise UserError(
                    f"{self.path}: no metric stream found; expected our metrics.jsonl, a TRL"
                    " output dir (trainer_state.json), a TensorBoard event dir, or a JSONL file"
                )
            return False
        self.format, self.source = found
        if self.format == "trl":
            self._reader, self.naming = _TrlStateReader(self.source), "trl"
        elif self.format == "tensorboard":
            self._reader = _TensorBoardReader(self.source)
        else:
            self._reader = _JsonlReader(self.source)
        return True

    def poll(self, *, final: bool = False) -> list[dict[str, float]]:
        """New steps since the last call, mapped to our names (see the class docstring).

        Raises:
            ValueError: with ``final`` when nothing readable is at the path or its metric
                names are none we know; a complete JSONL line that is not JSON.
        """
        if self._reader is None and not self._open(final):
            return []
        assert self._reader is not None
        for raw in self._reader.poll(final):
            step = raw.get("step")
            if isinstance(step, bool) or not isinstance(step, (int, float)):
                step = self._next_index  # a line without a step: its position
            step = int(step)
            self._next_index = step + 1
            if self._last_step is not None and step <= self._last_step:
                continue  # already emitted (TRL re-reads its whole history)
            self._pending.setdefault(step, {}).update(raw)
        if self.naming is None:
            keys = {k for row in self._pending.values() for k in row}
            self.naming = detect_naming(keys)
            if self.naming is None:
                if final and keys:
                    raise UserError(
                        f"{self.source}: metric names not recognised (e.g. {sorted(keys)[:8]});"
                        " expected ours (entropy/mean), TRL's (entropy, reward, ...) or verl's"
                        " (actor/entropy, ...)"
                    )
                return []
        ready = sorted(self._pending)
        if not final and self.format == "tensorboard" and ready:
            ready = ready[:-1]
        rows = []
        for step in ready:
            rows.append(map_metrics(self._pending.pop(step) | {"step": step}, naming=self.naming))
            self._last_step = step
        return rows


def parse_stream(path: str | Path) -> list[dict[str, float]]:
    """Every step of the stream at ``path``, mapped to our names (see :class:`MetricStream`)."""
    return MetricStream(path).poll(final=True)


# --------------------------------------------------------------------------- watch


def format_event(event: Event) -> str:
    """One line: ``step 40  WARNING   entropy_drop: <message> [action: stop]``."""
    action = f" [action: {event.action}]" if event.action else ""
    return (
        f"step {event.step:>6}  {event.severity.upper():<8}  {event.rule}: {event.message}{action}"
    )


def _jsonl_append(path: Path, obj: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(obj), allow_nan=False) + "\n")


class _Session:
    """The detector plus the report directory, created on the first rows."""

    def __init__(
        self,
        stream: MetricStream,
        *,
        follow: bool,
        report_dir: Path | None,
        detector_kwargs: Mapping[str, Any] | None,
        total_steps: int | None,
        out: TextIO,
    ) -> None:
        self.stream, self.follow, self.report_dir, self.out = stream, follow, report_dir, out
        self.detector_kwargs = dict(detector_kwargs or {})
        self.total_steps = total_steps
        self.detector: CollapseDetector | None = None
        self.steps = 0
        self.events = 0

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def _start(self, rows: list[dict[str, float]]) -> CollapseDetector:
        kw = dict(self.detector_kwargs)
        if self.stream.naming != "entropy_rl" and "accuracy_keys" not in kw:
            kw["accuracy_keys"] = (*DetectorConfig().accuracy_keys, "reward/mean")
        total = self.total_steps or self.stream.total_steps
        if total is None and not self.follow:
            total = int(max(r["step"] for r in rows))
        if total is None:
            if kw.get("entropy_floor_enabled", True):
                self.say("note: entropy_floor rule off (run length unknown; pass total_steps)")
            kw["entropy_floor_enabled"] = False
            total = _NEVER
        detector = CollapseDetector(DetectorConfig.from_dict(kw), total_steps=max(1, total))
        self.say(
            f"watching {self.stream.source} ({self.stream.format}, {self.stream.naming} metric"
            f" names, {total if total != _NEVER else 'unknown'} planned steps)"
        )
        if self.report_dir is not None:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.jsonl", "events.jsonl"):
                (self.report_dir / name).write_text("")
            config = {
                "name": self.stream.path.resolve().name,
                "source": str(self.stream.path),
                "format": self.stream.format,
                "naming": self.stream.naming,
                "run": {"steps": total if total != _NEVER else None},
                "control": {"detector_kwargs": kw},
            }
            text = yaml.safe_dump(json.loads(json.dumps(config, default=list)), sort_keys=False)
            (self.report_dir / "config.yaml").write_text(text)
        return detector

    def feed(self, rows: list[dict[str, float]]) -> None:
        if not rows:
            return
        if self.detector is None:
            self.detector = self._start(rows)
        for row in rows:
            self.steps += 1
            events = self.detector.observe(row)
            if self.report_dir is not None:
                _jsonl_append(self.report_dir / "metrics.jsonl", row)
            for event in events:
                self.events += 1
                self.say(format_event(event))
                hint = event_hint(event.rule, self.stream.naming or "entropy_rl")
                self.say(f"{'':>14}-> {hint}")  # what would act on it in the run's framework
                if self.report_dir is not None:
                    _jsonl_append(self.report_dir / "events.jsonl", event.to_dict())

    def finish(self) -> None:
        self.say(f"{self.steps} steps read, {self.events} collapse events")
        if self.report_dir is None or self.steps == 0:
            return
        try:
            from entropy_rl.report import write_report

            html = write_report([self.report_dir], self.report_dir)
        except ImportError as exc:
            self.say(f"report not written: {exc}")
            return
        self.say(f"report: {html}")


def watch(
    path: str | Path,
    *,
    follow: bool = True,
    poll_s: float = 2.0,
    report_dir: str | Path | None = None,
    detector_kwargs: Mapping[str, Any] | None = None,
    total_steps: int | None = None,
    out: TextIO = sys.stdout,
    idle_stop_s: float | None = None,
) -> int:
    """Follow the metric stream at ``path`` and print collapse events; return their number.

    Args:
        path: a run directory, TRL output dir, TensorBoard log dir or JSONL file (see the
            module docstring); while following it may not exist yet.
        follow: keep polling until interrupted (Ctrl-C) or ``idle_stop_s``; False: read what
            is there, report, return.
        poll_s: seconds between polls while following, > 0.
        report_dir: write ``metrics.jsonl``, ``events.jsonl``, ``config.yaml`` (our names) and
            the HTML report there. Must not be the directory being read.
        detector_kwargs: :class:`DetectorConfig` fields (thresholds, actions).
        total_steps: planned steps of the run (entropy_floor rule); see the module docstring.
        out: where event lines go.
        idle_stop_s: while following, stop after this many seconds without a new step.

    Raises:
        ValueError: bad arguments, an unreadable stream (see :meth:`MetricStream.poll`).
        ImportError: a TensorBoard directory without tensorboard installed.
    """
    if not (isinstance(poll_s, (int, float)) and math.isfinite(poll_s) and poll_s > 0):
        raise ConfigError(f"poll_s must be a number of seconds > 0, got {poll_s!r}")
    if total_steps is not None and (
        isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
    ):
        raise ConfigError(f"total_steps must be an int >= 1 or None, got {total_steps!r}")
    DetectorConfig.from_dict(dict(detector_kwargs or {}))  # fail before waiting on the stream
    rdir = None if report_dir is None else Path(report_dir)
    if rdir is not None:
        src = Path(path).resolve()
        if rdir.resolve() in (src, src.parent if src.is_file() else src):
            raise ConfigError(f"report_dir {rdir} is the run being read; choose another directory")
    stream = MetricStream(path)
    session = _Session(
        stream,
        follow=follow,
        report_dir=rdir,
        detector_kwargs=detector_kwargs,
        total_steps=total_steps,
        out=out,
    )
    if follow:
        session.say(f"following {path} (Ctrl-C to stop)")
        last_new = time.monotonic()
        try:
            while True:
                rows = stream.poll()
                session.feed(rows)
                now = time.monotonic()
                if rows:
                    last_new = now
                elif idle_stop_s is not None and now - last_new >= idle_stop_s:
                    break
                time.sleep(poll_s)
        except KeyboardInterrupt:
            pass
        if stream.format is None:  # stopped before anything appeared at the path
            session.finish()
            return 0
    session.feed(stream.poll(final=True))
    session.finish()
    return session.events
