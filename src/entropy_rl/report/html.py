"""``write_report``: run directories in, one self-contained HTML page (plus the PNGs) out.

The page has a headline paragraph per run (numbers from ``summary.summarize``), the summary
table, the collapse-events table, the entropy-forecast table (each predictor's correlation with
the entropy change and its verdict, ``forecast.forecast_scores``), and every panel of ``figures.PANELS`` embedded as a base64
PNG; panels whose metrics no run logged are listed as skipped. No external assets, links or
scripts: the file can be mailed or attached to an issue as it is.

CLI: ``entropy-rl report RUN_DIR [RUN_DIR ...] --out DIR [--title TEXT]``.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import yaml

from entropy_rl.report._style import SEVERITY_COLORS, color, require_matplotlib
from entropy_rl.report.figures import RenderedFigure, render_figures
from entropy_rl.report.forecast import MIN_PAIRS, PREDICTIVE_R, TARGET, forecast_scores
from entropy_rl.report.load import RunData, load_runs
from entropy_rl.report.summary import RunSummary, fmt, fmt_duration, headline, summarize

__all__ = ["REPORT_FILE", "render_html", "write_report"]

REPORT_FILE = "report.html"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 2em auto; padding: 0 1.2em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
.run { margin: 0.8em 0; padding: 0.6em 0.9em; border-left: 6px solid; background: #fafafa; }
.run .label { font-weight: bold; }
.run .path { color: #777; font-size: 0.85em; }
.note { color: #8a6d00; font-size: 0.9em; margin: 0.2em 0; }
table { border-collapse: collapse; font-size: 0.92em; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #e2e2e2; padding: 0.35em 0.7em; text-align: left;
         vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px;
          margin-right: 0.4em; vertical-align: -0.1em; }
.sev { color: white; border-radius: 3px; padding: 0.05em 0.45em; font-size: 0.85em; }
figure { margin: 1.4em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.skip { color: #777; font-style: italic; }
details pre { background: #f6f6f6; padding: 0.6em; font-size: 0.85em; overflow-x: auto; }
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _swatch(run: RunData) -> str:
    return f'<span class="swatch" style="background:{color(run)}"></span>'


def _runs_section(runs: Sequence[RunData], summaries: Sequence[RunSummary]) -> list[str]:
    out = ["<h2>What happened</h2>"]
    for run, s in zip(runs, summaries, strict=True):
        out.append(f'<div class="run" style="border-color:{color(run)}">')
        out.append(
            f'<div>{_swatch(run)}<span class="label">{_esc(run.label)}</span> '
            f'<span class="path">{_esc(run.path)}</span></div>'
        )
        out.append(f'<p class="headline">{_esc(headline(s))}</p>')
        out.extend(f'<p class="note">Note: {_esc(n)}</p>' for n in run.notes)
        out.append("</div>")
    return out


def _summary_table(runs: Sequence[RunData], summaries: Sequence[RunSummary]) -> list[str]:
    head = (
        "<tr><th>run</th><th>steps</th><th>entropy start</th><th>entropy end</th>"
        "<th>min entropy (step)</th><th>accuracy start &rarr; end</th><th>events</th>"
        "<th>wall time</th><th>R&ndash;H ceiling b&minus;a (R&sup2;)</th></tr>"
    )
    rows = ["<h2>Summary</h2>", "<table>", head]
    for run, s in zip(runs, summaries, strict=True):
        acc = (
            f"{fmt(s.acc_start)} &rarr; {fmt(s.acc_end)} ({_esc(s.acc_key)})"
            if s.acc_key
            else "n/a"
        )
        min_h = (
            f"{fmt(s.entropy_min)} ({s.entropy_min_step})" if s.entropy_min is not None else "n/a"
        )
        events = f"{s.n_events}" + (f" ({s.n_critical} critical)" if s.n_critical else "")
        ceiling = f"{fmt(s.fit.ceiling)} ({fmt(s.fit.r2)})" if s.fit is not None else "n/a"
        cells = [
            f"<td>{_swatch(run)}{_esc(s.label)}</td>",
            f'<td class="num">{s.steps} (last {s.last_step})</td>',
            f'<td class="num">{fmt(s.entropy_start)}</td>',
            f'<td class="num">{fmt(s.entropy_end)}</td>',
            f'<td class="num">{min_h}</td>',
            f'<td class="num">{acc}</td>',
            f'<td class="num">{events}</td>',
            f'<td class="num">{fmt_duration(s.wall_time_s)}</td>',
            f'<td class="num">{ceiling}</td>',
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rows.append("</table>")
    return rows


def _events_table(runs: Sequence[RunData]) -> list[str]:
    out = ["<h2>Collapse events</h2>"]
    if not any(r.events for r in runs):
        return [*out, "<p>No collapse events in any run.</p>"]
    out += [
        "<table>",
        "<tr><th>run</th><th>step</th><th>severity</th><th>rule</th><th>message</th>"
        "<th>action</th></tr>",
    ]
    for run in runs:
        for ev in run.events:
            bg = SEVERITY_COLORS.get(ev.severity, "#777")
            out.append(
                f"<tr><td>{_swatch(run)}{_esc(run.label)}</td><td class='num'>{ev.step}</td>"
                f'<td><span class="sev" style="background:{bg}">{_esc(ev.severity)}</span></td>'
                f"<td>{_esc(ev.rule)}</td><td>{_esc(ev.message)}</td>"
                f"<td>{_esc(ev.action or '')}</td></tr>"
            )
    out.append("</table>")
    return out


def _forecast_table(runs: Sequence[RunData]) -> list[str]:
    """Each predictor's Pearson r with the entropy change it should explain (report.forecast)."""
    out = ["<h2>Entropy forecast</h2>"]
    scored = [(run, s) for run in runs for s in forecast_scores(run)]
    if not scored:
        return [*out, "<p>No run logged a predictor together with its entropy change.</p>"]
    out += [
        f"<p>Each predictor against the entropy change of the update ({_esc(TARGET)}: the "
        "batch's own entropy after the update minus before), or, for runs without it, against "
        "the next step's change on other prompts. A predictor is called predictive when "
        f"r &ge; {PREDICTIVE_R} over at least {MIN_PAIRS} steps; a weaker one is not a "
        "forecast, and the figure draws no line for it. The first-order term uses the updated "
        "weights: it says how much of the change a covariance accounts for, the ceiling of a "
        "Cov-shaped forecast, not a forecast itself.</p>",
        "<table>",
        "<tr><th>run</th><th>predictor</th><th>against</th><th>steps</th><th>Pearson r</th>"
        "<th>slope</th><th>same sign</th><th>verdict</th></tr>",
    ]
    for run, s in scored:
        out.append(
            f"<tr><td>{_swatch(run)}{_esc(run.label)}</td><td>{_esc(s.name)}</td>"
            f"<td>{_esc(s.target)}</td><td class='num'>{s.n}</td><td class='num'>{fmt(s.r)}</td>"
            f"<td class='num'>{s.slope:.3g}</td><td class='num'>{s.same_sign:.0%}</td>"
            f"<td>{_esc(s.verdict)}</td></tr>"
        )
    out.append("</table>")
    return out


