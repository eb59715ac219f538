"""The trainer with rollout.engine=kv (sampler statistics as pi_old) and engine=hf."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import entropy_rl.train.trainer as trainer_mod
from entropy_rl.engine.hf import HFGenerateEngine
from entropy_rl.engine.kv import KVCacheEngine
from entropy_rl.train.config import ConfigError, build_config

transformers = pytest.importorskip("transformers")

MONITOR = ["entropy/mean", "entropy/surprisal", "prob/top1_mean", "cov/logp_adv"]


def _config(model_dir: Path, out: Path, engine: str, **extra: object) -> Any:
    base: dict[str, object] = {
        "model.path": str(model_dir), "run.out_dir": str(out), "run.steps": 2,
        "run.progress": False, "run.save_every": 0, "rollout.prompts_per_step": 4,
        "rollout.group_size": 4, "algo.micro_batch_size": 8, "algo.warmup_steps": 1,
        "algo.lr": 1e-3, "eval.every": 0, "rollout.engine": engine,
    }  # fmt: skip
    base.update(extra)
    overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in base.items()]
    return build_config(preset="grpo", overrides=overrides)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Wrap the trainer's record_old_logprobs: note whether it ran the policy's forward, and
    compute the forward's answer on the same batch for comparison."""
    calls: list[dict[str, Any]] = []
    orig = trainer_mod.record_old_logprobs

    def spy(model: Any, ref_model: Any, batch: Any, s: Any, **kw: Any) -> dict[str, Any]:
        out = orig(model, ref_model, batch, s, **kw)
        calls.append({"from_sampler": kw.get("from_sampler", False), "out": out,
                      "forward": orig(model, ref_model, batch, s),
                      "seen": batch.targets != -1})  # fmt: skip
        return out

    monkeypatch.setattr(trainer_mod, "record_old_logprobs", spy)
    return calls


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("engine", "kv_kl"), [("kv", 0.0), ("hf", 0.0), ("auto", 0.05)])
def test_trainer_steps_with_each_engine(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str,
    kv_kl: float,
) -> None:  # fmt: skip
    calls = _spy(monkeypatch)
    cfg = _config(tiny_model_dir, tmp_path / "run", engine, **{"algo.kl_coef": kv_kl})
    trainer = trainer_mod.Trainer(cfg)
    fast = engine != "hf"  # auto picks kv for the float32 tiny Qwen2
    assert isinstance(trainer.engine, KVCacheEngine if fast else HFGenerateEngine)
    trainer.fit()
    assert [c["from_sampler"] for c in calls] == [fast, fast]  # no pi_old forward with kv
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for key in MONITOR:
        assert key in rows[-1], key
    assert not any(k.startswith(("tis/", "mismatch/")) for k in rows[-1])  # no TIS either way
    first = calls[0]
    seen = first["seen"]
    assert first["out"].keys() == first["forward"].keys()
    assert ("ref_logprobs" in first["out"]) == (kv_kl > 0)
    for k, v in first["forward"].items():  # the sampler's pi_old is the forward's, to 1e-5
        assert first["out"][k].shape == v.shape
        torch.testing.assert_close(first["out"][k][seen], v[seen], atol=1e-5, rtol=0)


def test_engine_kv_on_an_unsupported_model_fails_at_construction(tmp_path: Path) -> None:
    from entropy_rl.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2,
                                bos_token_id=1, eos_token_id=2)
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"rollout.engine=kv: .*model_type='gpt2'"):
        trainer_mod.Trainer(_config(Path("unused"), tmp_path / "a", "kv"), model=gpt2,
                            tokenizer=tok)  # fmt: skip
    trainer = trainer_mod.Trainer(_config(Path("unused"), tmp_path / "b", "auto"), model=gpt2,
                                  tokenizer=tok)  # fmt: skip
    assert isinstance(trainer.engine, HFGenerateEngine)


@pytest.mark.parametrize(
    ("engine", "extra", "policy_forward"),
    [
        ("kv", {"model.dtype": "bfloat16"}, False),  # bf16 sampler, 1 x 1: the update's forward
        ("hf", {}, False),  # generate reports no statistics: the update's forward too
        ("kv", {"model.dtype": "bfloat16", "algo.ppo_epochs": 2}, True),  # off-policy: needed
        ("hf", {"algo.ppo_epochs": 2}, True),
        ("kv", {}, False),  # float32 KV engine: the sampler's statistics are pi_old's
        ("hf", {"algo.kl_coef": 0.05}, False),  # KL in the loss: pi_ref's forward alone
        ("hf", {"algo.kl_coef": 0.05, "algo.kl_in": "reward"}, True),  # needs pi_old first
    ],
)
def test_one_epoch_of_one_mini_batch_runs_no_pi_old_forward(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str,
    extra: dict[str, object], policy_forward: bool,
) -> None:  # fmt: skip
    """update.pi_old_from_update: at 1 epoch x 1 mini-batch pi_old is the update's own forward,
    so record_old_logprobs runs no policy forward, and the monitor's metrics still come (from
    the update's forward) on every step; the bf16 KV engine's mismatch is measured against it."""
    ran: list[bool] = []
    orig = trainer_mod.record_old_logprobs

    def spy(model: Any, ref_model: Any, batch: Any, s: Any, **kw: Any) -> dict[str, Any]:
        calls = [0]  # the policy's decoder runs in its forward, fused head or full logits

        def count(*_: Any) -> None:
            calls[0] += 1

        hook = model.get_decoder().register_forward_pre_hook(count)
        try:
            out = orig(model, ref_model, batch, s, **kw)
        finally:
            hook.remove()
        ran.append(calls[0] > 0)
        return out

    monkeypatch.setattr(trainer_mod, "record_old_logprobs", spy)
    one = {"algo.ppo_epochs": 1, "algo.mini_batches": 1}
    cfg = _config(tiny_model_dir, tmp_path / "run", engine, **(one | extra))
    on_policy = cfg.algo.ppo_epochs == 1
    with pytest.warns(UserWarning, match="on-policy") if on_policy else contextlib.nullcontext():
        trainer_mod.Trainer(cfg).fit()
    assert ran == [policy_forward, policy_forward]
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in MONITOR:
            assert torch.isfinite(torch.tensor(r[key])), key
        assert 0.0 < r["entropy/mean"] < 6.0 and 0.0 < r["prob/top1_mean"] <= 1.0
    assert ("mismatch/k3" in rows[-1]) == (extra.get("model.dtype") == "bfloat16")
    if extra.get("algo.kl_in") is None and "algo.kl_coef" in extra:  # the loss's KL term ran
        assert rows[-1]["kl/ref"] > 0.0
