"""The shared-prompt layout (train.shared_prompt) gives the plain layout's log-probs, entropies
and gradients: five architectures, both head paths, uneven prompts, stop tokens, one-token
completions, micro-batches that split a group, pi_old / pi_ref, the entropy-change passes and
a whole PPO update."""

from __future__ import annotations

import copy
import functools
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from entropy_rl.train.batch import RolloutBatch, build_batch, policy_token_stats
from entropy_rl.train.forecast import capture_head_inputs, same_batch_entropy_change
from entropy_rl.train.shared_prompt import (
    SharedPromptLayout,
    length_buckets,
    resolve_shared_prompt,
    shared_prompt_unsupported,
)
from entropy_rl.train.update import UpdateSettings, by_length, ppo_update, record_old_logprobs

transformers = pytest.importorskip("transformers")

V, EOS = 29, 2


def _scramble(model: Any) -> Any:
    """Weights large enough that the distributions are far from uniform (a fresh init is near
    uniform, where every layout agrees trivially)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 1.5 / math.sqrt(p.shape[1]))
    return model.eval()


def _model(kind: str) -> Any:
    torch.manual_seed(0)
    common = {"vocab_size": V, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}  # fmt: skip
    if kind == "llama":  # biases everywhere, untied head
        cfg: Any = transformers.LlamaConfig(attention_bias=True, mlp_bias=True,
                                            tie_word_embeddings=False, **common)  # fmt: skip
        return _scramble(transformers.LlamaForCausalLM(cfg))
    if kind == "mistral":
        return _scramble(transformers.MistralForCausalLM(transformers.MistralConfig(**common)))
    if kind == "qwen2":
        return _scramble(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)))
    if kind == "qwen3":  # per-head q/k norm, head_dim != hidden / heads
        cfg = transformers.Qwen3Config(head_dim=16, **common)
        return _scramble(transformers.Qwen3ForCausalLM(cfg))
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=1, eos_token_id=EOS)  # fmt: skip
    return _scramble(transformers.GPT2LMHeadModel(cfg))  # absolute positions


def _batch(seed: int = 1, group: int = 3, one_token: bool = False) -> RolloutBatch:
    """Three prompts of 3, 6 and 2 tokens, ``group`` completions each of 1-6 tokens, some ended
    by EOS (a stop token inside the loss), GRPO-like advantages, old log-probs off-policy."""
    g = torch.Generator().manual_seed(seed)
    prompts, comps = [], []
    for p in ([3, 4, 5], [6, 7, 8, 9, 10, 11], [12, 13]):
        for _ in range(group):
            n = 1 if one_token else int(torch.randint(1, 7, (1,), generator=g))
            c = torch.randint(3, V, (n,), generator=g).tolist()
            if n > 2 and torch.rand(1, generator=g) < 0.5:
                c[-1] = EOS
            prompts.append(p)
            comps.append(c)
    adv = torch.randn(len(prompts), generator=g)
    b = build_batch(prompts, comps, rewards=adv.clone(), advantages=adv, pad_token_id=0)
    b.old_logprobs = -2.0 + 0.5 * torch.randn(b.targets.shape, generator=g)
    return b


def _stats_and_grads(model: Any, b: RolloutBatch, mode: str, shared: bool) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    lp, ent, top1 = policy_token_stats(model, b, temperature=0.8, mode=mode, chunk_size=5,
                                       with_top1=True, skip_pad_mask=True, shared_prompt=shared)  # fmt: skip
    assert top1 is not None
    ((lp * b.mask).sum() + 0.3 * (ent * b.mask).sum()).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return [lp * b.mask, ent * b.mask, top1 * b.mask, grads]


# ---------------------------------------------------------------------------------- layout
def test_layout_hand_case() -> None:
    # rows: prompt [5, 6] + [9, 10, 2]; prompt [7] + [11]; prompt [5, 6] + [12, 13]
    b = build_batch([[5, 6], [7], [5, 6]], [[9, 10, 2], [11], [12, 13]],
                    rewards=torch.zeros(3), advantages=torch.zeros(3), pad_token_id=0)  # fmt: skip
    lay = SharedPromptLayout.of(b)
    assert lay.prompt_ids_P_Tp.tolist() == [[5, 6], [0, 7]]  # left-padded, first-seen order
    assert lay.prompt_mask_P_Tp.tolist() == [[1, 1], [0, 1]]
    assert lay.prompt_of_B.tolist() == [0, 1, 0]
    assert lay.prompt_lens_B.tolist() == [2, 1, 2]
    # the completion pass reads tokens 0 .. T-2 (T = 3); -1 padding becomes token 0
    assert lay.completion_ids_B_Tc.tolist() == [[9, 10], [11, 0], [12, 13]]
    assert lay.completion_lens_B.tolist() == [3, 1, 2]
    assert lay.shares
    assert not SharedPromptLayout.of(b.rows(torch.tensor([0, 1]))).shares


def test_by_prompt_keeps_a_prompts_rows_together() -> None:
    # prompts A=[5,6] (rows 0, 2, 4), B=[7] (rows 1, 3); row lengths 5, 2, 3, 4, 4
    b = build_batch([[5, 6], [7], [5, 6], [7], [5, 6]], [[9, 9, 9], [9], [9], [9, 9, 9], [9, 9]],
                    rewards=torch.zeros(5), advantages=torch.zeros(5), pad_token_id=0)  # fmt: skip
    idx = torch.tensor([4, 3, 2, 1, 0])
    # plain: by length 2 (row 1), 3 (row 2), 4 (rows 4, 3 in shuffled order), 5 (row 0)
    assert by_length(b, idx, 2).tolist() == [1, 2, 4, 3, 0]
    # by prompt: B (longest row 4) before A (longest 5); by length within each prompt
    assert by_length(b, idx, 2, by_prompt=True).tolist() == [1, 3, 2, 4, 0]


# ------------------------------------------------------------------------------- equality
@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3", "gpt2"])
@pytest.mark.parametrize("mode", ["fused", "full"])
def test_shared_equals_plain(kind: str, mode: str) -> None:
    model, b = _model(kind), _batch()
    plain = _stats_and_grads(model, b, mode, shared=False)
    shared = _stats_and_grads(model, b, mode, shared=True)
    assert plain[3].abs().max() > 1.0  # the gradients are not trivially small
    for name, x, y in zip(("logp", "entropy", "top1", "grad"), plain, shared, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=5e-6 if name != "grad" else 5e-5,
                                   msg=f"{kind} {mode} {name}")  # fmt: skip


def test_length_buckets_hand_cases() -> None:
    # four short rows, four long, interleaved: single pass 8 x 10 = 80 positions; two buckets
    # 4 x 1 + 4 x 10 = 44 (saves 36 >= 0.1 x 80); a third saves nothing (2 + 2 + 40 = 44)
    lens = [10, 1, 10, 1, 10, 1, 10, 1]
    assert length_buckets(lens, 4, min_rows=2) == [[1, 3, 5, 7], [0, 2, 4, 6]]
    assert length_buckets(lens, 1, min_rows=2) == [[1, 3, 5, 7, 0, 2, 4, 6]]
    # 9s and 10s: two buckets save 80 - (36 + 40) = 4 < 8 positions: one pass
    assert length_buckets([9, 9, 9, 9, 10, 10, 10, 10], 4, min_rows=2) == [list(range(8))]
    # min_rows: 1 short row cannot make its own bucket of >= 2
    # (cost 1 x 1 + ...); cheapest legal split [1, 2] | [8, 8]: 2 x 2 + 2 x 8 = 20 < 32
    assert length_buckets([8, 1, 8, 2], 4, min_rows=2) == [[1, 3], [0, 2]]
    assert length_buckets([5, 3], 4, min_rows=8) == [[1, 0]]  # too few rows: one pass
    assert length_buckets([], 4) == [[]]
    with pytest.raises(ValueError, match="max_buckets"):
        length_buckets([1], 0)


def _widths(model: Any, mode: str) -> list[int]:
    """Spy on the forward that ``shared_response_inputs`` calls (the base model in fused mode,
    the model in full mode): the list it appends is each call's input width."""
    target = model.base_model if mode == "fused" else model
    widths: list[int] = []
    inner = target.forward

    @functools.wraps(inner)  # keeps the signature the cache keyword is read from
    def forward(*a: Any, **kw: Any) -> Any:
        widths.append(int(kw["input_ids"].shape[1]))
        return inner(*a, **kw)

    target.forward = forward
    return widths


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3", "gpt2"])
@pytest.mark.parametrize("mode", ["fused", "full"])
def test_length_buckets_equal_one_pass(kind: str, mode: str) -> None:
    """24 rows (3 prompts x 8) of 1-6 tokens: two completion passes padded to their own
    longest row give the plain layout's values and gradients."""
    model, b = _model(kind), _batch(group=8)
    inputs = (SharedPromptLayout.of(b).completion_lens_B - 1).clamp(min=0).tolist()
    buckets = length_buckets(inputs, 4)
    assert len(buckets) == 2  # the CPU default splits this batch
    plain = _stats_and_grads(model, b, mode, shared=False)
    widths = _widths(model, mode)
    shared = _stats_and_grads(model, b, mode, shared=True)
    # the prompt pass (width 6), then one completion pass per bucket at its own longest row
    assert widths == [6] + [max(inputs[i] for i in g) for g in buckets]
    assert widths[1] < widths[2] == max(inputs)
    for name, x, y in zip(("logp", "entropy", "top1", "grad"), plain, shared, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=5e-6 if name != "grad" else 5e-5,
                                   msg=f"{kind} {mode} {name}")  # fmt: skip


