"""train.precision: float32 master weights, autocast forwards, float16 loss scaling, and what
the rollout engines do under mixed precision."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch

from entropy_rl.engine.hf import HFGenerateEngine
from entropy_rl.engine.kv import KVCacheEngine
from entropy_rl.tasks.model import build_tiny_model
from entropy_rl.train.batch import build_batch, policy_token_stats
from entropy_rl.train.precision import LossScaler, autocast, compute_dtype, to_master_weights
from entropy_rl.train.update import UpdateSettings, ppo_update, sampler_is_pi_old

pytest.importorskip("transformers")

PAD, EOS = 0, 2
BF16_EPS = 2.0**-8  # bfloat16's relative spacing: 8 significant bits


def _model(seed: int = 0) -> Any:
    """A 2-layer Qwen2 (tied embeddings) with weights large enough for spread-out logits."""
    model = build_tiny_model(19, layers=2, hidden=32, heads=4, kv_heads=2, mlp=48, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 1.5 / math.sqrt(p.shape[1]))
    return model.eval()


def _batch(seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 19, (k,), generator=g).tolist() for k in (3, 5, 2, 4)]
    comps = [[*torch.randint(3, 19, (k,), generator=g).tolist(), EOS] for k in (4, 1, 6, 3)]
    return build_batch(prompts, comps, rewards=torch.tensor([1.0, 0.0, 1.0, 0.0]),
                       advantages=torch.tensor([1.0, -1.0, 1.0, -1.0]), pad_token_id=PAD)  # fmt: skip


def _settings(**kw: Any) -> UpdateSettings:
    base: dict[str, Any] = dict(
        loss="ppo", loss_kwargs={}, agg="token-mean", epochs=1, mini_batches=1,
        micro_batch_size=4, temperature=1.0, grad_clip=1.0, entropy_coef=0.0, kl_coef=0.0,
        kl_kind="k3", kl_in_loss=True, logits_mode="fused", chunk_size=64, max_len=8,
    )  # fmt: skip
    return UpdateSettings(**(base | kw))


def test_compute_dtype_and_autocast_context():
    assert compute_dtype("float32") is None
    assert compute_dtype("bfloat16") == torch.bfloat16
    assert compute_dtype("float16") == torch.float16
    a, b = torch.ones(2, 2), torch.ones(2, 2)
    with autocast("cpu", torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu", None):
        assert (a @ b).dtype == torch.float32
    with autocast(torch.device("cpu"), torch.float32):
        assert (a @ b).dtype == torch.float32


def test_loss_scaler_rule_by_hand():
    s = LossScaler(scale=8.0, growth_interval=2)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([2.0, 4.0])
    s.unscale_([p])
    assert p.grad.tolist() == [0.25, 0.5]  # 2 / 8, 4 / 8
    s.update(overflow=True)  # 8 * 0.5
    assert (s.scale, s.good_steps) == (4.0, 0)
    s.update(overflow=False)
    assert (s.scale, s.good_steps) == (4.0, 1)
    s.update(overflow=False)  # 2 good steps in a row: 4 * 2
    assert (s.scale, s.good_steps) == (8.0, 0)
    other = LossScaler()
    other.load_state_dict(s.state_dict())
    assert (other.scale, other.good_steps) == (8.0, 0)


def test_master_weights_cast_in_place_and_keep_ties():
    model = _model().to(torch.bfloat16)
    n_params = len(list(model.named_parameters()))
    cast = to_master_weights(model)
    assert len(cast) == n_params  # every parameter was bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert to_master_weights(model) == []  # already float32: nothing to do


@pytest.mark.parametrize("mode", ["fused", "full"])
def test_token_stats_under_autocast_are_bf16_close_and_differentiable(mode: str):
    model, batch = _model(), _batch()
    seen = batch.targets != -1
    with torch.no_grad():
        ref, ref_h, _ = policy_token_stats(model, batch, temperature=1.0, mode=mode)
    lp, ent, _ = policy_token_stats(model, batch, temperature=1.0, mode=mode,
                                    autocast=torch.bfloat16)  # fmt: skip
    assert lp.dtype == ent.dtype == torch.float32
    err = (lp - ref)[seen].abs().max()
    # the forward ran in bfloat16 (it differs from float32), within a few bf16 spacings of
    # logits of size ~5 (each log-prob is a difference of two such numbers)
    assert 0 < err < 64 * BF16_EPS, err
    assert (ent - ref_h)[seen].abs().max() < 64 * BF16_EPS
    (lp[seen].sum() + ent[seen].sum()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)


def test_kv_engine_samples_from_a_bf16_copy_and_is_not_pi_old():
    model = _model()
    eng = KVCacheEngine(model, pad_token_id=PAD, eos_token_id=EOS, compute_dtype=torch.bfloat16)
    assert not eng.exact_logprobs  # bf16 compute: close to pi_old, not pi_old
    w = eng._fuse()
    assert w.embed.dtype == w.head_w.dtype == w.layers[0].w_qkv.dtype == torch.bfloat16
    assert w.embed.data_ptr() == w.head_w.data_ptr()  # tied: one bf16 copy
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # masters untouched
    ids, att = eng._left_pad([[5, 6, 7], [8, 9, 10, 11, 12]], 1, "cpu")
    with torch.no_grad(), autocast("cpu", torch.bfloat16):
        ref16 = model(input_ids=ids, attention_mask=att).logits[:, -1].float()
    with torch.no_grad():
        ref32 = model(input_ids=ids, attention_mask=att).logits[:, -1]
    got = eng.logits_last(ids, att).float()
    scale = ref32.abs().max()
    assert 0 < (got - ref32).abs().max() < 16 * BF16_EPS * scale  # bf16 compute, close
    assert (got - ref16).abs().max() < 16 * BF16_EPS * scale  # as close as HF under autocast
    fp32 = KVCacheEngine(model, pad_token_id=PAD, eos_token_id=EOS)
    assert fp32.exact_logprobs
    gen = fp32.generate([[5, 6, 7]], n=2, temperature=1.0, top_p=1.0, max_new_tokens=3)
    batch = build_batch(gen.prompt_ids, gen.completion_ids, rewards=torch.zeros(2),
                        advantages=torch.zeros(2), pad_token_id=PAD,
                        sampler_logprobs=gen.sampler_logprobs, sampler_entropy=gen.sampler_entropy,
                        sampler_top1=gen.sampler_top1)  # fmt: skip
    assert sampler_is_pi_old(fp32, batch)
    assert sampler_is_pi_old(fp32, batch, autocast=torch.float32)
    # an fp32 sampler is not the pi_old of an update that computes in bf16
    assert not sampler_is_pi_old(fp32, batch, autocast=torch.bfloat16)


def test_hf_engine_generates_under_autocast():
    model = _model()
    seen: list[torch.dtype] = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype)
    )
    kw: dict[str, Any] = {"n": 1, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 2}
    HFGenerateEngine(model, pad_token_id=PAD, eos_token_id=EOS).generate([[5, 6]], **kw)
    assert set(seen) == {torch.float32}
    seen.clear()
    HFGenerateEngine(model, pad_token_id=PAD, eos_token_id=EOS, compute_dtype=torch.bfloat16
                     ).generate([[5, 6]], **kw)  # fmt: skip
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}


def _update(model: Any, scaler: LossScaler | None, autocast_dtype: Any) -> dict[str, float]:
    batch = _batch()
    with torch.no_grad():
        batch.old_logprobs = policy_token_stats(model, batch, temperature=1.0)[0].detach()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    metrics, bad = ppo_update(model, opt, batch, _settings(autocast=autocast_dtype),
                              generator=torch.Generator().manual_seed(0), scaler=scaler)  # fmt: skip
    assert bad == 0
    return metrics


def test_loss_scaling_scales_and_unscales_the_gradients_exactly():
    """Backward is linear in the upstream gradient, and multiplying by a power of two commutes
    with rounding (no overflow or underflow at these magnitudes): with S = 2^10 in float32
    compute, the unscaled gradients and so the updated weights are bitwise those without."""
    plain, scaled = _model(), _model()
    _update(plain, None, None)
    m = _update(scaled, LossScaler(scale=2.0**10), None)
    assert (m["update/loss_scale"], m["update/overflow_steps"]) == (2.0**10, 0.0)
    assert m["update/optimizer_steps"] == 1.0
    for a, b in zip(plain.parameters(), scaled.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(_model().parameters(), plain.parameters(),
                                                      strict=True))  # fmt: skip


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    scaler = LossScaler(scale=1e38)  # scaled float32 gradients overflow to inf
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "non-finite ... skipped" warning
        m = _update(model, scaler, torch.float16)
    assert m["update/optimizer_steps"] == 0.0 and m["update/overflow_steps"] == 1.0
    assert m["update/bad_steps"] == 0.0  # an overflow is not a bad step
    assert scaler.scale == 5e37  # 1e38 * 0.5
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)  # skipped: no weight moved
