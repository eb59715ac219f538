"""Benchmark: the shared-prompt update (train.shared_prompt) against the plain layout, time and
peak memory of one forward + backward over a GRPO-shaped micro-batch.

P prompts x G completions of a model's real shapes: its weights from ``--model DIR`` (e.g.
``entropy-rl get-model smollm2``), or ``--random-config NAME_OR_DIR`` (a config only, random
weights: GPU shapes without shipping weights). Each prompt has ``--prompt-len`` tokens and
each completion ``--completion-len`` (random token ids: the work does not depend on them).
The two layouts run in interleaved rounds (A B, B A, ...), each in a fresh subprocess (so
that one measurement's freed memory cannot hide the next one's peak), measuring the wall time
of ``policy_token_stats`` (fused log-probs and entropy) plus the backward of their sum after
a warm-up call on one group, and the peak memory of that call: on CUDA ``max_memory_allocated`` above
what was allocated before; on CPU the process's RSS high-water mark (``/proc``, reset before)
above the RSS before. Medians over the rounds; the values are checked equal (max |d
log-prob|) so the speed-up is not bought with a different answer.

``--completion-min N``: completion lengths drawn uniformly from N .. ``--completion-len``
(seeded) instead of all equal, as sampling with a stop token gives, and a third way,
``shared-1pass``: the shared layout with its completion pass in one piece padded to the
longest row (``CPU_LENGTH_BUCKETS = 1``), against ``shared``'s length buckets (on a CPU).

    python benchmarks/shared_prompt.py --model DIR [--prompts 8] [--group 8]
        [--prompt-len 50] [--completion-len 8] [--completion-min N] [--rounds 3]
        [--device cpu|cuda] [--dtype float32]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vs_trl.py

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from entropy_rl.train import shared_prompt
from entropy_rl.train.batch import RolloutBatch, build_batch, policy_token_stats
from procmem import proc_status_kb, reset_peak


def completion_lengths(rows: int, c_len: int, c_min: int | None = None) -> list[int]:
    """Each row's completion length: ``c_len``, or uniform in ``c_min`` .. ``c_len`` (seed 1)."""
    if c_min is None:
        return [c_len] * rows
    g = torch.Generator().manual_seed(1)
    return torch.randint(c_min, c_len + 1, (rows,), generator=g).tolist()


def grpo_batch(
    vocab: int, prompts: int, group: int, p_len: int, c_len: int, c_min: int | None = None
) -> RolloutBatch:
    """P prompts of ``p_len`` random tokens, G completions each (``completion_lengths``)."""
    g = torch.Generator().manual_seed(0)
    lens = completion_lengths(prompts * group, c_len, c_min)
    rows_p: list[list[int]] = []
    rows_c: list[list[int]] = []
    for _ in range(prompts):
        p = torch.randint(100, vocab, (p_len,), generator=g).tolist()
        for _ in range(group):
            rows_p.append(p)
            rows_c.append(torch.randint(100, vocab, (lens[len(rows_c)],), generator=g).tolist())
    adv = torch.randn(len(rows_p), generator=g)
    return build_batch(rows_p, rows_c, rewards=adv, advantages=adv, pad_token_id=0)


def measure(model: Any, batch: RolloutBatch, shared: bool, autocast: Any) -> dict[str, Any]:
    """Seconds and peak memory (bytes) of one forward + backward; the log-probs."""
    dev = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak()
        base = (proc_status_kb("VmRSS") or 0) * 1024
    t0 = time.perf_counter()
    lp, ent, _ = policy_token_stats(model, batch, temperature=1.0, mode="fused", chunk_size=512,
                                    skip_pad_mask=True, shared_prompt=shared, autocast=autocast)  # fmt: skip
    mask = batch.mask.to(lp.device)
    ((lp * mask).sum() + (ent * mask).sum()).backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (proc_status_kb("VmHWM") or 0) * 1024 - base
    return {"s": time.perf_counter() - t0, "peak": peak, "logp": (lp * mask).detach().cpu()}


