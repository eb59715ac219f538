"""TRL's GRPOTrainer with entropy-rl's ``rate-clip`` preset, on a small instruct model (CPU).

    entropy-rl get-model smollm2 --out models/smollm2
    python examples/trl_rate_clip.py --model models/smollm2 --out runs/trl-rate-clip

The three lines that matter are marked ``# entropy-rl``: the callback brings the preset's clip
widths, its controller (the clip width set each step from the rate of entropy change) and
the collapse detector. The task is two-digit addition (reward: correct, plus a little for
brevity); ``num_iterations=2``
makes the second pass over each rollout off-policy, so the clip acts. Then
``--figure PATH`` draws the clip width and the entropy over the steps from the run's
``entropy-rl/metrics.jsonl``. docs/integrations.md records a run.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Any


def addition_prompts(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        content = f"What is {a} + {b}? Answer with the number only."
        rows.append({"prompt": [{"role": "user", "content": content}], "answer": str(a + b)})
    return rows


def correct(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """1 when the last number in the completion is the sum (``17 + 25 = 42`` counts), plus up
    to 0.2 for brevity (0 at 80 characters): a small model's groups then rarely tie."""
    out = []
    for comp, ans in zip(completions, answer, strict=True):
        text = comp[0]["content"] if isinstance(comp, list) else str(comp)
        numbers = re.findall(r"-?\d+", text)
        hit = float(bool(numbers) and numbers[-1] == ans)
        out.append(hit + 0.2 * max(0.0, 1.0 - len(text) / 80))
    return out


def train(model: str, out: Path, steps: int, seed: int) -> None:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from entropy_rl.integrations.trl import EntropyCallback

    torch.manual_seed(seed)
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=8,  # 2 prompts x 4 completions
        num_generations=4,
        max_completion_length=20,
        max_steps=steps,
        num_iterations=2,  # the 2nd pass is off-policy: ratios != 1, the clip acts
        learning_rate=2e-5,
        logging_steps=1,
        temperature=1.0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=seed,
    )
    # the preset's schedule is set for our built-in model; SmolLM2 starts near 1.6 nats: let
    # entropy fall at most 0.2 nats over the run (the rate controller tracks the slope)
    schedule = {"kind": "linear", "start": 1.6, "end": 1.4}
    cb = EntropyCallback(preset="rate-clip", controller_kwargs={"schedule": schedule})  # entropy-rl
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correct,
        args=args,
        train_dataset=Dataset.from_list(addition_prompts(64, seed)),
        callbacks=[cb],  # entropy-rl
    )
    cb.attach(trainer)  # entropy-rl
    trainer.train()


def figure(run: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in (run / "entropy-rl" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.plot(steps, [r["entropy/mean"] for r in rows], "o-", color="tab:blue", label="entropy")
    ax.set_xlabel("step (optimizer steps of TRL's GRPOTrainer)")
    ax.set_ylabel("entropy/mean (nats)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["control/eps_high"] for r in rows], "s-", color="tab:red", label="clip")
    ax2.set_ylabel("clip width eps_low = eps_high", color="tab:red")
    ax2.set_ylim(0, 0.22)
    ax.set_title("rate-clip inside TRL's GRPOTrainer (SmolLM2-135M-Instruct, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--out", type=Path, default=Path("runs/trl-rate-clip"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", type=Path, help="draw the figure from a finished run and exit")
    a = ap.parse_args()
    if a.figure is not None:
        figure(a.out, a.figure)
    else:
        train(a.model, a.out, a.steps, a.seed)


if __name__ == "__main__":
    main()
