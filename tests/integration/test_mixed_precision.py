"""Mixed precision that learns: model.dtype=bfloat16 trains float32 master weights with
bfloat16 compute, and moves the weights by the updates a float32 run makes (train.precision).

The old behaviour (bfloat16 parameters under plain AdamW) fails these tests: at an RL learning
rate, an AdamW step (~lr) is below half the bfloat16 spacing of most weights and rounds away.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from entropy_rl.train.config import build_config

transformers = pytest.importorskip("transformers")

import fixed_rollouts  # noqa: E402
from fixed_rollouts import train_delta  # noqa: E402

LR = fixed_rollouts.LR


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_run_moves_the_weights_like_an_fp32_run(
    dtype: str, tiny_model_dir: Path, tmp_path: Path
):
    d32 = train_delta(tiny_model_dir, tmp_path / "fp32", "float32")
    d16 = train_delta(tiny_model_dir, tmp_path / dtype, dtype)
    # fp32: AdamW moves (almost) every weight; 3 steps x 2 mini-batches of ~lr each
    assert (d32 != 0).float().mean() > 0.99
    assert 1e-6 < d32.abs().max() <= 6 * LR * 1.01
    # low-precision compute with fp32 masters: the same weights move, by the same updates up to
    # the gradients' rounding (AdamW's early steps are ~lr * sign(g): only gradients near 0 can
    # change sign). Measured: bf16 rel 0.043, fp16 0.011. Old behaviour (bf16 parameters):
    # 15% of the weights moved, rel 0.94; fp16 parameters: the first update's logits overflow.
    assert (d16 != 0).float().mean() > 0.99
    rel = float((d16 - d32).norm() / d32.norm())
    assert rel < 0.1, rel


def test_a_bf16_model_given_to_the_trainer_trains_float32_master_weights(
    tiny_model_dir: Path, tmp_path: Path
):
    from entropy_rl.engine.kv import KVCacheEngine
    from entropy_rl.tasks.tokenizer import load_tokenizer
    from entropy_rl.train.trainer import Trainer

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    cfg = build_config(preset="grpo", overrides=["model.dtype=bfloat16", f"run.out_dir={tmp_path}"])
    with pytest.warns(UserWarning, match="cast to float32 master weights"):
        trainer = Trainer(cfg, model=model, tokenizer=load_tokenizer(str(tiny_model_dir)))
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    opt_params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert {p.dtype for p in opt_params} == {torch.float32}  # AdamW steps the masters
    assert trainer.settings().autocast == torch.bfloat16 and trainer.scaler is None
    assert isinstance(trainer.engine, KVCacheEngine)
    assert trainer.engine.compute_dtype == torch.bfloat16 and not trainer.engine.exact_logprobs
