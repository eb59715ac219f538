"""Benchmark: float32 against bfloat16 mixed precision (``model.dtype=bfloat16``) on this CPU,
for a pretrained chat model's rollout and update.

Whether bfloat16 pays on a CPU depends on the CPU: with bfloat16 matrix instructions
(AVX512-BF16, AMX) its GEMMs run several times faster than float32's; without them PyTorch
emulates them and they run slower. This script measures the two places a training step spends
its time, each variant in interleaved rounds (order flipped every round, round 0 dropped,
medians), and prints the ratios:

1. Sampling: the KV engine (engine.kv) draws G completions of P chat prompts, ``--max-new``
   tokens each with no stop token (equal work), from float32 weights or from its bfloat16 copy
   (``compute_dtype``: what ``model.dtype=bfloat16`` gives the rollout).
2. Update: forward + backward of the trainer's log-prob/entropy pass
   (train.batch.policy_token_stats, shared-prompt layout, fused head) over the rollout's
   P x G rows, float32 against ``torch.autocast(bfloat16)`` (the head and softmax statistics
   stay float32 in both: see policy_token_stats). Mixed precision also costs the update one
   no-grad pi_old forward per rollout, which float32 skips when the engine's statistics are
   exact (train.update.sampler_is_pi_old): printed as "+ pi_old".

    python benchmarks/precision.py --model DIR [--prompts 8] [--group 4] [--max-new 48]
        [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vs_trl.py

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import chat_model, interleaved


def cpu_flags() -> str:
    """The bfloat16-relevant flags of this CPU (Linux /proc/cpuinfo), or '?' elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])  # fmt: skip
    want = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in want if f in flags) or "none of avx512f, avx512_bf16, amx"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", required=True, help="a pretrained chat model directory")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-new", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from entropy_rl.engine.kv import KVCacheEngine
    from entropy_rl.train.batch import build_batch, policy_token_stats

    torch.set_num_threads(args.threads)
    question = "What is {a} + {b}? Give the final answer as a single number at the end."
    model, prompts, _, pad = chat_model(args.model, args.prompts, question)
    g, t = args.group, args.max_new
    print(f"{args.model}: {len(prompts)} prompts x {g} samples, {t} new tokens, threads "
          f"{args.threads}, {args.rounds} rounds (medians); CPU flags: {cpu_flags()}")  # fmt: skip

    never = [-1]  # a stop id no token has: every row decodes t tokens
    engines = {
        "float32": KVCacheEngine(model, pad_token_id=pad, eos_token_id=never),
        "bfloat16": KVCacheEngine(
            model, pad_token_id=pad, eos_token_id=never, compute_dtype=torch.bfloat16
        ),
    }
    gen = engines["float32"].generate(prompts, n=g, temperature=1.0, top_p=1.0, max_new_tokens=t)

    def sample(k: str) -> None:
        engines[k].generate(prompts, n=g, temperature=1.0, top_p=1.0, max_new_tokens=t)

    times = interleaved({k: functools.partial(sample, k) for k in engines}, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\n1. sampling (KV engine, equal work)")
    for k, v in times.items():
        print(f"  {k:8s} {med[k]:7.2f} s  (rounds: {', '.join(f'{x:.2f}' for x in v)})")
    print(f"  bfloat16 / float32: x{med['float32'] / med['bfloat16']:.2f} faster")

    rows = len(gen)
    zeros = torch.zeros(rows)
    batch = build_batch(gen.prompt_ids, gen.completion_ids, rewards=zeros, advantages=zeros,
                        pad_token_id=pad)  # fmt: skip
    model.train()

    def step(dtype: torch.dtype | None, grad: bool = True) -> None:
        with torch.set_grad_enabled(grad):
            logp, _, _ = policy_token_stats(
                model, batch, temperature=1.0, autocast=dtype, shared_prompt=True
            )
            if grad:
                (logp * batch.mask).sum().backward()
                model.zero_grad(set_to_none=True)

    variants = {
        "float32": lambda: step(None),
        "bfloat16": lambda: step(torch.bfloat16),
        "bf16 pi_old": lambda: step(torch.bfloat16, grad=False),
    }
    times = interleaved(variants, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n2. update: forward + backward over {rows} rows (shared prompts, fused head)")
    for k, v in times.items():
        print(f"  {k:11s} {med[k]:7.2f} s  (rounds: {', '.join(f'{x:.2f}' for x in v)})")
    both = med["bfloat16"] + med["bf16 pi_old"]
    print(f"  bfloat16 / float32: x{med['float32'] / med['bfloat16']:.2f} faster; with its "
          f"pi_old forward x{med['float32'] / both:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
