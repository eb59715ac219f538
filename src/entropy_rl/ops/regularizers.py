"""Entropy regularisers and the KL-to-reference penalty (docs/concepts.md, "Controllers").

* `entropy_bonus`: the term ``-coef * agg(H)`` to add to the loss.
* `high_entropy_mask`: the 80/20 "forking tokens" selection (Wang et al. 2025).
* `entropy_shaped_advantages`: ``A + min(alpha * sg(H), |A| / kappa)`` (Cheng et al. 2025).
* `kl_penalty`: ``coef * agg(k(log pi, log pi_ref))``, the KL term to add to the loss.

All normalisation goes through `entropy_rl.ops.aggregate.aggregate`. Entropy ``H`` is the
full-vocabulary entropy of the sampling distribution (softmax(logits / T)), [B, T], in nats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entropy_rl.ops.aggregate import aggregate
from entropy_rl.ops.kl import kl_estimate

__all__ = ["entropy_bonus", "entropy_shaped_advantages", "high_entropy_mask", "kl_penalty"]


def _check_mask(name: str, tensor: Tensor, mask: Tensor) -> None:
    if tensor.dim() != 2 or mask.shape != tensor.shape:
        raise ValueError(
            f"{name} and mask must both be [B, T]; got {tuple(tensor.shape)} and "
            f"{tuple(mask.shape)}"
        )


def entropy_bonus(
    entropy: Tensor,
    mask: Tensor,
    *,
    coef: float,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """The entropy-bonus term to ADD to the loss: ``-coef * agg(H, M)``.

    Minimising it raises entropy for ``coef > 0``; a negative ``coef`` minimises entropy.
    Cui et al. (2025) find a fixed coef fragile: 1e-4..1e-3 does little, 1e-2 makes entropy
    explode; verl's default is 0.

    Args:
        entropy: [B, T] per-token entropy with its gradient (nats).
        mask: [B, T] bool or 0/1.
        coef: finite bonus coefficient.
        agg, num_tokens, num_seqs, max_len: see `aggregate`; use the same as the policy loss
            so both terms share one normaliser.

    Returns:
        0-dim tensor.
    """
    if not (isinstance(coef, int | float) and math.isfinite(coef)):
        raise ValueError(f"coef must be a finite number, got {coef!r}")
    _check_mask("entropy", entropy, mask)
    h = aggregate(entropy, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    return -coef * h


def high_entropy_mask(entropy: Tensor, mask: Tensor, *, rho: float = 0.2) -> Tensor:
    """Valid tokens whose entropy is at or above the (1 - rho) quantile of the valid tokens.

    Wang et al. 2025 ("Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL
    for LLM Reasoning") update only these "forking" tokens, rho = 0.2. The quantile is
    computed over *this call's* valid tokens with linear interpolation (as ``torch.quantile``),
    so call it on the whole rollout batch, before splitting into micro-batches. Ties at the
    threshold are all kept; about ``rho * N`` tokens survive (at least one).

    Normaliser: pass ``mask & high_entropy_mask(H, mask)`` as the loss mask, so ``token-mean``
    averages over the kept tokens (as their implementation does), and count the kept tokens
    for ``num_tokens``.

    Args:
        entropy: [B, T] per-token entropy (no gradient is needed; the result is a mask).
        mask: [B, T] bool or 0/1.
        rho: fraction of tokens to keep, in (0, 1]; 1 keeps every valid token.

    Returns:
        [B, T] bool, False at masked positions; all False when no token is valid.
    """
    if not (isinstance(rho, int | float) and 0 < rho <= 1):
        raise ValueError(f"rho is the kept fraction and must be in (0, 1], got {rho!r}")
    _check_mask("entropy", entropy, mask)
    valid = mask != 0
    h = entropy.detach()
    values = h[valid].sort().values  # (N,), ascending
    n = values.numel()
    if n == 0:
        return torch.zeros_like(valid)
    # Linear interpolation between order statistics, as torch.quantile (which caps its input
    # at 2**24 elements, too few for a large rollout).
    pos = (1.0 - rho) * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    threshold = values[lo] + (pos - lo) * (values[hi] - values[lo])
    return valid & (h >= threshold)


def entropy_shaped_advantages(
    advantages: Tensor, entropy: Tensor, *, alpha: float = 0.4, kappa: float = 2.0
) -> Tensor:
    """Entropy-based advantage shaping (Cheng et al. 2025, "Reasoning with Exploration: An
    Entropy Perspective"): ``A' = A + min(alpha * sg(H), |A| / kappa)``.

    The bonus is >= 0 and at most |A| / kappa, so it never flips the sign of A (for kappa > 1)
    and vanishes where A = 0. No gradient flows into ``entropy``. Defaults: alpha 0.4 (their
    GRPO setting; 0.1 for PPO), kappa 2.

    Args:
        advantages: [B, T], or [B] broadcast over tokens.
        entropy: [B, T] per-token entropy.
        alpha: entropy scale, >= 0.
        kappa: clip divisor, > 0.

    Returns:
        [B, T] shaped advantages (padding positions are not masked: mask them in the loss).
    """
    if not (isinstance(alpha, int | float) and 0 <= alpha < math.inf):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if not (isinstance(kappa, int | float) and 0 < kappa < math.inf):
        raise ValueError(f"kappa must be a finite number > 0, got {kappa!r}")
    if entropy.dim() != 2:
        raise ValueError(f"entropy must be [B, T], got shape {tuple(entropy.shape)}")
    if advantages.shape == entropy.shape[:1]:
        advantages = advantages[:, None].expand_as(entropy)
    elif advantages.shape != entropy.shape:
        raise ValueError(
            f"advantages must be [B, T] {tuple(entropy.shape)} or [B] "
            f"{tuple(entropy.shape[:1])}, got {tuple(advantages.shape)}"
        )
    bonus = torch.minimum(alpha * entropy.detach(), advantages.abs() / kappa)
    return advantages + bonus


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    *,
    coef: float,
    kind: str = "k3",
    agg: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """KL-to-reference term to ADD to the loss: ``coef * agg(k(log pi, log pi_ref), M)``.

    ``ref_logprobs`` is detached; masked positions are zeroed before the estimator, so
    padding never matters. See `entropy_rl.ops.kl` for which gradient each ``kind`` gives
    (k2: grad KL(pi || ref); k3: grad KL(ref || pi); k1: zero in expectation).

    Args:
        logprobs: [B, T] log pi_theta of the sampled tokens (with gradient).
        ref_logprobs: [B, T] log pi_ref of the same tokens.
        mask: [B, T] bool or 0/1.
        coef: finite coefficient, >= 0.
        kind: estimator, see `entropy_rl.ops.kl.kl_estimate`.
        agg, num_tokens, num_seqs, max_len: see `aggregate`.

    Returns:
        0-dim tensor.
    """
    if not (isinstance(coef, int | float) and 0 <= coef < math.inf):
        raise ValueError(f"coef must be a finite number >= 0, got {coef!r}")
    _check_mask("logprobs", logprobs, mask)
    _check_mask("ref_logprobs", ref_logprobs, mask)
    valid = mask != 0
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    est = kl_estimate(
        torch.where(valid, logprobs, zero),
        torch.where(valid, ref_logprobs.detach(), zero),
        kind=kind,
    )
    kl = aggregate(est, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    return coef * kl
