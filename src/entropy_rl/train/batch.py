"""A rollout as tensors, and the policy's per-token statistics on it.

Layout: each row is ``prompt + completion`` right-padded to L, so position ids are the natural
0..L-1 and no left padding reaches the model in training. Per-token quantities are
*response-aligned*: shape [B, T] with T the longest completion, column j = the j-th completion
token, predicted by the hidden state at position ``prompt_len - 1 + j``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from entropy_rl.ops.token_stats import fused_logprobs_entropy, token_entropy, token_logprobs
from entropy_rl.train.precision import autocast as amp_autocast
from entropy_rl.train.shared_prompt import SharedPromptLayout, shared_response_inputs


@dataclass
class RolloutBatch:
    input_ids: Tensor  # (B, L) prompt + completion, right-padded
    attention_mask: Tensor  # (B, L)
    prompt_lens: Tensor  # (B,)
    targets: Tensor  # (B, T) completion token ids (pad beyond each length)
    mask: Tensor  # (B, T) 1.0 on completion tokens that enter the loss
    rewards: Tensor  # (B,)
    advantages: Tensor  # (B,)
    old_logprobs: Tensor | None = None  # (B, T)
    ref_logprobs: Tensor | None = None  # (B, T)
    sampler_logprobs: Tensor | None = None  # (B, T) as the rollout engine computed them
    sampler_entropy: Tensor | None = None  # (B, T) the engine's entropy of softmax(z / T)
    sampler_top1: Tensor | None = None  # (B, T) the engine's top-1 probability
    token_weights: Tensor | None = None  # (B, T) per-token advantage weights (e.g. TIS)
    token_advantages: Tensor | None = None  # (B, T) per-token advantages replacing `advantages`
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, idx: Tensor) -> RolloutBatch:
        """Sub-batch of rows ``idx``, trimmed to its own longest sequence and completion."""
        width = int(self.attention_mask[idx].sum(1).max())
        t = max(1, int((self.targets[idx] != -1).sum(1).max()))

        def cut(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[idx, :t]

        return RolloutBatch(
            input_ids=self.input_ids[idx, :width],
            attention_mask=self.attention_mask[idx, :width],
            prompt_lens=self.prompt_lens[idx],
            targets=self.targets[idx, :t],
            mask=self.mask[idx, :t],
            rewards=self.rewards[idx],
            advantages=self.advantages[idx],
            old_logprobs=cut(self.old_logprobs),
            ref_logprobs=cut(self.ref_logprobs),
            sampler_logprobs=cut(self.sampler_logprobs),
            sampler_entropy=cut(self.sampler_entropy),
            sampler_top1=cut(self.sampler_top1),
            token_weights=cut(self.token_weights),
            token_advantages=cut(self.token_advantages),
        )


def build_batch(
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    *,
    rewards: Tensor,
    advantages: Tensor,
    pad_token_id: int,
    loss_mask: list[bool] | None = None,
    sampler_logprobs: list[list[float]] | None = None,
    sampler_entropy: list[list[float]] | None = None,
    sampler_top1: list[list[float]] | None = None,
) -> RolloutBatch:
    """Pack token lists into a RolloutBatch. ``loss_mask[i] = False`` keeps row i out of the loss
    (e.g. truncated completions when masked). Targets are -1 beyond each completion; the
    engine's per-token statistics (``sampler_*``, one list per row) become (B, T), 0 beyond."""
    b = len(prompt_ids)
    width = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True))
    t = max(1, max(len(c) for c in completion_ids))
    input_ids = torch.full((b, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    targets = torch.full((b, t), -1, dtype=torch.long)
    mask = torch.zeros((b, t))
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        seq = p + c
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
        if c:
            targets[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            if loss_mask is None or loss_mask[i]:
                mask[i, : len(c)] = 1.0

    def per_token(rows: list[list[float]] | None) -> Tensor | None:
        if rows is None:
            return None
        out = torch.zeros((b, t))
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.float32)
        return out

    return RolloutBatch(
        sampler_logprobs=per_token(sampler_logprobs),
        sampler_entropy=per_token(sampler_entropy),
        sampler_top1=per_token(sampler_top1),
        input_ids=input_ids,
        attention_mask=attention,
        prompt_lens=torch.tensor([len(p) for p in prompt_ids], dtype=torch.long),
        targets=targets,
        mask=mask,
        rewards=rewards.float(),
        advantages=advantages.float(),
    )


def _response_index(batch: RolloutBatch) -> Tensor:
    """(B, T) position in the sequence whose output predicts completion token j."""
    t = batch.targets.shape[1]
    pos = batch.prompt_lens[:, None] - 1 + torch.arange(t)[None, :]
    return pos.clamp(max=batch.input_ids.shape[1] - 1)


def is_right_padded(attention_mask: Tensor) -> bool:
    """True when every row of the (B, L) 0/1 ``attention_mask`` is ones then zeros (no gap, no
    left padding), i.e. non-increasing along L."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, L), got shape {tuple(attention_mask.shape)}")
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def response_inputs(
    model: Any, batch: RolloutBatch, *, logits: bool, skip_pad_mask: bool = False,
    shared_prompt: bool = False,
) -> Tensor:  # fmt: skip
    """What the output head sees at ``batch``'s completion positions: (B, T, D) last hidden
    states (``logits=False``) or (B, T, V) the model's own logits (``logits=True``), column j the
    output at position ``prompt_len - 1 + j``. ``skip_pad_mask`` and ``shared_prompt``: see
    ``policy_token_stats``; neither changes the values at completion tokens."""
    if shared_prompt and (lay := SharedPromptLayout.of(batch)).shares:
        return shared_response_inputs(model, lay, logits=logits)
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    drop = skip_pad_mask and is_right_padded(batch.attention_mask)
    att = None if drop else batch.attention_mask.to(device)
    out = (
        model(input_ids=ids, attention_mask=att)
        if logits
        else model.base_model(input_ids=ids, attention_mask=att)
    )
    x = out.logits if logits else out.last_hidden_state  # (B, L, X)
    index = _response_index(batch).to(device)  # (B, T)
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))  # (B, T, X)


def policy_token_stats(
    model: Any,
    batch: RolloutBatch,
    *,
    temperature: float,
    mode: str = "fused",
    chunk_size: int = 1024,
    with_top1: bool = False,
    skip_pad_mask: bool = False,
    autocast: torch.dtype | None = None,
    shared_prompt: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Log-prob of each completion token and the full-vocabulary entropy of the sampling
    distribution softmax(logits / temperature) at each completion position.

    Returns (logprobs, entropy, top1_prob or None), each (B, T) float32; values at padded
    positions are finite but meaningless (mask them). ``mode="fused"`` goes from hidden states
    through the lm_head chunk by chunk and never holds (B, T, V) logits, and only at completion
    tokens (targets >= 0; padded positions get 0): a batch padded to its longest completion
    pays the vocabulary-sized head for its real tokens alone. ``"full"`` uses the model's own
    logits (needed for heads with soft-capping or scaling).

    ``skip_pad_mask=True`` (the update's choice): right-padded rows (``is_right_padded``;
    ``build_batch`` makes only those) go through the model without the attention mask. In a
    causal decoder a real token at position p attends to positions <= p, all real, so the mask
    changes only the values at pad positions (meaningless either way). The values at completion
    tokens are the same (bitwise on Qwen2, CPU, sdpa and eager), and the model skips building
    the (B, 1, L, L) padding mask and takes its causal-only attention path (update pass ~x1.05
    on the vs_trl char setting: benchmarks/README.md section 8). Rows that are not right-padded
    keep the mask.

    ``autocast`` (mixed precision, train.precision): the model's forward runs under
    ``torch.autocast(autocast)``. In ``fused`` mode the head and the softmax statistics then run
    outside it, in float32 on the (float32 master) head weight: the log-probs that the ratio
    compares keep float32's precision. In ``full`` mode the model's own (low-precision) logits
    are upcast. pi_old and the update take the same path, so the ratio compares like with like.
    """
    if mode not in ("fused", "full"):
        raise ValueError(f"mode must be 'fused' or 'full', got {mode!r}")
    device = next(model.parameters()).device
    targets = batch.targets.clamp(min=0).to(device)  # (B, T); pad targets -> 0, masked later
    with amp_autocast(device, autocast):
        x = response_inputs(
            model, batch, logits=mode == "full", skip_pad_mask=skip_pad_mask,
            shared_prompt=shared_prompt,
        )  # fmt: skip
    if mode == "fused":
        head = model.get_output_embeddings()
        # the head runs on completion tokens only: (N, D) instead of (B, T, D) with padding;
        # the index is built on the host, where the targets are (no device sync)
        real = (batch.targets >= 0).flatten().nonzero().squeeze(1)  # (N,) into B x T
        packed = 0 < len(real) < batch.targets.numel()
        at = real.to(device, non_blocking=True)
        out: tuple[Tensor, ...] = fused_logprobs_entropy(
            x.flatten(0, 1).index_select(0, at) if packed else x,
            head.weight,
            targets.flatten().index_select(0, at) if packed else targets,
            bias=getattr(head, "bias", None),
            temperature=temperature,
            chunk_size=chunk_size,
            return_top1=with_top1,
        )
        if packed:  # back to (B, T), 0 at padded positions
            shape = batch.targets.shape
            out = tuple(v.new_zeros(shape.numel()).index_copy(0, at, v).view(shape) for v in out)
        logp, ent = out[0], out[1]
        top1 = out[-1] if with_top1 else None
    else:
        logp = token_logprobs(x, targets, temperature=temperature)
        # chunked: one chunk of probabilities alive, recomputed in backward (the plain-autograd
        # form keeps several [B, T, V] copies: +1.2 GB over naive at V = 152k, benchmarks s.7)
        ent = token_entropy(x, temperature=temperature, chunk_size=chunk_size)
        top1 = torch.softmax(x.detach().float() / temperature, -1).amax(-1) if with_top1 else None
    return logp.float(), ent.float(), (None if top1 is None else top1.float())
