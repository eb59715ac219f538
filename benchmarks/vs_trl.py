"""Benchmark: entropy_rl.Trainer against TRL's GRPOTrainer at equal settings (CPU).

Both train the same locally built tiny Qwen2 (saved to a temporary directory) on the same kind of
prompts with the same RL settings:

    G = 8 samples x 8 prompts per RL step (64 completions), <= 16 new tokens, temperature 1,
    clip eps_low 0.2 / eps_high 0.28, token-mean loss (TRL loss_type="dapo"), no KL (beta 0),
    --passes update passes over each rollout (ours: ppo_epochs, 1 mini-batch; TRL:
    num_iterations), AdamW at the same constant lr, grad clip 1.0, GRPO advantages.

One "RL step" is one rollout and its update: TRL runs ``num_iterations`` optimizer steps per
rollout, so its RL step is that many trainer steps. Time per RL step is wall time between
consecutive step ends (everything the loop does, host overhead included); completion tokens
count every sampled token up to and including EOS. Runs alternate A B A B ..., each a fresh
trainer of --warmup + --steps RL steps whose warm-up steps are dropped; the table gives medians
over all kept steps.

Settings (--setting):
  char      the 19-token character tokenizer, 3-digit addition prompts ``a+b=``; reward = share
            of odd digits in the completion (dense: the random-init model never adds correctly)
  vocab32k  vocab_size 32768 (word-level tokenizer ``w<id>``), random 6-token prompts; reward =
            share of odd token ids in the completion. Ours uses its fused log-prob/entropy path
            (model.logits auto -> fused at vocab >= 4096); ``ours-full`` materialises logits.

Variants (--variants): ours (HF generate engine), ours-kv (benchmarks/kv_engine.py, a plain
KV-cached sampling loop), ours-fast (ours-kv, and pi_old's log-probs/entropy/top-1 taken from the
sampler instead of a second forward: kv_engine.old_logprobs_from_sampler), ours-full
(model.logits=full), trl.

    python benchmarks/vs_trl.py                          # char setting, ours vs trl
    python benchmarks/vs_trl.py --variants ours ours-kv trl --repeats 3
    python benchmarks/vs_trl.py --setting vocab32k --variants ours ours-full trl
    python benchmarks/vs_trl.py --parity --seeds 0 1 2 --parity-steps 30   # reward curves

OMP_WAIT_POLICY defaults to PASSIVE: on a shared machine spinning OpenMP workers make 2-thread
timings 5-50x slower and erratic (measured: a 64x1 forward went from ~20 ms to 120-980 ms).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from entropy_rl.tasks import get_task
from entropy_rl.tasks.base import Example
from entropy_rl.tasks.model import build_tiny_model, count_parameters
from entropy_rl.tasks.tokenizer import build_char_tokenizer

PROMPTS_PER_STEP = 8
GROUP = 8
MAX_NEW = 16
EPS_LOW, EPS_HIGH = 0.2, 0.28


# ---------------------------------------------------------------------------------- settings
@dataclass
class Setting:
    name: str
    model_dir: Path
    examples: list[Example]
    reward: Callable[[str], float]
    describe: str


def odd_digit_share(text: str) -> float:
    """Share of odd digits among the completion's characters (0 for an empty completion)."""
    return sum(text.count(d) for d in "13579") / max(len(text), 1)


def odd_word_share(text: str) -> float:
    """Share of words ``w<id>`` with an odd id (0 for an empty completion)."""
    words = text.split()
    return sum(int(w[1:]) % 2 for w in words if w[1:].isdigit()) / max(len(words), 1)


