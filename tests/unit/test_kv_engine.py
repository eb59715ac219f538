"""engine.kv.KVCacheEngine against the model's own forward, HF generate and the trainer's
pi_old statistics; inverse_cdf_sample against its probabilities (chi-square)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import torch

from entropy_rl.engine.base import Generation
from entropy_rl.engine.hf import HFGenerateEngine
from entropy_rl.engine.kv import (
    KVCacheEngine,
    inverse_cdf_sample,
    resolve_engine,
    supports_kv_engine,
)
from entropy_rl.tasks.model import build_tiny_model
from entropy_rl.train.batch import RolloutBatch, build_batch, policy_token_stats
from entropy_rl.train.update import UpdateSettings, record_old_logprobs, sampler_is_pi_old

transformers = pytest.importorskip("transformers")

PAD, EOS = 0, 2


def _scramble(model: Any, seed: int) -> Any:
    """Weights large enough that argmax and samples vary (a fresh init is near uniform), with
    non-trivial norm weights and biases so that every term of the forward is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 1.5 / math.sqrt(p.shape[1]))
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _qwen2(vocab: int = 19) -> Any:
    hidden = 32 if vocab < 1000 else 16  # the 32k case stays small: 32768 x 16 embedding
    return _scramble(
        build_tiny_model(vocab, layers=2, hidden=hidden, heads=4, kv_heads=2, mlp=48, seed=0),
        seed=1,
    )


def _llama() -> Any:
    """Biases on q/k/v/o and the MLP, llama3 RoPE, an untied head."""
    cfg = transformers.LlamaConfig(
        vocab_size=23,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        max_position_embeddings=64,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    )
    torch.manual_seed(0)
    return _scramble(transformers.LlamaForCausalLM(cfg), seed=2)


