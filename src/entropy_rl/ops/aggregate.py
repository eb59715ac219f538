"""`aggregate`, the one owner of loss normalisation (split from ops.losses, which re-exports it).

Every policy loss returns a per-token matrix ``L`` [B, T]; the entropy bonus and the KL penalty
(ops.regularizers) are per-token too. All of them are reduced here, so that token-mean,
sequence-mean and Dr. GRPO's constant normaliser mean the same thing for every term.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["AGG_MODES", "aggregate"]

AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0: an empty row or batch averages to 0, not NaN."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _check_count(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (or None), got {value!r}")


def aggregate(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar; the only place normalisation happens.

    With ``L`` the loss, ``M`` the mask (nonzero = valid) and ``n_i = sum_t M_it``:

    * ``token-mean`` (DAPO): ``sum(L*M) / D`` with ``D = sum(M)``, or ``D = num_tokens``.
    * ``seq-mean-token-mean`` (original GRPO): ``(1/S) sum_i sum_t L_it M_it / n_i``.
    * ``seq-mean-token-sum``: ``(1/S) sum_i sum_t L_it M_it``.
    * ``seq-mean-token-sum-norm`` (Dr. GRPO, Liu et al. 2025): ``sum(L*M) / (S * max_len)``
      with ``max_len`` a constant (e.g. the generation budget), required.

    ``S`` is the number of rows with at least one valid token, or ``num_seqs``. Rows with no
    valid token are padding and do not count, so adding masked rows or columns never changes
    the result (pass ``num_seqs`` to count empty completions as sequences).

    Gradient accumulation: with ``num_tokens`` (``num_seqs``) set to the count over the whole
    optimizer step (all micro-batches and ranks), summing the micro-batch results gives exactly
    the loss of the full batch. Without it, micro-batches of different sizes are reweighted.
    Arguments a mode does not use are ignored, so a caller may always pass all three.

    Masked positions never contribute, even if they hold NaN/inf. A fully masked batch (or a
    count of 0) gives a finite 0.

    Args:
        loss_mat: [B, T] per-token loss.
        mask: [B, T] bool or 0/1.
        mode: one of `AGG_MODES`.
        num_tokens: global valid-token count for ``token-mean``.
        num_seqs: global sequence count for the ``seq-mean-*`` modes.
        max_len: the constant length normaliser of ``seq-mean-token-sum-norm``.

    Returns:
        0-dim tensor.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; allowed: {', '.join(AGG_MODES)}")
    if loss_mat.dim() != 2 or mask.shape != loss_mat.shape:
        raise ValueError(
            f"loss_mat and mask must both be [B, T]; got {tuple(loss_mat.shape)} and "
            f"{tuple(mask.shape)}"
        )
    _check_count("num_tokens", num_tokens)
    _check_count("num_seqs", num_seqs)
    if mode == "seq-mean-token-sum-norm" and (max_len is None or not max_len > 0):
        raise ValueError(
            f"mode 'seq-mean-token-sum-norm' needs max_len, a constant > 0 (e.g. the maximum "
            f"number of generated tokens); got {max_len!r}"
        )
    valid = mask != 0
    dtype, device = loss_mat.dtype, loss_mat.device
    masked = torch.where(valid, loss_mat, torch.zeros((), dtype=dtype, device=device))

    def count(override: float | None, default: Tensor) -> Tensor:
        if override is None:
            return default.to(dtype)
        return torch.tensor(float(override), dtype=dtype, device=device)

    if mode == "token-mean":
        return _safe_div(masked.sum(), count(num_tokens, valid.sum()))
    row_sum = masked.sum(dim=1)  # (B,)
    row_tokens = valid.sum(dim=1)  # (B,)
    seqs = count(num_seqs, (row_tokens > 0).sum())
    if mode == "seq-mean-token-mean":
        return _safe_div(_safe_div(row_sum, row_tokens.to(dtype)).sum(), seqs)
    if mode == "seq-mean-token-sum":
        return _safe_div(row_sum.sum(), seqs)
    assert max_len is not None  # checked above
    return _safe_div(row_sum.sum(), seqs * float(max_len))
