"""Exact, memory-light per-token statistics of the policy's next-token distribution.

Three functions, all on the *sampling* distribution p = softmax(z / T) (T = temperature):

- ``token_entropy``: H = -sum_v p_v log p_v, the full-vocabulary entropy (nats).
- ``token_logprobs``: log p_y of the taken token y (its surprisal is -log p_y; a different
  quantity from the entropy -- Skywork-OR1 -- and logged under a different name).
- ``fused_logprobs_entropy``: both, straight from the last hidden states and the lm_head,
  row-chunk by row-chunk, never materialising the [N, V] logits for all N tokens (the idea of
  verl's fused kernel; TRL PR #4013 chunks only the entropy and keeps the full logits).

Numerics (all three):
- Compute dtype is float32 for bf16 / fp16 / fp32 inputs and float64 for float64 inputs; the
  outputs are in the compute dtype, gradients are returned in each input's own dtype.
- Rows are shifted by their (detached) max before dividing by T, so logits of 1e4 or more are
  safe: H = log s - sum_v e_v z'_v / s with z' = (z - max z) / T <= 0, e = exp(z'), s = sum e.
  Every term is >= 0, so there is no cancellation.
- Masked vocabulary (-inf entries) is supported: shifted values are floored at ``_LOGP_FLOOR``
  (-1e4), below which exp() is exactly 0 in float32 and float64, so 0 * log 0 = 0 and no NaN
  reaches either the value or the gradient.
- A row with no finite logit (all -inf: no distribution), or with NaN / +inf, raises
  ValueError. This is checked on the [N] outputs, one host sync per call.

Backward formulas (docs/concepts.md, "Token entropy"), per row with p = softmax(z / T), l = log p:
    d log p_y / dz = (onehot(y) - p) / T,      dH / dz = -p * (l + H) / T.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor

__all__ = ["fused_logprobs_entropy", "token_entropy", "token_logprobs"]

# Shifted tempered logits (row max 0) are clamped here; exp(-1e4) == 0 in float32 and float64,
# so clamping never changes a probability, but it turns -inf into a finite number and keeps
# 0 * log 0 (forward) and p * (log p + H) (backward) at exactly 0 instead of NaN.
_LOGP_FLOOR = -1.0e4
# token_logprobs' default chunk: about 4M elements (16 MB in float32) per chunk of rows.
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16 / fp16 / fp32 are upcast)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _check_float(x: Tensor, name: str, min_dim: int) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor (bf16/fp16/fp32/fp64), got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dim(s), got shape {tuple(x.shape)}")


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def _check_chunk_size(chunk_size: int | None, *, allow_none: bool) -> None:
    if chunk_size is None and allow_none:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        allowed = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"chunk_size must be {allowed}, got {chunk_size!r}")


def _check_token_ids(token_ids: Tensor, lead_shape: torch.Size, vocab: int, what: str) -> Tensor:
    """Validate token ids of shape ``lead_shape`` in [0, vocab); return them flat as int64."""
    if not isinstance(token_ids, Tensor):
        raise ValueError(f"token_ids must be a torch.Tensor, got {type(token_ids).__name__}")
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise ValueError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
    if token_ids.shape != lead_shape:
        raise ValueError(
            f"token_ids must have the shape of {what} without its last dim, {tuple(lead_shape)}; "
            f"got {tuple(token_ids.shape)}"
        )
    ids = token_ids.reshape(-1).long()
    if ids.numel() > 0:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(
                f"token_ids must lie in [0, {vocab}) (vocabulary size {vocab}); got min {lo}, "
                f"max {hi}. Replace padding ids such as -100 by a valid id and mask the result."
            )
    return ids


def _require_finite(values: Tensor, name: str, *, allow_neginf: bool = False) -> None:
    bad = values.isnan() | values.isposinf() if allow_neginf else ~torch.isfinite(values)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: some row of logits has no finite entry (all -inf) or contains NaN/+inf; "
            "every row must hold at least one finite logit and no NaN or +inf"
        )


def _shifted(rows: Tensor, row_max: Tensor, inv_t: float, cdt: torch.dtype) -> Tensor:
    """(rows - row_max) / T in dtype ``cdt``, floored at _LOGP_FLOOR: a fresh [c, V] tensor."""
    z = rows - row_max.to(cdt).unsqueeze(-1)  # type promotion: bf16 - fp32 -> fp32
    if inv_t != 1.0:
        z.mul_(inv_t)
    return z.clamp_(min=_LOGP_FLOOR)


# ---------------------------------------------------------------------------------------------
# token_entropy
# ---------------------------------------------------------------------------------------------
class _ChunkedEntropy(torch.autograd.Function):
    """H per row of a [N, V] logits tensor, chunk_size rows at a time (forward and backward).

    Saves only the input reference and [N] vectors (row max, log-normaliser, H); backward
    recomputes one chunk of probabilities at a time and writes dH/dz into one [N, V] gradient.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, inv_t: float, chunk_size: int) -> Tensor:
        cdt = _compute_dtype(logits)
        n = logits.shape[0]
        row_max = logits.amax(dim=-1).to(cdt)  # (N,)
        log_norm = torch.empty(n, dtype=cdt, device=logits.device)  # log sum_v exp(z'_v)
        entropy = torch.empty(n, dtype=cdt, device=logits.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            z = _shifted(logits[start:stop], row_max[start:stop], inv_t, cdt)  # (c, V), <= 0
            e = torch.exp(z)  # unnormalised probabilities
            s = e.sum(dim=-1)
            ez = e.mul_(z).sum(dim=-1)  # sum_v e_v z'_v <= 0
            log_norm[start:stop] = s.log()
            # H = log s - sum_v (e_v / s) z'_v : two non-negative terms, no cancellation
            entropy[start:stop] = s.log() - ez / s
        ctx.save_for_backward(logits, row_max, log_norm, entropy)
        ctx.inv_t, ctx.chunk_size = inv_t, chunk_size
        return entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor | None, None, None]:
        logits, row_max, log_norm, entropy = ctx.saved_tensors
        inv_t, chunk_size = ctx.inv_t, ctx.chunk_size
        cdt = row_max.dtype
        grad = torch.empty_like(logits)  # (N, V), the input's dtype
        coef = grad_h.to(cdt) * (-inv_t)  # dH/dz = -p (log p + H) / T
        for start in range(0, logits.shape[0], chunk_size):
            stop = min(start + chunk_size, logits.shape[0])
            logp = _shifted(logits[start:stop], row_max[start:stop], inv_t, cdt)
            logp.sub_(log_norm[start:stop, None]).clamp_(min=_LOGP_FLOOR)  # (c, V) log p
            p = torch.exp(logp)
            logp.add_(entropy[start:stop, None]).mul_(p).mul_(coef[start:stop, None])
            grad[start:stop] = logp
        return grad, None, None


