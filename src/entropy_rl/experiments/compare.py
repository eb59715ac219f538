"""``entropy-rl compare``: several settings x several seeds, same budget, one honest table.

Each (setting, seed) is one ``entropy-rl train`` run in ``OUT/<setting>/seed<k>`` (a subprocess,
so runs can go in parallel and a finished run is reused when the command is repeated). The
table reports, per setting, mean +- std over seeds of: final entropy, eval pass@1 and pass@k,
distinct correct answers per prompt, steps to collapse, and the clip activity (upper / lower
clipped fractions, mean |ratio - 1|) that decides whether a clip setting *can* matter.

Verdicts compare each setting with the first (the reference), by two rules, and the table
says which one decided:

- ``range``: the gap of means exceeds the seed-to-seed range (max - min over seeds) of both
  settings. Deliberately conservative with 3 seeds, and blind to a complete separation of two
  wide spreads. It is a rule on the size of the gap, not a test, so it takes no correction.
- ``perm``: otherwise, the p-value of an exact two-sided permutation test of the gap
  (`stats.permutation_pvalue`), *adjusted over all the table's comparisons* (every setting x
  every verdict column; `holm_adjust`, Holm 1979), is below ``ALPHA``. A table of ten
  settings x eight metrics makes 80 comparisons, and some raw p < 0.05 come by chance; Holm's
  adjustment keeps the chance of even one false verdict in the table below ``ALPHA`` whatever
  the dependence between the comparisons. The exact test has a floor, 2 / C(n + m, n): 2/924
  = 0.0022 at 6 vs 6 seeds, 2/70 = 0.029 at 4 vs 4 and 2/20 = 0.1 at 3 vs 3; so with m
  comparisons in the table this rule can fire only where m x floor < ``ALPHA`` (m <= 23 at 6
  vs 6, m = 1 at 4 vs 4, never at 3 vs 3). Ask for fewer verdict columns (``--metric``) or run
  more seeds when it cannot.

Every verdict cell also gives the gap, the raw p-value, the Holm-adjusted one and a seeded
percentile-bootstrap 95% interval of the gap (`stats.bootstrap_interval`).

The learning-speed column prices a setting in steps: the first step at which a run's training
reward (`reward_curve`: a trailing 10-step mean of reward/mean) reaches the reference's final
value, as a median over the seeds that got there and how many did
(`steps_to_reference_reward`). A lever that ends higher but needs more steps shows it here.

Task metrics join the table through ``extra`` (``--metric``): keys of the last evaluation row,
e.g. the `trap` task's P on the final checkpoint, each with its own verdict column; `Task`
classes name their default ones in ``summary_metrics``.
"""

from __future__ import annotations

import json
import math
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entropy_rl.control.detector import with_rollout_entropy
from entropy_rl.errors import ConfigError, UserError
from entropy_rl.experiments.stats import bootstrap_interval, permutation_pvalue

ALPHA = 0.05


@dataclass
class Setting:
    label: str
    preset: str
    overrides: list[str] = field(default_factory=list)


def parse_setting(spec: Sequence[str]) -> Setting:
    """``["unclipped", "ppo", "algo.loss_kwargs.eps_high=100"]`` -> Setting."""
    if len(spec) < 2:
        raise ConfigError(f"--variant needs LABEL PRESET [key=value ...], got {list(spec)}")
    return Setting(spec[0], spec[1], list(spec[2:]))


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line
    return rows


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None else math.nan


