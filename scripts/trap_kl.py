"""The trap study's deciding rows: how far one rollout moves the policy, setting by setting, and
the learning rate at which plain PPO moves it as far as `narrow-clip` does.

    python scripts/trap_kl.py [runs/trap] [--match narrow-clip] [--lr ppo=2e-4 --lr ...]

For every finished run of OUT/<setting>/seed<k> it reads the mean over all training steps of
`kl/old_approx` (the k3 estimate of KL(pi_old || pi_theta) on the rollout's tokens, averaged
over each step's mini-batches: the per-step update size a trust region bounds), the final
entropy (mean `entropy/mean` of the last 3 steps) and the exact P mass on the final checkpoint
(`trap/p_prob_eval`), and prints one row per setting (mean, min-max over seeds).

With --match SETTING and two or more `--lr LABEL=LR` (PPO settings that differ only in the
learning rate), it interpolates log(mean KL) linearly in log(lr) between the two settings whose
KL brackets SETTING's mean KL (extrapolating from the nearest two when none does) and prints
the learning rate at which PPO's mean per-step KL would equal SETTING's: the "KL-matched" row
of scripts/trap_deciding.sh. Only the standard library and entropy-rl's run reader are used.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from entropy_rl.experiments.compare import read_rows  # noqa: E402


def run_numbers(rows: list[dict]) -> dict[str, float]:
    """mean KL per step, final entropy and final exact P mass of one run's metrics rows."""
    train = [r for r in rows if r.get("step", 0) >= 1 and r.get("kl/old_approx") is not None]
    evals = [r for r in rows if r.get("trap/p_prob_eval") is not None]
    ent = [r["entropy/mean"] for r in train if r.get("entropy/mean") is not None]
    return {
        "kl": statistics.fmean(r["kl/old_approx"] for r in train) if train else math.nan,
        "entropy": statistics.fmean(ent[-3:]) if ent else math.nan,
        "p_mass": evals[-1]["trap/p_prob_eval"] if evals else math.nan,
        "steps": float(max((r.get("step", 0) for r in rows), default=0)),
    }


def log_interp(points: list[tuple[float, float]], kl: float) -> float:
    """The lr at which log KL, linear in log lr between two (lr, KL) points, equals `kl`.

    points: (lr, mean KL) of >= 2 settings. Uses the pair that brackets `kl` in KL (the two
    nearest in KL when none does). Hand-worked: (1e-4, 0.01) and (1e-3, 0.1) give slope 1 in
    log-log, so KL 0.0316 -> lr 10^-3.5 = 3.16e-4.
    """
    pts = sorted(points, key=lambda p: p[1])
    pairs = list(itertools.pairwise(pts))
    lo, hi = next(((a, b) for a, b in pairs if a[1] <= kl <= b[1]),
                  min(pairs, key=lambda ab: abs(math.log(ab[0][1] * ab[1][1]) / 2 - math.log(kl))))  # fmt: skip
    slope = (math.log(hi[1]) - math.log(lo[1])) / (math.log(hi[0]) - math.log(lo[0]))
    return math.exp(math.log(lo[0]) + (math.log(kl) - math.log(lo[1])) / slope)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default="runs/trap")
    ap.add_argument("--steps", type=int, default=150, help="a run counts once it logged this step")
    ap.add_argument("--match", default=None, help="the setting whose mean KL to match")
    ap.add_argument("--lr", action="append", default=[], help="LABEL=LR of a PPO setting")
    args = ap.parse_args(argv)
    root = Path(args.root)
    by_setting: dict[str, list[dict[str, float]]] = {}
    for d in sorted(root.glob("*/seed*")):
        if (d / "metrics.jsonl").is_file():
            nums = run_numbers(read_rows(d))
            if nums["steps"] >= args.steps:
                by_setting.setdefault(d.parent.name, []).append(nums)
    print("| setting | seeds | mean KL per step | final entropy | exact P mass |")
    print("|---|---|---|---|---|")
    for label, runs in by_setting.items():
        cells = []
        for key, fmt in (("kl", ".4f"), ("entropy", ".3f"), ("p_mass", ".3f")):
            v = [r[key] for r in runs]
            cells.append(f"{statistics.fmean(v):{fmt}} ({min(v):{fmt}}-{max(v):{fmt}})")
        print(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    if args.match:
        target = statistics.fmean(r["kl"] for r in by_setting[args.match])
        points = []
        for spec in args.lr:
            label, lr = spec.split("=")
            if label in by_setting:
                points.append((float(lr), statistics.fmean(r["kl"] for r in by_setting[label])))
        if len(points) < 2:
            sys.exit("need the mean KL of two or more --lr settings with finished runs")
        print(f"\n{args.match}: mean KL {target:.4f}; PPO (lr, mean KL): "
              + ", ".join(f"({lr:.3g}, {kl:.4f})" for lr, kl in points)
              + f"; matched lr {log_interp(points, target):.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
