"""Benchmark: the KV engine's decode loop against transformers' ``generate``, and against the
matmul limit of this machine.

A pretrained chat model (``--model DIR``, e.g. from ``entropy-rl get-model smollm2``) samples
G completions for each of P chat prompts. Two parts, each run in interleaved rounds (A B A B
...; the order flips every round) so that a load swing on a shared machine hits every variant
alike; medians over the rounds after a dropped warm-up round:

1. Equal work: no stop token, so every variant decodes exactly P x G x T tokens (``generate``
   with ``min_new_tokens = max_new_tokens`` and no EOS; ours with a stop id no token has).
   ``kv`` (engine.kv, shared prefill) against ``hf`` (``model.generate``, which repeats each
   prompt G times in its prefill). Then the matmul limit: the FLOPs of that work
   (2 x the matmul weights per token: q, k, v, o, gate, up, down, and the head over the
   vocabulary; the attention's 2 x 2 x heads x head_dim x context; the prefill's once per
   prompt) divided by this machine's measured GFLOP/s, two ways: a large square GEMM (peak)
   and the decode's own shapes (every weight of the model times a (P x G, D) activation,
   nothing else: what the loop could reach with zero overhead outside its matmuls). The
   fraction = limit time / measured time.
2. Real stopping (the chat template's end of turn): ``kv`` with finished rows compacted out of
   the batch (``compact_finished``, the default) against without; each prints the mean
   completion length it drew (the same seed draws different tokens once rows are dropped, so
   the work differs a little: compare seconds per sampled token too).

    python benchmarks/decode.py --model DIR [--prompts 8] [--group 8] [--max-new 24] [--rounds 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vs_trl.py

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call, rounds x variants, order flipped every round; round 0 dropped."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            torch.manual_seed(r)
            t0 = time.perf_counter()
            fns[k]()
            if r:
                times[k].append(time.perf_counter() - t0)
    return times


def matmul_weights(model: Any) -> list[torch.Tensor]:
    """Every 2-D weight a token's forward multiplies by: the decoder's linear layers and the
    output head (the embedding is a lookup, not a matmul)."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    ws = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ws = [w for w in ws if w is not head and w is not embed]
    return [*ws, head]


def decode_flops(model: Any, rows: int, new: int, prompt_lens: list[int]) -> float:
    """FLOPs of prefill (each prompt once) + ``rows`` x ``new`` decoded tokens (see module)."""
    cfg = model.config
    per_token = 2.0 * sum(w.numel() for w in matmul_weights(model))
    head = model.get_output_embeddings().weight.numel()
    d_attn = cfg.num_attention_heads * (
        getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    )
    layers = cfg.num_hidden_layers
    width = max(prompt_lens)
    total = 0.0
    for n in prompt_lens:  # prefill: no head except at the last position, causal attention
        total += n * (per_token - 2.0 * head) + 2.0 * head + layers * 2 * 2 * d_attn * n * n / 2
    for j in range(new):  # decode: context = padded prompt + tokens so far
        total += rows * (per_token + layers * 2 * 2 * d_attn * (width + j + 1))
    return total


def gemm_gflops(shapes: list[tuple[int, int, int]], repeats: int = 5) -> float:
    """GFLOP/s of x (m, k) @ W^T (n, k) over ``shapes``, median of ``repeats`` passes."""
    mats = [(torch.randn(m, k), torch.randn(n, k)) for m, k, n in shapes]
    flops = sum(2.0 * m * k * n for m, k, n in shapes)
    for x, w in mats:
        F.linear(x, w)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, w in mats:
            F.linear(x, w)
        ts.append(time.perf_counter() - t0)
    return flops / statistics.median(ts) / 1e9