def summarise_run(
    rows: list[dict[str, Any]], *, collapse_frac: float = 0.5, extra: Sequence[str] = ()
) -> dict[str, float]:
    """Scalar outcomes of one run from its metrics rows.

    final_entropy: mean entropy/mean over the last 3 training steps (entropy/rollout on a
    step without it). steps_to_collapse: first step whose entropy/mean is <= collapse_frac x
    the first step's (nan if never).
    pass@1, pass@k, distinct, acc, and every key in `extra`: from the last evaluation row
    (k = the largest logged; nan for a key it lacks).
    clip fractions, |ratio - 1| and update_kl (kl/old_approx, the k3 estimate of KL(pi_old,
    pi_theta) that the update's passes measured, each before its own optimizer step: how far
    the update's earlier steps had moved the policy; 0 at one epoch of one mini-batch, so
    compare it between settings of the same epochs and mini-batches): means over all steps
    with an update.
    """
    trained = [r for r in rows if r.get("step", 0) >= 1]
    # a step whose update was skipped (dynamic sampling kept no group) has no entropy/mean:
    # the sampler's entropy of every sample (entropy/rollout) stands in, as in the detector
    trained = [dict(with_rollout_entropy(r)) for r in trained]
    train = [r for r in trained if r.get("entropy/mean") is not None]
    evals = [r for r in rows if r.get("acc/eval") is not None]
    out: dict[str, float] = {}
    # steps whose reward or entropy was not a finite number (the trainer logs NaN as null)
    out["nonfinite_steps"] = float(sum(
        any(k in r and not math.isfinite(_num(r[k])) for k in ("reward/mean", "entropy/mean"))
        for r in trained
    ))  # fmt: skip
    if train:
        ent = [_num(r["entropy/mean"]) for r in train]
        out["start_entropy"] = ent[0]
        out["final_entropy"] = statistics.fmean(ent[-3:])
        hit = [r["step"] for r, h in zip(train, ent, strict=True) if h <= collapse_frac * ent[0]]
        out["steps_to_collapse"] = float(hit[0]) if hit else math.nan
        for key, name in (("clip/upper_frac", "upper_clip"), ("clip/lower_frac", "lower_clip"),
                          ("ratio/abs_dev", "ratio_dev"), ("kl/old_approx", "update_kl")):  # fmt: skip
            vals = [_num(r.get(key)) for r in train if r.get(key) is not None]
            out[name] = statistics.fmean(vals) if vals else math.nan
    if evals:
        last, first = evals[-1], evals[0]
        ks = sorted(int(k.split("@")[1]) for k in last if k.startswith("eval/pass@"))
        out["acc"] = _num(last.get("acc/eval"))
        out["start_acc"] = _num(first.get("acc/eval"))
        out["pass@1"] = _num(last.get("eval/pass@1"))
        if ks:
            out["k"] = float(ks[-1])
            out["pass@k"] = _num(last.get(f"eval/pass@{ks[-1]}"))
        out["distinct"] = _num(last.get("eval/distinct_answers"))
        out["start_distinct"] = _num(first.get("eval/distinct_answers"))
        out |= {key: _num(last.get(key)) for key in extra}
    return out


REWARD_WINDOW = 10


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of the last ``window`` values up to and including each position (fewer at the start).

    values: (n,) -> (n,); e.g. ``[0, 1, 2, 3]`` with window 2 -> ``[0, 0.5, 1.5, 2.5]``.
    """
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def reward_curve(
    rows: list[dict[str, Any]], window: int = REWARD_WINDOW
) -> tuple[list[int], list[float]]:
    """(steps, trailing ``window``-step mean of reward/mean) over the trained steps of one run."""
    pts = [(int(r["step"]), _num(r["reward/mean"])) for r in rows
           if r.get("step", 0) >= 1 and isinstance(r.get("reward/mean"), (int, float))]  # fmt: skip
    return [s for s, _ in pts], trailing_mean([v for _, v in pts], window)


def first_reach(steps: Sequence[int], values: Sequence[float], target: float) -> float:
    """The first step whose value is >= ``target``; nan if none is."""
    return next((float(s) for s, v in zip(steps, values, strict=True) if v >= target), math.nan)


def steps_to_reference_reward(
    curves: dict[str, list[tuple[list[int], list[float]]]], reference: str
) -> tuple[float, dict[str, list[float]]]:
    """Learning speed against the reference setting: how soon each run earns its final reward.

    curves: setting -> one `reward_curve` per seed. The target is the reference's final reward,
    the mean over its seeds of each curve's last value (the trailing mean of its last steps);
    each run's cost is `first_reach` of that target (nan: never within the run). Returns
    (target, setting -> steps per seed).
    """
    finals = [vals[-1] for _, vals in curves[reference] if vals]
    target = statistics.fmean(finals) if finals else math.nan
    return target, {
        label: [first_reach(st, vals, target) for st, vals in runs]
        for label, runs in curves.items()
    }


def format_reach(steps: Sequence[float]) -> str:
    """``"87 (5/6 seeds)"``: the median step over the seeds that reached, and how many did."""
    hit = [s for s in steps if math.isfinite(s)]
    if not steps:
        return "n/a"
    if not hit:
        return f"never (0/{len(steps)} seeds)"
    return f"{statistics.median(hit):.3g} ({len(hit)}/{len(steps)} seeds)"


def add_learning_speed(
    results: dict[str, list[dict[str, float]]], rows: dict[str, list[list[dict[str, Any]]]]
) -> None:
    """Put ``steps_to_ref_reward`` (`steps_to_reference_reward` against the first setting) and
    ``ref_reward`` (its target) into every run's summary, in place."""
    if not rows or not next(iter(rows.values())):
        return
    curves = {label: [reward_curve(r) for r in runs] for label, runs in rows.items()}
    target, reach = steps_to_reference_reward(curves, next(iter(curves)))
    for label, summaries in results.items():
        for summary, step in zip(summaries, reach[label], strict=True):
            summary["steps_to_ref_reward"], summary["ref_reward"] = step, target


