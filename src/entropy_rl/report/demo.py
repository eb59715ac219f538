"""Two synthetic run directories for trying the report without training anything.

``make_demo_runs(dir)`` writes
  healthy/     entropy-targeted clip-higher run: entropy settles at its 0.45 nats target,
               eval accuracy climbs steadily, pass@16 holds up, no collapse events;
  collapsing/  plain GRPO run: entropy falls 0.92 -> ~0.05 nats, accuracy plateaus, pass@16
               drops below its starting value, the detector fires twice.
Both follow the entropy-performance law R = -a * exp(H) + b (Cui et al. 2025) plus noise,
and pass@k = 1 - (1 - p)^(k^d) with a "diversity" exponent d that the collapsing run loses.
The numbers are made up to look like the runs in docs/experiments.md; they are not data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["make_demo_runs"]

_KS = (1, 2, 4, 8, 16)


def _run_rows(
    rng: np.random.Generator,
    *,
    steps: int,
    eval_every: int,
    h_start: float,
    h_floor: float,
    tau: float,
    a: float,
    b: float,
    diversity: tuple[float, float],
    upper_clip: float,
    target: float | None,
) -> list[dict[str, Any]]:
    t = np.arange(1, steps + 1, dtype=float)
    h = h_floor + (h_start - h_floor) * np.exp(-(t - 1) / tau)
    h = np.clip(h * (1 + 0.03 * rng.standard_normal(steps)), 1e-3, None)
    law = b - a * np.exp(h)  # the entropy-performance law, noiseless
    acc = np.clip(law + 0.025 * rng.standard_normal(steps), 0, 1)
    frac = (t - 1) / (steps - 1)
    div = diversity[0] + (diversity[1] - diversity[0]) * frac
    rows: list[dict[str, Any]] = []
    prev_h: float | None = None
    for i in range(steps):
        hi = float(h[i])
        actual = None if prev_h is None else hi - prev_h
        # predicts the *next* change, H[i+1] - H[i] (control.monitor.EntropyDynamics)
        nxt = float(h[i + 1] - hi) if i + 1 < steps else 0.0
        predicted = 0.75 * nxt + 0.004 * rng.standard_normal()
        prev_h = hi
        pos_shape = np.array([1.9, 1.1, 0.65, 0.35])  # early response tokens carry the entropy
        upper = max(0.0, upper_clip * (0.6 + 0.8 * hi) + 0.002 * rng.standard_normal())
        step_time = 0.85 + 0.05 * rng.standard_normal()
        row: dict[str, Any] = {
            "step": i + 1,
            "reward/mean": float(acc[i] + 0.02 * rng.standard_normal()),
            "reward/std": float(np.sqrt(acc[i] * (1 - acc[i]))),
            "acc/train": float(acc[i]),
            "entropy/mean": hi,
            "entropy/p10": hi * 0.04,
            "entropy/p50": hi * 0.45,
            "entropy/p90": hi * 2.6,
            "entropy/near_det_frac": float(np.exp(-4 * hi)),
            **{f"entropy/pos_{k}": float(hi * s) for k, s in enumerate(pos_shape)},
            "entropy/predicted_delta": predicted,
            "entropy/actual_delta": actual,
            "clip/upper_frac": upper,
            "clip/lower_frac": max(0.0, 0.6 * upper + 0.001 * rng.standard_normal()),
            "clip/dual_frac": 0.0004 + 0.0002 * rng.random(),
            "ratio/abs_dev": 0.05 + 0.04 * hi + 0.004 * rng.standard_normal(),
            "kl/old_approx": 0.002 + 0.001 * rng.random(),
            # answers shorten as the policy sharpens; a few still run into the budget (no draw
            # from rng: the other series stay as they were)
            "length/mean": 5.0 + 3.0 * hi,
            "length/truncated_frac": 0.02 + 0.1 * hi,
            "lr": 2e-4,
            "time/rollout": step_time * 0.6,
            "time/update": step_time * 0.4,
            "time/step": step_time,
        }
        if target is not None:
            row["control/target_entropy"] = target
            row["control/entropy_coef"] = float(max(0.0, 0.01 * (target - hi) / target + 0.002))
        if i == 0 or (i + 1) % eval_every == 0:
            p1 = float(np.clip(law[i] + 0.03 + 0.012 * rng.standard_normal(), 0, 1))
            row["acc/eval"] = p1
            for k in _KS:
                row[f"eval/pass@{k}"] = 1 - (1 - p1) ** (k ** div[i])
        rows.append(row)
    return rows


def _add_same_batch(rows: list[dict[str, Any]], rng: np.random.Generator, *, every: int) -> None:
    """Every ``every``-th row gets the update's change on its own batch (train.forecast) and its
    first-order part: the change follows the entropy's trend (a 9-step moving average) plus
    noise, not the step-to-step noise that ``predicted_delta`` above follows, and the first
    order explains most of it. With seed 0 the report then shows Cov(log pi, A) "not
    predictive" for the healthy run and "predictive" for the collapsing one (its trend is
    steeper), the first order predictive for both."""
    h = np.array([r["entropy/mean"] for r in rows])
    trend = np.convolve(np.pad(h, 4, mode="edge"), np.ones(9) / 9, mode="valid")  # (steps,)
    for i in range(every - 1, len(rows) - 1, every):
        same = float(trend[i + 1] - trend[i]) * 1.5 + 0.006 * float(rng.standard_normal())
        rows[i]["entropy/delta_same_batch"] = same
        rows[i]["entropy/first_order_delta"] = 0.85 * same + 0.0005 * float(rng.standard_normal())
        rows[i]["entropy/after_update"] = float(h[i]) + same


def _write_run(
    run_dir: Path, config: dict[str, Any], rows: list[dict[str, Any]], events: list[dict[str, Any]]
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    with (run_dir / "metrics.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    with (run_dir / "events.jsonl").open("w", encoding="utf-8") as f:
        for ev in events:
            f.write(json.dumps(ev) + "\n")


def _detect(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stand-in for control.detector: entropy_drop (below 40% of start), entropy_floor (0.1)."""
    h0 = rows[0]["entropy/mean"]
    events: list[dict[str, Any]] = []
    drop = next((r for r in rows if r["entropy/mean"] < 0.4 * h0), None)
    if drop is not None:
        events.append(
            {
                "step": drop["step"],
                "rule": "entropy_drop",
                "severity": "warning",
                "values": {"entropy": drop["entropy/mean"], "start": h0},
                "message": f"entropy {drop['entropy/mean']:.3f} < 40% of its start {h0:.3f}",
                "action": None,
            }
        )
    floor = 0.1
    low = next((r for r in rows if r["entropy/mean"] < floor), None)
    if low is not None and low["step"] < 0.5 * len(rows):
        progress = low["step"] / len(rows)
        events.append(
            {
                "step": low["step"],
                "rule": "entropy_floor",
                "severity": "critical",
                "values": {"entropy": low["entropy/mean"], "floor": floor, "progress": progress},
                "message": f"entropy/mean {low['entropy/mean']:.3g} nats is under the floor "
                f"{floor:g} at {progress:.0%} of training",
                "action": "raise_eps_high",
            }
        )
    return events