def token_entropy(
    logits: Tensor, *, temperature: float = 1.0, chunk_size: int | None = None
) -> Tensor:
    """Full-vocabulary entropy of the sampling distribution, per position.

    H_t = -sum_v p_v log p_v,  p = softmax(logits_t / temperature)  (nats; docs/concepts.md;
    Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", track this quantity).
    Computed in the stable form H = log s - sum_v (e_v / s) z'_v with z' = (z - max z) / T,
    e = exp(z'), s = sum_v e_v, in float32 (float64 stays float64).

    Args:
        logits: (..., V) any floating dtype. -inf entries are masked vocabulary (0 log 0 = 0).
        temperature: T > 0; the entropy is that of the distribution actually sampled from.
        chunk_size: None computes all rows at once with plain autograd ops (supports
            higher-order gradients). An int processes that many rows at a time in forward and
            backward through a custom autograd Function: at most one chunk of probabilities
            is alive, and backward recomputes it (first-order gradients only).

    Returns:
        (...) entropy in float32 (float64 for float64 input), in [0, log V].

    Raises:
        ValueError: bad arguments, or a row with no finite logit (all -inf) or with NaN/+inf.
    """
    _check_float(logits, "logits", 1)
    _check_chunk_size(chunk_size, allow_none=True)
    inv_t = 1.0 / _check_temperature(temperature)
    vocab = logits.shape[-1]
    if vocab == 0:
        raise ValueError("logits must have a non-empty last (vocabulary) dim")
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, vocab)  # (N, V)
    if chunk_size is None:
        cdt = _compute_dtype(logits)
        row_max = flat.detach().amax(dim=-1)  # softmax is shift-invariant: no gradient needed
        z = flat.to(cdt) - row_max.to(cdt).unsqueeze(-1)
        if inv_t != 1.0:
            z = z * inv_t
        logp = torch.log_softmax(z.clamp(min=_LOGP_FLOOR), dim=-1)  # (N, V)
        entropy = -(logp.exp() * logp).sum(dim=-1)
    else:
        entropy = cast(Tensor, _ChunkedEntropy.apply(flat, inv_t, chunk_size))
    _require_finite(entropy.detach(), "token_entropy")
    return entropy.reshape(lead)


