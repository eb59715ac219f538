"""Which config changes a resume may take freely: the keys that only change what is shown or
written, against those that can alter a training step's numbers (weights, samples, RNG draws),
which need ``--allow-config-change`` (train.rundir)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from entropy_rl.control.controllers import SCHEDULED_KINDS

ALWAYS_FREE = ("preset", "run.name", "run.out_dir", "run.progress", "run.loggers",
               "run.log_samples")  # fmt: skip
"""Keys that only change what is shown or written, never a step's numbers."""
FREE_UNLESS_DETECTOR_ACTS = (
    "run.steps", "run.save_every", "run.keep_checkpoints", "eval.every", "eval.n_prompts",
    "eval.samples", "eval.greedy", "control.detector", "control.detector_kwargs",
)  # fmt: skip
"""Free while the collapse detector only reports (every ``*_action`` none, the default): then
evaluation (own random stream), checkpoint spacing and the detector touch no step's numbers.
A detector with an action reads evaluations, run.steps (entropy_floor) and, for rollback, the
checkpoints. ``run.steps`` also alters the trajectory under every controller whose schedule
may span it (``SCHEDULED_KINDS``: ``adaptive``, ``target``, ``rate``, ``entropic``)."""


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key} {json.dumps(self.old)} -> {json.dumps(self.new)}"


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "preset":
            out |= {f"{k}.{kk}": vv for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def _detector_acts(d: dict[str, Any]) -> bool:
    control = d.get("control") or {}
    kwargs = control.get("detector_kwargs") or {}
    acts = any(str(v) != "none" for k, v in kwargs.items() if k.endswith("_action"))
    return bool(control.get("detector", True)) and acts


def classify_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[Change], list[Change]]:
    """(free, altering): the keys whose value differs between two config dicts (as in
    config.yaml), split by whether the change can alter a training step's numbers (weights,
    samples, RNG draws). Rounding-only knobs (run.threads, algo.micro_batch_size,
    model.chunk_size, run.device) count as altering: an unbroken run would not equal it."""
    a, b = _flat(old), _flat(new)
    changes = [
        Change(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]
    acts = _detector_acts(old) or _detector_acts(new)
    scheduled = any((d.get("control") or {}).get("controller") in SCHEDULED_KINDS
                    for d in (old, new))  # fmt: skip
    free: list[Change] = []
    altering: list[Change] = []
    for ch in changes:
        ok = ch.key in ALWAYS_FREE or (ch.key in FREE_UNLESS_DETECTOR_ACTS and not acts)
        if ch.key == "run.steps" and scheduled:
            ok = False
        (free if ok else altering).append(ch)
    return free, altering