METRICS = ("final_entropy", "acc", "pass@1", "pass@k", "distinct", "steps_to_collapse",
           "upper_clip", "lower_clip", "ratio_dev", "update_kl")  # fmt: skip
VERDICT_ON = ("final_entropy", "pass@k", "distinct")


def judged_metrics(
    results: dict[str, list[dict[str, float]]], metrics: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(judged, notes): ``metrics`` without those whose value equals an earlier one's in every
    run of every setting, so that one quantity is not tested twice and does not widen Holm's
    family (on a task with one right answer, ``distinct`` is ``pass@k`` by definition; a
    ``--metric eval/pass@4`` is ``pass@k`` when k = 4). ``notes`` says what was merged."""

    def same(x: float, y: float) -> bool:
        return x == y or (math.isnan(x) and math.isnan(y))

    runs = [r for rs in results.values() for r in rs]
    judged: list[str] = []
    notes = []
    for m in metrics:
        vals = [r.get(m, math.nan) for r in runs]
        twins = [
            k for k in judged if all(same(r.get(m, math.nan), r.get(k, math.nan)) for r in runs)
        ]
        twin = twins[0] if twins and not all(math.isnan(v) for v in vals) else None  # no data
        if twin is None:
            judged.append(m)
        elif m != twin:
            notes.append(f"{m} equals {twin} in every run: judged once, as {twin}")
    return judged, notes


def _stats(vals: list[float]) -> tuple[float, float, float]:
    """(mean, std, range) over the finite values."""
    v = [x for x in vals if math.isfinite(x)]
    if not v:
        return math.nan, math.nan, math.nan
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), max(v) - min(v)


def verdict(ref: list[float], other: list[float]) -> str:
    """ "higher"/"lower" only when the gap of means exceeds both settings' seed ranges.

    With fewer than 2 finite seeds on either side there is no range to compare with: "n/a
    (1 seed)" rather than a verdict that any gap would pass.
    """
    (m0, _, r0), (m1, _, r1) = _stats(ref), _stats(other)
    if not (math.isfinite(m0) and math.isfinite(m1)):
        return "n/a"
    if min(sum(map(math.isfinite, ref)), sum(map(math.isfinite, other))) < 2:
        return "n/a (1 seed)"
    gap = m1 - m0
    if abs(gap) <= max(r0, r1):
        return "no difference"
    return "higher" if gap > 0 else "lower"


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm, "A simple sequentially rejective multiple test
    procedure", Scand. J. Statist. 1979), in the order given.

    With the m finite p-values sorted, p_(1) <= ... <= p_(m):

        adjusted p_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))

    An adjusted p below alpha is exactly Holm's step-down rejection at family-wise error alpha.
    Hand-worked: [0.01, 0.04, 0.03], m = 3: sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03,
    max(0.03, 2 x 0.03) = 0.06, max(0.06, 1 x 0.04) = 0.06 -> [0.03, 0.06, 0.06].
    Non-finite values (comparisons that could not be made) stay nan and do not count in m.
    """
    ps = [float(p) for p in pvalues]
    order = sorted((i for i, p in enumerate(ps) if math.isfinite(p)), key=lambda i: ps[i])
    out, running = [math.nan] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * ps[i]))
        out[i] = running
    return out


