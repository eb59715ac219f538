"""Benchmark: entropy_rl.Trainer against TRL's GRPOTrainer at equal settings (CPU).

Both train the same locally built tiny Qwen2 (saved to a temporary directory) on the same kind of
prompts with the same RL settings:

    G = 8 samples x 8 prompts per RL step (64 completions), <= 16 new tokens, temperature 1,
    clip eps_low 0.2 / eps_high 0.28, token-mean loss (TRL loss_type="dapo"), no KL (beta 0),
    --passes update passes over each rollout (ours: ppo_epochs, 1 mini-batch; TRL:
    num_iterations), fused AdamW at the same constant lr (ours by default, TRL's default
    optim adamw_torch_fused), grad clip 1.0, GRPO advantages.

One "RL step" is one rollout and its update: TRL runs ``num_iterations`` optimizer steps per
rollout, so its RL step is that many trainer steps. Time per RL step is wall time between
consecutive step ends (everything the loop does, host overhead included); completion tokens
count every sampled token up to and including EOS. Each round builds one fresh trainer per
variant and runs them in threads that take turns one RL step at a time (A B C A B C ...; only
the thread holding the turn runs), so the load swings of a shared machine hit every variant
alike. The first --warmup steps of each trainer (set-up, first calls) are dropped; the table
gives medians over all kept steps of all rounds. --parity runs the variants one after the
other instead. --dtype bfloat16 runs both sides in mixed precision (float32 master weights:
ours model.dtype=bfloat16, sampling from a bfloat16 copy; TRL bf16=True, autocast).

Settings (--setting):
  char      the 19-token character tokenizer, 3-digit addition prompts ``a+b=``; reward = share
            of odd digits in the completion (dense: the random-init model never adds correctly)
  vocab32k  vocab_size 32768 (word-level tokenizer ``w<id>``), random 6-token prompts; reward =
            share of odd token ids in the completion. Ours uses its fused log-prob/entropy path
            (model.logits auto -> fused at vocab >= 4096); ``ours-full`` materialises logits.
  real      a pretrained instruct model (--model DIR, e.g. from ``entropy-rl get-model
            smollm2``) through its chat template: "What is a + b? Answer with just the number."
            (a, b in 1..29), 8 prompts x 4 samples, <= 20 new tokens; reward = last number in
            the completion equals a + b (1 / 0). Sampling stops at the template's end of turn.
  real-words  the same model on ``word_problems`` level 1 (its default instruction: the final
            number at the end), 8 prompts x 4 samples, <= 48 new tokens
  real-short  word problems level 1 answered "with just the number": 16 prompts x 8 samples,
            <= 8 new tokens (the prompt, ~50 tokens with the template, much longer than the
            answer: where running each prompt once pays most)

Variants (--variants): ours (the defaults: rollout.engine=auto, here engine.kv.KVCacheEngine,
whose sampler log-probs/entropy/top-1 are pi_old's, so no second forward; each prompt once in
the update's forwards, train.shared_prompt), ours-plain (the same with model.shared_prompt=false:
every row runs its prompt), ours-allrows (algo.skip_zero_advantage=false: the rows whose
advantage is 0, every sample of their prompt rewarded alike, run through the update too, as in
TRL; ours leaves them out, the same step), ours-hf
(rollout.engine=hf: transformers generate + the pi_old forward, the path before engine.kv),
ours-full (model.logits=full), trl (GRPOConfig defaults, which include gradient
checkpointing), trl-nogc (gradient_checkpointing=False, the same memory/compute trade as ours),
trl-nogc-mb32 (trl-nogc with 32-row micro-batches: per_device_train_batch_size 32 x 2
accumulation steps, the same rollout and optimizer steps). Ours runs algo.micro_batch_size rows
per forward/backward (the config default, 32, length-sorted; --micro-batch sets it); TRL 64
unless -mb32. Micro-batching is accumulation: the same gradient, to float summation order.

    python benchmarks/vs_trl.py                          # char setting, ours vs trl
    python benchmarks/vs_trl.py --variants ours ours-hf trl trl-nogc --repeats 4 --steps 6
    python benchmarks/vs_trl.py --setting vocab32k --variants ours ours-full trl
    python benchmarks/vs_trl.py --parity --seeds 0 1 2 --parity-steps 30   # reward curves
    python benchmarks/vs_trl.py --setting real --model models/smollm2 --lr 5e-6 --passes 1

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
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from entropy_rl.tasks import get_task
from entropy_rl.tasks.base import Example
from entropy_rl.tasks.model import build_tiny_model, count_parameters
from entropy_rl.tasks.tokenizer import build_char_tokenizer
from step_limit import print_limit

EPS_LOW, EPS_HIGH = 0.2, 0.28


# ---------------------------------------------------------------------------------- settings
@dataclass
class Setting:
    name: str
    model_dir: Path
    examples: list[Example]
    reward: Callable[[Example, str], float]
    describe: str
    prompts_per_step: int = 8
    group: int = 8
    max_new: int = 16
    chat: bool = False  # prompts go through the tokenizer's chat template (both frameworks)

    @property
    def rows(self) -> int:
        """Completions per RL step."""
        return self.prompts_per_step * self.group


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


def last_number_reward(example: Example, text: str) -> float:
    """1.0 when the last number in the completion equals the example's answer (the built-in
    ``last_number`` reward, the one a real instruct model's sentences need)."""
    from entropy_rl.tasks.rewards import last_number

    return last_number("", text, answer=example.answer)