def test_the_fused_head_runs_on_completion_tokens_only() -> None:
    """Fused mode computes the head at the real completion tokens alone (0 at padded positions)
    and agrees there with the model's own logits (full mode), values and gradients."""
    model, b = _model("qwen2"), _batch(group=3)
    real = b.targets >= 0
    assert not bool(real.all())
    fused = _stats_and_grads(model, b, "fused", shared=False)
    full = _stats_and_grads(model, b, "full", shared=False)
    lp, ent, _ = policy_token_stats(model, b, temperature=0.8, mode="fused")
    assert bool((lp[~real] == 0).all()) and bool((ent[~real] == 0).all())
    for name, x, y in zip(("logp", "entropy", "top1", "grad"), full, fused, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=5e-6 if name != "grad" else 5e-5,
                                   msg=name)  # fmt: skip


def test_length_buckets_with_a_sliding_window() -> None:
    """Mistral with a 4-token window under left-padded prompts of up to 6 tokens: each bucket's
    cache keeps the window's bookkeeping (a cache rebuilt from the kept keys alone mis-aligned
    the padding mask: |d log-prob| 2.8)."""
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(vocab_size=V, hidden_size=32, intermediate_size=48,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=64,
                                     sliding_window=4)  # fmt: skip
    model, b = _scramble(transformers.MistralForCausalLM(cfg)), _batch(group=8)
    plain = _stats_and_grads(model, b, "fused", shared=False)
    widths = _widths(model, "fused")
    shared = _stats_and_grads(model, b, "fused", shared=True)
    assert len(widths) == 3  # prompt pass + two buckets
    for name, x, y in zip(("logp", "entropy", "top1", "grad"), plain, shared, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=5e-6 if name != "grad" else 5e-5,
                                   msg=name)  # fmt: skip


