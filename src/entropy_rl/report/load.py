"""Read a run directory written by the trainer: metrics, collapse events and config.

A run directory holds
  metrics.jsonl   one JSON object per RL step (keys: docs/metrics.md); required
  events.jsonl    collapse-detector events (format: bottom of docs/metrics.md); optional
  config.yaml     the resolved config (``name``, ``preset``, ``seed``, ...); optional

Runs are read while they are still being written, so the last line of a JSONL file may be
cut off mid-object: it is skipped with a ``TruncatedRunWarning`` and a note on the run. A
broken line anywhere else means the file is corrupt and raises ValueError with its line
number. Metric values may be absent on some steps (eval metrics every N steps), ``null`` or
``NaN``; ``RunData.series`` returns only the finite ones. This module needs only numpy and
PyYAML, so summaries work without the ``report`` extra.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from entropy_rl.errors import UserError

__all__ = ["Event", "RunData", "TruncatedRunWarning", "load_run", "load_runs"]

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
CONFIG_FILE = "config.yaml"
SEVERITIES = ("warning", "critical")


class TruncatedRunWarning(UserWarning):
    """The last line of a JSONL file was incomplete (the run is still being written)."""


@dataclass(frozen=True)
class Event:
    """One collapse-detector event (a line of events.jsonl; format in docs/metrics.md)."""

    step: int
    rule: str
    severity: str  # "warning" | "critical"
    message: str = ""
    action: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunData:
    """One run as read from disk.

    ``records`` are the metric rows sorted by ``step``; a step logged twice (a resumed run
    re-logging steps) keeps its last row. ``notes`` collects what was skipped while reading.
    """

    path: Path
    label: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    events: list[Event]
    notes: list[str] = field(default_factory=list)
    group: str = ""
    """The setting (`run_group`); runs of one group share a colour."""
    color_index: int = 0
    """Index of the run's colour (`_style.color`): one per group, in order of appearance."""

    @property
    def keys(self) -> set[str]:
        """Every metric key that has at least one finite value."""
        return {k for r in self.records for k, v in r.items() if as_finite(v) is not None}

    def has(self, key: str) -> bool:
        """True if ``key`` has at least one finite value in this run."""
        return any(as_finite(r.get(key)) is not None for r in self.records)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the steps where ``key`` is a finite number; both shape (n,)."""
        steps: list[float] = []
        values: list[float] = []
        for r in self.records:
            v = as_finite(r.get(key))
            if v is not None:
                steps.append(float(r["step"]))
                values.append(v)
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)

    def paired(self, key_x: str, key_y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, x, y) over the steps where both keys are finite; each shape (n,)."""
        steps: list[float] = []
        xs: list[float] = []
        ys: list[float] = []
        for r in self.records:
            x, y = as_finite(r.get(key_x)), as_finite(r.get(key_y))
            if x is not None and y is not None:
                steps.append(float(r["step"]))
                xs.append(x)
                ys.append(y)
        return np.asarray(steps, float), np.asarray(xs, float), np.asarray(ys, float)

    @property
    def last_step(self) -> int:
        return int(self.records[-1]["step"])


