"""The entropy change of one policy update at fixed positions, and its exact first-order part.

Per position, with logits z before and z' after an update, the sampling distribution
p = softmax(z / T), l = log p, H = -sum_v p_v l_v, and dl = l' - l the change of every
log-probability over the whole vocabulary:

    exact change      H' - H
    first order       dH_1 = -sum_v p_v (l_v + H) dl_v = -Cov_p(log p, dl)

Derivation: dH = -sum_v (dp_v l_v + p_v dl_v) with dp_v = p_v dl_v and sum_v p_v dl_v = 0 to
first order, so dH = -sum_v p_v l_v dl_v; adding H * sum_v p_v dl_v (zero to first order) centres
l. The covariance form is an identity for any dl: Cov_p(l, dl) = sum_v p_v l_v dl_v
- (sum_v p_v l_v)(sum_v p_v dl_v) = sum_v p_v (l_v + H) dl_v. Because sum_v p_v (l_v + H) = 0
exactly, a shift of dl by a constant (the change of the log-normaliser) drops out:
dH_1 = -Cov_p(log p, (z' - z) / T) as well, which is how it is computed (no log-normaliser of z').
H' - H - dH_1 = O(|dz|^2).

This is the vocabulary-exact form of Cui et al. 2025 ("The Entropy Mechanism of Reinforcement
Learning for Reasoning Language Models", Lemma 1): their batch estimate -eta * Cov(log pi, A)
replaces the logit change dz by eta * A on the sampled tokens only (natural policy gradient).
``dH_1`` uses the logit change the update actually made, so it is not a forecast made before the
update; it measures how much of the change a first-order (covariance) account explains, the
ceiling for any Cov-based forecast.

Everything here is measurement: no gradient flows (``torch.no_grad``). Compute dtype is float32
(float64 for float64 inputs). Masked vocabulary (-inf logits) is supported as in
``ops.token_stats``: log-probabilities are floored at -1e4, where p is exactly 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from entropy_rl.ops.token_stats import (
    _LOGP_FLOOR,
    _check_chunk_size,
    _check_float,
    _check_temperature,
    _chunk_logits,
    _compute_dtype,
    _require_finite,
)

__all__ = [
    "EntropyChange",
    "entropy_change",
    "first_order_entropy_change",
    "fused_entropy_change",
]


class EntropyChange(NamedTuple):
    """Per-position entropies before and after an update and the first-order change, each
    shaped like the positions (the logits without their last dim)."""

    before: Tensor
    """H = -sum_v p_v log p_v of softmax(z / T) (nats)."""
    after: Tensor
    """H' of softmax(z' / T); the exact change is ``after - before``."""
    first_order: Tensor
    """dH_1 = -Cov_p(log p, d log p) (module docstring)."""


@torch.no_grad()
def first_order_entropy_change(logp: Tensor, dlogp: Tensor) -> Tensor:
    """dH_1 = -sum_v p_v (log p_v + H) dlogp_v = -Cov_p(log p, dlogp), per position.

    Args:
        logp: (..., V) log-probabilities of a distribution p (rows sum to 1 in probability;
            -inf entries are floored at -1e4, where p_v = 0).
        dlogp: (..., V) their change (any direction; a constant shift per row drops out).

    Returns:
        (...) the first-order entropy change, in float32 (float64 for float64 inputs).
    """
    _check_float(logp, "logp", 1)
    _check_float(dlogp, "dlogp", 1)
    if logp.shape != dlogp.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)} and dlogp {tuple(dlogp.shape)} must have one shape"
        )
    cdt = _compute_dtype(logp, dlogp)
    lp = logp.to(cdt).clamp(min=_LOGP_FLOOR)  # (..., V)
    p = lp.exp()
    h = -(p * lp).sum(-1, keepdim=True)  # (..., 1)
    return -(p * (lp + h) * dlogp.to(cdt)).sum(-1)


def _change_rows(z0: Tensor, z1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(H, H', dH_1) per row of tempered logits z0, z1 (c, V) in the compute dtype.

    Each row is shifted by its max and floored at -1e4 first (as ``ops.token_stats``): masked
    entries (-inf in both) then have dz = 0 and p = 0 instead of NaN. z0 and z1 are modified.
    """
    for z in (z0, z1):
        z.sub_(z.amax(dim=-1, keepdim=True)).clamp_(min=_LOGP_FLOOR)
    dz = z1 - z0  # (c, V): d log p up to a per-row constant, which drops out of dH_1
    lp = torch.log_softmax(z0, dim=-1).clamp_(min=_LOGP_FLOOR)  # (c, V) log p
    p = lp.exp()
    h0 = -(p * lp).sum(-1)  # (c,)
    dh1 = -(p.mul_(lp.add_(h0[:, None])).mul_(dz)).sum(-1)  # -sum_v p_v (l_v + H) dz_v
    lp1 = torch.log_softmax(z1, dim=-1).clamp_(min=_LOGP_FLOOR)  # (c, V) log p'
    h1 = -(lp1.exp().mul_(lp1)).sum(-1)
    return h0, h1, dh1


