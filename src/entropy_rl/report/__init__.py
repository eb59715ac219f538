"""Figures and a self-contained HTML page from run directories (``entropy-rl report``).

Needs the ``report`` extra (matplotlib) for the figures: ``pip install 'entropy-rl[report]'``.
Loading and summarising runs needs only numpy and PyYAML.
"""

from entropy_rl.report.demo import make_demo_runs
from entropy_rl.report.html import write_report
from entropy_rl.report.load import Event, RunData, TruncatedRunWarning, load_run, load_runs
from entropy_rl.report.summary import (
    EntropyFit,
    RunSummary,
    fit_entropy_performance,
    headline,
    summarize,
)

__all__ = [
    "EntropyFit",
    "Event",
    "RunData",
    "RunSummary",
    "TruncatedRunWarning",
    "fit_entropy_performance",
    "headline",
    "load_run",
    "load_runs",
    "make_demo_runs",
    "summarize",
    "write_report",
]
