"""The update's speed-ups change how it computes, not what: length-sorted micro-batches
(update.by_length) and the mask-free forward of right-padded rows (batch.policy_token_stats)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import entropy_rl.train.update as update_mod
from entropy_rl.tasks.model import build_tiny_model
from entropy_rl.train.batch import RolloutBatch, build_batch, is_right_padded, policy_token_stats
from entropy_rl.train.update import UpdateSettings, by_length, ppo_update


def _batch(seed: int = 0, rows: int = 12) -> RolloutBatch:
    """Rows with prompts of 3-5 and completions of 1-9 tokens (vocab 19), GRPO-like advantages,
    and old log-probs off the current policy so that the clip acts."""
    g = torch.Generator().manual_seed(seed)

    def toks(n: int) -> list[int]:
        return torch.randint(3, 19, (n,), generator=g).tolist()

    prompts = [toks(int(torch.randint(3, 6, (1,), generator=g))) for _ in range(rows)]
    comps = [toks(int(torch.randint(1, 10, (1,), generator=g))) for _ in range(rows)]
    adv = torch.randn(rows, generator=g)
    b = build_batch(prompts, comps, rewards=adv.clone(), advantages=adv, pad_token_id=0)
    b.old_logprobs = -1.5 + 0.5 * torch.randn(b.targets.shape, generator=g)
    return b


def _settings(micro: int, mode: str = "full") -> UpdateSettings:
    return UpdateSettings(
        loss="ppo", loss_kwargs={"eps_low": 0.2, "eps_high": 0.28}, agg="token-mean", epochs=2,
        mini_batches=1, micro_batch_size=micro, temperature=1.0, grad_clip=1.0, entropy_coef=0.01,
        kl_coef=0.0, kl_kind="k3", kl_in_loss=True, logits_mode=mode, chunk_size=7, max_len=9,
    )  # fmt: skip


def test_is_right_padded_hand_cases() -> None:
    assert is_right_padded(torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]]))
    assert not is_right_padded(torch.tensor([[1, 1, 0], [0, 1, 1]]))  # left padding
    assert not is_right_padded(torch.tensor([[1, 0, 1]]))  # a gap
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        is_right_padded(torch.ones(3))


def test_by_length_sorts_stably_and_leaves_a_single_micro_batch_alone() -> None:
    # row lengths (attention_mask sums): row 0: 3, row 1: 1, row 2: 3, row 3: 2
    att = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    b = RolloutBatch(att, att, torch.ones(4, dtype=torch.long), att[:, :2], att[:, :2].float(),
                     torch.zeros(4), torch.zeros(4))  # fmt: skip
    idx = torch.tensor([2, 0, 3, 1])  # lengths 3, 3, 2, 1
    # sorted by length: 1 (len 1), 3 (len 2), then 2 before 0 (tie at 3: shuffled order kept)
    assert by_length(b, idx, 2).tolist() == [1, 3, 2, 0]
    assert by_length(b, idx, 4).tolist() == [2, 0, 3, 1]  # fits one micro-batch: unchanged


@pytest.mark.parametrize("mode", ["full", "fused"])
def test_mask_free_forward_equals_the_masked_one_and_left_padding_keeps_the_mask(
    mode: str,
) -> None:
    torch.manual_seed(0)
    model = build_tiny_model(19, layers=2, hidden=32, heads=2, kv_heads=1, mlp=64, seed=0)
    b = _batch()
    seen: list[Any] = []
    forward = model.model.forward

    def spy(*a: Any, **kw: Any) -> Any:
        seen.append(kw.get("attention_mask"))
        return forward(*a, **kw)

    model.model.forward = spy  # type: ignore[method-assign]
    kw: dict[str, Any] = {"temperature": 0.7, "mode": mode, "chunk_size": 7}
    plain = policy_token_stats(model, b, **kw)
    assert seen[-1] is not None  # the default keeps the mask
    got = policy_token_stats(model, b, **kw, skip_pad_mask=True)
    assert seen[-1] is None  # right-padded: no mask reaches the model
    # reference: the same rows with the mask given explicitly (a column of zeros appended makes
    # the mask non-right-padded only in a column no token uses, so the result must not change)
    extra = torch.zeros(len(b), 1, dtype=torch.long)
    masked = copy.copy(b)
    masked.input_ids = torch.cat([b.input_ids, extra], 1)
    masked.attention_mask = torch.cat([b.attention_mask, extra], 1)
    masked.attention_mask[0, -1] = 1  # row 0 now has a gap: the mask must be passed through
    masked.input_ids[0, -1] = 5
    assert not is_right_padded(masked.attention_mask)
    ref = policy_token_stats(model, masked, **kw, skip_pad_mask=True)
    assert seen[-1] is not None and seen[-1].shape == masked.attention_mask.shape
    m = b.mask.bool()
    for x, y, z in zip(got[:2], ref[:2], plain[:2], strict=True):
        torch.testing.assert_close(x[m], y[m], rtol=0, atol=1e-6)
        torch.testing.assert_close(x[m], z[m], rtol=0, atol=1e-6)


def test_length_sorted_micro_batches_give_the_unsorted_single_pass_update() -> None:
    """micro_batch_size 4 (12 rows: 3 length-sorted micro-batches) vs 12 (one pass, no sorting):
    the same weights after 2 epochs (AdamW at lr 1e-3 moves each weight by <= ~1e-3 per step,
    so 1e-6 is a gradient agreement of ~1e-3 relative even where Adam normalises a tiny
    gradient) and the same metrics, to float summation order."""
    base = build_tiny_model(19, layers=2, hidden=32, heads=2, kv_heads=1, mlp=64, seed=0)
    b = _batch(seed=1)
    widths: list[int] = []
    loss_fn = update_mod._micro_batch_loss

    def spy(model: Any, mb: RolloutBatch, s: UpdateSettings, **kw: Any) -> Any:
        widths.append(int(mb.attention_mask.sum(1).max()))
        return loss_fn(model, mb, s, **kw)

    out = {}
    for micro in (12, 4):
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        widths.clear()
        update_mod._micro_batch_loss = spy  # type: ignore[assignment]
        try:
            metrics, bad = ppo_update(
                model, opt, b, _settings(micro), generator=torch.Generator().manual_seed(3)
            )
        finally:
            update_mod._micro_batch_loss = loss_fn  # type: ignore[assignment]
        assert bad == 0
        out[micro] = (metrics, [p.detach().clone() for p in model.parameters()], list(widths))
    (m12, p12, w12), (m4, p4, w4) = out[12], out[4]
    assert len(w12) == 2 and len(w4) == 6  # 2 epochs x (1 or 3) micro-batches
    assert w4[0:3] == sorted(w4[0:3]) and w4[3:6] == sorted(w4[3:6])  # grouped by length
    assert w4[0] < w12[0]  # the shortest group is trimmed below the full width
    moved = [
        float((a - c.detach()).abs().max()) for a, c in zip(p12, base.parameters(), strict=True)
    ]
    assert max(moved) > 1e-4  # the update did move the weights
    for a, c in zip(p12, p4, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-6)
    assert m12.keys() == m4.keys()
    for k in m12:
        assert m4[k] == pytest.approx(m12[k], rel=1e-5, abs=1e-6), k