def _decide(c: dict[str, Any], alpha: float) -> dict[str, Any]:
    """Set c's verdict and rule from its range rule and its adjusted p (`compare_seeds`)."""
    if not c["by_range"] and not c["p_holm"] < alpha:
        c["verdict"], c["rule"] = "no difference", ""
    else:
        c["verdict"] = "higher" if c["gap"] > 0 else "lower"
        c["rule"] = "range" if c["by_range"] else "perm"
    return c


def compare_seeds(
    ref: list[float], other: list[float], *, alpha: float = ALPHA, seed: int = 0
) -> dict[str, Any]:
    """Verdict of `other` against `ref` (one value per seed) with its evidence, as a comparison
    on its own (a family of one: p_holm = p; `adjust_family` re-decides it within a table).

    Returns gap (mean other - mean ref), p (`permutation_pvalue`), p_holm (the p adjusted over
    the family), low / high (the bootstrap 95% interval of the gap, 10,000 resamples, `seed`),
    by_range (whether the range rule, `verdict`, holds), verdict ("higher" / "lower" / "no
    difference" / "n/a ...") and rule: "range" when the range rule decided, "perm" when only
    the permutation test did (p_holm < alpha), "" otherwise.
    """
    said = verdict(ref, other)
    out: dict[str, Any] = {"verdict": said, "rule": "", "gap": math.nan, "p": math.nan,
                           "p_holm": math.nan, "low": math.nan, "high": math.nan,
                           "by_range": False}  # fmt: skip
    if said.startswith("n/a"):
        return out
    out["gap"] = _stats(other)[0] - _stats(ref)[0]
    out["p"] = out["p_holm"] = permutation_pvalue(ref, other)
    out["low"], out["high"] = bootstrap_interval(ref, other, seed=seed)
    out["by_range"] = said != "no difference"
    return _decide(out, alpha)


def adjust_family(comparisons: Sequence[dict[str, Any]], *, alpha: float = ALPHA) -> None:
    """Holm-adjust the p of every comparison of one family (a table's cells) and re-decide
    their verdicts from the adjusted values, in place; "n/a" comparisons stay as they are."""
    for c, q in zip(comparisons, holm_adjust([c["p"] for c in comparisons]), strict=True):
        if math.isfinite(q):
            c["p_holm"] = q
            _decide(c, alpha)


def format_comparison(c: dict[str, Any]) -> str:
    """``higher (perm): +0.235, p 0.0022, Holm 0.026, 95% CI [+0.17, +0.3]``; "n/a ..."
    verdicts as they are."""
    if not math.isfinite(c["gap"]):
        return str(c["verdict"])
    head = f"{c['verdict']} ({c['rule']})" if c["rule"] else c["verdict"]
    return (f"{head}: {c['gap']:+.3g}, p {c['p']:.2g}, Holm {c['p_holm']:.2g}, "
            f"95% CI [{c['low']:+.3g}, {c['high']:+.3g}]")  # fmt: skip


