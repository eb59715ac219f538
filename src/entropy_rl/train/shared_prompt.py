"""The shared-prompt layout of a rollout: each prompt's tokens once, its completions G times.

In a GRPO-style batch the G completions of a prompt share its tokens, so the plain layout
(train.batch: every row ``prompt + completion``) runs the prompt G times in every forward over
the rollout: pi_old, pi_ref, the update's forward and backward, the same-batch entropy change.
Here one forward runs each distinct prompt once and keeps its key/value cache; the cache is
indexed out to the rows that share the prompt, and one more forward runs the completions
against it:

    prompt pass       prompt_ids_P_Tp (left-padded)          -> hidden_P_Tp_D, cache (P, ..., Tp)
    expansion         cache[prompt_of_B], hidden_P_Tp_D[prompt_of_B, -1]      (B, ..., Tp), (B, D)
    completion pass   completion_ids_B_Tc (tokens 0 .. T-2)  -> hidden_B_Tc_D

Response-aligned head inputs, as train.batch defines them: column 0 (the first completion
token) is predicted by the prompt's last position, column j >= 1 by completion position j - 1.
That first transition stays supervised (a prefix-tree layout that drops the prompt's last
output loses it). Indexing is differentiable, so the backward sums each row's gradient into
the one prompt pass: the log-probs, entropies and gradients equal the plain layout's up to
float32 summation order (tests/unit/test_shared_prompt.py: Llama, Mistral, Qwen2, Qwen3, GPT-2,
uneven prompts, stop tokens, micro-batches that split a group, the whole update).

Cost: prompt positions P x Tp instead of B x Tp in every pass, and the activations kept for
the backward shrink with them (the expanded cache, (B, H_kv, Tp, d) per layer, is the part
that stays per row); benchmarks/shared_prompt.py measures both.

Not here: sequence packing (the completion pass is right-padded like the plain layout); models
without a transformers key/value cache, FSDP-sharded models and gradient checkpointing (which
turns the cache off) take the plain layout (``shared_prompt_unsupported`` says why).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # train.batch imports this module
    from entropy_rl.train.batch import RolloutBatch

__all__ = [
    "SharedPromptLayout",
    "prompt_keys",
    "resolve_shared_prompt",
    "shared_prompt_unsupported",
    "shared_response_inputs",
]

# Architectures whose forward takes ``position_ids`` and a DynamicCache and whose shared-prompt
# values are tested equal to the plain layout's (tests/unit/test_shared_prompt.py).
_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")


def shared_prompt_unsupported(model: Any, *, sharded: bool = False) -> str | None:
    """Why ``model`` must take the plain layout, or None when the shared-prompt layout applies.
    ``sharded``: the trainer shards it (train.sharding: FSDP2 keeps the class's name)."""
    name = type(model).__name__
    if sharded or "FullyShardedDataParallel" in name or hasattr(model, "_fsdp_wrapped_module"):
        return "an FSDP-sharded model"
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in _MODEL_TYPES:
        return f"model_type={kind!r} (tested: {', '.join(_MODEL_TYPES)})"
    flag = "is_activation_checkpointing"  # transformers' newer name of is_gradient_checkpointing
    if getattr(model, flag if hasattr(model, flag) else "is_gradient_checkpointing", False):
        return "gradient checkpointing (it turns the key/value cache off)"
    return None


def resolve_shared_prompt(setting: bool | None, model: Any, *, sharded: bool = False) -> bool:
    """``model.shared_prompt`` for ``model``: None (auto) -> on where supported; True -> on, a
    ValueError naming the reason where unsupported; False -> off."""
    why = shared_prompt_unsupported(model, sharded=sharded)
    if setting and why:
        raise ValueError(
            f"model.shared_prompt=true, but this model takes the plain layout: {why}. "
            f"Leave model.shared_prompt unset (auto) or set it to false"
        )
    return why is None if setting is None else setting


def prompt_keys(input_ids: Tensor, prompt_lens: Tensor) -> list[tuple[int, ...]]:
    """Each row's prompt tokens (``input_ids`` (B, L), ``prompt_lens`` (B,)), as a hashable key:
    rows with equal keys share a prompt."""
    ids, lens = input_ids.tolist(), prompt_lens.tolist()
    return [tuple(row[:n]) for row, n in zip(ids, lens, strict=True)]


@dataclass
class SharedPromptLayout:
    """One micro-batch in the shared-prompt layout (P distinct prompts, B rows)."""

    prompt_ids_P_Tp: Tensor  # (P, Tp) left-padded with 0 (masked)
    prompt_mask_P_Tp: Tensor  # (P, Tp) 1 on prompt tokens
    prompt_of_B: Tensor  # (B,) row -> its prompt's index in 0..P-1
    prompt_lens_B: Tensor  # (B,)
    completion_ids_B_Tc: Tensor  # (B, T - 1) completion tokens 0 .. T-2, right-padded with 0

    @property
    def shares(self) -> bool:
        """True when at least two rows have the same prompt (P < B; else nothing is saved)."""
        return self.prompt_ids_P_Tp.shape[0] < self.prompt_of_B.shape[0]

    @classmethod
    def of(cls, batch: RolloutBatch) -> SharedPromptLayout:
        keys = prompt_keys(batch.input_ids, batch.prompt_lens)
        index: dict[tuple[int, ...], int] = {}
        prompt_of = [index.setdefault(k, len(index)) for k in keys]
        prompts = list(index)  # insertion order: prompt p is index p
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for p, toks in enumerate(prompts):
            ids[p, width - len(toks) :] = torch.tensor(toks, dtype=torch.long)
            mask[p, width - len(toks) :] = 1
        return cls(
            prompt_ids_P_Tp=ids,
            prompt_mask_P_Tp=mask,
            prompt_of_B=torch.tensor(prompt_of, dtype=torch.long),
            prompt_lens_B=batch.prompt_lens.clone(),
            completion_ids_B_Tc=batch.targets[:, :-1].clamp(min=0),
        )


def _cache_keyword(fwd: Any) -> str:
    """The forward's name for the key/value cache argument: ``cache`` in recent transformers,
    ``past_key_values`` before (and deprecated since)."""
    params = inspect.signature(fwd.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def shared_response_inputs(model: Any, lay: SharedPromptLayout, *, logits: bool) -> Tensor:
    """The head inputs at the completion positions of a batch in the shared-prompt layout ``lay``:
    (B, T, D) last hidden states (``logits=False``, for the fused head) or (B, T, V) the model's
    own logits (``logits=True``). Same values as the plain layout's gather at
    ``prompt_len - 1 + j`` (train.batch), and differentiable through both passes. Runs under
    whatever autocast / grad mode the caller set."""
    device = next(model.parameters()).device
    fwd = model if logits else model.base_model
    padded = bool((lay.prompt_mask_P_Tp == 0).any())
    mask_p = lay.prompt_mask_P_Tp.to(device)
    # left padding: real tokens at positions 0.. (pad positions get 0; their outputs are unused)
    pos_p = (mask_p.cumsum(-1) - 1).clamp(min=0)  # (P, Tp)
    extra: dict[str, Any] = {"logits_to_keep": 1} if logits else {}
    cache_kw = _cache_keyword(fwd)
    out = fwd(
        input_ids=lay.prompt_ids_P_Tp.to(device),
        attention_mask=mask_p if padded else None,
        position_ids=pos_p,
        use_cache=True,
        **extra,
    )
    last = (out.logits if logits else out.last_hidden_state)[:, -1]  # (P, X): predicts token 0
    rows = lay.prompt_of_B.to(device)
    first = last[rows][:, None]  # (B, 1, X)
    t_c = lay.completion_ids_B_Tc.shape[1]
    if t_c == 0:  # one-token completions: the prompt pass is all there is
        return first
    cache = getattr(out, "cache", None) or out.past_key_values  # transformers >= 5.2x: cache
    cache.batch_select_indices(rows)  # (P, ...) -> (B, ...): each row its prompt's keys/values
    lens = lay.prompt_lens_B.to(device)
    pos_c = lens[:, None] + torch.arange(t_c, device=device)[None]  # (B, Tc)
    mask_c = None
    if padded:  # the prompt's padding stays masked; completion pads come after every real token
        ones = torch.ones((len(rows), t_c), dtype=mask_p.dtype, device=device)
        mask_c = torch.cat([mask_p[rows], ones], dim=1)  # (B, Tp + Tc)
    out_c = fwd(
        input_ids=lay.completion_ids_B_Tc.to(device),
        attention_mask=mask_c,
        position_ids=pos_c,
        use_cache=True,
        **{cache_kw: cache},
    )
    rest = out_c.logits if logits else out_c.last_hidden_state  # (B, Tc, X)
    return torch.cat([first, rest], dim=1)  # (B, T, X)
