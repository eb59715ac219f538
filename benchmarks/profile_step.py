"""Where the time of one RL step of entropy_rl.Trainer goes (CPU), at vs_trl.py's settings.

Wraps the loop's parts with wall-clock timers (no tracing overhead inside the model) and prints
the median seconds per RL step of each, over --steps steps after --warmup:

    rollout         engine.generate (sampling) | decode + reward + batch (collect - generate)
    old log-probs   record_old_logprobs: one no-grad forward over the rollout (+ entropy, top-1)
    monitor         entropy/covariance metrics computed in Trainer.update
    update          ppo_update: forward | loss | backward | clip+optimizer | rest
    control + log   controller, collapse detector, metrics.jsonl (fsync'd every step)
    host gap        the rest of the step (between the previous log and this rollout)

``--framework trl`` prints the same breakdown for TRL's GRPOTrainer (``trl-nogc``: with
gradient checkpointing off; GRPOConfig turns it on by default).
``--cprofile`` also prints the top functions by cumulative time; ``--ops`` prints torch.profiler's
top operators of one step. ``--engine`` sets rollout.engine: ``auto`` (the default: here the
KV-cached engine, whose sampler statistics replace the old-log-prob forward), ``kv`` (the same,
named) or ``hf`` (transformers generate + the old-log-prob forward, the path before engine.kv).

    python benchmarks/profile_step.py [--setting char|vocab32k|real --model DIR] [--engine auto] [--steps 6]
        [--threads 2] [--micro-batch N] [--cprofile] [--ops]    (--engine auto|kv|hf)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vs_trl.py

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import entropy_rl.train.trainer as trainer_mod
import entropy_rl.train.update as update_mod
import vs_trl
from entropy_rl.train.logging import JsonlLogger

ROWS = [
    ("rollout: generate", "generate"),
    ("rollout: decode+reward+batch", "collect_rest"),
    ("old log-probs (no-grad fwd)", "old"),
    ("monitor metrics", "monitor"),
    ("update: forward", "update/forward"),
    ("update: loss", "update/loss"),
    ("update: backward", "update/backward"),
    ("update: clip+optimizer", "update/optim"),
    ("update: rest", "update_rest"),
    ("control + jsonl log", "control_log"),
    ("host gap (between steps)", "gap"),
]


class Timers:
    """Accumulates wall time per key; ``phase`` names the part that owns nested timers."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = defaultdict(float)
        self.phase = "other"

    def wrap(self, obj: Any, name: str, key: str | Callable[[], str]) -> None:
        fn = getattr(obj, name)

        def timed(*a: Any, **kw: Any) -> Any:
            k = key() if callable(key) else key
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.acc[k] += time.perf_counter() - t0

        setattr(obj, name, timed)

    @contextmanager
    def in_phase(self, phase: str) -> Iterator[None]:
        prev, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = prev


def instrument(tr: Any, timers: Timers) -> None:
    """Patch the trainer's parts (module globals the loop looks up at call time)."""
    t = timers
    t.wrap(tr.engine, "generate", "generate")
    t.wrap(trainer_mod, "collect", "collect")
    t.wrap(trainer_mod, "record_old_logprobs", "old")
    orig_update = trainer_mod.ppo_update

    def ppo_update(*a: Any, **kw: Any) -> Any:
        with t.in_phase("update"):
            t0 = time.perf_counter()
            try:
                return orig_update(*a, **kw)
            finally:
                t.acc["update"] += time.perf_counter() - t0

    trainer_mod.ppo_update = ppo_update
    t.wrap(update_mod, "policy_token_stats", lambda: f"{t.phase}/forward")
    t.wrap(update_mod, "policy_loss", lambda: f"{t.phase}/loss")
    t.wrap(torch.Tensor, "backward", lambda: f"{t.phase}/backward")
    t.wrap(torch.nn.utils, "clip_grad_norm_", lambda: f"{t.phase}/optim")
    t.wrap(tr.optimizer, "step", lambda: f"{t.phase}/optim")
    t.wrap(tr, "update", "trainer_update")
    t.wrap(tr, "control", "control")
    t.wrap(JsonlLogger, "log", "log")