def child(args: argparse.Namespace) -> None:
    """One layout, one process: a warm-up call, then the measured one; JSON on stdout."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.random_config))
    model = model.float().to(args.device).eval()
    autocast = None if args.dtype == "float32" else torch.bfloat16
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = grpo_batch(vocab, args.prompts, args.group, args.prompt_len, args.completion_len,
                       args.completion_min)  # fmt: skip
    shared = args.child.startswith("shared")
    if args.child == "shared-1pass":
        shared_prompt.CPU_LENGTH_BUCKETS = 1
    measure(model, batch.rows(torch.arange(args.group)), shared, autocast)  # warm-up: one group
    model.zero_grad(set_to_none=True)
    out = measure(model, batch, shared, autocast)
    torch.save(out["logp"], args.logp_out)
    print(json.dumps({"s": out["s"], "peak": out["peak"]}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a model directory (its weights)")
    src.add_argument("--random-config", help="a config name or directory (random weights)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=50)
    p.add_argument("--completion-len", type=int, default=8)
    p.add_argument("--completion-min", type=int, default=None,
                   help="completion lengths uniform in this .. --completion-len")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="autocast dtype of the forward (weights stay float32)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=["shared", "shared-1pass", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--logp-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.completion_min is not None and not 1 <= args.completion_min <= args.completion_len:
        p.error("--completion-min must be in 1 .. --completion-len")
    if args.child:
        child(args)
        return
    name = args.model or f"{args.random_config} (random weights)"
    rows = args.prompts * args.group
    c_desc = (f"{args.completion_len}" if args.completion_min is None
              else f"{args.completion_min}-{args.completion_len}")  # fmt: skip
    print(f"{name}: {args.prompts} prompts x {args.group} completions = {rows} rows, prompt "
          f"{args.prompt_len} + completion {c_desc} tokens, {args.device} "
          f"{args.dtype}, threads {args.threads}, {args.rounds} rounds, a process each")  # fmt: skip
    ways: tuple[str, ...] = ("shared", "plain")
    if args.completion_min is not None:
        ways = ("shared", "shared-1pass", "plain")
    res: dict[str, list[dict[str, Any]]] = {k: [] for k in ways}
    passed = list(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k in ways if r % 2 == 0 else ways[::-1]:
                logp = str(Path(tmp) / f"{k}.pt")
                cmd = [sys.executable, __file__, *passed, "--child", k, "--logp-out", logp]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                res[k].append(json.loads(done.stdout.strip().splitlines()[-1]))
        plain_lp = torch.load(Path(tmp) / "plain.pt")
        diffs = {k: float((torch.load(Path(tmp) / f"{k}.pt") - plain_lp).abs().max())
                 for k in ways if k != "plain"}  # fmt: skip
    med = {k: statistics.median(x["s"] for x in v) for k, v in res.items()}
    mem = {k: statistics.median(x["peak"] for x in v) for k, v in res.items()}
    inputs = [n - 1 for n in completion_lengths(rows, args.completion_len, args.completion_min)]
    most = shared_prompt.max_length_buckets(torch.device(args.device).type)
    buckets = shared_prompt.length_buckets(inputs, most)
    longest = max(inputs)
    positions = {
        "shared": args.prompts * args.prompt_len + sum(len(g) * max(inputs[i] for i in g)
                                                       for g in buckets),
        "shared-1pass": args.prompts * args.prompt_len + rows * longest,
        "plain": rows * (args.prompt_len + longest + 1),  # every row its whole sequence
    }  # fmt: skip
    real = args.prompts * args.prompt_len + sum(inputs)
    for k in ways:
        rounds = ", ".join(f"{x['s']:.3f}" for x in res[k])
        print(f"  {k:12s} forward+backward {med[k]:7.3f} s   peak +{mem[k] / 2**20:8.1f} MiB   "
              f"positions run {positions[k]:6d}   (rounds: {rounds})")  # fmt: skip
    if args.completion_min is not None:
        print(f"  (real positions {real}: each prompt once, each completion to its length; "
              f"shared's {len(buckets)} completion passes on {args.device} "
              f"{'' if args.device == 'cpu' else '(off on an accelerator) '}"
              f"of {', '.join(str(len(g)) for g in buckets)} rows)")  # fmt: skip
    for k in ways:
        if k != "plain":
            print(f"  {k} / plain: x{med['plain'] / med[k]:.2f} faster, peak memory "
                  f"x{mem['plain'] / max(mem[k], 1):.2f} smaller; max |d log-prob| {diffs[k]:.1e}")  # fmt: skip
    if "shared-1pass" in ways:
        print(f"  shared / shared-1pass: x{med['shared-1pass'] / med['shared']:.2f} faster")


if __name__ == "__main__":
    main()