def _figures_section(figures: Sequence[RenderedFigure]) -> list[str]:
    out = ["<h2>Figures</h2>"]
    for f in figures:
        if f.slug == "overview":  # a file beside the page; embedding it would double the size
            continue
        if f.skipped is not None or f.png is None:
            out.append(
                f'<p class="skip">Skipped &ldquo;{_esc(f.title)}&rdquo;: {_esc(f.skipped)}.</p>'
            )
            continue
        data = base64.b64encode(f.png).decode("ascii")
        out.append(f'<figure id="{_esc(f.slug)}">')
        out.append(f'<img alt="{_esc(f.title)}" src="data:image/png;base64,{data}">')
        caption = f"{f.slug}.png"
        if f.notes:
            caption += " &middot; " + "; ".join(_esc(n) for n in f.notes)
        out.append(f"<figcaption>{caption}</figcaption></figure>")
    return out


def _configs_section(runs: Sequence[RunData]) -> list[str]:
    out = ["<h2>Configs</h2>"]
    for run in runs:
        text = yaml.safe_dump(run.config, sort_keys=False) if run.config else "(no config.yaml)"
        out.append(
            f"<details><summary>{_swatch(run)}{_esc(run.label)}</summary>"
            f"<pre>{_esc(text)}</pre></details>"
        )
    return out


def render_html(
    runs: Sequence[RunData],
    summaries: Sequence[RunSummary],
    figures: Sequence[RenderedFigure],
    *,
    title: str,
) -> str:
    """The whole page as one string (inline CSS, images as data: URIs, no scripts)."""
    n = len(runs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="sub">entropy-rl report on {n} run{"s" if n != 1 else ""}. Entropy is the '
        "full-vocabulary entropy of the sampling distribution, in nats per response token.</p>",
        *_runs_section(runs, summaries),
        *_summary_table(runs, summaries),
        *_events_table(runs),
        *_forecast_table(runs),
        *_figures_section(figures),
        *_configs_section(runs),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(run_dirs: list[Path], out_dir: Path, *, title: str | None = None) -> Path:
    """Read ``run_dirs``, write the PNGs and ``report.html`` into ``out_dir``; return the HTML path.

    Raises FileNotFoundError naming the path if a run has no metrics.jsonl, ValueError for
    an empty list or a corrupt file, and ImportError naming ``entropy-rl[report]`` when
    matplotlib is missing.
    """
    require_matplotlib()
    runs = load_runs([Path(d) for d in run_dirs])
    summaries = [summarize(r) for r in runs]
    out_dir = Path(out_dir)
    figures = render_figures(runs, out_dir)
    if title is None:
        title = "entropy-rl report: " + ", ".join(r.label for r in runs)
    path = out_dir / REPORT_FILE
    path.write_text(render_html(runs, summaries, figures, title=title), encoding="utf-8")
    return path
