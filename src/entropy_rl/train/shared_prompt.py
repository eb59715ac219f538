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

Padding: the completion pass is right-padded like the plain layout; on a CPU it is split
into length buckets, each padded to its own longest row (``length_buckets``:
benchmarks/README.md#length-buckets). Not here: sequence packing; models
without a transformers key/value cache, FSDP-sharded models and gradient checkpointing (which
turns the cache off) take the plain layout (``shared_prompt_unsupported`` says why).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # train.batch imports this module
    from entropy_rl.train.batch import RolloutBatch

__all__ = [
    "SharedPromptLayout",
    "length_buckets",
    "max_length_buckets",
    "prompt_keys",
    "resolve_shared_prompt",
    "shared_prompt_unsupported",
    "shared_response_inputs",
]

# Architectures whose forward takes ``position_ids`` and a DynamicCache and whose shared-prompt
# values are tested equal to the plain layout's (tests/unit/test_shared_prompt.py).
_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")

CPU_LENGTH_BUCKETS = 4
"""Most completion passes per micro-batch on a CPU (``length_buckets``)."""


def max_length_buckets(device_type: str) -> int:
    """Most completion passes per micro-batch on a device of this type: ``CPU_LENGTH_BUCKETS``
    on a CPU, where every padded position costs its full matrix products; 1 elsewhere (an
    accelerator pays a fixed launch cost per pass instead)."""
    return CPU_LENGTH_BUCKETS if device_type == "cpu" else 1


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
    completion_lens_B: Tensor  # (B,) completion tokens of each row (targets != -1)

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
            completion_lens_B=(batch.targets != -1).sum(1),
        )


def length_buckets(
    lengths: Sequence[int], max_buckets: int, *, min_rows: int = 8, min_saving: float = 0.1
) -> list[list[int]]:
    """Row indices grouped into at most ``max_buckets`` buckets of similar length, each to run
    as its own completion pass padded to its own longest row (``shared_response_inputs``).

    Rows are sorted by length (stable) and cut into contiguous buckets of >= ``min_rows`` rows;
    for each bucket count k the cuts minimise the padded positions, cost_k = min sum_b n_b x
    max_b (dynamic programming over the sorted lengths). One more bucket is taken only while
    it saves at least ``min_saving`` x cost_1 positions (cost_1 = B x max: the single pass),
    since each pass adds a forward's fixed overhead and shrinks its matrix products.
    Returns [all rows in order] when no split pays. O(max_buckets x B^2)."""
    n = len(lengths)
    if max_buckets < 1 or min_rows < 1:
        raise ValueError(f"max_buckets and min_rows must be >= 1, got {max_buckets}, {min_rows}")
    order = sorted(range(n), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    inf = float("inf")
    # best[k][j]: least cost of the first j sorted rows in k buckets; cut[k][j]: start of the last
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(k * min_rows, n + 1):
            for i in range((k - 1) * min_rows, j - min_rows + 1):
                c = best[k - 1][i] + (j - i) * ls[j - 1]
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = 1
    while k < max_buckets and best[k + 1][n] <= best[k][n] - min_saving * best[1][n]:
        k += 1
    if n == 0 or best[k][n] == inf:
        return [order]
    buckets, j = [], n
    for kk in range(k, 0, -1):
        i = cut[kk][j]
        buckets.append(order[i:j])
        j = i
    return buckets[::-1]


def _cache_keyword(fwd: Any) -> str:
    """The forward's name for the key/value cache argument: ``cache`` in recent transformers,
    ``past_key_values`` before (and deprecated since)."""
    params = inspect.signature(fwd.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def shared_response_inputs(
    model: Any, lay: SharedPromptLayout, *, logits: bool, max_buckets: int | None = None
) -> Tensor:
    """The head inputs at the completion positions of a batch in the shared-prompt layout ``lay``:
    (B, T, D) last hidden states (``logits=False``, for the fused head) or (B, T, V) the model's
    own logits (``logits=True``). Same values as the plain layout's gather at
    ``prompt_len - 1 + j`` (train.batch), and differentiable through both passes. Runs under
    whatever autocast / grad mode the caller set.

    The completion pass is right-padded to its longest row. With ``max_buckets`` > 1 the rows
    are split by completion length (``length_buckets``) and each bucket runs its own completion
    pass against its rows of the one prompt cache, padded only to its own longest row; the
    outputs beyond a row's completion are zeros instead of pad outputs (masked either way).
    None: ``max_length_buckets`` of the model's device."""
    device = next(model.parameters()).device
    if max_buckets is None:
        max_buckets = max_length_buckets(device.type)
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
    inputs = lay.completion_ids_B_Tc.to(device)
    pos_c = lay.prompt_lens_B.to(device)[:, None] + torch.arange(t_c, device=device)[None]

    def completion_pass(sel: Tensor, width: int, cache_sel: Any) -> Tensor:
        """(n, width, X) outputs of rows ``sel`` (indices into B) at completion inputs
        0 .. width-1, against ``cache_sel`` (their prompts' keys/values)."""
        mask_c = None
        if padded:  # the prompt's padding stays masked; completion pads come after real tokens
            ones = torch.ones((len(sel), width), dtype=mask_p.dtype, device=device)
            mask_c = torch.cat([mask_p[rows[sel]], ones], dim=1)  # (n, Tp + width)
        out_c = fwd(
            input_ids=inputs[sel, :width],
            attention_mask=mask_c,
            position_ids=pos_c[sel, :width],
            use_cache=True,
            **{cache_kw: cache_sel},
        )
        return out_c.logits if logits else out_c.last_hidden_state

    inputs_per_row = (lay.completion_lens_B - 1).clamp(min=0).tolist()  # host tensor
    groups = length_buckets(inputs_per_row, max_buckets) if max_buckets > 1 else None
    layers = getattr(cache, "layers", None)
    if groups is None or len(groups) == 1 or not isinstance(layers, list) or not layers:
        cache.batch_select_indices(rows)  # (P, ...) -> (B, ...): each row its prompt's keys/values
        every = torch.arange(len(rows), device=device)
        return torch.cat([first, completion_pass(every, t_c, cache)], dim=1)  # (B, T, X)
    pieces = []
    for g in groups:
        sel = torch.tensor(g, dtype=torch.long, device=device)
        width = max(inputs_per_row[i] for i in g)
        piece = first.new_zeros((len(g), 0, first.shape[-1]))
        if width > 0:
            # a shallow copy of the prompt cache, layer by layer: each keeps its type, window
            # and length bookkeeping (a sliding-window layer holds only its last keys), then
            # indexes its own (P, ...) tensors out to this bucket's rows
            cache_g = copy.copy(cache)
            cache_g.layers = [copy.copy(layer) for layer in layers]
            cache_g.batch_select_indices(rows[sel])
            piece = completion_pass(sel, width, cache_g)
        pieces.append(torch.nn.functional.pad(piece, (0, 0, 0, t_c - piece.shape[1])))
    order = torch.tensor([i for g in groups for i in g], dtype=torch.long, device=device)
    rest = torch.cat(pieces)[torch.argsort(order)]  # back to row order, (B, Tc, X)
    return torch.cat([first, rest], dim=1)  # (B, T, X)
