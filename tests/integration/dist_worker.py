"""Worker for test_distributed: trains a few steps on a scripted rollout, saves the parameters.

Run as one process (``python dist_worker.py MODEL OUT``) or under torchrun. Every rank sees its
share of one fixed global batch per step, so 1 and N processes train on the same data.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import torch

from entropy_rl.engine.base import Generation
from entropy_rl.tasks.base import Example
from entropy_rl.train.config import build_config
from entropy_rl.train.trainer import Trainer

P, G = 8, 4  # global prompts per step, samples per prompt


class FixedSource:
    """Step t's global prompts are EXAMPLES[t*P:(t+1)*P]; rank r gets its contiguous share."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world, self.t = rank, world, 0
        self.examples = [Example(f"{a}+{a % 7}=", str(a + a % 7)) for a in range(10, 90)]

    def sample(self, n: int, rng: random.Random) -> list[Example]:
        start = self.t * P + self.rank * n
        self.t += 1
        return self.examples[start : start + n]

    def eval_set(self) -> list[Example]:
        return []


class ScriptedEngine:
    """Deterministic completions: sample j is the right answer for even j, off by j otherwise,
    except for prompts whose first term a is a multiple of 3 or >= 26 (all of step 3's), whose
    samples are all right: their advantage is 0 and the update leaves them out (step 3: every
    row, so one row per mini-batch runs)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer

    def sync_weights(self, model) -> None:
        pass

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, greedy=False):
        comps, rows = [], []
        for p in prompts:
            text = self.tok.decode(p, skip_special_tokens=True)
            a, b = text.rstrip("=").split("+")
            for j in range(n):
                silent = int(a) % 3 == 0 or int(a) >= 26
                ans = int(a) + int(b) + (0 if j % 2 == 0 or silent else j)
                ids = self.tok(str(ans), add_special_tokens=False)["input_ids"] + [
                    self.tok.eos_token_id
                ]
                comps.append(ids)
                rows.append(p)
        return Generation(prompt_ids=rows, completion_ids=comps, truncated=[False] * len(comps))


def main(model_dir: str, out: str) -> None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    torch.set_num_threads(1)
    cfg = build_config(
        preset="ppo",
        overrides=[
            f"model.path={model_dir}",
            f"run.out_dir={out}",
            "run.steps=3",
            "run.progress=false",
            "run.save_every=0",
            f"rollout.prompts_per_step={P}",
            f"rollout.group_size={G}",
            "algo.micro_batch_size=5",
            "algo.mini_batches=3",
            "algo.ppo_epochs=2",
            "algo.lr=3e-3",
            "algo.warmup_steps=1",
            "eval.every=0",
            "control.forecast_every=1",
            "data.task=addition",
        ],
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = Trainer(
        cfg,
        model=model,
        tokenizer=tok,
        engine=ScriptedEngine(tok),
        prompt_source=FixedSource(rank, world),
    )
    trainer.fit()
    if rank == 0:
        torch.save(
            {k: v.detach().clone() for k, v in model.state_dict().items()}, Path(out) / "params.pt"
        )
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
