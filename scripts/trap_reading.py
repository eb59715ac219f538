"""Read the exploration-trap study: is the win from holding entropy or from the update size?

    python scripts/trap_reading.py [runs/trap] [--figure docs/images/trap_levers.png]

For every run of `scripts/trap_study.sh` (OUT/<setting>/seed<k>) it takes the outcome, the exact
P mass on the final checkpoint (`trap/p_prob_eval`), and three things measured during the
early phase (steps 1 to --early, default 40: where a run either finds its prompts' rare answers
or settles on the common ones):

- early entropy: the mean of `entropy/mean` (nats per token);
- early update size: the mean of `kl/old_approx`, the k3 estimate of KL(pi_old || pi_theta) on
  the rollout's tokens, averaged over each step's mini-batches (0 on the first, growing
  epoch by epoch): how far one rollout moves the policy, which a trust region bounds;
- the first step whose sampled P share (`trap/p_frac`, 10-step trailing mean) reaches 0.1.

It prints one row per setting (medians over seeds), Spearman's rank correlation of the P mass
with early entropy and with early update size over all runs (each also with the other held
fixed: partial correlations of the ranks; and once more without the settings that change the
objective instead of the update's size), and each entropy predictor's
correlation with the same-batch entropy change (`report.forecast`); with --figure it draws the
P mass against early entropy and update size (one point per run, one colour per setting).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from entropy_rl.experiments.compare import read_rows, trailing_mean  # noqa: E402
from entropy_rl.report.forecast import PREDICTIVE_R, forecast_scores  # noqa: E402
from entropy_rl.report.load import load_run  # noqa: E402

FORECAST_EVERY = 4  # the study's control.forecast_every (the default)
# settings whose lever is the objective (weights, bonus), not the update's size
LOSS_LEVERS = ("w-reinforce", "entropic", "bonus0.02")


def ranks(x: list[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    a = np.asarray(x, float)
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        tie = a == v
        r[tie] = r[tie].mean()
    return r


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = ranks(x), ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def partial(r_xy: float, r_xz: float, r_yz: float) -> float:
    """Correlation of x and y with z held fixed: (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))."""
    return (r_xy - r_xz * r_yz) / math.sqrt((1 - r_xz**2) * (1 - r_yz**2))


def run_summary(rows: list[dict], early: int) -> dict[str, float]:
    train = [r for r in rows if r.get("step", 0) >= 1 and "entropy/mean" in r]
    first = [r for r in train if r["step"] <= early]
    evals = [r for r in rows if "trap/p_prob_eval" in r]
    p_share = trailing_mean([r.get("trap/p_frac", 0.0) for r in train], 10)
    found = next((r["step"] for r, p in zip(train, p_share, strict=True) if p >= 0.1), math.nan)
    return {
        "p_mass": evals[-1]["trap/p_prob_eval"] if evals else math.nan,
        "early_entropy": statistics.fmean(r["entropy/mean"] for r in first),
        "early_kl": statistics.fmean(r.get("kl/old_approx", math.nan) for r in first),
        "found_step": float(found),
        "final_entropy": statistics.fmean(r["entropy/mean"] for r in train[-3:]),
        "steps": float(train[-1]["step"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="?", default="runs/trap")
    p.add_argument("--early", type=int, default=40, help="last step of the early phase")
    p.add_argument("--figure", help="write the scatter figure here (PNG)")
    args = p.parse_args(argv)
    root = Path(args.runs)
    settings: dict[str, list[dict[str, float]]] = {}
    finished: dict[str, list[Path]] = {}
    for d in sorted(root.glob("*/seed*/metrics.jsonl")):
        s = run_summary(read_rows(d.parent), args.early)
        if s["steps"] >= 150 and math.isfinite(s["p_mass"]):
            settings.setdefault(d.parent.parent.name, []).append(s)
            finished.setdefault(d.parent.parent.name, []).append(d.parent)
    if not settings:
        print(f"no finished runs under {root}")
        return 1
    order = (
        json.loads((root / "compare.json").read_text()) if (root / "compare.json").is_file() else {}
    )
    labels = [k for k in order if k in settings] + [k for k in settings if k not in order]
    print(f"| setting | seeds | P mass | early entropy (steps 1-{args.early}) | early KL(old, new) "
          "| step P share reaches 0.1 | final entropy |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    med = statistics.median
    for label in labels:
        runs = settings[label]
        found = [r["found_step"] for r in runs if math.isfinite(r["found_step"])]
        found_s = (
            f"{med(found):.0f} ({len(found)}/{len(runs)})" if found else f"never (0/{len(runs)})"
        )
        print(f"| {label} | {len(runs)} | {med(r['p_mass'] for r in runs):.3f} "
              f"| {med(r['early_entropy'] for r in runs):.3f} | {med(r['early_kl'] for r in runs):.2e} "
              f"| {found_s} | {med(r['final_entropy'] for r in runs):.3f} |")  # fmt: skip
    every = [r for label in labels for r in settings[label]]
    pm, ent, kl = ([r[k] for r in every] for k in ("p_mass", "early_entropy", "early_kl"))
    r_pe, r_pk, r_ek = spearman(pm, ent), spearman(pm, kl), spearman(ent, kl)
    print(
        f"\nSpearman over {len(every)} runs: P mass vs early entropy {r_pe:+.2f}, vs early KL "
        f"{r_pk:+.2f}; early entropy vs early KL {r_ek:+.2f}. Partial (the other held fixed): "
        f"P vs entropy {partial(r_pe, r_pk, r_ek):+.2f}, P vs KL {partial(r_pk, r_pe, r_ek):+.2f}"
    )
    without = [r for label in labels for r in settings[label] if label not in LOSS_LEVERS]
    if len(without) < len(every):
        pm2, ent2, kl2 = ([r[k] for r in without] for k in ("p_mass", "early_entropy", "early_kl"))
        print(f"Without the settings that change the objective ({', '.join(LOSS_LEVERS)}), "
              f"{len(without)} runs: P vs early entropy {spearman(pm2, ent2):+.2f}, "
              f"vs early KL {spearman(pm2, kl2):+.2f}")  # fmt: skip
    print("\nEntropy forecast per run (report.forecast: Pearson r against the same-batch change,"
          f" every {FORECAST_EVERY} steps; median [min, max] over runs):")  # fmt: skip
    scores: dict[str, list[float]] = {}
    n_pairs: list[int] = []
    for label in labels:
        for d in finished[label]:
            for sc in forecast_scores(load_run(d)):
                if math.isfinite(sc.r):
                    scores.setdefault(sc.name, []).append(sc.r)
                    n_pairs.append(sc.n)
    for name, rs in scores.items():
        k = sum(r >= PREDICTIVE_R for r in rs)
        print(f"- {name}: r {med(rs):+.2f} [{min(rs):+.2f}, {max(rs):+.2f}] over {len(rs)} runs, "
              f"{min(n_pairs)}-{max(n_pairs)} steps each; predictive (r >= {PREDICTIVE_R}) "
              f"in {k} of {len(rs)}")  # fmt: skip
    if args.figure:
        from entropy_rl.report._style import color, new_figure, style, to_png

        with style():
            fig = new_figure(11.0, 4.4)
            axes = fig.subplots(1, 2, sharey=True)
            for i, label in enumerate(labels):
                runs = settings[label]
                for ax, key in zip(axes, ("early_entropy", "early_kl"), strict=True):
                    ax.scatter([r[key] for r in runs], [r["p_mass"] for r in runs], s=28,
                               color=color(i), marker="os^Dv<>"[i // 8 % 7],
                               label=label if ax is axes[0] else None)  # fmt: skip
            axes[0].set_xlabel(f"mean entropy, steps 1-{args.early} (nats / token)")
            axes[1].set_xlabel(f"mean KL(pi_old || pi_new), steps 1-{args.early}")
            axes[1].set_xscale("log")
            axes[0].set_ylabel("exact P mass, final checkpoint")
            fig.legend(loc="outside right center", fontsize=9)
            fig.suptitle("Trap study: one point per run", fontweight="bold", x=0.01, ha="left")
            Path(args.figure).write_bytes(to_png(fig, dpi=110))
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