def real_examples(n: int, rng: random.Random) -> list[Example]:
    """Single- and two-digit additions asked in words, as an instruct model is asked."""
    out = []
    for _ in range(n):
        a, b = rng.randrange(1, 30), rng.randrange(1, 30)
        q = f"What is {a} + {b}? Answer with just the number."
        out.append(Example(prompt=q, answer=str(a + b)))
    return out


def build_setting(name: str, root: Path, model: str | None = None) -> Setting:
    """Save the setting's model + tokenizer under ``root/name`` and return its prompts
    (``real``: the pretrained model directory ``model``, used as it is)."""
    path = root / name
    rng = random.Random(0)
    if name in ("real-words", "real-short"):
        if model is None:
            raise ValueError(f"--setting {name} needs --model DIR (entropy-rl get-model smollm2)")
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(model)
        short = name == "real-short"
        task = get_task("word_problems", level=1,
                        **({"instruction": "Answer with just the number."} if short else {}))  # fmt: skip
        p, g, t = (16, 8, 8) if short else (8, 4, 48)
        desc = (
            f"{name}: {Path(model).name} ({conf.model_type}, vocab {conf.vocab_size}), chat "
            f"template, word problems level 1{' answered with just the number' if short else ''},"
            f" {p} prompts x {g} samples, <= {t} new tokens, reward last_number"
        )
        return Setting(name, Path(model), task.sample_train(2048, rng), last_number_reward, desc,
                       prompts_per_step=p, group=g, max_new=t, chat=True)  # fmt: skip
    if name == "real":
        if model is None:
            raise ValueError("--setting real needs --model DIR (entropy-rl get-model smollm2)")
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(model)
        desc = (
            f"real: {Path(model).name} ({conf.model_type}, vocab {conf.vocab_size}), chat "
            "template, 8 prompts x 4 samples, <= 20 new tokens, reward last_number"
        )
        return Setting(name, Path(model), real_examples(2048, rng), last_number_reward, desc,
                       prompts_per_step=8, group=4, max_new=20, chat=True)  # fmt: skip
    if name == "char":
        tok = build_char_tokenizer()
        net = build_tiny_model(len(tok), seed=0)
        examples = get_task("addition", digits=3).sample_train(2048, rng)
        reward: Callable[[str], float] = odd_digit_share
    elif name == "vocab32k":
        tok = build_word_tokenizer(32768)
        net = build_tiny_model(32768, seed=0)
        examples = [
            Example(prompt=" ".join(f"w{rng.randrange(4, 32768)}" for _ in range(6)))
            for _ in range(2048)
        ]
        reward = odd_word_share
    else:
        raise ValueError(
            f"unknown setting {name!r}; available: char, vocab32k, real, real-words, real-short"
        )
    net.save_pretrained(path)
    tok.save_pretrained(path)
    desc = (
        f"{name}: Qwen2 {count_parameters(net) / 1e6:.2f}M params, vocab {len(tok)}, "
        "8 prompts x 8 samples, <= 16 new tokens"
    )
    return Setting(name, path, examples, lambda ex, text: reward(text), desc)