def table(results: dict[str, list[dict[str, float]]], *, extra: Sequence[str] = ()) -> str:
    """Markdown table: one row per setting, mean +- std over seeds, verdicts vs the first row
    (`compare_seeds`) on VERDICT_ON and the `extra` metrics, their p-values Holm-adjusted
    over all the table's comparisons (`adjust_family`); a last line names the family's size."""
    labels = list(results)
    columns = list(dict.fromkeys([*METRICS, *extra]))
    judged, merged = judged_metrics(results, [*VERDICT_ON, *extra])
    ref = results[labels[0]]
    verdicts = {(label, m): compare_seeds([r.get(m, math.nan) for r in ref],
                                          [r.get(m, math.nan) for r in results[label]])
                for label in labels[1:] for m in judged}  # fmt: skip
    adjust_family(list(verdicts.values()))
    target = next((r["ref_reward"] for r in results[labels[0]] if "ref_reward" in r), None)
    known = target is not None and math.isfinite(target)  # nan: no finite reward in its runs
    speed = [] if target is None else [
        f"steps to {labels[0]}'s final reward ({target:.3g}, {REWARD_WINDOW}-step mean)" if known
        else f"steps to {labels[0]}'s final reward (n/a: its runs logged no finite reward)"]  # fmt: skip
    head = ["setting", "seeds", *columns, *speed, *(f"vs {labels[0]}: {m}" for m in judged)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        runs = results[label]
        cells = [label, str(len(runs))]
        for m in columns:
            mean, std, _ = _stats([r.get(m, math.nan) for r in runs])
            pct = m in ("upper_clip", "lower_clip")
            fmt = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3g}")
            cells.append("n/a" if not math.isfinite(mean) else f"{fmt(mean)} ± {fmt(std)}")
        if speed:
            reach = [r.get("steps_to_ref_reward", math.nan) for r in runs]
            cells.append(format_reach(reach) if known else "n/a")
        for m in judged:
            cells.append("(reference)" if label == labels[0]
                         else format_comparison(verdicts[label, m]))  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    m_tests = sum(math.isfinite(c["p"]) for c in verdicts.values())
    for label in labels:  # say where numbers are missing rather than average around them quietly
        bad = [int(r.get("nonfinite_steps", 0)) for r in results[label]]
        if any(bad):
            lines.append(f"\nnote: {label}: {sum(bad)} step(s) in {sum(map(bool, bad))} of its "
                         f"{len(bad)} seed(s) logged a non-finite reward or entropy (NaN / inf, "
                         "null in metrics.jsonl); the means leave those steps out")  # fmt: skip
    lines += [f"\nnote: {n}" for n in merged]
    lines.append(f"\nHolm: p adjusted over the {m_tests} comparisons of this table; a perm "
                 f"verdict needs Holm p < {ALPHA}, a range verdict a gap beyond both seed ranges.")  # fmt: skip
    return "\n".join(lines)


def _train_cmd(
    setting: Setting, seed: int, out: Path, common: list[str], threads: int | None
) -> list[str]:
    cmd = [sys.executable, "-m", "entropy_rl.cli", "train", "--preset", setting.preset, "--seed", str(seed),
           "--out", str(out), "--no-progress", *common, *setting.overrides]  # fmt: skip
    if threads:
        cmd.append(f"run.threads={threads}")
    return cmd


def planned_steps(run_dir: Path) -> int | None:
    """``run.steps`` of the run's newest config segment (what a resume would train to); None
    without a readable one."""
    from entropy_rl.train.config import yaml_load
    from entropy_rl.train.rundir import current_config

    path = current_config(run_dir)
    try:
        steps = (yaml_load(path.read_text()) or {}).get("run", {}).get("steps") if path else None
    except (OSError, ValueError, AttributeError):
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def finished_run(run_dir: Path, steps: int | None) -> bool:
    """True when ``run_dir`` logged step ``steps``; without ``steps``, the step its own config
    plans (``planned_steps``), else any step (a run stopped part-way is not finished)."""
    if not (run_dir / "metrics.jsonl").is_file():
        return False
    rows = read_rows(run_dir)
    last = max((r.get("step", 0) for r in rows), default=0)
    target = steps if steps is not None else planned_steps(run_dir)
    return target is None or last >= target


def summarised_runs(
    settings: list[Setting], *, seeds: int, out_dir: Path, steps: int | None
) -> dict[str, list[Path]]:
    """Setting label -> its seed directories (``OUT/<label>/seed<k>``, k < seeds) that reached
    ``steps`` (`finished_run`): a run that failed or stopped short is left out of the table
    (its ``seeds`` column says so) rather than compared over fewer steps."""
    out: dict[str, list[Path]] = {}
    for s in settings:
        ds = [out_dir / s.label / f"seed{k}" for k in range(seeds)]
        out[s.label] = [d for d in ds if finished_run(d, steps)]
    return out