def make_demo_runs(directory: str | Path, *, steps: int = 120, seed: int = 0) -> list[Path]:
    """Write the synthetic ``healthy`` and ``collapsing`` runs under ``directory``.

    Returns the two run directories, healthy first.
    """
    if steps < 10:
        raise ValueError(f"steps must be >= 10 for a meaningful demo, got {steps}")
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    healthy = _run_rows(
        rng,
        steps=steps,
        eval_every=10,
        h_start=0.92,
        h_floor=0.45,
        tau=steps / 5,
        a=0.39,
        b=1.33,
        diversity=(0.8, 0.75),
        upper_clip=0.02,
        target=0.45,
    )
    collapsing = _run_rows(
        rng,
        steps=steps,
        eval_every=10,
        h_start=0.92,
        h_floor=0.04,
        tau=steps / 7,
        a=0.20,
        b=0.85,
        diversity=(0.8, 0.25),
        upper_clip=0.03,
        target=None,
    )
    for k, rows in enumerate((healthy, collapsing)):  # own generator: the rows above unchanged
        _add_same_batch(rows, np.random.default_rng(seed + 1 + k), every=4)
    dirs = [directory / "healthy", directory / "collapsing"]
    # the trainer's config.yaml layout (train.config.Config.to_yaml), abridged
    run = {"seed": seed + 1, "steps": steps}
    data = {"task": "digit_sum"}
    _write_run(
        dirs[0],
        {
            "preset": "dapo",
            "data": data,
            "algo": {"loss": "ppo", "loss_kwargs": {"eps_low": 0.2, "eps_high": 0.28}, "lr": 2e-4},
            "control": {"controller": "target", "controller_kwargs": {"target": 0.45}},
            "run": {"name": "clip-higher + target", **run},
        },
        healthy,
        [],
    )
    _write_run(
        dirs[1],
        {
            "preset": "grpo",
            "data": data,
            "algo": {"loss": "ppo", "loss_kwargs": {"eps_low": 0.2, "eps_high": 0.2}, "lr": 2e-4},
            "control": {"controller": "none"},
            "run": {"name": "grpo baseline", **run},
        },
        collapsing,
        _detect(collapsing),
    )
    return dirs
