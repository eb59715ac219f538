"""Small multiples for ``entropy-rl compare``: one panel per setting, every seed of it.

The run report overlays every run in one axis, which reads well for a handful of runs; a
study of eleven settings x six seeds is 66 lines in eight colours. Here each setting gets its
own panel: its seeds as thin lines, their median as a bold one, and the reference setting's
median (the first setting) as a dashed line in its own colour in every other panel, on one
shared y axis.
Curves are smoothed first (`_style.rolling_mean`), because per-step reward and task fractions
are sampled over one batch.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from entropy_rl.report._style import (
    RUN_COLORS,
    color,
    new_figure,
    require_matplotlib,
    rolling_mean,
    style,
    to_png,
)
from entropy_rl.report.load import RunData


def seed_band(
    curves: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, median, low, high) over seeds, on the steps that every seed logged.

    curves: one (steps (n_i,), values (n_i,)) per seed. Returns four arrays of shape (m,), m the
    number of common steps: the median, minimum and maximum across seeds at each step. A seed
    with no points leaves nothing in common: four empty arrays.
    """
    if not curves:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    common = set(curves[0][0].tolist())
    for steps, _ in curves[1:]:
        common &= set(steps.tolist())
    grid = np.array(sorted(common), dtype=float)
    stacked = np.stack([vals[np.searchsorted(steps, grid)] for steps, vals in curves])  # (seeds, m)
    return grid, np.median(stacked, axis=0), stacked.min(axis=0), stacked.max(axis=0)


def _smoothed(run: RunData, key: str) -> tuple[np.ndarray, np.ndarray]:
    steps, vals = run.series(key)  # in step order (RunData keeps its records sorted)
    return steps, rolling_mean(vals, vals.size)


def settings_figure_png(
    groups: dict[str, list[RunData]], key: str, *, ylabel: str, ncols: int = 4, dpi: int = 110
) -> bytes:
    """One panel per setting (in ``groups`` order, the first is the reference) of ``key``."""
    require_matplotlib()
    labels = [g for g in groups if any(r.has(key) for r in groups[g])]
    if not labels:
        raise ValueError(f"no run logged {key}")
    ncols = min(ncols, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    ref_label = next(iter(groups))
    curves = {g: [_smoothed(r, key) for r in runs if r.has(key)] for g, runs in groups.items()}
    ref = seed_band(curves[ref_label])
    with style():
        fig = new_figure(2.9 * ncols, 2.3 * nrows + 0.9)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True)).ravel()
        # the legend line wrapped to the figure's width (~7 pt a character at 11.5 pt bold):
        # with one or two panels it is wider than the figure
        legend = f"every seed (thin), median (bold), {ref_label} median (dashed)"
        width = max(24, int(2.9 * ncols * 72 / 7.2))
        fig.suptitle(f"{key}\n" + textwrap.fill(legend, width), fontsize=11.5,
                     fontweight="bold", x=0.01, ha="left")  # fmt: skip
        for i, label in enumerate(labels):
            k = list(groups).index(label)  # the reference's colour is for the reference only
            ax, c = axes[i], color(0 if k == 0 else 1 + (k - 1) % (len(RUN_COLORS) - 1))
            for steps, vals in curves[label]:
                ax.plot(steps, vals, color=c, lw=0.8, alpha=0.45)
            steps, median, _, _ = seed_band(curves[label])
            # a metric of the evaluations (a point every few steps): mark the points
            ax.plot(steps, median, color=c, lw=2.2, marker="o" if steps.size <= 12 else None, ms=4)
            if label != ref_label and ref[0].size:
                ax.plot(ref[0], ref[1], color=color(0), lw=1.5, ls="--")
            ax.set_title(f"{label} ({len(curves[label])} seeds)", fontsize=10.5)
            if i % ncols == 0:
                ax.set_ylabel(ylabel)
            if i >= len(labels) - ncols:
                ax.set_xlabel("step")
        for ax in axes[len(labels) :]:
            ax.set_visible(False)
        return to_png(fig, dpi=dpi)


def compare_curves(
    task_curves: Sequence[tuple[str, str]] = (), metrics: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """The (key, axis label) pairs ``entropy-rl compare`` draws per setting: entropy, reward,
    the held-out accuracy at T = 1 (``acc/eval``, at each evaluation), then the task's own
    curves and each ``--metric`` of the table, each key once."""
    curves = [("entropy/mean", "entropy (nats / token)"), ("reward/mean", "mean reward"),
              ("acc/eval", "held-out accuracy"), *task_curves, *((m, m) for m in metrics)]  # fmt: skip
    first: dict[str, str] = {}
    for key, label in curves:
        first.setdefault(key, label)
    return list(first.items())


def write_settings_figures(
    groups: dict[str, list[RunData]], out_dir: Path, keys: Sequence[tuple[str, str]]
) -> list[Path]:
    """`settings_figure_png` of each (key, ylabel) some run logged, to ``out_dir/settings_<key>.png``
    (``/`` in the key becomes ``_``); returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, ylabel in keys:
        if not any(r.has(key) for runs in groups.values() for r in runs):
            continue
        path = out_dir / f"settings_{key.replace('/', '_')}.png"
        path.write_bytes(settings_figure_png(groups, key, ylabel=ylabel))
        written.append(path)
    return written