def run_jobs(
    todo: Sequence[tuple[Path, list[str]]], *, jobs: int, log=print, poll_s: float = 0.5
) -> list[Path]:
    """Run each (run directory, command) in order, ``jobs`` at a time, each writing to
    ``<run>.log`` beside its directory; a slot is refilled as soon as any run ends (not
    only the oldest). Returns the runs whose command exited non-zero.

    When compare itself is stopped (Ctrl-C, or SIGTERM from ``kill`` or a job scheduler),
    the runs still going are stopped with it, not left training on their own: each is sent
    SIGTERM (a run directory survives that; the next compare resumes it from its checkpoint)."""
    queue = list(todo)
    running: list[tuple[Path, subprocess.Popen[bytes]]] = []
    failed = []
    restore = _sigterm_raises()
    try:
        while queue or running:
            while queue and len(running) < jobs:
                run, cmd = queue.pop(0)
                run.mkdir(parents=True, exist_ok=True)
                log(f"start {run}")
                with open(run.parent / f"{run.name}.log", "wb") as logf:
                    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
                    running.append((run, proc))
            ended = [(r, p) for r, p in running if p.poll() is not None]
            if not ended:
                time.sleep(poll_s)
                continue
            for run, proc in ended:
                running.remove((run, proc))
                if proc.returncode != 0:
                    failed.append(run)
                    log(f"FAILED {run} (see {run.parent / (run.name + '.log')})")
                else:
                    log(f"done {run}")
    finally:
        restore()
        for run, proc in running:
            if proc.poll() is None:
                proc.terminate()
                log(f"stopped {run}")
        for _, proc in running:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return failed


def _sigterm_raises() -> Callable[[], None]:
    """Make SIGTERM raise SystemExit (so ``finally`` blocks run) until the returned function
    restores the previous handler; a no-op off the main thread, where handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def compare(
    settings: list[Setting],
    *,
    seeds: int,
    out_dir: Path,
    common: list[str],
    steps: int | None = None,
    jobs: int = 1,
    extra: Sequence[str] = (),
    train: bool = True,
    log=print,
) -> tuple[str, dict[str, list[dict[str, float]]]]:
    """Run every (setting, seed) not already finished, then summarise; returns (table, results).
    `extra`: metrics of the last evaluation added to the table, each with a verdict.
    Only finished runs are summarised (``finished_run``), so a failed or short one is left
    out, not compared over fewer steps. ``train=False`` starts nothing (a study part-way, or
    one whose runs are still going)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be an integer >= 1, got {jobs!r}")
    if len({s.label for s in settings}) != len(settings):
        raise ConfigError("two settings share a label; give each --variant a distinct LABEL")
    from entropy_rl.train.rundir import holds_run  # imports torch: only where runs start

    common = list(common) + ([f"run.steps={steps}"] if steps else [])
    todo = []
    # seed-major: a study stopped part-way has every setting at (nearly) the same seeds
    for seed in range(seeds) if train else []:
        for s in settings:
            run = out_dir / s.label / f"seed{seed}"
            if finished_run(run, steps):
                log(f"reuse {run}")
                continue
            if holds_run(run):  # a run stopped part-way (from step 0 without a checkpoint)
                cmd = [
                    sys.executable,
                    "-m",
                    "entropy_rl.cli",
                    "train",
                    "--resume",
                    str(run),
                    "--no-progress",
                    *([f"run.steps={steps}"] if steps else []),  # a longer study extends it
                ]
            else:
                cmd = _train_cmd(s, seed, run, common, threads=1 if jobs > 1 else None)
            todo.append((run, cmd))
    failed = run_jobs(todo, jobs=jobs, log=log)
    dirs = summarised_runs(settings, seeds=seeds, out_dir=out_dir, steps=steps)
    rows = {label: [read_rows(d) for d in ds] for label, ds in dirs.items()}
    results = {label: [summarise_run(r, extra=extra) for r in runs] for label, runs in rows.items()}
    add_learning_speed(results, rows)
    md = table(results, extra=extra)
    (out_dir / "compare.md").write_text(md + "\n")
    (out_dir / "compare.json").write_text(json.dumps(results, indent=1))
    if failed:
        logs = ", ".join(str(f.parent / (f.name + ".log")) for f in failed)
        raise UserError(f"{len(failed)} runs failed; their logs say why: {logs}")
    return md, results
