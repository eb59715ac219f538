"""Worker for test_fsdp: the scripted training of dist_worker, then (sharded) a resume.

``python fsdp_worker.py MODEL OUT`` trains 3 steps in one process. Under ``accelerate launch``
with an FSDP config it trains 2 steps, saves, builds a new Trainer that resumes from that
checkpoint and trains step 3. Rank 0 writes the final parameters (params.pt) and the greedy
completions of a few prompts generated with the gathered full-weight model (greedy.pt).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from dist_worker import FixedSource, ScriptedEngine

from entropy_rl.train.config import build_config
from entropy_rl.train.trainer import Trainer

P, G = 8, 4


def make_trainer(
    model_dir: str, out: str, steps: int, source: FixedSource, resume: bool
) -> Trainer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = build_config(
        preset="ppo",
        overrides=[
            f"model.path={model_dir}", f"run.out_dir={out}", f"run.steps={steps}",
            "run.progress=false", "run.save_every=0", f"rollout.prompts_per_step={P}",
            f"rollout.group_size={G}", "algo.micro_batch_size=5", "algo.mini_batches=3",
            "algo.ppo_epochs=2", "algo.lr=3e-3", "algo.warmup_steps=1", "eval.every=0",
            "data.task=addition", "model.logits=fused", "algo.kl_coef=0.01", "algo.kl_in=loss",
        ],
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return Trainer(
        cfg, model=model, tokenizer=tok, engine=ScriptedEngine(tok), prompt_source=source,
        resume=resume,
    )  # fmt: skip


def main(model_dir: str, out: str) -> None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    torch.set_num_threads(1)
    source = FixedSource(rank, world)
    if world == 1:
        trainer = make_trainer(model_dir, out, 3, source, resume=False)
        trainer.fit()
    else:
        first = make_trainer(model_dir, out, 2, source, resume=False)
        assert first.sharding.enabled, "the FSDP launch was not detected"
        first.fit()  # saves step 2
        trainer = make_trainer(model_dir, out, 3, source, resume=True)
        assert trainer.step == 2
        trainer.fit()
    full = trainer.sharding.full_model(trainer.model)  # every rank (a collective when sharded)
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in full.state_dict().items()},
                   Path(out) / "params.pt")  # fmt: skip
        prompts = torch.tensor([trainer.tokenizer("12+5=", add_special_tokens=False)["input_ids"]])
        greedy = full.generate(
            prompts, max_new_tokens=4, do_sample=False, pad_token_id=trainer.pad_id
        )  # rank 0 alone: no collective
        torch.save(greedy, Path(out) / "greedy.pt")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