class _Ends:
    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self.snaps: list[tuple[float, dict[str, float]]] = []

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.snaps.append((time.perf_counter(), dict(self.timers.acc)))

    def close(self) -> None:
        pass


def per_step(ends: _Ends, warmup: int) -> list[dict[str, float]]:
    """Each kept step's seconds per row key (differences of cumulative timers)."""
    out = []
    for k in range(max(warmup, 1), len(ends.snaps)):
        (t1, a1), (t0, a0) = ends.snaps[k], ends.snaps[k - 1]
        d = {key: a1.get(key, 0.0) - a0.get(key, 0.0) for key in a1}

        def g(key: str, d: dict[str, float] = d) -> float:
            return d.get(key, 0.0)

        d["step"] = t1 - t0
        d["collect_rest"] = g("collect") - g("generate")
        d["monitor"] = g("trainer_update") - g("old") - g("update")
        parts = ("update/forward", "update/loss", "update/backward", "update/optim")
        d["update_rest"] = g("update") - sum(g(p) for p in parts)
        d["control_log"] = g("control") + g("log")
        d["gap"] = d["step"] - g("collect") - g("trainer_update") - d["control_log"]
        out.append(d)
    return out


def build_trainer(
    setting: vs_trl.Setting, args: Any, timers: Timers, steps: int, out: str
) -> tuple[Any, _Ends]:
    """The trainer at the setting, its run directory ``out`` (removed with the caller's
    temporary directory: a SmolLM2 run leaves a 1.6 GB checkpoint)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from entropy_rl.train.config import config_from_dict
    from entropy_rl.train.data import RecordsSource
    from entropy_rl.train.trainer import Trainer

    cfg = config_from_dict({
        "data": {"chat_template": setting.chat},
        "rollout": {"prompts_per_step": setting.prompts_per_step, "group_size": setting.group,
                    "temperature": 1.0, "max_new_tokens": setting.max_new,
                    "engine": args.engine},
        "algo": {"loss": "ppo", "loss_kwargs": {"eps_low": vs_trl.EPS_LOW,
                                                "eps_high": vs_trl.EPS_HIGH},
                 "ppo_epochs": args.passes, "mini_batches": 1, "lr": args.lr, "warmup_steps": 0,
                 **({} if args.micro_batch is None else {"micro_batch_size": args.micro_batch})},
        "eval": {"every": 0},
        "run": {"steps": steps, "seed": 0, "threads": args.threads, "progress": False,
                "log_samples": 0, "save_every": 0, "out_dir": out, "device": "cpu",
                "loggers": ["jsonl"]},
    })  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(setting.model_dir)
    tok = AutoTokenizer.from_pretrained(setting.model_dir)
    ends = _Ends(timers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = Trainer(
            cfg, model=model, tokenizer=tok, reward_fn=setting.reward,
            prompt_source=RecordsSource(setting.examples, setting.examples[:8]),
        )  # fmt: skip
    tr.loggers.append(ends)
    return tr, ends


TRL_ROWS = [
    ("rollout: generate", "generate"),
    ("rollout: old log-probs fwd", "score/forward"),
    ("rollout: decode+reward+adv+rest", "score_rest"),
    ("update: forward (+entropy)", "loss/forward"),
    ("update: loss rest", "loss_rest"),
    ("update: backward", "backward"),
    ("update: clip+optimizer", "optim"),
    ("trainer loop + logging", "gap"),
]


def profile_trl(setting: vs_trl.Setting, args: Any) -> None:
    """The same breakdown for TRL's GRPOTrainer (methods of GRPOTrainer 1.16 wrapped)."""
    t = Timers()
    runner = vs_trl.Runner(0, None, args.warmup + args.steps)
    with tempfile.TemporaryDirectory() as out:
        gc = args.framework == "trl"
        vs_trl.make_trl(setting, runner, seed=0, out=out, args=args, gradient_checkpointing=gc)
        tr = runner.trainer
        t.wrap(tr.model, "generate", "generate")
        orig_score, orig_loss = tr._generate_and_score_completions, tr.compute_loss

        def score(*a: Any, **kw: Any) -> Any:
            with t.in_phase("score"):
                t0 = time.perf_counter()
                try:
                    return orig_score(*a, **kw)
                finally:
                    t.acc["score"] += time.perf_counter() - t0

        def loss(*a: Any, **kw: Any) -> Any:
            with t.in_phase("loss"):
                t0 = time.perf_counter()
                try:
                    return orig_loss(*a, **kw)
                finally:
                    t.acc["loss"] += time.perf_counter() - t0

        tr._generate_and_score_completions, tr.compute_loss = score, loss
        t.wrap(tr, "_get_per_token_logps_and_entropies", lambda: f"{t.phase}/forward")
        t.wrap(tr.accelerator, "backward", "backward")
        t.wrap(torch.nn.utils, "clip_grad_norm_", "optim")
        t.wrap(torch.optim.AdamW, "step", "optim")
        snaps: list[tuple[float, dict[str, float]]] = []
        orig_end = runner.end_step

        def end_step() -> None:
            snaps.append((time.perf_counter(), dict(t.acc)))
            orig_end()

        runner.end_step = end_step  # type: ignore[method-assign]
        runner.main(args.threads)
        if runner.error is not None:
            raise runner.error
    rows = []
    for k in range(max(args.warmup, 1), len(snaps)):
        (t1, a1), (t0, a0) = snaps[k], snaps[k - 1]
        d = {key: a1.get(key, 0.0) - a0.get(key, 0.0) for key in a1}
        d["step"] = t1 - t0
        d["score_rest"] = d.get("score", 0) - d.get("generate", 0) - d.get("score/forward", 0)
        d["loss_rest"] = d.get("loss", 0) - d.get("loss/forward", 0)
        d["gap"] = d["step"] - d.get("score", 0) - d.get("loss", 0) - d["backward"] - d["optim"]
        rows.append(d)
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0]}
    print(f"\nTRL GRPOTrainer ({args.framework}), {setting.describe}; {args.passes} passes, threads "
          f"{args.threads}; median of {len(rows)} steps")  # fmt: skip
    print(f"{'part':32s} {'s/step':>8s} {'share':>7s}")
    for label, key in TRL_ROWS:
        v = med.get(key, 0.0)
        print(f"{label:32s} {v:8.3f} {100 * v / med['step']:6.1f}%")
    print(f"{'total (wall, step end to end)':32s} {med['step']:8.3f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--setting", default="char",
                   choices=["char", "vocab32k", "real", "real-words", "real-short"])  # fmt: skip
    p.add_argument("--model", help="--setting real*: a pretrained model directory")
    p.add_argument("--engine", default="auto", choices=["auto", "kv", "hf"])
    p.add_argument("--framework", default="ours", choices=["ours", "trl", "trl-nogc"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=None,
                   help="algo.micro_batch_size (default: the config default)")  # fmt: skip
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--ops", action="store_true", help="torch.profiler top ops of one extra step")
    args = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    timers = Timers()
    with tempfile.TemporaryDirectory() as root:
        setting = vs_trl.build_setting(args.setting, Path(root), args.model)
        if args.framework.startswith("trl"):
            profile_trl(setting, args)
            return
        run_dir = str(Path(root) / "run")
        tr, ends = build_trainer(setting, args, timers, args.warmup + args.steps, run_dir)
        instrument(tr, timers)
        prof = cProfile.Profile() if args.cprofile else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if prof:
                prof.enable()
            tr.fit()
            if prof:
                prof.disable()
        steps = per_step(ends, args.warmup)
        med = {k: statistics.median(s.get(k, 0.0) for s in steps) for k in steps[0]}
        print(f"\n{setting.describe}; engine {type(tr.engine).__name__}, {args.passes} passes, "
              f"threads {args.threads}; median of {len(steps)} steps")  # fmt: skip
        print(f"{'part':32s} {'s/step':>8s} {'share':>7s}")
        for label, key in ROWS:
            v = med.get(key, 0.0)
            print(f"{label:32s} {v:8.3f} {100 * v / med['step']:6.1f}%")
        print(f"{'total (wall, step end to end)':32s} {med['step']:8.3f}")
        if prof:
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        if args.ops:
            from torch.profiler import ProfilerActivity, profile

            tr.cfg.run.steps += 1
            tr.loggers = [ends]  # fit() closed the jsonl logger
            with profile(activities=[ProfilerActivity.CPU]) as tp:
                tr.fit()
            print(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
