"""Per-token KL estimators (Schulman's k1, k2, k3) and the `kl/ref` metric.

Notation: ``d = log p(x) - log q(x)`` for a token ``x`` sampled from ``p``. Then

    k1 = d                      unbiased for KL(p || q), high variance, can be negative
    k2 = d**2 / 2               biased (second order in d), always >= 0
    k3 = exp(-d) - 1 + d        unbiased for KL(p || q), always >= 0, low variance near p == q

(J. Schulman, "Approximating KL Divergence", 2020.) With ``p = pi_theta`` and ``q = pi_ref``
this is the KL to the reference policy; with ``p = pi_old`` and ``q = pi_theta`` (swap the
arguments) it is the `kl/old_approx` diagnostic of `ops.losses`.

Gradients, when an estimate is used as a *loss* on tokens sampled from ``pi_theta`` (sampling
distribution held fixed), in expectation over those samples:

* k1: E[grad d] = E[grad log pi] = 0 -- no pull towards the reference at all;
* k2: E[d * grad log pi] = grad KL(pi || ref) -- the reverse KL of the RLHF objective;
* k3: E[(1 - ref/pi) * grad log pi] = grad KL(ref || pi) -- the *forward* KL.

All three statements are checked exactly on a small categorical in ``tests/unit/test_kl.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KL_KINDS", "kl_estimate", "kl_ref_metrics"]

KL_KINDS: tuple[str, ...] = ("k1", "k2", "k3")
# Names used by verl's `kl_penalty` option, accepted as aliases.
_ALIASES: dict[str, str] = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


def _resolve_kind(kind: str) -> str:
    resolved = _ALIASES.get(kind, kind)
    if resolved not in KL_KINDS:
        allowed = ", ".join([*KL_KINDS, *(f"{a} (= {k})" for a, k in _ALIASES.items())])
        raise ValueError(f"unknown KL estimator kind {kind!r}; allowed: {allowed}")
    return resolved


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, *, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(p || q) for tokens sampled from ``p``.

    Args:
        logprobs: [B, T] (any shape) log p of the sampled tokens (``log pi_theta``).
        ref_logprobs: same shape, log q of the same tokens (``log pi_ref``).
        kind: ``"k1"`` (d), ``"k2"`` (d^2/2) or ``"k3"`` (exp(-d) - 1 + d), with
            ``d = logprobs - ref_logprobs``; verl's names ``"kl"``, ``"mse"``, ``"low_var_kl"``
            are accepted as aliases of k1, k2, k3.

    Returns:
        Tensor of the input shape. Gradients flow into both arguments; detach the one that
        is a fixed reference. No masking here: reduce with a mask afterwards.
    """
    resolved = _resolve_kind(kind)
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} "
            "must have the same shape"
        )
    d = logprobs - ref_logprobs
    if resolved == "k1":
        return d
    if resolved == "k2":
        return 0.5 * d * d
    # expm1 keeps the estimate accurate (and >= 0) when d is tiny: exp(-d) - 1 cancels badly.
    return torch.expm1(-d) + d


def kl_ref_metrics(
    logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, *, kind: str = "k3"
) -> dict[str, float]:
    """The `kl/ref` metric: mean per-token KL(pi_theta || pi_ref) estimate over valid tokens.

    Args:
        logprobs, ref_logprobs: [B, T] log-probabilities of the sampled tokens.
        mask: [B, T], nonzero = valid response token. Values at masked positions are ignored
            (they may be NaN/inf padding). No valid token gives 0.0.
        kind: estimator, see `kl_estimate`.

    Returns:
        ``{"kl/ref": float}``, a token mean over this call's valid tokens (weight by the
        number of valid tokens when combining micro-batches).
    """
    if mask.shape != logprobs.shape:
        raise ValueError(
            f"mask {tuple(mask.shape)} must have the shape of logprobs {tuple(logprobs.shape)}"
        )
    valid = mask != 0
    with torch.no_grad():
        zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
        est = kl_estimate(
            torch.where(valid, logprobs, zero), torch.where(valid, ref_logprobs, zero), kind=kind
        )
        count = valid.sum()
        total = torch.where(valid, est, zero).sum()
        value = total / count.clamp_min(1)
    return {"kl/ref": float(value)}
