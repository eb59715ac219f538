"""Benchmark: one AdamW step over a model's parameters, torch's default implementation (a
loop of per-tensor ops on CPU) against ``fused=True`` (the trainer's choice on CPU and CUDA),
and the two updates' largest difference.

The parameters are a pretrained model's (``--model DIR``) or, without one, tensors of
SmolLM2-135M's shapes (a 49,152 x 576 embedding and 30 layers of q, k, v, o, gate, up, down,
norms). Gradients are random; each variant has its own optimizer over its own copy of the
parameters, and the variants alternate step by step (order flipped every round, round 0
dropped; medians).

    python benchmarks/optimizer.py [--model DIR] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vs_trl.py

import argparse
import statistics
import time

import torch


def smollm2_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of SmolLM2-135M (tied head: the embedding once)."""
    d, mlp, kv = 576, 1536, 192
    layer = [(d, d), (kv, d), (kv, d), (d, d), (mlp, d), (mlp, d), (d, mlp), (d,), (d,)]
    return [(49152, d), *(layer * 30), (d,)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", help="a model directory (default: SmolLM2-135M's shapes)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        shapes = [tuple(q.shape) for q in model.parameters()]
        base = [q.detach().clone() for q in model.parameters()]
    else:
        shapes = smollm2_shapes()
        base = [torch.randn(s) * 0.02 for s in shapes]
    grads = [torch.randn(s) * 1e-3 for s in shapes]
    n = sum(g.numel() for g in grads)
    params = {}
    opts = {}
    for name, fused in (("default", None), ("fused", True)):
        params[name] = [torch.nn.Parameter(b.clone()) for b in base]
        opts[name] = torch.optim.AdamW(params[name], lr=1e-5, weight_decay=0.0, fused=fused)
    times: dict[str, list[float]] = {k: [] for k in opts}
    for r in range(args.rounds + 1):
        for k in list(opts) if r % 2 == 0 else list(opts)[::-1]:
            for q, g in zip(params[k], grads, strict=True):
                q.grad = g
            t0 = time.perf_counter()
            opts[k].step()
            if r:
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(*params.values(), strict=True))
    print(f"AdamW step over {n / 1e6:.1f}M parameters ({len(shapes)} tensors), threads "
          f"{args.threads}, {args.rounds} rounds (medians)")  # fmt: skip
    for k, v in times.items():
        print(
            f"  {k:8s} {med[k] * 1e3:8.1f} ms  (rounds: {', '.join(f'{x * 1e3:.0f}' for x in v)})"
        )
    print(f"  fused / default: x{med['default'] / med['fused']:.2f} faster; largest weight "
          f"difference after {args.rounds + 1} steps {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