def _qwen3() -> Any:
    """Per-head q/k RMSNorm, head_dim (16) != hidden / heads (8)."""
    cfg = transformers.Qwen3Config(
        vocab_size=23,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return _scramble(transformers.Qwen3ForCausalLM(cfg), seed=3)


MODELS = {"qwen2": _qwen2, "qwen2-32k": lambda: _qwen2(32768), "llama": _llama, "qwen3": _qwen3}


def _prompts(vocab: int, n: int = 5, seed: int = 0) -> list[list[int]]:
    """Prompts of 1..8 tokens (ids >= 3: no pad/bos/eos), so left padding differs per row."""
    rng = random.Random(seed)
    lengths = [1, 8, 3, 5, 2, 7][:n]
    return [[rng.randrange(3, vocab) for _ in range(k)] for k in lengths]


def _engine(model: Any, **kw: Any) -> KVCacheEngine:
    return KVCacheEngine(model, pad_token_id=PAD, eos_token_id=EOS, **kw)


def _batch_of(gen: Generation) -> RolloutBatch:
    """The trainer's batch of a generation, with the sampler's statistics, zero rewards."""
    b = len(gen)
    return build_batch(
        gen.prompt_ids,
        gen.completion_ids,
        rewards=torch.zeros(b),
        advantages=torch.zeros(b),
        pad_token_id=PAD,
        sampler_logprobs=gen.sampler_logprobs,
        sampler_entropy=gen.sampler_entropy,
        sampler_top1=gen.sampler_top1,
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_next_token_logits_match_the_model_forward_on_left_padded_prompts(name: str):
    model = MODELS[name]()
    eng = _engine(model)
    prompts = _prompts(model.config.vocab_size)
    ids, att = eng._left_pad(prompts, 1, "cpu")  # (5, 8), rows padded by 7, 0, 5, 3, 6
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=att).logits[:, -1]  # (B, V)
    got = eng.logits_last(ids, att)
    assert got.shape == ref.shape
    assert ref.std() > 0.5  # the scrambled weights give spread-out logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def _fields(gen: Any) -> tuple[Any, ...]:
    return gen.prompt_ids, gen.completion_ids, gen.truncated


@pytest.mark.parametrize("name", ["qwen2", "qwen2-32k", "llama", "qwen3"])
def test_greedy_sequences_equal_hf_generate(name: str):
    model = MODELS[name]()
    prompts = _prompts(model.config.vocab_size)
    kw: dict[str, Any] = {"n": 1, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 10}
    ref = HFGenerateEngine(model, pad_token_id=PAD, eos_token_id=EOS).generate(
        prompts, greedy=True, **kw
    )
    mine = _engine(model).generate(prompts, greedy=True, **kw)
    assert _fields(mine) == _fields(ref)
    assert len({tuple(c) for c in mine.completion_ids}) > 1  # not one repeated sequence
    assert mine.sampler_logprobs is None and mine.sampler_entropy is None  # greedy: no stats


def test_eos_truncation_and_prompt_major_order_match_hf_generate():
    """The trained addition checkpoint ends its answers with EOS; at a temperature of 1e-4
    sampling is greedy, so n samples per prompt, the cut at EOS, truncation at max_new_tokens
    and the prompt-major row order can be compared row for row with HFGenerateEngine."""
    from entropy_rl.tasks.pretrain import builtin_checkpoint
    from entropy_rl.tasks.tokenizer import load_tokenizer

    path = builtin_checkpoint("addition")
    tok = load_tokenizer(str(path))
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = [list(tok(p)["input_ids"]) for p in ("12+7=", "305+41=", "3+3=")]
    for max_new, top_p, batch_size in ((12, 1.0, 256), (2, 1.0, 256), (12, 0.5, 4)):
        kw: dict[str, Any] = {
            "n": 3,
            "temperature": 1e-4,
            "top_p": top_p,
            "max_new_tokens": max_new,
        }
        ids: dict[str, Any] = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
        ref = HFGenerateEngine(model, **ids, batch_size=batch_size).generate(prompts, **kw)
        mine = KVCacheEngine(model, **ids, batch_size=batch_size).generate(prompts, **kw)
        assert _fields(mine) == _fields(ref), (max_new, top_p)
        assert mine.prompt_ids == [p for p in prompts for _ in range(3)]  # row i*n + j
        if max_new == 12:  # answers fit: every row ends with EOS
            assert not any(mine.truncated)
            assert all(c[-1] == tok.eos_token_id for c in mine.completion_ids)
        else:  # cut at 2 tokens, before EOS
            assert all(mine.truncated) and all(len(c) == 2 for c in mine.completion_ids)
        if top_p < 1:  # the nucleus changes the sampling distribution: no statistics
            assert mine.sampler_logprobs is None and mine.sampler_top1 is None
        else:
            assert mine.sampler_entropy is not None
            assert [len(r) for r in mine.sampler_entropy] == [len(c) for c in mine.completion_ids]


def _settings(temperature: float, mode: str) -> UpdateSettings:
    return UpdateSettings(
        loss="ppo",
        loss_kwargs={},
        agg="token-mean",
        epochs=1,
        mini_batches=1,
        micro_batch_size=4,
        temperature=temperature,
        grad_clip=1.0,
        entropy_coef=0.0,
        kl_coef=0.0,
        kl_kind="k3",
        kl_in_loss=True,
        logits_mode=mode,
        chunk_size=64,
        max_len=8,
    )


@pytest.mark.parametrize(
    ("name", "temperature", "mode"),
    [
        ("qwen2", 1.0, "full"),
        ("qwen2", 0.7, "full"),
        ("qwen2-32k", 1.0, "fused"),
        ("llama", 1.3, "full"),
    ],
)
def test_sampler_statistics_equal_the_trainers_pi_old(name: str, temperature: float, mode: str):
    """log pi(token), entropy and top-1 of softmax(z / T) at every sampled token, against
    policy_token_stats on the same sequences (the pi_old forward the trainer then skips)."""
    model = MODELS[name]()
    torch.manual_seed(0)
    gen = _engine(model).generate(
        _prompts(model.config.vocab_size),
        n=3,
        temperature=temperature,
        top_p=1.0,
        max_new_tokens=8,
    )
    assert gen.sampler_logprobs and gen.sampler_entropy and gen.sampler_top1
    b = len(gen)
    batch = _batch_of(gen)
    with torch.no_grad():
        lp, ent, top1 = policy_token_stats(
            model, batch, temperature=temperature, mode=mode, chunk_size=64, with_top1=True
        )
    assert top1 is not None
    seen = batch.targets != -1  # (B, T)
    assert seen.sum() > 2 * b  # several tokens per row are compared
    for mine, ref in (
        (batch.sampler_logprobs, lp),
        (batch.sampler_entropy, ent),
        (batch.sampler_top1, top1),
    ):
        assert mine is not None
        torch.testing.assert_close(mine[seen], ref[seen], atol=1e-5, rtol=0)
    # the trainer's record_old_logprobs gives the same dict either way, with no policy forward
    s = _settings(temperature, mode)
    forward = record_old_logprobs(model, None, batch, s)
    assert sampler_is_pi_old(_engine(model), batch)
    sampled = record_old_logprobs(None, None, batch, s, from_sampler=True)  # model unused
    assert sampled.keys() == forward.keys() == {"logprobs", "entropy", "top1"}
    for k in forward:
        assert sampled[k].shape == forward[k].shape == seen.shape
        torch.testing.assert_close(sampled[k][seen], forward[k][seen], atol=1e-5, rtol=0)


def test_reference_forward_still_runs_with_sampler_statistics():
    model, ref_model = _qwen2(), _scramble(build_tiny_model(19, layers=1, hidden=32), seed=5)
    torch.manual_seed(1)
    gen = _engine(model).generate(_prompts(19), n=2, temperature=1.0, top_p=1.0, max_new_tokens=5)
    batch = _batch_of(gen)
    s = _settings(1.0, "full")
    full = record_old_logprobs(model, ref_model, batch, s)
    fast = record_old_logprobs(None, ref_model, batch, s, from_sampler=True)
    assert fast.keys() == full.keys() == {"logprobs", "entropy", "top1", "ref_logprobs"}
    torch.testing.assert_close(fast["ref_logprobs"], full["ref_logprobs"], atol=0, rtol=0)
    seen = batch.targets != -1
    assert (full["ref_logprobs"][seen] - full["logprobs"][seen]).abs().max() > 0.1  # distinct
    batch.sampler_top1 = None  # one statistic missing: no shortcut, and asking for it fails
    assert not sampler_is_pi_old(_engine(model), batch)
    with pytest.raises(ValueError, match="sampler_top1"):
        record_old_logprobs(None, None, batch, s, from_sampler=True)


def test_build_batch_pads_sampler_statistics_and_rows_cut_them():
    b = build_batch(
        [[5, 6], [7]],
        [[3, 2], [4, 4, 2]],
        rewards=torch.zeros(2),
        advantages=torch.zeros(2),
        pad_token_id=0,
        sampler_logprobs=[[-1.0, -2.0], [-3.0, -4.0, -5.0]],
        sampler_entropy=[[0.5, 0.25], [1.0, 2.0, 3.0]],
        sampler_top1=[[0.9, 0.8], [0.7, 0.6, 0.5]],
    )
    assert b.sampler_entropy is not None and b.sampler_top1 is not None
    assert b.sampler_entropy.tolist() == [[0.5, 0.25, 0.0], [1.0, 2.0, 3.0]]  # (B, T=3)
    assert b.sampler_top1[0].tolist() == pytest.approx([0.9, 0.8, 0.0])
    row0 = b.rows(torch.tensor([0]))  # trimmed to its own 2 completion tokens
    assert row0.sampler_entropy is not None and row0.sampler_top1 is not None
    assert row0.sampler_entropy.tolist() == [[0.5, 0.25]]
    assert row0.sampler_top1.shape == (1, 2)


def test_dynamic_sampling_selection_carries_sampler_statistics():
    from entropy_rl.train.rollout import Samples, _concat, _select_groups

    def rows(tag: float) -> list[list[float]]:
        return [[tag + i] for i in range(4)]

    s = Samples(
        examples=["a", "b"],
        prompt_ids=[[1]] * 4,
        completion_ids=[[2]] * 4,  # type: ignore[list-item]
        texts=["x"] * 4,
        truncated=[False] * 4,
        sampler_logprobs=rows(0.0),
        sampler_entropy=rows(10.0),
        sampler_top1=rows(20.0),
        correct=[0.0] * 4,
        rewards=[0.0, 1.0, 0.0, 1.0],
        reward_terms=[{"r": float(i)} for i in range(4)],
    )
    kept = _concat([_select_groups(s, [1], 2)])  # group 1 = rows 2, 3
    assert kept.examples == ["b"] and kept.reward_terms == [{"r": 2.0}, {"r": 3.0}]
    assert kept.sampler_logprobs == [[2.0], [3.0]]
    assert kept.sampler_entropy == [[12.0], [13.0]]
    assert kept.sampler_top1 == [[22.0], [23.0]]


def _wilson_hilferty(dof: int, z: float) -> float:
    """Chi-square quantile for a normal quantile z (Wilson-Hilferty; within ~0.1% at dof >= 50)."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


@pytest.mark.parametrize(("vocab", "block"), [(600, 256), (100, 16)])
def test_inverse_cdf_sample_matches_the_probabilities_chi_square(vocab: int, block: int):
    """Pearson chi^2 of 40,000 draws against p (>= ~10 expected per cell), with zero-mass
    entries (one whole block) that must never be drawn. Threshold: the 99.9% quantile of
    chi^2(dof) (z = 3.09). The same counts scored against a slightly wrong p (each p_i times
    1 +- 0.2, renormalised) must exceed it, so the test can fail."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(0.5 * torch.randn(vocab, generator=g), -1)  # min p ~ e^-1.5 / V
    zero = torch.zeros(vocab, dtype=torch.bool)
    zero[block : 2 * block] = True  # the second block has no mass
    zero[7] = True
    p = p.masked_fill(zero, 0.0)
    p = p / p.sum()
    n, rows = 40_000, 10_000
    torch.manual_seed(0)
    counts = sum(
        torch.bincount(
            inverse_cdf_sample(p.expand(rows, -1).contiguous(), block=block), minlength=vocab
        )
        for _ in range(n // rows)
    )
    assert isinstance(counts, torch.Tensor) and int(counts.sum()) == n
    assert int(counts[zero].sum()) == 0
    live = ~zero
    expected = n * p[live].double()
    assert float(expected.min()) >= 10.0
    dof = int(live.sum()) - 1
    limit = _wilson_hilferty(dof, 3.09)
    chi2 = float(((counts[live].double() - expected) ** 2 / expected).sum())
    assert chi2 < limit, (chi2, limit)
    wrong = p[live].double() * (1 + 0.2 * torch.where(torch.arange(dof + 1) % 2 == 0, 1.0, -1.0))
    wrong = n * wrong / wrong.sum()
    assert float(((counts[live].double() - wrong) ** 2 / wrong).sum()) > limit


def test_inverse_cdf_sample_rejects_a_non_matrix():
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        inverse_cdf_sample(torch.ones(5))


def test_unsupported_models_raise_naming_what_and_the_hf_engine():
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=23, n_embd=16, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2
        )
    )
    sliding = transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            vocab_size=23,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=0,
        )
    )
    gelu = build_tiny_model(19, layers=1, hidden=16, heads=2, kv_heads=1, mlp=32)
    gelu.config.hidden_act = "gelu"
    for model, what in (
        (gpt2, "model_type='gpt2'"),
        (sliding, "sliding-window"),
        (gelu, "hidden_act='gelu'"),
    ):
        assert not supports_kv_engine(model)
        assert resolve_engine("auto", model) == "hf"
        with pytest.raises(ValueError, match=what) as err:
            _engine(model)
        assert "rollout.engine=hf" in str(err.value)


