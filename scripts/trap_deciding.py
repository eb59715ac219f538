"""Read the trap study's deciding rows (scripts/trap_deciding.sh): is it the per-token bound of a
narrow clip, or only a smaller step, that keeps the rare answer alive?

    python scripts/trap_deciding.py [runs/trap] [--vs ppo --vs narrow-clip]
        [--match narrow-clip --lr ppo=2e-4 --lr ppo-lr6.7e-5=6.67e-5 ...]

For every finished run of OUT/<setting>/seed<k> it reads the mean over all training steps of
`kl/old_approx` (the k3 estimate of KL(pi_old || pi_theta) on the rollout's tokens, averaged
over each step's mini-batches: the per-step update size a trust region bounds; 0 by
construction with one epoch of one mini-batch, whose only pass runs before the update) and
its mean over steps 1-40 (the early phase of scripts/trap_reading.py), the final entropy (mean
`entropy/mean` of the last 3 steps), and the exact P mass and the held-out reward on the final
checkpoint (`trap/p_prob_eval`, `trap/reward_eval`). It prints one row per setting: mean +- std
of the P mass with its per-seed values, and mean (min-max over seeds) of the others.

Each `--vs SETTING` adds a column: the P mass of every other setting against SETTING's, by
`compare`'s rules (`compare_seeds`: the range rule, the exact permutation p), with the p
Holm-adjusted over *all* the comparisons of the printed table (`adjust_family`).

With --match SETTING and two or more `--lr LABEL=LR` (PPO settings that differ only in the
learning rate), it interpolates log(mean KL) linearly in log(lr) between the two settings whose
KL brackets SETTING's mean KL (extrapolating from the nearest two when none does) and prints
the learning rate at which PPO's mean per-step KL would equal SETTING's: how the "KL-matched"
row of scripts/trap_deciding.sh was chosen.
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

from entropy_rl.experiments.compare import (  # noqa: E402
    adjust_family,
    compare_seeds,
    format_comparison,
    read_rows,
)

EARLY = 40  # trap_reading.py's early phase: steps 1-40


def run_numbers(rows: list[dict]) -> dict[str, float]:
    """mean KL per step (over all steps, and over steps 1-EARLY), final entropy and final exact
    P mass of one run's metrics rows."""
    train = [r for r in rows if r.get("step", 0) >= 1 and r.get("kl/old_approx") is not None]
    evals = [r for r in rows if r.get("trap/p_prob_eval") is not None]
    ent = [r["entropy/mean"] for r in train if r.get("entropy/mean") is not None]
    return {
        "kl": statistics.fmean(r["kl/old_approx"] for r in train) if train else math.nan,
        "early_kl": statistics.fmean(r["kl/old_approx"] for r in train[:EARLY])
        if train
        else math.nan,
        "entropy": statistics.fmean(ent[-3:]) if ent else math.nan,
        "p_mass": evals[-1]["trap/p_prob_eval"] if evals else math.nan,
        "reward": evals[-1].get("trap/reward_eval", math.nan) if evals else math.nan,
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
    ap.add_argument("--vs", action="append", default=[], help="a reference setting (repeatable)")
    args = ap.parse_args(argv)
    root = Path(args.root)
    by_setting: dict[str, list[dict[str, float]]] = {}
    found = sorted(root.glob("*/seed*/metrics.jsonl"),
                   key=lambda f: (f.parent.parent.name, int(f.parent.name[4:])))  # fmt: skip
    refs = list(args.vs)
    for f in sorted(found, key=lambda f: f.parent.parent.name not in refs):  # references first
        nums = run_numbers(read_rows(f.parent))
        if nums["steps"] >= args.steps:
            by_setting.setdefault(f.parent.parent.name, []).append(nums)
    refs = [r for r in refs if r in by_setting]
    verdicts: dict[tuple[str, str], dict] = {}
    for ref in refs:  # each pair once: "b vs a" is not asked again as "a vs b"
        for label, runs in by_setting.items():
            if label != ref and (ref, label) not in verdicts:
                verdicts[label, ref] = compare_seeds([r["p_mass"] for r in by_setting[ref]],
                                                     [r["p_mass"] for r in runs])  # fmt: skip
    adjust_family(list(verdicts.values()))
    head = ["setting", "seeds", "exact P mass", "P mass by seed", "mean KL per step",
            f"mean KL, steps 1-{EARLY}", "final entropy", "held-out reward",
            *(f"P mass vs {ref}" for ref in refs)]  # fmt: skip
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for label, runs in by_setting.items():
        pm = [r["p_mass"] for r in runs]
        std = statistics.stdev(pm) if len(pm) > 1 else 0.0
        cells = [label, str(len(runs)), f"{statistics.fmean(pm):.3f} ± {std:.3f}",
                 " ".join(f"{v:.2f}" for v in pm)]  # fmt: skip
        for key, fmt in (("kl", ".4f"), ("early_kl", ".4f"), ("entropy", ".3f"), ("reward", ".3f")):
            v = [r[key] for r in runs]
            cells.append(f"{statistics.fmean(v):{fmt}} ({min(v):{fmt}}-{max(v):{fmt}})")
        for ref in refs:
            c = verdicts.get(
                (label, ref)
            )  # None: the reference itself, or a pair asked the other way
            cells.append(format_comparison(c) if c else "(reference)" if label == ref else "-")
        print("| " + " | ".join(cells) + " |")
    m = sum(math.isfinite(c["p"]) for c in verdicts.values())
    print(f"\nHolm over the {m} comparisons of this table.")
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