# ---------------------------------------------------------------------------------- runs
class Baton:
    """Round-robin turns between runner threads: one RL step each, A B C A B C ... So a load
    change on a shared machine hits every variant alike instead of whichever run it lands on."""

    def __init__(self, n: int) -> None:
        self.cv = threading.Condition()
        self.order = list(range(n))
        self.turn: int | None = 0

    def wait(self, i: int) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.turn == i)

    def pass_on(self, i: int, *, finished: bool = False) -> None:
        with self.cv:
            pos = self.order.index(i)
            nxt = self.order[(pos + 1) % len(self.order)]
            if finished:
                self.order.remove(i)
                nxt = nxt if self.order and nxt != i else (self.order[0] if self.order else -1)
            self.turn = nxt
            self.cv.notify_all()


@dataclass
class RunResult:
    """Per RL step: wall time (from getting the turn to the step's end), generate time,
    completion tokens and mean reward."""

    step_s: list[float] = field(default_factory=list)
    gen_s: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    zero_adv: list[float] = field(default_factory=list)
    """ours: the share of rows whose advantage is 0 (update/zero_adv_rows_frac)."""

    def kept(self, warmup: int) -> dict[str, list[float]]:
        """Per-step numbers without the first ``warmup`` steps."""
        step_s, gen, tokens = self.step_s[warmup:], self.gen_s[warmup:], self.tokens[warmup:]
        return {
            "step_s": step_s,
            "gen_s": gen,
            "other_s": [s - g for s, g in zip(step_s, gen, strict=True)],
            "tokens": tokens,
            "tok_per_s": [n / s for n, s in zip(tokens, step_s, strict=True)],
        }


class Runner:
    """One variant's training run, stepped under a Baton (or alone when ``baton`` is None)."""

    def __init__(self, idx: int, baton: Baton | None, steps: int) -> None:
        self.idx, self.baton, self.steps = idx, baton, steps
        self.res = RunResult()
        self.run: Callable[[], Any] = lambda: None
        self.trainer: Any = None
        self._start = 0.0
        self.error: BaseException | None = None

    def begin(self) -> None:
        if self.baton is not None:
            self.baton.wait(self.idx)
        self._start = time.perf_counter()

    def end_step(self) -> None:
        """Called by the trainer at the end of each RL step: hand the turn on (the last step
        keeps it, so the run's teardown does not overlap another variant's step)."""
        self.res.step_s.append(time.perf_counter() - self._start)
        if len(self.res.step_s) < self.steps and self.baton is not None:
            self.baton.pass_on(self.idx)
            self.begin()
        elif self.baton is None:
            self._start = time.perf_counter()

    def main(self, threads: int) -> None:
        torch.set_num_threads(threads)  # per thread (OpenMP settings are thread-local)
        try:
            self.begin()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.run()
        except BaseException as e:  # re-raised by the main thread
            self.error = e
        finally:
            if self.baton is not None:
                self.baton.pass_on(self.idx, finished=True)