def as_finite(value: Any) -> float | None:
    """The value as a float if it is a finite number (not bool, None, NaN, inf or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _not_finite(value: Any) -> bool:
    """None, NaN or inf (what a non-finite metric looks like in metrics.jsonl)."""
    if value is None:
        return True
    return isinstance(value, float) and not math.isfinite(value)


def _read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Parse one JSON object per line; skip blank lines and a cut-off last line (with a warning)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    rows: list[dict[str, Any]] = []
    for idx, (lineno, line) in enumerate(numbered):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        except ValueError as err:
            if idx == len(numbered) - 1:
                msg = f"{path}: skipped incomplete last line {lineno} (run still being written?)"
                warnings.warn(msg, TruncatedRunWarning, stacklevel=3)
                notes.append(msg)
                break
            raise UserError(
                f"{path}, line {lineno}: not a JSON object ({err}); only the last line of a "
                "run that is still being written may be incomplete"
            ) from err
        rows.append(obj)
    return rows


def _read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    by_step: dict[int, dict[str, Any]] = {}
    for i, row in enumerate(_read_jsonl(path, notes)):
        step = as_finite(row.get("step"))
        s = int(step) if step is not None else i + 1  # no step key: 1-based row number
        if s in by_step:
            notes.append(f"{path.name}: step {s} logged twice; kept the later row")
        by_step[s] = {**row, "step": s}
    return [by_step[s] for s in sorted(by_step)]


def _read_events(path: Path, notes: list[str]) -> list[Event]:
    events: list[Event] = []
    for row in _read_jsonl(path, notes):
        step = as_finite(row.get("step"))
        if step is None:
            notes.append(f"{path.name}: skipped an event without a step: {row}")
            continue
        severity = str(row.get("severity") or "warning").lower()
        if severity not in SEVERITIES:
            notes.append(f"{path.name}: unknown severity {severity!r} at step {int(step)}")
        values = row.get("values")
        action = row.get("action")
        events.append(
            Event(
                step=int(step),
                rule=str(row.get("rule") or "unknown"),
                severity=severity,
                message=str(row.get("message") or ""),
                action=None if action is None else str(action),
                values=values if isinstance(values, dict) else {},
            )
        )
    return sorted(events, key=lambda e: e.step)


def _read_config(path: Path, notes: list[str]) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        notes.append(f"{path.name}: could not be parsed ({err.__class__.__name__}); ignored")
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _config_value(config: dict[str, Any], key: str) -> Any:
    """``config[key]``, else ``config["run"][key]`` (the trainer nests name and seed in ``run``)."""
    if config.get(key) is not None:
        return config[key]
    run = config.get("run")
    return run.get(key) if isinstance(run, dict) else None


_SEED_DIR = re.compile(r"seed\d+")


def run_group(config: dict[str, Any], run_dir: Path) -> str:
    """The setting a run belongs to: its name, else (``compare``'s OUT/<setting>/seed<k>
    layout) the setting directory, else its preset, else its directory name.

    The trainer's default name ``run`` says nothing, so it yields. Runs of one group differ
    only by seed; the report draws them in one colour.
    """
    name = _config_value(config, "name")
    if name and name != "run":
        return str(name)
    if _SEED_DIR.fullmatch(run_dir.name) and run_dir.parent.name:
        return run_dir.parent.name
    return str(config.get("preset") or name or run_dir.name)


def run_label(config: dict[str, Any], run_dir: Path) -> str:
    """`run_group` plus ``seed N`` when the config has one."""
    base = run_group(config, run_dir)
    seed = _config_value(config, "seed")
    return base if seed is None else f"{base} seed {seed}"


def load_run(run_dir: str | Path) -> RunData:
    """Read one run directory; FileNotFoundError if it has no metrics.jsonl."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist (or is not a directory)")
    if not metrics_path.is_file():
        raise UserError(
            f"{metrics_path} not found: a run directory must contain {METRICS_FILE} "
            "(one JSON object per step, written by the trainer)"
        )
    notes: list[str] = []
    records = _read_metrics(metrics_path, notes)
    if not records:
        raise UserError(f"{metrics_path} holds no complete step yet; nothing to report")
    bad = [(r["step"], k) for r in records for k, v in r.items() if _not_finite(v)]
    if bad:  # the trainer writes NaN / inf as null: say so instead of plotting around them
        steps = sorted({s for s, _ in bad})
        notes.append(
            f"{METRICS_FILE}: {len(steps)} step(s) hold non-finite values (NaN / inf, null in the "
            f"file), first {bad[0][1]} at step {bad[0][0]}; the figures leave those points out"
        )
    events_path = run_dir / EVENTS_FILE
    events = _read_events(events_path, notes) if events_path.is_file() else []
    config_path = run_dir / CONFIG_FILE
    config = _read_config(config_path, notes) if config_path.is_file() else {}
    return RunData(
        path=run_dir,
        label=run_label(config, run_dir),
        group=run_group(config, run_dir),
        config=config,
        records=records,
        events=events,
        notes=notes,
    )


def _distinguishing_suffix(paths: list[Path]) -> list[str]:
    """The shortest trailing path parts that tell ``paths`` apart (e.g. ``dapo-hi/seed0``)."""
    resolved = [p.resolve() for p in paths]
    for depth in range(1, max(len(p.parts) for p in resolved) + 1):
        tails = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(tails)) == len(tails):
            return tails
    return [str(p) for p in resolved]


def load_runs(run_dirs: list[Path]) -> list[RunData]:
    """Read several runs; labels that collide get the shortest path tail that separates them.

    ``compare`` writes OUT/<setting>/seed<k>: two settings on one preset both read "dapo seed 0"
    from their configs and become "dapo seed 0 (hi/seed0)" and "dapo seed 0 (lo/seed0)".
    """
    if not run_dirs:
        raise UserError("no run directories given; pass at least one RUN_DIR")
    runs = [load_run(d) for d in run_dirs]
    for label in {r.label for r in runs}:
        same = [r for r in runs if r.label == label]
        if len(same) > 1:
            for r, tail in zip(same, _distinguishing_suffix([r.path for r in same]), strict=True):
                r.label = f"{label} ({tail})"
    order: dict[str, int] = {}
    for r in runs:
        r.color_index = order.setdefault(r.group or r.label, len(order))
    return runs