def build_word_tokenizer(vocab_size: int) -> Any:
    """Word-level tokenizer: <pad> <bos> <eos> <unk>, then ``w4`` .. ``w<vocab_size-1>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ("<pad>", "<bos>", "<eos>", "<unk>")
    vocab = {t: i for i, t in enumerate(specials)} | {
        f"w{i}": i for i in range(len(specials), vocab_size)
    }
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        unk_token="<unk>", padding_side="left",
    )  # fmt: skip


def build_setting(name: str, root: Path) -> Setting:
    """Save the setting's model + tokenizer under ``root/name`` and return its prompts."""
    path = root / name
    rng = random.Random(0)
    if name == "char":
        tok = build_char_tokenizer()
        model = build_tiny_model(len(tok), seed=0)
        examples = get_task("addition", digits=3).sample_train(2048, rng)
        reward = odd_digit_share
    elif name == "vocab32k":
        tok = build_word_tokenizer(32768)
        model = build_tiny_model(32768, seed=0)
        examples = [
            Example(prompt=" ".join(f"w{rng.randrange(4, 32768)}" for _ in range(6)))
            for _ in range(2048)
        ]
        reward = odd_word_share
    else:
        raise ValueError(f"unknown setting {name!r}; available: char, vocab32k")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    desc = (
        f"{name}: Qwen2 {count_parameters(model) / 1e6:.2f}M params, vocab {len(tok)}, "
        f"{PROMPTS_PER_STEP} prompts x {GROUP} samples, <= {MAX_NEW} new tokens"
    )
    return Setting(name, path, examples, reward, desc)


# ---------------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    step_ends: list[float] = field(default_factory=list)  # perf_counter at each RL step end
    gen_s: list[float] = field(default_factory=list)  # generate time of each RL step
    tokens: list[float] = field(default_factory=list)  # completion tokens of each RL step
    rewards: list[float] = field(default_factory=list)  # mean reward of each RL step

    def kept(self, warmup: int) -> dict[str, list[float]]:
        """Per-step numbers of steps warmup+1.. (a step's time = its end - previous end)."""
        ends = self.step_ends
        step_s = [ends[k] - ends[k - 1] for k in range(max(warmup, 1), len(ends))]
        first = len(ends) - len(step_s)
        gen = self.gen_s[first:]
        tokens = self.tokens[first:]
        return {
            "step_s": step_s,
            "gen_s": gen,
            "other_s": [s - g for s, g in zip(step_s, gen, strict=True)],
            "tokens": tokens,
            "tok_per_s": [n / s for n, s in zip(tokens, step_s, strict=True)],
        }


