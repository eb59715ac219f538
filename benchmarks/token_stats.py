"""Benchmark: log-probs + entropy, forward and backward, from hidden states and lm_head (CPU).

    loss = -mean(log pi(y_t)) - 0.01 * mean(H_t)          (policy term + an entropy bonus)

Ways (each run in a fresh subprocess, so peak memory is its own):
  naive   full logits = hidden @ W^T, log_softmax, gather, H = -sum exp(logp) * logp
  trl     TRL's approach: full logits materialised; log-probs by gather - logsumexp; entropy
          computed over row chunks of 128 (trl.trainer.utils.entropy_from_logits)
  ours    full logits, then entropy_rl token_logprobs + token_entropy(chunk_size=...)
  fused   entropy_rl fused_logprobs_entropy(hidden, W, ids): never builds [N, V]

Peak memory = VmHWM - VmRSS after the inputs (hidden, W, ids) are allocated and the
high-water mark is reset (/proc/self/clear_refs; falls back to ru_maxrss). It includes the
[V, D] weight gradient, which every way allocates. Time = median over --repeats of forward +
backward (wall clock; the CPU-time column sums both threads and is steadier when the
cores are shared). Usage (defaults are the full run; it takes several minutes on 2 cores):

    python benchmarks/token_stats.py [--n 4096] [--d 896] [--vocab 32768 151936]
        [--repeats 3] [--ways naive trl fused] [--chunk 512]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from entropy_rl.ops.token_stats import fused_logprobs_entropy, token_entropy, token_logprobs
from procmem import proc_status_kb, reset_peak

ENTROPY_COEF = 0.01


def _loss(logp: Tensor, entropy: Tensor) -> Tensor:
    return -logp.mean() - ENTROPY_COEF * entropy.mean()


def way_naive(hidden: Tensor, weight: Tensor, ids: Tensor, chunk: int) -> Tensor:
    logits = hidden @ weight.t()  # (N, V)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return _loss(logp, entropy)


def way_trl(hidden: Tensor, weight: Tensor, ids: Tensor, chunk: int) -> Tensor:
    logits = hidden @ weight.t()  # (N, V), materialised
    taken = logits.gather(-1, ids[:, None]).squeeze(-1)
    # selective_log_softmax (float32 branch): logsumexp over rows in a loop
    lse = torch.cat([torch.logsumexp(rows, dim=-1) for rows in logits.split(512)])
    entropies = []
    for rows in logits.split(128):  # entropy_from_logits(logits, chunk_size=128)
        logps = torch.log_softmax(rows, dim=-1)
        entropies.append(-(logps.exp() * logps).sum(-1))
    return _loss(taken - lse, torch.cat(entropies))


def way_ours(hidden: Tensor, weight: Tensor, ids: Tensor, chunk: int) -> Tensor:
    logits = hidden @ weight.t()  # (N, V), materialised
    logp = token_logprobs(logits, ids, chunk_size=chunk)
    return _loss(logp, token_entropy(logits, chunk_size=chunk))


def way_fused(hidden: Tensor, weight: Tensor, ids: Tensor, chunk: int) -> Tensor:
    logp, entropy = fused_logprobs_entropy(hidden, weight, ids, chunk_size=chunk)
    return _loss(logp, entropy)


WAYS: dict[str, Callable[[Tensor, Tensor, Tensor, int], Tensor]] = {
    "naive": way_naive,
    "trl": way_trl,
    "ours": way_ours,
    "fused": way_fused,
}


def worker(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    n, d, v = args.n, args.d, args.vocab[0]
    hidden = torch.randn(n, d, requires_grad=True)
    weight = (torch.randn(v, d) * (2.0 / math.sqrt(d))).requires_grad_()  # logits std ~2
    ids = torch.randint(0, v, (n,))
    fn = WAYS[args.worker]
    gc.collect()
    exact = reset_peak()
    base_kb = proc_status_kb("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF)[2]
    times, cpu_times, losses = [], [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = fn(hidden, weight, ids, args.chunk)
        loss.backward()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        losses.append(loss.item())
        gnorm = (hidden.grad.norm() ** 2 + weight.grad.norm() ** 2).sqrt().item()  # type: ignore[union-attr]
        hidden.grad = weight.grad = None
        del loss
    peak_kb = proc_status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF)[2]
    print(
        json.dumps(
            {
                "peak_mb": ((peak_kb or 0) - (base_kb or 0)) / 1024,
                "time_s": statistics.median(times),
                "times": times,
                "cpu_s": statistics.median(cpu_times),
                "loss": losses[-1],
                "grad_norm": gnorm,
                "peak_exact": exact,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=4096, help="tokens N")
    p.add_argument("--d", type=int, default=896, help="hidden size D (Qwen2.5-0.5B: 896)")
    p.add_argument("--vocab", type=int, nargs="+", default=[32768, 151936])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ways", nargs="+", default=["naive", "trl", "fused"], choices=list(WAYS))
    p.add_argument("--chunk", type=int, default=512, help="rows per chunk for ours / fused")
    p.add_argument("--worker", choices=list(WAYS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"N={args.n} D={args.d} float32 CPU threads={torch.get_num_threads()} "
        f"repeats={args.repeats} chunk={args.chunk}; loss = -mean(logp) - {ENTROPY_COEF}*mean(H)"
    )
    header = f"{'V':>7} {'way':>6} {'peak MB':>9} {'x naive':>8} {'wall s':>8} {'x naive':>8}"
    print(header + f" {'cpu s':>8} {'x naive':>8}  rel. diff of loss / grad norm vs naive")
    for v in args.vocab:
        runs: dict[str, list[dict[str, float]]] = {w: [] for w in args.ways}
        for _ in range(args.repeats):  # interleave the ways: shared cores load them alike
            for way in args.ways:
                cmd = [sys.executable, __file__, "--worker", way, "--n", str(args.n), "--d"]
                cmd += [
                    str(args.d),
                    "--vocab",
                    str(v),
                    "--repeats",
                    "1",
                    "--chunk",
                    str(args.chunk),
                ]
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if res.returncode != 0:
                    print(f"{v:>7} {way:>6} FAILED (rc {res.returncode}): {res.stderr[-300:]}")
                    continue
                runs[way].append(json.loads(res.stdout.strip().splitlines()[-1]))
        summary = {
            w: {
                "peak_mb": max(r["peak_mb"] for r in rs),
                "time_s": statistics.median(r["time_s"] for r in rs),
                "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                "loss": rs[-1]["loss"],
                "grad_norm": rs[-1]["grad_norm"],
            }
            for w, rs in runs.items()
            if rs
        }
        if not summary:
            continue
        ref = summary.get("naive", next(iter(summary.values())))
        for way, r in summary.items():
            dl = abs(r["loss"] - ref["loss"]) / abs(ref["loss"])
            dg = abs(r["grad_norm"] - ref["grad_norm"]) / ref["grad_norm"]
            print(
                f"{v:>7} {way:>6} {r['peak_mb']:>9.0f} {r['peak_mb'] / ref['peak_mb']:>8.3f} "
                f"{r['time_s']:>8.2f} {r['time_s'] / ref['time_s']:>8.2f} "
                f"{r['cpu_s']:>8.2f} {r['cpu_s'] / ref['cpu_s']:>8.2f}  {dl:.1e} / {dg:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