def test_auto_picks_kv_only_for_supported_float32_models():
    model = build_tiny_model(19, layers=1, hidden=16, heads=2, kv_heads=1, mlp=32)
    assert supports_kv_engine(model) and resolve_engine("auto", model) == "kv"
    assert _engine(model).exact_logprobs
    assert resolve_engine("hf", model) == "hf" and resolve_engine("vllm", model) == "vllm"
    half = model.to(torch.bfloat16)  # supported, but a bf16 sampler is not pi_old exactly
    assert supports_kv_engine(half) and resolve_engine("auto", half) == "hf"
    assert not _engine(half).exact_logprobs
    assert not HFGenerateEngine(half, pad_token_id=PAD, eos_token_id=EOS).exact_logprobs


def test_sampling_is_reproducible_under_the_global_seed():
    model = _qwen2()
    kw: dict[str, Any] = {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6}
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(_engine(model).generate(_prompts(19), **kw))
    assert runs[0] == runs[1]
    torch.manual_seed(124)
    assert _engine(model).generate(_prompts(19), **kw).completion_ids != runs[0].completion_ids


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_shared_prefill_samples_what_repeated_prompts_sample(name: str):
    """The prompt's forward once, its cache copied to its n samples, draws the same tokens
    with the same statistics as repeating each prompt n times before the forward."""
    model = MODELS[name]()
    prompts = _prompts(model.config.vocab_size)
    kw: dict[str, Any] = {"n": 3, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8}
    gens = []
    for share in (True, False):
        torch.manual_seed(7)
        gens.append(_engine(model, share_prefill=share).generate(prompts, **kw))
    shared, repeated = gens
    assert _fields(shared) == _fields(repeated)
    assert len(shared.completion_ids) == 3 * len(prompts)
    for a, b in zip(shared.sampler_logprobs or [], repeated.sampler_logprobs or [], strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    for a, b in zip(shared.sampler_entropy or [], repeated.sampler_entropy or [], strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_compacting_finished_rows_keeps_every_rows_statistics_exact(name: str):
    """Rows that stopped are dropped from the decoding batch (compact_finished): each kept
    row's cache is carried over, so every sampled token's statistics still equal the policy's
    teacher-forced forward, and completions still end at EOS or the budget."""
    model = MODELS[name]()
    torch.manual_seed(3)
    eng = _engine(model, compact_finished=True)
    rows_per_forward: list[int] = []
    forward = eng._forward

    def spy(ids: torch.Tensor, *args: Any) -> torch.Tensor:
        rows_per_forward.append(ids.shape[0])
        return forward(ids, *args)

    eng._forward = spy  # type: ignore[method-assign]
    gen = eng.generate(
        _prompts(model.config.vocab_size), n=4, temperature=1.0, top_p=1.0, max_new_tokens=10
    )
    assert rows_per_forward[:2] == [5, 20], rows_per_forward  # prefill of 5 prompts, 20 rows
    assert min(rows_per_forward[2:]) < 20  # the batch shrank
    lengths = [len(c) for c in gen.completion_ids]
    assert min(lengths) < 5 and max(lengths) == 10  # rows stopped early while others went on
    assert all(
        c[-1] == EOS for c, t in zip(gen.completion_ids, gen.truncated, strict=True) if not t
    )
    batch = _batch_of(gen)
    with torch.no_grad():
        lp, ent, top1 = policy_token_stats(
            model, batch, temperature=1.0, mode="full", with_top1=True
        )
    assert top1 is not None
    seen = batch.targets != -1
    for mine, ref in ((batch.sampler_logprobs, lp), (batch.sampler_entropy, ent),
                      (batch.sampler_top1, top1)):  # fmt: skip
        assert mine is not None
        torch.testing.assert_close(mine[seen], ref[seen], atol=1e-5, rtol=0)


def test_compaction_changes_nothing_when_no_row_stops_early():
    """Without an EOS draw every row runs to the budget: the same uniforms reach the same rows,
    so both settings sample the same tokens with the same statistics."""
    model = _qwen2()
    gens = []
    for compact in (True, False):
        torch.manual_seed(11)
        eng = KVCacheEngine(model, pad_token_id=PAD, eos_token_id=[-1], compact_finished=compact)
        gens.append(eng.generate(_prompts(19), n=3, temperature=1.0, top_p=1.0, max_new_tokens=7))
    assert _fields(gens[0]) == _fields(gens[1])
    assert {len(c) for c in gens[0].completion_ids} == {7}
    assert gens[0].sampler_logprobs == gens[1].sampler_logprobs
