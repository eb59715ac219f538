"""Fixed rollouts for comparing the updates of two runs weight by weight (no pytest needed:
test_mixed_precision.py and scripts/gpu_check.py both use it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from entropy_rl.engine.base import Generation
from entropy_rl.train.config import build_config

EOS = 2  # the char tokenizer's <eos>
LR = 1e-5  # an RL learning rate: far below the bfloat16 spacing of weights ~0.02 (1.2e-4)


class _FixedEngine:
    """Completions that do not depend on the model (a seeded generator of digit strings), so
    that an fp32 run and a bf16 run train on the same rollouts and their updates can be
    compared weight by weight."""

    exact_logprobs = False

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def sync_weights(self, model: Any) -> None:
        pass

    def generate(self, prompts: list[list[int]], *, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, greedy: bool = False) -> Generation:  # fmt: skip
        n = 1 if greedy else n
        comps = []
        for _ in range(len(prompts) * n):
            length = int(torch.randint(1, 4, (1,), generator=self.gen))
            comps.append([*torch.randint(4, 14, (length,), generator=self.gen).tolist(), EOS])
        rows = [p for p in prompts for _ in range(n)]
        return Generation(prompt_ids=rows, completion_ids=comps, truncated=[False] * len(rows))


def _odd_length(example: Any, text: str) -> float:
    return float(len(text) % 2)  # varies within a group: every group has an advantage signal


def _weights(model: Any) -> torch.Tensor:
    """Every parameter (float32), flattened in name order."""
    return torch.cat([p.detach().float().flatten() for _, p in sorted(model.named_parameters())])


def train_delta(
    model_dir: Path, out: Path, dtype: str, *, steps: int = 3, device: str = "auto"
) -> torch.Tensor:
    """The change of every weight over ``steps`` GRPO steps (model.dtype=``dtype``, lr 1e-5) on
    the fixed rollouts, on ``device``."""
    from entropy_rl.train.trainer import Trainer

    overrides = {
        "model.path": str(model_dir), "model.dtype": dtype, "run.out_dir": str(out),
        "run.steps": steps, "run.progress": False, "run.save_every": 0, "eval.every": 0,
        "rollout.prompts_per_step": 4, "rollout.group_size": 4, "algo.lr": LR,
        "algo.warmup_steps": 1, "algo.ppo_epochs": 1, "algo.mini_batches": 2,
        "rollout.dynamic_sampling": False, "control.detector": False, "run.device": device,
    }  # fmt: skip
    cfg = build_config(
        preset="grpo", overrides=[f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    )
    trainer = Trainer(cfg, engine=_FixedEngine(seed=0), reward_fn=_odd_length)
    start = _weights(trainer.model)  # as the trainer holds them (bf16-rounded if bf16)
    trainer.fit()
    return (_weights(trainer.model) - start).cpu()
