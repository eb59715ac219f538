"""Benchmark: the KV engine's shared prefill (each prompt's forward once, its cache copied to
its G samples) against repeating each prompt G times before the forward (the path before).

A pretrained chat model (``--model DIR``, e.g. from ``entropy-rl get-model smollm2``) samples
G completions for each of P chat prompts ("What is a + b? Answer with just the number."),
both ways in turn (A B A B ...) so a load swing on a shared machine hits both alike; prints
the median seconds of ``generate`` per way and the ratio. Same seed each call: both ways draw
the same tokens (tests/unit/test_kv_engine.py checks it), so only the time differs.

    python benchmarks/kv_prefill.py --model DIR [--prompts 8] [--group 4] [--max-new 20]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vs_trl.py

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", required=True, help="a pretrained chat model directory")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-new", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from decode import chat_model
    from entropy_rl.engine.kv import KVCacheEngine

    torch.set_num_threads(args.threads)
    question = "What is {a} + {b}? Answer with just the number."
    model, prompts, stops, pad = chat_model(args.model, args.prompts, question, high=30)
    ways = {"shared": True, "repeated": False}
    engines = {k: KVCacheEngine(model, pad_token_id=pad, eos_token_id=stops, share_prefill=v)
               for k, v in ways.items()}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in ways}
    kw = {"n": args.group, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": args.max_new}
    for rep in range(args.repeats + 1):  # the first round warms up and is dropped
        for k in ways if rep % 2 == 0 else list(ways)[::-1]:
            torch.manual_seed(rep)
            t0 = time.perf_counter()
            engines[k].generate(prompts, **kw)
            if rep:
                times[k].append(time.perf_counter() - t0)
    width = max(len(x) for x in prompts)
    print(f"{args.model}: {args.prompts} prompts (<= {width} tokens) x {args.group} samples, "
          f"<= {args.max_new} new tokens, threads {args.threads}, {args.repeats} rounds")  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:9s} generate {med[k]:7.2f} s   (rounds: {', '.join(f'{x:.2f}' for x in v)})")
    print(f"shared / repeated: x{med['repeated'] / med['shared']:.2f} faster")


if __name__ == "__main__":
    main()