def _timed(fn: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        sink.append(time.perf_counter() - t0)
        return out

    return wrapper


class _StepLogger:
    """A Trainer logger: records each step's tokens and mean reward, then ends the step."""

    def __init__(self, runner: Runner, rows: int) -> None:
        self.runner, self.rows = runner, rows

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if "reward/mean" not in metrics:  # an evaluation-only row
            return
        self.runner.res.tokens.append(metrics["length/mean"] * self.rows)
        self.runner.res.rewards.append(metrics["reward/mean"])
        if "update/zero_adv_rows_frac" in metrics:
            self.runner.res.zero_adv.append(metrics["update/zero_adv_rows_frac"])
        self.runner.end_step()

    def close(self) -> None:
        pass


def make_ours(
    setting: Setting, variant: str, runner: Runner, *, seed: int, out: str, args: Any
) -> contextlib.AbstractContextManager[Any]:
    """Set ``runner.run`` to ``runner.steps`` RL steps of entropy_rl.Trainer (variant ours |
    ours-hf | ours-full); returns a context to hold while it runs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from entropy_rl.train.config import config_from_dict
    from entropy_rl.train.data import RecordsSource
    from entropy_rl.train.trainer import Trainer

    cfg = config_from_dict({
        "model": {"path": str(setting.model_dir), "dtype": args.dtype,
                  "logits": "full" if variant == "ours-full" else "auto",
                  "shared_prompt": False if variant == "ours-plain" else None},
        "data": {"chat_template": setting.chat},
        "rollout": {"prompts_per_step": setting.prompts_per_step, "group_size": setting.group,
                    "temperature": 1.0, "max_new_tokens": setting.max_new,
                    "engine": "hf" if variant == "ours-hf" else "auto"},
        "algo": {"loss": "ppo", "loss_kwargs": {"eps_low": EPS_LOW, "eps_high": EPS_HIGH},
                 "agg": "token-mean", "ppo_epochs": args.passes, "mini_batches": 1,
                 "lr": args.lr, "warmup_steps": 0, "grad_clip": 1.0, "kl_coef": 0.0,
                 "skip_zero_advantage": variant != "ours-allrows",
                 **({} if args.micro_batch is None else {"micro_batch_size": args.micro_batch})},
        "eval": {"every": 0},
        "run": {"steps": runner.steps, "seed": seed, "threads": args.threads, "progress": False,
                "log_samples": 0, "save_every": 0, "out_dir": out, "device": "cpu"},
    })  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(setting.model_dir)
    tok = AutoTokenizer.from_pretrained(setting.model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(
            cfg, model=model, tokenizer=tok, reward_fn=setting.reward,
            prompt_source=RecordsSource(setting.examples, setting.examples[:8]),
            loggers=[_StepLogger(runner, setting.rows)],
        )  # fmt: skip
    trainer.engine.generate = _timed(trainer.engine.generate, runner.res.gen_s)  # type: ignore[method-assign]
    runner.run = trainer.fit
    return contextlib.nullcontext()


def make_trl(
    setting: Setting,
    runner: Runner,
    *,
    seed: int,
    out: str,
    args: Any,
    gradient_checkpointing: bool = True,
    micro: int | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """Set ``runner.run`` to ``runner.steps`` RL steps (``steps * passes`` optimizer steps) of
    TRL's GRPOTrainer (GRPOConfig turns gradient checkpointing on by default). ``micro`` rows per
    forward/backward: per_device_train_batch_size = micro with 64 / micro accumulation steps,
    so a rollout is still 64 completions and an optimizer step still sums all 64 rows."""
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    res = runner.res
    micro = micro or setting.rows
    answers = {e.prompt: e for e in setting.examples}

    class _Ends(TrainerCallback):
        n = 0

        def on_step_end(self, *a: Any, **kw: Any) -> None:
            self.n += 1
            if self.n % args.passes == 0:  # the rollout's last pass
                runner.end_step()

    def reward(
        prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **kw: Any
    ) -> list[float]:
        res.tokens.append(float(sum(len(c) for c in completion_ids)))
        # conversational data: each prompt / completion is a list of {"role", "content"} turns
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        r = [setting.reward(answers[u], t) for u, t in zip(users, texts, strict=True)]
        res.rewards.append(sum(r) / len(r))
        return r

    with warnings.catch_warnings():  # deprecation notes of TrainingArguments
        warnings.simplefilter("ignore")
        conf = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=micro, num_generations=setting.group,
            gradient_accumulation_steps=setting.rows // micro,
            max_completion_length=setting.max_new, max_steps=runner.steps * args.passes,
            num_iterations=args.passes, learning_rate=args.lr, lr_scheduler_type="constant",
            warmup_steps=0, optim="adamw_torch_fused", max_grad_norm=1.0, epsilon=EPS_LOW,
            epsilon_high=EPS_HIGH, beta=0.0, loss_type="dapo", scale_rewards="group",
            temperature=1.0, top_p=1.0, top_k=0, logging_steps=1, report_to=[],
            save_strategy="no", use_cpu=True, seed=seed, bf16=args.dtype == "bfloat16",
            disable_tqdm=True,
            dataloader_num_workers=0, gradient_checkpointing=gradient_checkpointing,
        )  # fmt: skip
        prompts: list[Any] = [e.prompt for e in setting.examples]
        if setting.chat:  # TRL applies the chat template to conversational prompts
            prompts = [[{"role": "user", "content": p}] for p in prompts]
        data = datasets.Dataset.from_dict({"prompt": prompts})
        trainer = GRPOTrainer(
            model=str(setting.model_dir), reward_funcs=cast(Any, reward), args=conf, train_dataset=data,
            processing_class=AutoTokenizer.from_pretrained(setting.model_dir),
            callbacks=[_Ends()],
        )  # fmt: skip
    model: Any = trainer.model
    model.generate = _timed(model.generate, res.gen_s)
    for cb in list(trainer.callback_handler.callbacks):  # no printed logs or progress bars
        if type(cb).__name__ in ("PrinterCallback", "ProgressCallback"):
            trainer.remove_callback(cb)
    runner.run, runner.trainer = trainer.train, trainer
    return contextlib.nullcontext()


def run_variants(
    setting: Setting, variants: list[str], *, steps: int, seed: int, args: Any, interleave: bool
) -> dict[str, RunResult]:
    """Build one trainer per variant, then run them step by step in turn (``interleave``) or
    one after the other; returns each variant's per-step results."""
    baton = Baton(len(variants)) if interleave else None
    runners = [Runner(i, baton, steps) for i in range(len(variants))]
    with tempfile.TemporaryDirectory() as root, contextlib.ExitStack() as stack:
        for v, r in zip(variants, runners, strict=True):
            torch.manual_seed(seed)
            out = str(Path(root) / f"{v}-{r.idx}")
            if v.startswith("trl"):
                gc, micro = v == "trl", 32 if v.endswith("-mb32") else None
                ctx = make_trl(
                    setting, r, seed=seed, out=out, args=args, gradient_checkpointing=gc,
                    micro=micro,
                )  # fmt: skip
                stack.enter_context(ctx)
            else:
                stack.enter_context(make_ours(setting, v, r, seed=seed, out=out, args=args))
        if interleave:
            threads = [threading.Thread(target=r.main, args=(args.threads,)) for r in runners]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for r in runners:
                r.main(args.threads)
    for v, r in zip(variants, runners, strict=True):
        if r.error is not None:
            raise RuntimeError(f"variant {v} failed") from r.error
    return {v: r.res for v, r in zip(variants, runners, strict=True)}


# ---------------------------------------------------------------------------------- reports
def speed(setting: Setting, args: Any) -> None:
    kept: dict[str, dict[str, list[float]]] = {
        v: {"step_s": [], "gen_s": [], "other_s": [], "tokens": [], "tok_per_s": []}
        for v in args.variants
    }
    rewards: dict[str, list[list[float]]] = {v: [] for v in args.variants}
    zero_adv: dict[str, list[float]] = {v: [] for v in args.variants}
    for rep in range(args.repeats):
        order = args.variants if rep % 2 == 0 else args.variants[::-1]  # A B, B A, ...
        results = run_variants(
            setting, order, steps=args.warmup + args.steps, seed=rep, args=args, interleave=True
        )
        for v, res in results.items():
            rewards[v].append(res.rewards)
            zero_adv[v] += res.zero_adv[args.warmup :]
            for k, xs in res.kept(args.warmup).items():
                kept[v][k] += xs
            tps = statistics.median(res.kept(args.warmup)["tok_per_s"])
            print(f"  round {rep + 1}/{args.repeats} {v:9s} {tps:8.1f} tokens/s", flush=True)
    print(f"\n{setting.describe}; {args.passes} passes, {args.dtype}, threads {args.threads}, "
          f"{args.repeats} rounds x {args.steps} interleaved steps (+{args.warmup} warm-up)")  # fmt: skip
    head = f"{'variant':10s} {'s/step':>8s} {'gen s':>8s} {'other s':>8s} {'tok/step':>9s} "
    print(head + f"{'tok/s':>8s} {'IQR tok/s':>15s}")
    med = {v: {k: statistics.median(xs) for k, xs in d.items()} for v, d in kept.items()}
    for v in args.variants:
        m = med[v]
        xs = kept[v]["tok_per_s"]
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        print(f"{v:10s} {m['step_s']:8.3f} {m['gen_s']:8.3f} {m['other_s']:8.3f} "
              f"{m['tokens']:9.0f} {m['tok_per_s']:8.1f} {q[0]:7.1f}-{q[2]:<7.1f}")  # fmt: skip
    print("mean reward per RL step (all steps, warm-up included; one row per round):")
    for v in args.variants:
        for curve in rewards[v]:
            print(f"  {v:10s} " + " ".join(f"{r:.3f}" for r in curve))
    for v, xs in zero_adv.items():  # empty where no row is left out (ours-allrows, trl)
        if xs:  # the limit line counts the update's work over the rows it ran
            med[v]["zero_adv"] = statistics.mean(xs)
            print(f"{v}: rows with advantage 0, left out of the update: "
                  + " ".join(f"{x:.2f}" for x in xs) + " (timed steps)")  # fmt: skip
    for base in ("trl", "trl-nogc", "trl-nogc-mb32"):
        if base not in med:
            continue
        for v in args.variants:
            if not v.startswith("trl"):
                r = med[v]["tok_per_s"] / med[base]["tok_per_s"]
                t = med[base]["step_s"] / med[v]["step_s"]
                print(f"{v} / {base}: tokens/s x{r:.2f}; time per step x{t:.2f} shorter")
    print_limit(setting, med, args)


def parity(setting: Setting, args: Any) -> None:
    curves: dict[str, list[list[float]]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        results = run_variants(
            setting, args.variants, steps=args.parity_steps, seed=seed, args=args,
            interleave=False,
        )  # fmt: skip
        for v, res in results.items():
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
    p.add_argument("--setting", default="char",
                   choices=["char", "vocab32k", "real", "real-words", "real-short"])  # fmt: skip
    p.add_argument("--model", help="--setting real: a pretrained model directory")
    p.add_argument("--variants", nargs="+", default=["ours", "trl"],
                   choices=["ours", "ours-plain", "ours-allrows", "ours-hf", "ours-full", "trl",
                            "trl-nogc", "trl-nogc-mb32"])  # fmt: skip
    p.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="ours: algo.micro_batch_size (default: the config default, 32)",
    )
    p.add_argument("--steps", type=int, default=4, help="timed RL steps per run")
    p.add_argument("--warmup", type=int, default=1, help="dropped RL steps at the start of a run")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant, interleaved")
    p.add_argument("--passes", type=int, default=2, help="ppo_epochs = TRL num_iterations")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype, both sides: ours model.dtype (float32 master weights), "
                   "TRL bf16=True (autocast over float32 weights)")  # fmt: skip
    p.add_argument("--parity", action="store_true", help="reward curves instead of speed")
    p.add_argument("--parity-steps", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step holds each trainer's set-up)")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        setting = build_setting(args.setting, Path(root), args.model)
        print(setting.describe, flush=True)
        if args.parity:
            parity(setting, args)
        else:
            speed(setting, args)


if __name__ == "__main__":
    main()