def _timed(fn: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        sink.append(time.perf_counter() - t0)
        return out

    return wrapper


class _StepLogger:
    """A Trainer logger that records when each step ends, its tokens and its mean reward."""

    def __init__(self, res: RunResult) -> None:
        self.res = res

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if "reward/mean" not in metrics:  # an evaluation-only row
            return
        self.res.step_ends.append(time.perf_counter())
        self.res.tokens.append(metrics["length/mean"] * PROMPTS_PER_STEP * GROUP)
        self.res.rewards.append(metrics["reward/mean"])

    def close(self) -> None:
        pass


def run_ours(setting: Setting, variant: str, *, steps: int, seed: int, args: Any) -> RunResult:
    """``steps`` RL steps of entropy_rl.Trainer; variant ours | ours-kv | ours-fast | ours-full."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from entropy_rl.train.config import config_from_dict
    from entropy_rl.train.data import RecordsSource
    from entropy_rl.train.trainer import Trainer

    res = RunResult()
    out = tempfile.mkdtemp(prefix="erl-bench-")
    cfg = config_from_dict({
        "model": {"path": str(setting.model_dir),
                  "logits": "full" if variant == "ours-full" else "auto"},
        "rollout": {"prompts_per_step": PROMPTS_PER_STEP, "group_size": GROUP,
                    "temperature": 1.0, "max_new_tokens": MAX_NEW},
        "algo": {"loss": "ppo", "loss_kwargs": {"eps_low": EPS_LOW, "eps_high": EPS_HIGH},
                 "agg": "token-mean", "ppo_epochs": args.passes, "mini_batches": 1,
                 "micro_batch_size": PROMPTS_PER_STEP * GROUP, "lr": args.lr,
                 "warmup_steps": 0, "grad_clip": 1.0, "kl_coef": 0.0},
        "eval": {"every": 0},
        "run": {"steps": steps, "seed": seed, "threads": args.threads, "progress": False,
                "log_samples": 0, "save_every": 0, "out_dir": out, "device": "cpu"},
    })  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(setting.model_dir)
    tok = AutoTokenizer.from_pretrained(setting.model_dir)
    engine = None
    ctx: Any = contextlib.nullcontext()
    if variant in ("ours-kv", "ours-fast"):
        from kv_engine import KVCacheEngine, old_logprobs_from_sampler

        engine = KVCacheEngine(
            model, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            with_stats=variant == "ours-fast",
        )  # fmt: skip
        if variant == "ours-fast":
            ctx = old_logprobs_from_sampler(engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(
            cfg, model=model, tokenizer=tok, engine=engine,
            reward_fn=lambda ex, text: setting.reward(text),
            prompt_source=RecordsSource(setting.examples, setting.examples[:8]),
            loggers=[_StepLogger(res)],
        )  # fmt: skip
        trainer.engine.generate = _timed(trainer.engine.generate, res.gen_s)  # type: ignore[method-assign]
        with ctx:
            trainer.fit()
    return res


def run_trl(setting: Setting, *, steps: int, seed: int, args: Any) -> RunResult:
    """``steps`` RL steps (``steps * passes`` optimizer steps) of TRL's GRPOTrainer."""
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    res = RunResult()
    ends: list[float] = []

    class _Ends(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *a: Any, **kw: Any) -> None:
            ends.append(time.perf_counter())

    def reward(completions: list[str], completion_ids: list[list[int]], **kw: Any) -> list[float]:
        res.tokens.append(float(sum(len(c) for c in completion_ids)))
        r = [setting.reward(c) for c in completions]
        res.rewards.append(sum(r) / len(r))
        return r

    conf = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP, num_generations=GROUP,
        max_completion_length=MAX_NEW, max_steps=steps * args.passes,
        num_iterations=args.passes, learning_rate=args.lr, lr_scheduler_type="constant",
        warmup_steps=0, optim="adamw_torch", max_grad_norm=1.0, epsilon=EPS_LOW,
        epsilon_high=EPS_HIGH, beta=0.0, loss_type="dapo", scale_rewards="group",
        temperature=1.0, top_p=1.0, top_k=0, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True, seed=seed, bf16=False, disable_tqdm=True,
        dataloader_num_workers=0,
    )  # fmt: skip
    data = datasets.Dataset.from_dict({"prompt": [e.prompt for e in setting.examples]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(
            model=str(setting.model_dir), reward_funcs=reward, args=conf, train_dataset=data,
            processing_class=AutoTokenizer.from_pretrained(setting.model_dir),
            callbacks=[_Ends()],
        )  # fmt: skip
        trainer.model.generate = _timed(trainer.model.generate, res.gen_s)
        for cb in list(trainer.callback_handler.callbacks):  # no printed logs or progress bars
            if type(cb).__name__ in ("PrinterCallback", "ProgressCallback"):
                trainer.remove_callback(cb)
        torch.set_num_threads(args.threads)
        trainer.train()
    res.step_ends = ends[args.passes - 1 :: args.passes]  # the end of each rollout's last pass
    return res


def run_variant(setting: Setting, variant: str, *, steps: int, seed: int, args: Any) -> RunResult:
    torch.set_num_threads(args.threads)
    if variant == "trl":
        return run_trl(setting, steps=steps, seed=seed, args=args)
    return run_ours(setting, variant, steps=steps, seed=seed, args=args)


# ---------------------------------------------------------------------------------- reports
def speed(setting: Setting, args: Any) -> None:
    kept: dict[str, dict[str, list[float]]] = {
        v: {"step_s": [], "gen_s": [], "other_s": [], "tokens": [], "tok_per_s": []}
        for v in args.variants
    }
    for rep in range(args.repeats):
        order = args.variants if rep % 2 == 0 else args.variants[::-1]  # A B, B A, ...
        for v in order:
            res = run_variant(setting, v, steps=args.warmup + args.steps, seed=rep, args=args)
            for k, xs in res.kept(args.warmup).items():
                kept[v][k] += xs
            med = statistics.median(res.kept(args.warmup)["tok_per_s"])
            print(f"  run {rep + 1}/{args.repeats} {v:9s} {med:8.1f} tokens/s", flush=True)
    print(f"\n{setting.describe}; {args.passes} passes, threads {args.threads}, "
          f"{args.repeats} runs x {args.steps} steps each (+{args.warmup} warm-up)")  # fmt: skip
    head = f"{'variant':10s} {'s/step':>8s} {'gen s':>8s} {'other s':>8s} {'tok/step':>9s} "
    print(head + f"{'tok/s':>8s} {'IQR tok/s':>15s}")
    med = {v: {k: statistics.median(xs) for k, xs in d.items()} for v, d in kept.items()}
    for v in args.variants:
        m = med[v]
        q = (
            statistics.quantiles(kept[v]["tok_per_s"], n=4)
            if len(kept[v]["tok_per_s"]) > 1
            else [0, 0, 0]
        )
        print(f"{v:10s} {m['step_s']:8.3f} {m['gen_s']:8.3f} {m['other_s']:8.3f} "
              f"{m['tokens']:9.0f} {m['tok_per_s']:8.1f} {q[0]:7.1f}-{q[2]:<7.1f}")  # fmt: skip
    if "trl" in med:
        for v in args.variants:
            if v != "trl":
                r = med[v]["tok_per_s"] / med["trl"]["tok_per_s"]
                t = med["trl"]["step_s"] / med[v]["step_s"]
                print(f"{v} / trl: tokens/s x{r:.2f}, time per step x{t:.2f} faster")


def parity(setting: Setting, args: Any) -> None:
    curves: dict[str, list[list[float]]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        for v in args.variants:
            res = run_variant(setting, v, steps=args.parity_steps, seed=seed, args=args)
            curves[v].append(res.rewards)
            print(f"  seed {seed} {v:9s} reward {res.rewards[0]:.3f} -> {res.rewards[-1]:.3f}",
                  flush=True)  # fmt: skip
    print(f"\nparity, {setting.describe}; {args.passes} passes, lr {args.lr}, "
          f"seeds {args.seeds}: mean reward per step, mean +- std over seeds")  # fmt: skip
    marks = sorted({1, 5, 10, 20, args.parity_steps} & set(range(1, args.parity_steps + 1)))
    print(f"{'variant':10s} " + " ".join(f"{'step ' + str(s):>14s}" for s in marks)
          + f" {'last 5 steps':>14s}")  # fmt: skip
    for v, runs in curves.items():
        cells = []
        for s in marks:
            xs = [r[s - 1] for r in runs]
            cells.append(f"{statistics.mean(xs):.3f}+-{_std(xs):.3f}")
        tail = [statistics.mean(r[-5:]) for r in runs]
        cells.append(f"{statistics.mean(tail):.3f}+-{_std(tail):.3f}")
        print(f"{v:10s} " + " ".join(f"{c:>14s}" for c in cells))


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--setting", default="char", choices=["char", "vocab32k"])
    p.add_argument("--variants", nargs="+", default=["ours", "trl"],
                   choices=["ours", "ours-kv", "ours-fast", "ours-full", "trl"])  # fmt: skip
    p.add_argument("--steps", type=int, default=4, help="timed RL steps per run")
    p.add_argument("--warmup", type=int, default=1, help="dropped RL steps at the start of a run")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant, interleaved")
    p.add_argument("--passes", type=int, default=2, help="ppo_epochs = TRL num_iterations")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parity", action="store_true", help="reward curves instead of speed")
    p.add_argument("--parity-steps", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (a step's time is measured from the previous step's end)")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        setting = build_setting(args.setting, Path(root))
        print(setting.describe, flush=True)
        if args.parity:
            parity(setting, args)
        else:
            speed(setting, args)


if __name__ == "__main__":
    main()