# ---------------------------------------------------------------------------------------------
# token_logprobs
# ---------------------------------------------------------------------------------------------
class _ChunkedLogprobs(torch.autograd.Function):
    """log p_y per row of [N, V] logits; forward keeps only [N] vectors, chunk rows at a time."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, ids: Tensor, inv_t: float, chunk_size: int) -> Tensor:
        cdt = _compute_dtype(logits)
        n = logits.shape[0]
        row_max = logits.amax(dim=-1).to(cdt)  # (N,)
        log_norm = torch.empty(n, dtype=cdt, device=logits.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            z = _shifted(logits[start:stop], row_max[start:stop], inv_t, cdt)  # (c, V)
            log_norm[start:stop] = torch.logsumexp(z, dim=-1)
        # the taken logit is gathered unclamped: log p_y = -inf for a masked taken token
        taken = logits.gather(1, ids[:, None]).squeeze(1).to(cdt)
        logp = (taken - row_max) * inv_t - log_norm
        ctx.save_for_backward(logits, ids, row_max, log_norm)
        ctx.inv_t, ctx.chunk_size = inv_t, chunk_size
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_logp: Tensor) -> tuple[Tensor | None, None, None, None]:
        logits, ids, row_max, log_norm = ctx.saved_tensors
        inv_t, chunk_size = ctx.inv_t, ctx.chunk_size
        cdt = row_max.dtype
        g = grad_logp.to(cdt) * inv_t  # d log p_y / dz = (onehot(y) - p) / T
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], chunk_size):
            stop = min(start + chunk_size, logits.shape[0])
            logp = _shifted(logits[start:stop], row_max[start:stop], inv_t, cdt)
            dz = logp.sub_(log_norm[start:stop, None]).exp_().mul_(-g[start:stop, None])
            dz.scatter_add_(1, ids[start:stop, None], g[start:stop, None])
            grad[start:stop] = dz
        return grad, None, None, None


def token_logprobs(
    logits: Tensor,
    token_ids: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Log-probability of the taken tokens under the sampling distribution.

    log pi(y_t) = z_{t, y_t} / T - logsumexp_v(z_{t, v} / T)   (gather, minus log-normaliser).
    Rows are processed in chunks, so no second [N, V] tensor is created (not even for bf16
    input); backward writes (onehot(y) - p) / T into a single [N, V] gradient.

    Args:
        logits: (..., V) any floating dtype; -inf entries are masked vocabulary.
        token_ids: (...) integer ids in [0, V), the shape of logits without its last dim.
        temperature: T > 0, the sampling temperature.
        chunk_size: rows per chunk; None picks about 4M elements per chunk.

    Returns:
        (...) log-probabilities (<= 0) in float32 (float64 for float64 input); -inf where the
        taken token's logit is -inf.

    Raises:
        ValueError: bad arguments or ids, or a row with no finite logit or with NaN/+inf.
    """
    _check_float(logits, "logits", 1)
    _check_chunk_size(chunk_size, allow_none=True)
    inv_t = 1.0 / _check_temperature(temperature)
    vocab = logits.shape[-1]
    if vocab == 0:
        raise ValueError("logits must have a non-empty last (vocabulary) dim")
    ids = _check_token_ids(token_ids, logits.shape[:-1], vocab, "logits")
    rows = chunk_size if chunk_size is not None else max(1, _CHUNK_ELEMENTS // vocab)
    flat = logits.reshape(-1, vocab)
    logp = cast(Tensor, _ChunkedLogprobs.apply(flat, ids, inv_t, rows))
    _require_finite(logp.detach(), "token_logprobs", allow_neginf=True)  # -inf: masked taken id
    return logp.reshape(logits.shape[:-1])


# ---------------------------------------------------------------------------------------------
# fused_logprobs_entropy
# ---------------------------------------------------------------------------------------------
def _chunk_logits(h: Tensor, w: Tensor, b: Tensor | None, inv_t: float, out: Tensor) -> Tensor:
    """out <- (h @ w^T + b) / T for one chunk of rows: (c, D) x (V, D) -> (c, V), no new alloc."""
    if b is not None:
        return torch.addmm(b, h, w.t(), beta=inv_t, alpha=inv_t, out=out)
    if inv_t == 1.0:
        return torch.mm(h, w.t(), out=out)
    return torch.addmm(out, h, w.t(), beta=0.0, alpha=inv_t, out=out)  # beta=0 ignores `out`


class _FusedLogprobsEntropy(torch.autograd.Function):
    """(log p_y, H, max_v p_v) from hidden [N, D], weight [V, D], bias [V], chunk rows at a time.

    Forward keeps [N] vectors (log-normaliser, H); backward recomputes each chunk's logits and
    applies dz = g_logp (onehot - p) - g_H p (log p + H), then dh = dz W / T, dW += dz^T h / T,
    db += sum_rows dz / T. Two [chunk, V] buffers are reused across chunks.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        ids: Tensor,
        inv_t: float,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        cdt = _compute_dtype(hidden, weight, bias)
        n, dev = hidden.shape[0], hidden.device
        w = weight.to(cdt)
        b = None if bias is None else bias.to(cdt)
        masked = b is not None and not bool(torch.isfinite(b).all())  # -inf bias = masked vocab
        c = min(chunk_size, max(n, 1))
        buf_z = torch.empty(c, weight.shape[0], dtype=cdt, device=dev)
        buf_e = torch.empty_like(buf_z)
        logp = torch.empty(n, dtype=cdt, device=dev)
        entropy = torch.empty_like(logp)
        top1 = torch.empty_like(logp)
        lse = torch.empty_like(logp)  # logsumexp_v z_v, z = (h W^T + b) / T
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            z = _chunk_logits(hidden[start:stop].to(cdt), w, b, inv_t, buf_z[: stop - start])
            row_max = z.amax(dim=-1, keepdim=True)
            z.sub_(row_max)  # z' <= 0, max 0
            taken = z.gather(1, ids[start:stop, None]).squeeze(1)
            if masked:
                z.clamp_(min=_LOGP_FLOOR)
            e = torch.exp(z, out=buf_e[: stop - start])
            s = e.sum(dim=-1)
            ez = e.mul_(z).sum(dim=-1)
            log_s = s.log()
            logp[start:stop] = taken - log_s
            entropy[start:stop] = log_s - ez / s
            top1[start:stop] = s.reciprocal()  # max_v p_v = exp(0) / s
            lse[start:stop] = row_max.squeeze(1) + log_s
        ctx.save_for_backward(hidden, weight, bias, ids, lse, entropy)
        ctx.inv_t, ctx.chunk_size, ctx.masked = inv_t, chunk_size, masked
        ctx.mark_non_differentiable(top1)
        return logp, entropy, top1

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, g_logp: Tensor, g_h: Tensor, _g_top1: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None]:
        hidden, weight, bias, ids, lse, entropy = ctx.saved_tensors
        inv_t, chunk_size = ctx.inv_t, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        cdt, n, dev = lse.dtype, hidden.shape[0], hidden.device
        w = weight.to(cdt)
        b = None if bias is None else bias.to(cdt)
        g_logp, g_h = g_logp.to(cdt), g_h.to(cdt)
        # dz = p * (a * log p + c) + g_logp * onehot, a = -g_H, c = -(g_logp + g_H * H)
        a = -g_h
        c_row = -(g_logp + g_h * entropy)
        d_hidden = torch.empty(n, hidden.shape[1], dtype=cdt, device=dev) if need_h else None
        d_weight = torch.empty_like(w) if need_w else None  # first chunk overwrites it
        d_bias = torch.zeros(w.shape[0], dtype=cdt, device=dev) if need_b else None
        rows = min(chunk_size, max(n, 1))
        buf_z = torch.empty(rows, w.shape[0], dtype=cdt, device=dev)
        buf_p = torch.empty_like(buf_z)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            h = hidden[start:stop].to(cdt)
            logp = _chunk_logits(h, w, b, inv_t, buf_z[: stop - start])
            logp.sub_(lse[start:stop, None])
            if ctx.masked:
                logp.clamp_(min=_LOGP_FLOOR)
            p = torch.exp(logp, out=buf_p[: stop - start])
            torch.addcmul(c_row[start:stop, None], logp, a[start:stop, None], out=logp)
            dz = p.mul_(logp)  # (c, V)
            dz.scatter_add_(1, ids[start:stop, None], g_logp[start:stop, None])
            if d_hidden is not None:
                torch.addmm(d_hidden[start:stop], dz, w, beta=0.0, alpha=inv_t,
                            out=d_hidden[start:stop])  # fmt: skip
            if d_weight is not None:  # beta=0 on the first chunk: no zero-fill pass over [V, D]
                d_weight.addmm_(dz.t(), h, beta=0.0 if start == 0 else 1.0, alpha=inv_t)
            if d_bias is not None:
                d_bias.add_(dz.sum(dim=0), alpha=inv_t)
        if d_weight is not None and n == 0:
            d_weight.zero_()
        return (
            None if d_hidden is None else d_hidden.to(hidden.dtype),
            None if d_weight is None else d_weight.to(weight.dtype),
            None if d_bias is None else d_bias.to(bias.dtype),
            None,
            None,
            None,
        )


def fused_logprobs_entropy(
    hidden: Tensor,
    weight: Tensor,
    token_ids: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    return_top1: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Taken-token log-probs and full-vocab entropy from hidden states, never building [N, V].

    With z = (hidden @ weight^T + bias) / T and p = softmax(z), per position t:
        logp_t = z_{t, y_t} - logsumexp(z_t),   H_t = -sum_v p_{t, v} log p_{t, v},
        top1_t = max_v p_{t, v}  (detached, for monitoring).
    Rows are processed chunk_size at a time; a custom autograd Function recomputes each
    chunk's logits in backward (verl's fused kernel does the same on GPU):
        dz = g_logp (onehot(y) - p) - g_H p (log p + H),
        d hidden = dz W / T,  d W += dz^T hidden / T,  d bias += sum_rows dz / T.
    Peak extra memory is two (chunk_size, V) buffers plus dW; the cost is one extra matmul
    (logits recomputed in backward). Only first-order gradients are supported.

    Args:
        hidden: (..., D) last hidden states, e.g. (B, T, D) or (N, D); any floating dtype.
        weight: (V, D) lm_head weight.
        token_ids: (...) taken token ids in [0, V), the shape of hidden without its last dim.
        bias: optional (V,) lm_head bias; -inf entries mask vocabulary.
        temperature: T > 0, the sampling temperature.
        chunk_size: rows per chunk (memory ~ 2 * chunk_size * V * 4 bytes in float32). On
            CPU, 512 rows at V = 151,936 ran as fast as full logits (benchmarks/token_stats.py);
            much smaller chunks (64) slow the matmuls down.
        return_top1: also return max_v p_v (detached).

    Returns:
        (logprobs, entropy) or (logprobs, entropy, top1_prob), each shaped like token_ids, in
        float32 (float64 if any input is float64). Gradients flow to hidden, weight and bias
        from both logprobs and entropy, in each input's own dtype.

    Raises:
        ValueError: bad shapes, dtypes, ids or hyperparameters, or non-finite results.
    """
    _check_float(hidden, "hidden", 1)
    _check_float(weight, "weight", 2)
    _check_chunk_size(chunk_size, allow_none=False)
    inv_t = 1.0 / _check_temperature(temperature)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(
            f"weight must be (V, D) with V >= 1 and D = hidden.shape[-1] = {hidden.shape[-1]}; "
            f"got {tuple(weight.shape)}"
        )
    vocab = weight.shape[0]
    if bias is not None:
        _check_float(bias, "bias", 1)
        if bias.shape != (vocab,):
            raise ValueError(f"bias must have shape ({vocab},), got {tuple(bias.shape)}")
    lead = hidden.shape[:-1]
    ids = _check_token_ids(token_ids, lead, vocab, "hidden")
    flat = hidden.reshape(-1, hidden.shape[-1])  # (N, D)
    out = _FusedLogprobsEntropy.apply(flat, weight, bias, ids, inv_t, chunk_size)
    logp, entropy, top1 = cast(tuple[Tensor, Tensor, Tensor], out)
    _require_finite(entropy.detach(), "fused_logprobs_entropy")
    logp, entropy, top1 = logp.reshape(lead), entropy.reshape(lead), top1.reshape(lead)
    if return_top1:
        return logp, entropy, top1
    return logp, entropy
