"""Benchmark: how OpenMP workers wait, on the KV engine's decode loop (CPU).

The decode loop runs hundreds of small operators per token; between two of them an idle
OpenMP worker either spins (burning its core) or sleeps (and is woken, at a cost, for the next
one). Three settings of libgomp (the OpenMP runtime of torch's Linux wheels), each in its own
process because the runtime reads them when torch loads:

    passive   OMP_WAIT_POLICY=PASSIVE   sleep at once (the CLI's default)
    default   nothing set               libgomp's own: spin ~300,000 times, then sleep
    spin3000  GOMP_SPINCOUNT=3000       a short spin, then sleep

Each process loads the model, warms up, then times ``--calls`` calls of the engine's
``generate`` (P chat prompts x G samples x T new tokens, no stop token: equal work) and prints
the median; rounds interleave the settings (A B C, C B A, ...). Run it on an idle machine and
beside busy processes: spinning is cheap when cores are free and ruinous when they are not.

    python benchmarks/openmp_wait.py --model DIR [--prompts 8] [--group 4] [--max-new 48]
        [--rounds 2] [--calls 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "default": {},
    "spin3000": {"GOMP_SPINCOUNT": "3000"},
}


def child(args: argparse.Namespace) -> None:
    """One setting, one process: median seconds of ``--calls`` generate calls, JSON on stdout."""
    import torch  # the child only: the parent loads no OpenMP runtime

    from decode import chat_model  # a sibling: benchmarks/ is sys.path[0] for a script
    from entropy_rl.engine.kv import KVCacheEngine

    torch.set_num_threads(args.threads)
    question = "What is {a} + {b}? Give the final answer as a single number at the end."
    model, prompts, _, pad = chat_model(args.model, args.prompts, question)
    kv = KVCacheEngine(model, pad_token_id=pad, eos_token_id=[-1])  # no stop: equal work

    def call() -> None:
        kv.generate(prompts, n=args.group, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new)

    call()  # warm-up
    times = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"s": statistics.median(times), "calls": times}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", required=True, help="a pretrained chat model directory")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-new", type=int, default=48)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    passed = list(argv if argv is not None else sys.argv[1:])
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    names = list(SETTINGS)
    res: dict[str, list[float]] = {k: [] for k in names}
    print(f"{args.model}: {args.prompts} prompts x {args.group} samples x {args.max_new} tokens, "
          f"threads {args.threads}, {args.rounds} rounds x {args.calls} calls, load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    for r in range(args.rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            cmd = [sys.executable, __file__, *passed, "--child"]
            done = subprocess.run(cmd, env={**base, **SETTINGS[k]}, capture_output=True,
                                  text=True, check=True)  # fmt: skip
            out = json.loads(done.stdout.strip().splitlines()[-1])
            res[k].append(out["s"])
            print(f"  round {r + 1} {k:9s} {out['s']:7.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    for k in names:
        print(f"{k:9s} {med[k]:7.2f} s  ({', '.join(f'{x:.2f}' for x in res[k])})  "
              f"passive / {k}: x{med['passive'] / med[k]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
