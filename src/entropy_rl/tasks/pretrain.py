"""Supervised pretraining of the tiny model, start-point metrics, and the shipped checkpoints.

The RL demos need a starting policy that is right often but not always *at the sampling
temperature* (T = 1): there must be room for RL to sharpen it. docs/experiments.md: a
checkpoint whose lr was annealed to zero sits in a sharp minimum that RL at lr >= 1e-4
destroys, so the schedule here is a one-cycle (linear warm-up, cosine decay) to a *non-zero*
final lr, and runs are stopped early rather than trained to convergence.

Shipped checkpoints live in ``entropy_rl/tasks/checkpoints/<task>/`` (safetensors model,
tokenizer files, ``pretrain.json`` with the settings and measured start metrics). Regenerate:

    python -m entropy_rl.tasks.pretrain addition --out src/entropy_rl/tasks/checkpoints/addition
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from entropy_rl.errors import ConfigError
from entropy_rl.tasks.base import Example, Task, checkpoint_name, get_task, task_class
from entropy_rl.tasks.model import build_tiny_model, count_parameters

__all__ = [
    "SHIPPED_SETTINGS",
    "builtin_checkpoint",
    "evaluate_start",
    "load_builtin",
    "one_cycle_lr",
    "pretrain",
    "sample_completions",
]

CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"

# Settings of the shipped checkpoints; pretrain.json in each directory records them with the
# measured start metrics. Both stop early on a longer one-cycle schedule (steps <
# schedule_steps), so the start point sits at a still-high lr, mid-way up the accuracy curve:
# - addition: 2-digit accuracy jumps from ~0.2 to ~0.95 greedy between steps 300 and 500 of
#   this schedule; step 400 leaves room for RL (T = 1 accuracy 0.54, greedy 0.64).
# - digitsum: the recipe of docs/experiments.md (60/40 valid/invalid, batch 256, lr 3e-3 over a
#   700-step one-cycle); stopping at 450 gives its start point (31% valid at T = 1,
#   1.56 nats, 8.6 distinct correct per 32 samples).
# Checked with a scratch PPO loop (4 epochs, clip 0.2, 128 held-out prompts, T = 1): addition
# 32x8 per step, lr 1e-4: accuracy 0.56 -> 0.81 after 20 steps (0.83 at 40); digitsum 16x16,
# lr 2e-4: validity 0.30 -> 0.89 at 40 steps, entropy 1.56 -> 0.60 nats.
# One thread: the machine is shared, and 2 threads on 2 busy cores ran 3-5x slower here.
SHIPPED_SETTINGS: dict[str, dict[str, Any]] = {
    "addition": {
        "steps": 400,
        "schedule_steps": 1000,
        "batch_size": 128,
        "lr": 3e-3,
        "seed": 0,
        "eval_samples": 16,
        "num_threads": 1,
    },
    "digitsum": {
        "steps": 450,
        "schedule_steps": 700,
        "batch_size": 256,
        "lr": 3e-3,
        "seed": 0,
        "eval_samples": 32,
        "num_threads": 1,
    },
}


def one_cycle_lr(
    step: int, *, steps: int, lr: float, warmup_frac: float, final_lr_frac: float
) -> float:
    """Learning rate at optimizer step `step` (0-based) of `steps`.

        W = ceil(warmup_frac * steps)
        warm-up (s < W):  lr * (s + 1) / W
        decay   (s >= W): lr_end + (lr - lr_end) * (1 + cos(pi * (s - W) / (steps - W))) / 2
        lr_end = final_lr_frac * lr  (> 0: no annealing to zero, docs/experiments.md)

    Example: steps 10, lr 1.0, warmup 0.2, final 0.1 -> s = 0: 0.5, s = 2: 1.0,
    s = 6: 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55.
    """
    warm = max(1, math.ceil(warmup_frac * steps))
    if step < warm:
        return lr * (step + 1) / warm
    end = final_lr_frac * lr
    progress = (step - warm) / max(1, steps - warm)
    return end + (lr - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _encode_pairs(tokenizer: Any, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """Right-padded ``<bos> prompt answer <eos>`` with labels only on ``answer <eos>``.

    Returns input_ids, attention_mask, labels, each (B, T); labels are -100 on <bos>, the
    prompt and padding, so the loss is the mean NLL per answer token.
    """
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
    answers = tokenizer([str(e.answer) for e in examples], add_special_tokens=False)["input_ids"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    seqs = [p + a + [eos] for p, a in zip(prompts, answers, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, len(p) : len(s)] = torch.tensor(s[len(p) :])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | None = None,
) -> tuple[list[str], list[list[float]]]:
    """Decode completions for `prompts` (greedy if temperature == 0) without a KV cache.

    Prompts are left-padded; each step runs the model on the whole prefix (B, T) and takes
    the last position's logits (B, V). A row stops after it emits <eos>.

    Returns:
        completions: decoded text, special tokens removed.
        entropies: per completion, the entropy (nats) of softmax(logits / T) at each
            generated position up to and including <eos>; empty lists when greedy.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    batch = ids.shape[0]
    done = torch.zeros(batch, dtype=torch.bool)
    new_tokens: list[torch.Tensor] = []
    ents: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        if temperature == 0:
            token = logits.argmax(-1)  # (B,)
        else:
            logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, V)
            ents.append(-(logp.exp() * logp).sum(-1))  # H = -sum p log p, (B,)
            token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        token = torch.where(done, torch.full_like(token, pad), token)
        new_tokens.append(token)
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        done |= token == eos
        if bool(done.all()):
            break
    gen = torch.stack(new_tokens, dim=1)  # (B, L)
    alive = torch.ones_like(gen, dtype=torch.bool)  # positions up to and including <eos>
    alive[:, 1:] = (gen[:, :-1] != eos).long().cumprod(dim=1).bool()
    completions = tokenizer.batch_decode(gen, skip_special_tokens=True)
    entropies: list[list[float]] = [[] for _ in range(batch)]
    if ents:
        ent = torch.stack(ents, dim=1)  # (B, L)
        entropies = [ent[i][alive[i]].tolist() for i in range(batch)]
    return completions, entropies


