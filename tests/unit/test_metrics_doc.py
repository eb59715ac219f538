"""docs/metrics.md documents every metric the code logs, and only metrics the code logs.

The logged keys are found in the source, not in a run: a key is *written* where a string that
looks like a metric name (``namespace/name``) is a key of a dict display, the key of a dict
comprehension, or a subscript being assigned (``out["x"] = ...``), in the modules that produce
a run's metrics (train, control, ops, engine, tasks, integrations.trl / .verl). Reads
(``metrics["x"]``, ``.get("x")``, ``"x" in m``) do not count. An f-string key such as
``f"eval/pass@{k}"`` is the pattern ``eval/pass@<k>``; the docs write patterns with ``<...>``
(``reward/<name>``), and a pattern matches any key or pattern it can stand for.

So a metric added anywhere in those modules fails ``test_every_logged_metric_is_documented``
with its name and file:line until docs/metrics.md has a row for it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "entropy_rl"
METRICS_MD = ROOT / "docs" / "metrics.md"

PRODUCERS = ("train", "control", "ops", "engine", "tasks")
EXTRA_PRODUCERS = ("integrations/trl.py", "integrations/verl.py")
# Not metrics of a run: internal counters (dropped before logging, see Trainer.log).
INTERNAL_PREFIX = "_"
_NAME = re.compile(r"^[a-z][a-z0-9_]*/[A-Za-z0-9_@.<>]+$")
_BARE = {"step", "lr"}  # the two keys without a namespace


def _key_text(node: ast.expr) -> str | None:
    """The metric name (or ``<...>`` pattern) a key expression spells, else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            elif isinstance(v, ast.FormattedValue):
                parts.append(f"<{ast.unparse(v.value)}>")
        return "".join(parts)
    return None


def _is_metric(text: str) -> bool:
    return text in _BARE or (not text.startswith(INTERNAL_PREFIX) and bool(_NAME.match(text)))


def written_keys(path: Path) -> dict[str, int]:
    """``{key: line}`` for every metric-like key written in ``path`` (see module docstring)."""
    tree = ast.parse(path.read_text())
    found: dict[str, int] = {}
    candidates: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            candidates += [k for k in node.keys if k is not None]
        elif isinstance(node, ast.DictComp):
            candidates.append(node.key)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            candidates.append(node.slice)
    for expr in candidates:
        text = _key_text(expr)
        if text is not None and _is_metric(text):
            found.setdefault(text, expr.lineno)
    return found


def producer_files() -> list[Path]:
    files = [p for d in PRODUCERS for p in sorted((SRC / d).rglob("*.py"))]
    return files + [SRC / f for f in EXTRA_PRODUCERS]


def logged_keys() -> dict[str, str]:
    """``{key: "path:line"}`` over every producer module."""
    out: dict[str, str] = {}
    for path in producer_files():
        for key, line in written_keys(path).items():
            out.setdefault(key, f"{path.relative_to(ROOT)}:{line}")
    return out


def documented_keys(text: str) -> list[str]:
    """Backticked names in the first cell of each table row of docs/metrics.md."""
    keys = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split(" | ")[0]
        keys += [k for k in re.findall(r"`([^`]+)`", first) if _is_metric(k)]
    return keys


def _regex(pattern: str) -> re.Pattern[str]:
    """``eval/pass@<k>`` -> a regex matching ``eval/pass@16`` and ``eval/pass@<n>``."""
    parts = re.split(r"<[^<>]*>", pattern)
    return re.compile("^" + r"(?:<[^<>]*>|[A-Za-z0-9_.@]+)".join(map(re.escape, parts)) + "$")


def _covered(key: str, patterns: list[str]) -> bool:
    return any(_regex(p).match(key) or _regex(key).match(p) for p in patterns)


def test_the_scanner_tells_writes_from_reads(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "def f(metrics, k, side):\n"
        "    out = {'entropy/mean': 1.0, 'prompt': 2}\n"  # line 2: a written key
        "    out[f'eval/pass@{k}'] = 0.5\n"  # line 3: a written pattern
        "    out |= {f'control/{s}': 1 for s in side}\n"  # line 4: a comprehension key
        "    x = metrics['acc/eval'] + metrics.get('reward/mean', 0)\n"  # reads only
        "    out['_count/tokens'] = 3\n"  # internal, dropped before logging
        "    return 'kl/ref' in metrics, x\n"
    )
    assert written_keys(src) == {"entropy/mean": 2, "eval/pass@<k>": 3, "control/<s>": 4}
    assert documented_keys("| `a/b`, `c/<K>` | x | `not/this` |\n| step | no backticks |") == [
        "a/b",
        "c/<K>",
    ]
    assert _covered("eval/pass@<k>", ["eval/pass@<K>"])
    assert _covered("eval/pass@16", ["eval/pass@<K>"])
    assert _covered("control/<side>", ["control/eps_high"])
    assert not _covered("eval/pass@<k>", ["eval/avg@<K>"])


def test_every_logged_metric_is_documented() -> None:
    logged = logged_keys()
    assert "entropy/mean" in logged and "clip/upper_frac" in logged  # the scan found the code
    documented = documented_keys(METRICS_MD.read_text())
    missing = {k: where for k, where in logged.items() if not _covered(k, documented)}
    assert not missing, "metrics logged but not documented in docs/metrics.md:\n" + "\n".join(
        f"  {k}  (written at {where})" for k, where in sorted(missing.items())
    )


def test_every_documented_metric_is_logged_somewhere() -> None:
    logged = list(logged_keys())
    documented = documented_keys(METRICS_MD.read_text())
    assert len(documented) > 40
    stale = [k for k in documented if not _covered(k, logged)]
    assert not stale, (
        "docs/metrics.md documents metrics that no producer module writes (renamed or "
        "removed?): " + ", ".join(stale)
    )
    assert len(documented) == len(set(documented)), "a metric is documented twice"


def test_the_event_schema_is_the_event_dataclass() -> None:
    from dataclasses import fields

    from entropy_rl.control.detector import Event

    text = METRICS_MD.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith('{"step"'))
    assert re.findall(r'"(\w+)":', line) == [f.name for f in fields(Event)]