@torch.no_grad()
def entropy_change(
    logits_before: Tensor,
    logits_after: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> EntropyChange:
    """H, H' and dH_1 per position from the logits of the same positions before and after.

    Args:
        logits_before, logits_after: (..., V), one shape, any floating dtype.
        temperature: T > 0; p = softmax(z / T), the sampling distribution.
        chunk_size: rows per chunk (None: all at once). Peak extra memory is about six
            (chunk_size, V) buffers in the compute dtype.

    Returns:
        EntropyChange of (...) tensors (module docstring for the formulas).
    """
    _check_float(logits_before, "logits_before", 1)
    _check_float(logits_after, "logits_after", 1)
    _check_chunk_size(chunk_size, allow_none=True)
    inv_t = 1.0 / _check_temperature(temperature)
    if logits_before.shape != logits_after.shape or logits_before.shape[-1] == 0:
        raise ValueError(
            "logits_before and logits_after must have one shape with a non-empty last dim, got "
            f"{tuple(logits_before.shape)} and {tuple(logits_after.shape)}"
        )
    cdt = _compute_dtype(logits_before, logits_after)
    lead, vocab = logits_before.shape[:-1], logits_before.shape[-1]
    z0_all = logits_before.reshape(-1, vocab)  # (N, V)
    z1_all = logits_after.reshape(-1, vocab)
    n = z0_all.shape[0]
    step = n if chunk_size is None else chunk_size
    outs: list[tuple[Tensor, Tensor, Tensor]] = []
    for start in range(0, n, max(step, 1)):
        z0 = z0_all[start : start + step].to(cdt) * inv_t  # fresh (c, V)
        z1 = z1_all[start : start + step].to(cdt) * inv_t
        outs.append(_change_rows(z0, z1))
    return _assemble(outs, lead, cdt, logits_before.device)


@torch.no_grad()
def fused_entropy_change(
    hidden_before: Tensor,
    weight_before: Tensor,
    hidden_after: Tensor,
    weight_after: Tensor,
    *,
    bias_before: Tensor | None = None,
    bias_after: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> EntropyChange:
    """``entropy_change`` with z = (hidden @ weight^T + bias) built chunk_size rows at a time,
    never the (N, V) logits of all N positions (as ``ops.token_stats.fused_logprobs_entropy``).

    Args:
        hidden_before, hidden_after: (..., D) last hidden states of the same positions, before
            and after the update.
        weight_before, weight_after: (V, D) the lm_head weight before and after.
        bias_before, bias_after: optional (V,) lm_head biases (-inf masks vocabulary).
        temperature: T > 0.
        chunk_size: rows per chunk; peak extra memory about six (chunk_size, V) buffers.
    """
    for name, x in (("hidden_before", hidden_before), ("hidden_after", hidden_after)):
        _check_float(x, name, 1)
    _check_chunk_size(chunk_size, allow_none=False)
    inv_t = 1.0 / _check_temperature(temperature)
    d = hidden_before.shape[-1]
    if hidden_after.shape != hidden_before.shape:
        raise ValueError(
            f"hidden_before {tuple(hidden_before.shape)} and hidden_after "
            f"{tuple(hidden_after.shape)} must have one shape"
        )
    for name, w in (("weight_before", weight_before), ("weight_after", weight_after)):
        _check_float(w, name, 2)
        if w.dim() != 2 or w.shape != weight_before.shape or w.shape[1] != d or w.shape[0] == 0:
            raise ValueError(f"{name} must be (V, {d}) with V >= 1, got {tuple(w.shape)}")
    cdt = _compute_dtype(hidden_before, weight_before, hidden_after, weight_after)
    w0, w1 = weight_before.to(cdt), weight_after.to(cdt)
    b0 = None if bias_before is None else bias_before.to(cdt)
    b1 = None if bias_after is None else bias_after.to(cdt)
    lead = hidden_before.shape[:-1]
    h0_all, h1_all = hidden_before.reshape(-1, d), hidden_after.reshape(-1, d)  # (N, D)
    n = h0_all.shape[0]
    c = min(chunk_size, max(n, 1))
    buf0 = torch.empty(c, w0.shape[0], dtype=cdt, device=w0.device)
    buf1 = torch.empty_like(buf0)
    outs: list[tuple[Tensor, Tensor, Tensor]] = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        z0 = _chunk_logits(h0_all[start:stop].to(cdt), w0, b0, inv_t, buf0[: stop - start])
        z1 = _chunk_logits(h1_all[start:stop].to(cdt), w1, b1, inv_t, buf1[: stop - start])
        outs.append(_change_rows(z0, z1))
    return _assemble(outs, lead, cdt, w0.device)


def _assemble(
    outs: list[tuple[Tensor, Tensor, Tensor]],
    lead: torch.Size,
    cdt: torch.dtype,
    device: torch.device,
) -> EntropyChange:
    if not outs:
        empty = torch.empty(lead, dtype=cdt, device=device)
        return EntropyChange(empty, empty.clone(), empty.clone())
    before, after, first = (torch.cat(parts).reshape(lead) for parts in zip(*outs, strict=True))
    for name, x in (("before", before), ("after", after), ("first_order", first)):
        _require_finite(x, f"entropy_change ({name})")
    return EntropyChange(before, after, first)