def evaluate_start(
    model: Any,
    tokenizer: Any,
    task: Task,
    *,
    n_samples: int,
    temperature: float = 1.0,
    examples: Sequence[Example] | None = None,
    seed: int = 0,
    max_new_tokens: int | None = None,
    chunk: int = 1024,
) -> dict[str, float]:
    """Start-point metrics of a policy on `examples` (default: ``task.eval_set()``).

    Returns:
        greedy_acc: fraction of prompts whose greedy completion is correct.
        sample_acc: fraction of the n_samples completions at `temperature` that are correct.
        entropy_mean: mean entropy of softmax(logits / T) over all sampled answer tokens
            (answer characters and <eos>), token-weighted.
        entropy_first: mean entropy at the first generated position.
        distinct_correct: distinct correct answers among the n_samples, averaged over prompts.
        pass_at_n: fraction of prompts with at least one correct sample.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for the sampled metrics, got {temperature}")
    examples = list(task.eval_set() if examples is None else examples)
    if not examples:
        raise ValueError("evaluate_start needs at least one example")
    max_new = max_new_tokens or task.default_max_new_tokens
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    greedy: list[str] = []
    for i in range(0, len(examples), chunk):
        part = [e.prompt for e in examples[i : i + chunk]]
        greedy += sample_completions(
            model, tokenizer, part, max_new_tokens=max_new, temperature=0.0
        )[0]
    rows = [e for e in examples for _ in range(n_samples)]
    texts: list[str] = []
    ents: list[list[float]] = []
    for i in range(0, len(rows), chunk):
        part = [e.prompt for e in rows[i : i + chunk]]
        t, h = sample_completions(
            model, tokenizer, part, max_new_tokens=max_new, temperature=temperature, generator=gen
        )
        texts += t
        ents += h
    model.train(was_training)
    correct = [task.is_correct(e, t) for e, t in zip(rows, texts, strict=True)]
    distinct, passed = [], []
    for j in range(len(examples)):
        sl = slice(j * n_samples, (j + 1) * n_samples)
        good = {task.extract_answer(t) for t, c in zip(texts[sl], correct[sl], strict=True) if c}
        distinct.append(len(good))
        passed.append(bool(good))
    flat = [x for h in ents for x in h]
    return {
        "greedy_acc": sum(task.is_correct(e, g) for e, g in zip(examples, greedy, strict=True))
        / len(examples),
        "sample_acc": sum(correct) / len(correct),
        "entropy_mean": sum(flat) / max(1, len(flat)),
        "entropy_first": sum(h[0] for h in ents if h) / max(1, sum(1 for h in ents if h)),
        "distinct_correct": sum(distinct) / len(distinct),
        "pass_at_n": sum(passed) / len(passed),
        "n_prompts": float(len(examples)),
        "n_samples": float(n_samples),
        "temperature": float(temperature),
    }


def pretrain(
    task_name: str,
    *,
    out_dir: str | Path,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    task_kwargs: dict[str, Any] | None = None,
    schedule_steps: int | None = None,
    warmup_frac: float = 0.1,
    final_lr_frac: float = 0.1,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    eval_samples: int = 32,
    num_threads: int | None = 2,
    log_every: int = 100,
) -> dict[str, Any]:
    """Train the tiny model from scratch on `task.sample_pretrain` and save it to `out_dir`.

    AdamW (betas 0.9/0.95), one-cycle lr to `final_lr_frac * lr` over `schedule_steps`
    (default `steps`; larger stops training early, mid-schedule, at a still-high lr: the
    start point is then not a sharp annealed minimum), mean NLL of the answer tokens and <eos>. Writes model (safetensors) + tokenizer with
    ``save_pretrained`` and ``pretrain.json`` = {settings, start metrics, wall time}; returns
    the same record. Start metrics are `evaluate_start` at T = 1 with `eval_samples` samples
    per prompt, on the normal and (if any) the hard evaluation prompts separately.
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(
            f"need steps >= 1, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}"
        )
    schedule_steps = steps if schedule_steps is None else schedule_steps
    if schedule_steps < steps:
        raise ConfigError(f"schedule_steps ({schedule_steps}) must be >= steps ({steps})")
    if not 0.0 < final_lr_frac <= 1.0:
        raise ConfigError(
            f"final_lr_frac must be in (0, 1] (no annealing to 0), got {final_lr_frac}"
        )
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    task_kwargs = dict(task_kwargs or {})
    task = get_task(task_name, **task_kwargs)
    tokenizer = task.build_tokenizer()
    model = build_tiny_model(len(tokenizer), seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    rng = random.Random(seed)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        cur = one_cycle_lr(
            step, steps=schedule_steps, lr=lr, warmup_frac=warmup_frac, final_lr_frac=final_lr_frac
        )
        for group in opt.param_groups:
            group["lr"] = cur
        loss = model(**_encode_pairs(tokenizer, task.sample_pretrain(batch_size, rng))).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            history.append({"step": step + 1, "loss": loss.item(), "lr": cur, "time": elapsed})
            print(
                f"[pretrain {task_name}] step {step + 1}/{steps} loss {loss.item():.4f} "
                f"lr {cur:.2e} {elapsed:.0f}s",
                flush=True,
            )
    train_time = time.perf_counter() - start
    evals = task.eval_set()
    hard = [e for e in evals if e.meta.get("hard")]
    normal = [e for e in evals if not e.meta.get("hard")]
    metrics = evaluate_start(model, tokenizer, task, n_samples=eval_samples, examples=normal)
    record: dict[str, Any] = {
        "task": task_name,
        "task_kwargs": task_kwargs,
        "settings": {
            "steps": steps,
            "schedule_steps": schedule_steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "warmup_frac": warmup_frac,
            "final_lr_frac": final_lr_frac,
            "weight_decay": weight_decay,
            "grad_clip": grad_clip,
            "betas": [0.9, 0.95],
            "num_threads": num_threads,
        },
        "n_parameters": count_parameters(model),
        "train_seconds": round(train_time, 1),
        "final_lr": history[-1]["lr"],
        "start": metrics,
        "history": history,
    }
    if hard:
        record["start_hard"] = evaluate_start(
            model, tokenizer, task, n_samples=eval_samples, examples=hard
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def builtin_checkpoint(task_name: str) -> Path:
    """Directory of the checkpoint shipped for `task_name` (``tasks/checkpoints/<name>/``, where
    <name> is the task's `Task.checkpoint`, e.g. ``trap`` starts from ``digitsum``'s).

    Raises:
        ConfigError: no checkpoint is shipped for that task (lists the ones that are; for a
            task meant for pretrained models, says to set model.path).
    """
    path = CHECKPOINT_ROOT / checkpoint_name(task_name)
    if not (path / "config.json").is_file():
        shipped = sorted(p.name for p in CHECKPOINT_ROOT.glob("*") if (p / "config.json").is_file())
        import entropy_rl.tasks  # noqa: F401  (registers the built-in tasks)

        cls = task_class(task_name)
        if cls is not None and cls.needs_model_path:
            raise ConfigError(
                f"no built-in checkpoint for task {task_name!r}: it is meant for a pretrained "
                "model; set model.path to a local Hugging Face model directory (an instruct "
                "model, with data.chat_template=true)"
            )
        raise ConfigError(
            f"no built-in checkpoint for task {task_name!r} at {path}; shipped: {shipped}. "
            f"Set model.path to a model directory, or create one with: "
            f"entropy-rl pretrain {task_name} --out DIR"
        )
    return path


def load_builtin(task_name: str) -> tuple[Any, Any]:
    """(model, tokenizer) of the shipped checkpoint, via the Auto classes."""
    from transformers import AutoModelForCausalLM

    from entropy_rl.tasks.tokenizer import load_tokenizer

    path = builtin_checkpoint(task_name)
    return AutoModelForCausalLM.from_pretrained(path), load_tokenizer(str(path))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m entropy_rl.tasks.pretrain TASK --out DIR [--steps ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("task")
    parser.add_argument("--out", required=True)
    ints = ("steps", "schedule_steps", "batch_size", "seed", "eval_samples", "num_threads")
    for key in ints:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None)
    for key in ("lr", "final_lr_frac", "warmup_frac"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, default=None)
    args = parser.parse_args(argv)
    settings = dict(SHIPPED_SETTINGS.get(args.task, SHIPPED_SETTINGS["addition"]))
    for key in (*ints, "lr", "final_lr_frac", "warmup_frac"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    record = pretrain(args.task, out_dir=args.out, **settings)
    print(json.dumps({k: record[k] for k in record if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