def test_a_bucket_of_one_token_completions_runs_no_completion_pass() -> None:
    # 8 one-token rows (no completion input) and 8 of 6 tokens: buckets [0 inputs] | [5 inputs]
    g = torch.Generator().manual_seed(3)
    prompts = [[3, 4, 5], [6, 7]] * 8
    comps = [torch.randint(3, V, (1 if i < 8 else 6,), generator=g).tolist() for i in range(16)]
    adv = torch.randn(16, generator=g)
    b = build_batch(prompts, comps, rewards=adv.clone(), advantages=adv, pad_token_id=0)
    inputs = (SharedPromptLayout.of(b).completion_lens_B - 1).clamp(min=0).tolist()
    assert length_buckets(inputs, 4) == [list(range(8)), list(range(8, 16))]
    model = _model("qwen2")
    plain = _stats_and_grads(model, b, "fused", False)
    widths = _widths(model, "fused")
    shared = _stats_and_grads(model, b, "fused", True)
    assert widths == [3, 5]  # the prompt pass, then the long bucket's pass only
    for x, y in zip(plain, shared, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=5e-5)


def test_one_token_completions_use_the_prompt_pass_only() -> None:
    model, b = _model("qwen2"), _batch(one_token=True)
    assert b.targets.shape[1] == 1
    for x, y in zip(_stats_and_grads(model, b, "fused", False),
                    _stats_and_grads(model, b, "fused", True), strict=True):  # fmt: skip
        torch.testing.assert_close(y, x, rtol=1e-5, atol=5e-5)


