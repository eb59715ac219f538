"""Shared look of the report figures: colours, fonts, event markers, legends, PNG rendering.

matplotlib is the optional ``report`` extra: it is imported only inside functions, through
the object-oriented API (``Figure`` + ``FigureCanvasAgg``), so the report never touches
pyplot's global backend or an interactive session the caller may have open.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from entropy_rl.errors import MissingExtraError
from entropy_rl.report.load import Event, RunData

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, FigureBase
    from matplotlib.legend import Legend

INSTALL_HINT = "pip install 'entropy-rl[report]'"

# Okabe-Ito colours for runs; orange / vermillion are kept for event severities so a
# collapse marker is never mistaken for a run.
RUN_COLORS = (
    "#0072B2",  # blue
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#444444",  # dark grey
    "#8C564B",  # brown
    "#9467BD",  # purple
    "#BCBD22",  # olive
)
SEVERITY_COLORS = {"warning": "#E69F00", "critical": "#D55E00"}

RC = {
    "font.size": 11,
    "axes.titlesize": 11.5,
    "axes.titlepad": 10,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9.5,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.8,
    "legend.frameon": False,
    "savefig.facecolor": "white",
}


def require_matplotlib() -> None:
    """ImportError naming the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(f"the entropy-rl report needs matplotlib: {INSTALL_HINT}") from err


def style() -> AbstractContextManager[Any]:
    """rc_context with the report's fonts and grid (restores the caller's settings on exit)."""
    require_matplotlib()
    import matplotlib

    return matplotlib.rc_context(cast(Any, RC))


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout Figure on the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure, *, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def color(run: RunData | int) -> str:
    """The colour of a run (its ``color_index``: one per setting, so a setting's seeds share
    it) or of colour number ``run``; the same in every panel."""
    i = run if isinstance(run, int) else run.color_index
    return RUN_COLORS[i % len(RUN_COLORS)]


def rolling_mean(y: np.ndarray, n_points: int) -> np.ndarray:
    """Centred moving average over ~5% of the points (edges averaged over what exists)."""
    w = max(1, round(n_points / 20))
    if w <= 1 or y.size < 3:
        return y
    kernel = np.ones(w)
    return np.convolve(y, kernel, "same") / np.convolve(np.ones_like(y), kernel, "same")


def _severity_color(severity: str) -> str:
    return SEVERITY_COLORS.get(severity, SEVERITY_COLORS["warning"])


def mark_events(ax: Axes, runs: Sequence[RunData], *, label: bool) -> None:
    """Vertical line per collapse event (colour = severity), a run-coloured flag on top.

    ``label`` writes the rule names beside the lines: events closer than 4% of the x-range
    share one label ("entropy_drop, entropy_floor", coloured by the most severe) so labels
    never overlap.
    """
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    events = sorted(
        ((ev.step, run.color_index, ev) for run in runs for ev in run.events),
        key=lambda t: (t[0], t[1]),
    )
    if not events:
        return
    lo, hi = ax.get_xlim()
    lo, hi = min(lo, events[0][0]), max(hi, events[-1][0])
    groups: list[list[Event]] = []
    group_start = -np.inf
    for step, i, ev in events:
        ax.axvline(step, color=_severity_color(ev.severity), lw=1.3, ls=(0, (5, 2)), zorder=1.5)
        ax.plot(
            [step],
            [1.0],
            marker="v",
            ms=7,
            color=color(i),
            transform=trans,
            clip_on=False,
            zorder=4,
            markeredgecolor="white",
            markeredgewidth=0.6,
        )
        if step - group_start >= 0.04 * (hi - lo):
            groups.append([])
            group_start = step
        groups[-1].append(ev)
    for group in groups if label else []:
        rules = ", ".join(dict.fromkeys(ev.rule for ev in group))
        worst = "critical" if any(ev.severity == "critical" for ev in group) else "warning"
        ax.text(
            group[0].step,
            0.965,
            f" {rules}",
            transform=trans,
            rotation=90,
            va="top",
            ha="left",
            fontsize=8.5,
            color=_severity_color(worst),
            zorder=5,
            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85},
        )
    ax.set_xlim(lo, hi)


def time_axis(ax: Axes, runs: Sequence[RunData], *, label: bool) -> None:
    """Finish an axis whose x is the RL step: label, integer ticks, collapse events marked."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    mark_events(ax, runs, label=label)


def run_legend(
    fig: FigureBase,
    runs: Sequence[RunData],
    *,
    loc: Literal["outside lower center", "outside upper center"] = "outside lower center",
    events: bool = True,
) -> Legend:
    """One legend for the runs (colour) and, if ``events``, the event severities present.

    Runs that share a colour (seeds of one setting) get one entry: ``"dapo (3 runs)"``.
    """
    from matplotlib.lines import Line2D

    entries: dict[int, list[RunData]] = {}
    for r in runs:
        entries.setdefault(r.color_index, []).append(r)
    handles = [
        Line2D([], [], color=color(i), lw=3, label=entry_label(same)) for i, same in entries.items()
    ]
    severities = {ev.severity for r in runs for ev in r.events} if events else set()
    for sev in ("warning", "critical"):
        if sev in severities:
            handles.append(
                Line2D(
                    [], [], color=SEVERITY_COLORS[sev], lw=1.3, ls=(0, (5, 2)), label=f"{sev} event"
                )
            )
    ncols = min(len(handles), 4)
    return fig.legend(handles=handles, loc=loc, ncols=ncols, fontsize=10)


def entry_label(runs: Sequence[RunData]) -> str:
    """Legend text of the runs drawn in one colour: the label of a lone run, else the group."""
    if len(runs) == 1:
        return runs[0].label
    return f"{runs[0].group or runs[0].label} ({len(runs)} runs)"


def style_legend(ax: Axes, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Legend for line styles, in grey since colour belongs to the runs; right of ``ax``.

    items: (label, Line2D keyword arguments) per entry. Outside the axes it can never cover
    data or the event labels at the top of the axes; constrained layout makes room for it.
    """
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.35", **kw, label=lbl) for lbl, kw in items]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