def chat_model(
    path: str, n_prompts: int, question: str, high: int = 21
) -> tuple[Any, list[list[int]], list[int], int]:
    """(model in float32, eval mode; ``n_prompts`` chat-encoded prompts of ``question`` with
    a, b in 1..high-1 filled in, seed 0; the template's stop ids; the pad id). Shared with
    kv_prefill.py."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from entropy_rl.tasks.base import Example
    from entropy_rl.train.encoding import Encoder, stop_token_ids

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    enc = Encoder(tok, chat_template=True)
    rng = random.Random(0)
    texts = [question.format(a=rng.randrange(1, high), b=rng.randrange(1, high))
             for _ in range(n_prompts)]  # fmt: skip
    prompts = [enc.encode(Example(prompt=q)) for q in texts]
    stops = stop_token_ids(tok, model, chat_template=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    return model, prompts, stops, pad


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", required=True, help="a pretrained chat model directory")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from entropy_rl.engine.kv import KVCacheEngine

    torch.set_num_threads(args.threads)
    question = "What is {a} + {b}? Give the final answer as a single number at the end."
    model, prompts, stops, pad = chat_model(args.model, args.prompts, question)
    g, t = args.group, args.max_new
    rows = len(prompts) * g
    print(f"{args.model}: {len(prompts)} prompts ({min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens) x {g} samples, {t} new tokens, threads "
          f"{args.threads}, {args.rounds} rounds (medians)")  # fmt: skip

    # 1. equal work ------------------------------------------------------------------------
    never = [-1]  # a stop id no token has: every row decodes t tokens
    kv = KVCacheEngine(model, pad_token_id=pad, eos_token_id=never)
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(q)) + q for q in prompts])  # left-padded
    att = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in prompts])

    def hf() -> None:
        with torch.no_grad():
            model.generate(
                input_ids=ids, attention_mask=att, do_sample=True, num_return_sequences=g,
                max_new_tokens=t, min_new_tokens=t, eos_token_id=None, pad_token_id=pad,
                top_k=0, top_p=1.0, temperature=1.0,
            )  # fmt: skip

    def ours() -> None:
        kv.generate(prompts, n=g, temperature=1.0, top_p=1.0, max_new_tokens=t)

    times = interleaved({"kv": ours, "hf": hf}, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = rows * t
    print("\n1. equal work: every row decodes all its tokens")
    for k, v in times.items():
        print(f"  {k:3s} {med[k]:7.2f} s  {tokens / med[k]:7.1f} tokens/s   "
              f"(rounds: {', '.join(f'{x:.2f}' for x in v)})")  # fmt: skip
    print(f"  kv / hf: x{med['hf'] / med['kv']:.2f} faster")
    flops = decode_flops(model, rows, t, [len(q) for q in prompts])
    d = model.config.hidden_size
    peak = gemm_gflops([(2048, 2048, 2048)])
    shapes = [(rows, w.shape[1], w.shape[0]) for w in matmul_weights(model)]
    at_shape = gemm_gflops(shapes)
    print(f"  work: {flops / 1e9:.0f} GFLOP ({flops / tokens / 1e6:.0f} MFLOP per decoded "
          f"token, hidden {d})")  # fmt: skip
    for name, rate in (
        ("square 2048 GEMM (peak)", peak),
        (f"decode shapes ({rows} rows)", at_shape),
    ):
        limit = flops / (rate * 1e9)
        print(f"  matmul limit at {name}: {rate:.1f} GFLOP/s -> {limit:.2f} s; kv reaches "
              f"{limit / med['kv']:.0%} of it, hf {limit / med['hf']:.0%}")  # fmt: skip

    # 2. real stopping ---------------------------------------------------------------------
    engines = {
        "kv compact": KVCacheEngine(model, pad_token_id=pad, eos_token_id=stops),
        "kv no-compact": KVCacheEngine(
            model, pad_token_id=pad, eos_token_id=stops, compact_finished=False
        ),
    }
    lengths: dict[str, list[float]] = {k: [] for k in engines}

    def run(k: str) -> Callable[[], None]:
        def call() -> None:
            gen = engines[k].generate(prompts, n=g, temperature=1.0, top_p=1.0, max_new_tokens=t)
            lengths[k].append(sum(map(len, gen.completion_ids)) / len(gen))

        return call

    times = interleaved({k: run(k) for k in engines}, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n2. real stopping (the chat template's end of turn), <= {t} new tokens")
    for k, v in times.items():
        mean_len = statistics.mean(lengths[k][1:])
        print(f"  {k:13s} {med[k]:7.2f} s  mean length {mean_len:5.1f}  "
              f"{med[k] / (rows * mean_len) * 1e3:6.1f} ms per sampled token  "
              f"(rounds: {', '.join(f'{x:.2f}' for x in v)})")  # fmt: skip
    print(f"  compact / no-compact: x{med['kv no-compact'] / med['kv compact']:.2f} faster")


if __name__ == "__main__":
    main()