def test_a_micro_batch_that_splits_groups() -> None:
    """Two rows of prompt 0, one of prompt 1, three of prompt 2 (trimmed by ``rows``)."""
    model, b = _model("llama"), _batch(group=4)
    mb = b.rows(torch.tensor([1, 3, 6, 8, 9, 10]))
    for x, y in zip(_stats_and_grads(model, mb, "fused", False),
                    _stats_and_grads(model, mb, "fused", True), strict=True):  # fmt: skip
        torch.testing.assert_close(y, x, rtol=1e-5, atol=5e-5)


def _settings(shared: bool, micro: int = 4) -> UpdateSettings:
    return UpdateSettings(
        loss="ppo", loss_kwargs={"eps_low": 0.2, "eps_high": 0.28}, agg="token-mean", epochs=2,
        mini_batches=2, micro_batch_size=micro, temperature=1.0, grad_clip=1.0, entropy_coef=0.01,
        kl_coef=0.05, kl_kind="k3", kl_in_loss=True, logits_mode="fused", chunk_size=7, max_len=6,
        shared_prompt=shared,
    )  # fmt: skip


def test_old_and_reference_logprobs_match() -> None:
    model, b = _model("qwen2"), _batch(group=4)
    ref = copy.deepcopy(model)
    with torch.no_grad():  # a reference that differs from the policy
        for p in ref.parameters():
            p.mul_(0.9)
    plain = record_old_logprobs(model, ref, b, _settings(False))
    shared = record_old_logprobs(model, ref, b, _settings(True))
    assert set(plain) == set(shared) == {"logprobs", "entropy", "top1", "ref_logprobs"}
    for k in plain:
        torch.testing.assert_close(shared[k] * b.mask, plain[k] * b.mask, rtol=1e-5, atol=5e-6)
    assert (plain["ref_logprobs"] - plain["logprobs"]).abs().max() > 0.01


@pytest.mark.parametrize("group, micro", [(4, 4), (12, 18)])
def test_the_whole_update_matches(group: int, micro: int) -> None:
    """Two epochs x two mini-batches: micro-batches of 4 rows over groups of 4 (split groups,
    AdamW), or one micro-batch of 18 rows per mini-batch over groups of 12 (length buckets on a
    CPU; SGD, whose step is linear in the gradient: AdamW divides each weight's step by its own
    gradient scale, so a float32 rounding in a near-zero gradient can move a weight by up to
    lr): the same weights and metrics after the update, shared or plain."""
    start, b = _model("llama"), _batch(group=group)
    b.ref_logprobs = b.old_logprobs - 0.1
    out = []
    for shared in (False, True):
        model = copy.deepcopy(start).train()
        opt: torch.optim.Optimizer = (
            torch.optim.AdamW(model.parameters(), lr=1e-3)
            if group == 4
            else torch.optim.SGD(model.parameters(), lr=0.1)
        )
        metrics, bad = ppo_update(model, opt, b, _settings(shared, micro),
                                  generator=torch.Generator().manual_seed(3))  # fmt: skip
        assert bad == 0
        out.append((model.state_dict(), metrics))
    (w0, m0), (w1, m1) = out
    moved = max(float((w0[k] - start.state_dict()[k]).abs().max()) for k in w0)
    assert moved > 1e-4
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=1e-4, atol=2e-6, msg=k)
    assert m1["update/optimizer_steps"] == m0["update/optimizer_steps"] == 4.0
    for k in ("loss/policy", "clip/upper_frac", "clip/lower_frac", "ratio/abs_dev"):
        assert m1[k] == pytest.approx(m0[k], rel=1e-4, abs=1e-6), k


def test_the_entropy_change_passes_match() -> None:
    model, b = _model("qwen2"), _batch(group=4)
    after = copy.deepcopy(model)
    with torch.no_grad():
        for p in after.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    res = []
    for shared in (False, True):
        s = _settings(shared)
        res.append(same_batch_entropy_change(after, b, s, capture_head_inputs(model, b, s)))
    assert res[0].keys() == res[1].keys() and res[0]
    for k in res[0]:
        assert res[1][k] == pytest.approx(res[0][k], rel=1e-4, abs=1e-6), k


# ---------------------------------------------------------------------------------- support
def test_support_and_resolution() -> None:
    model = _model("qwen2")
    assert shared_prompt_unsupported(model) is None
    assert resolve_shared_prompt(None, model) is True
    assert resolve_shared_prompt(False, model) is False
    on = (
        getattr(model, "activation_checkpointing_enable", None)
        or model.gradient_checkpointing_enable
    )
    on()
    assert "gradient checkpointing" in str(shared_prompt_unsupported(model))
    assert resolve_shared_prompt(None, model) is False
    with pytest.raises(ValueError, match=r"model.shared_prompt=true.*gradient checkpointing"):
        resolve_shared_prompt(True, model)
    fresh = _model("qwen2")  # sharded by the trainer (FSDP2 keeps the class name): plain
    assert shared_prompt_unsupported(fresh, sharded=True) == "an FSDP-sharded model"
    assert resolve_shared_prompt(None, fresh, sharded=True) is False
    other = _model("qwen2")
    other.config.model_type = "falcon"
    assert "model_type='falcon'" in str(shared_prompt_unsupported(other))


# ------------------------------------------------------------------------- slow: SmolLM2
@pytest.mark.slow
def test_smollm2_shared_equals_plain() -> None:
    """The real model ($ENTROPY_RL_SMOLLM2, default ~/.cache/entropy-rl/SmolLM2-135M-Instruct):
    chat-length prompts, four completions each."""
    from entropy_rl import models

    d = Path(os.environ.get("ENTROPY_RL_SMOLLM2", str(models.DEFAULT_MODEL_DIR))).expanduser()
    if not (d / "config.json").is_file():
        pytest.skip(f"no SmolLM2 directory at {d}: run `entropy-rl get-model smollm2`")
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (n,), generator=g).tolist() for n in (41, 57)]
    rows = [(p, torch.randint(100, 40000, (int(k),), generator=g).tolist())
            for p in prompts for k in (3, 9, 12, 1)]  # fmt: skip
    adv = torch.randn(len(rows), generator=g)
    b = build_batch([r[0] for r in rows], [r[1] for r in rows], rewards=adv, advantages=adv,
                    pad_token_id=0)  # fmt: skip
    plain = _stats_and_grads(model, b, "fused", False)
    shared = _stats_and_grads(model, b, "fused", True)
    for x, y in zip(plain[:3], shared[:3], strict=True):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-4)
    # 134.5M gradient entries: float32 summation order, measured as a norm (a few entries of a
    # large gradient differ by ~3e-4 in absolute terms)
    rel = float((shared[3] - plain[3]).norm() / plain[3].norm())
    assert rel < 1e-5, rel
