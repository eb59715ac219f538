"""Per-step entropy monitor: statistics from tensors the policy update already holds.

Nothing here runs the model. The trainer passes the per-token entropy, the sampled tokens'
log-probabilities, the advantages and the response mask it already computed for the loss, and
gets back detached Python floats under the names of ``docs/metrics.md``.

Shapes: ``B`` sequences, ``T`` response positions. ``mask`` is ``[B, T]``, bool or 0/1, and
marks the valid response tokens; every statistic is over those tokens only (padding never
counts). Entropy is the full-vocabulary entropy of the *sampling* distribution
``softmax(logits / temperature)`` in nats (docs/concepts.md); it is computed in ``ops``,
not here.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "NEAR_DET_THRESHOLD",
    "TOP_FRACTION",
    "EntropyDynamics",
    "entropy_by_position",
    "entropy_stats",
    "logp_adv_covariance",
]

NEAR_DET_THRESHOLD = 0.01
"""A token counts as near-deterministic when its entropy is below this (nats)."""

TOP_FRACTION = 0.2
"""``entropy/top20_mean`` averages the ``ceil(0.2 * N)`` highest-entropy tokens."""


def _valid_mask(mask: Tensor, shape: torch.Size, name: str) -> Tensor:
    """Check ``mask`` against a ``[B, T]`` tensor and return it as bool."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D [B, T], got shape {tuple(mask.shape)}")
    if mask.shape != shape:
        raise ValueError(
            f"{name} has shape {tuple(shape)} but mask has {tuple(mask.shape)}; they must match"
        )
    if mask.dtype != torch.bool:
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("mask must be bool or contain only 0 and 1")
        mask = mask != 0
    if not bool(mask.any()):
        raise ValueError("mask selects no tokens: statistics need at least one valid token")
    return mask


def _quantile_sorted(sorted_vals: Tensor, q: float) -> float:
    """Quantile of an ascending 1-D tensor, linear interpolation (numpy's default method)."""
    n = sorted_vals.numel()
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_vals[lo] + frac * (sorted_vals[hi] - sorted_vals[lo]))


def entropy_stats(
    entropy: Tensor, logprobs: Tensor, mask: Tensor, *, top1_prob: Tensor | None = None
) -> dict[str, float]:
    """Token-entropy and sampled-token statistics over the valid response tokens.

    Args:
        entropy: ``[B, T]`` per-token entropy H_t = -sum_v p_v log p_v (nats).
        logprobs: ``[B, T]`` log pi(o_t) of the sampled tokens, same policy as ``entropy``.
        mask: ``[B, T]`` valid response tokens (bool or 0/1).
        top1_prob: optional ``[B, T]`` max_v pi(v) per token.

    Returns, with N the number of valid tokens and all means taken over them:
        ``entropy/mean``: (1/N) sum_t H_t.
        ``entropy/p10``, ``entropy/p50``, ``entropy/p90``: quantiles of H_t (linear
            interpolation between order statistics, as ``numpy.quantile``).
        ``entropy/top20_mean``: mean of the ``ceil(0.2 * N)`` largest H_t (the "forking"
            minority of Wang et al. 2025).
        ``entropy/near_det_frac``: fraction of tokens with H_t < 0.01 nats.
        ``entropy/surprisal``: (1/N) sum_t -log pi(o_t). This is the sampled token's
            surprisal, not the entropy (its expectation over o_t is the entropy).
        ``prob/sampled_mean``: (1/N) sum_t pi(o_t).
        ``prob/top1_mean``: (1/N) sum_t max_v pi(v), only when ``top1_prob`` is given.

    Everything is detached and computed in float64.
    """
    m = _valid_mask(mask, entropy.shape, "entropy")
    if logprobs.shape != entropy.shape:
        raise ValueError(
            f"logprobs has shape {tuple(logprobs.shape)}, entropy {tuple(entropy.shape)};"
            " they must match"
        )
    h = entropy.detach().to(torch.float64)[m]  # (N,)
    lp = logprobs.detach().to(torch.float64)[m]  # (N,)
    n = h.numel()
    h_sorted, _ = torch.sort(h)
    k_top = max(1, math.ceil(TOP_FRACTION * n))
    out = {
        "entropy/mean": float(h.mean()),
        "entropy/p10": _quantile_sorted(h_sorted, 0.1),
        "entropy/p50": _quantile_sorted(h_sorted, 0.5),
        "entropy/p90": _quantile_sorted(h_sorted, 0.9),
        "entropy/top20_mean": float(h_sorted[n - k_top :].mean()),
        "entropy/near_det_frac": float((h < NEAR_DET_THRESHOLD).to(torch.float64).mean()),
        "entropy/surprisal": float((-lp).mean()),
        "prob/sampled_mean": float(lp.exp().mean()),
    }
    if top1_prob is not None:
        if top1_prob.shape != entropy.shape:
            raise ValueError(
                f"top1_prob has shape {tuple(top1_prob.shape)}, entropy"
                f" {tuple(entropy.shape)}; they must match"
            )
        out["prob/top1_mean"] = float(top1_prob.detach().to(torch.float64)[m].mean())
    return out


def entropy_by_position(
    entropy: Tensor, mask: Tensor, *, buckets: int = 4, max_len: int | None = None
) -> dict[str, float]:
    """Mean entropy per bucket of response position: ``entropy/pos_0`` .. ``pos_{buckets-1}``.

    A token's response position p is the number of valid tokens before it in its row
    (``cumsum(mask) - 1``), so left- and right-padded layouts give the same answer. Bucket
    k holds positions with ``floor(p * buckets / max_len) == k``: equal fractions of
    ``max_len`` (quarters by default), e.g. with max_len 8 and 4 buckets, positions 0-1, 2-3,
    4-5, 6-7.

    Args:
        entropy: ``[B, T]`` per-token entropy (nats).
        mask: ``[B, T]`` valid response tokens.
        buckets: number of buckets, >= 1.
        max_len: the longest possible response (``max_new_tokens``); defaults to ``T``.
            Must be >= the longest response in the batch.

    Returns:
        ``{"entropy/pos_k": mean H_t over the bucket's valid tokens}`` for every k. A bucket
        with no token (all responses shorter than its start) is ``nan``, so the keys are the
        same at every step.
    """
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"buckets must be an int >= 1, got {buckets!r}")
    m = _valid_mask(mask, entropy.shape, "entropy")
    pos = torch.cumsum(m.to(torch.int64), dim=1) - 1  # (B, T) response position
    longest = int(pos[m].max()) + 1
    length = entropy.shape[1] if max_len is None else max_len
    if isinstance(length, bool) or not isinstance(length, int) or length < longest:
        raise ValueError(
            f"max_len must be an int >= the longest response ({longest}), got {max_len!r}"
        )
    bucket = (pos * buckets) // length  # (B, T) in [0, buckets)
    h = entropy.detach().to(torch.float64)
    out: dict[str, float] = {}
    for k in range(buckets):
        sel = m & (bucket == k)
        out[f"entropy/pos_{k}"] = float(h[sel].mean()) if bool(sel.any()) else math.nan
    return out


def logp_adv_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> float:
    """Cov(log pi, A) over the batch's valid response tokens (Cui et al. 2025).

    Cov = (1/N) sum_t (log pi(o_t) - mean log pi)(A_t - mean A), the population covariance
    over the N valid tokens (the batch mean of the per-token terms Clip-Cov / KL-Cov rank).
    Under natural policy gradient the next entropy change is about -eta * Cov, so a positive
    covariance (confident tokens rewarded) predicts falling entropy.

    Args:
        logprobs: ``[B, T]`` log pi of the sampled tokens (the rollout policy's).
        advantages: ``[B, T]`` per-token or ``[B]`` per-sequence advantages (broadcast over T).
        mask: ``[B, T]`` valid response tokens.
    """
    m = _valid_mask(mask, logprobs.shape, "logprobs")
    if advantages.dim() == 1 and advantages.shape[0] == logprobs.shape[0]:
        advantages = advantages[:, None].expand_as(logprobs)
    if advantages.shape != logprobs.shape:
        raise ValueError(
            f"advantages must be [B, T] {tuple(logprobs.shape)} or [B] ({logprobs.shape[0]},),"
            f" got {tuple(advantages.shape)}"
        )
    lp = logprobs.detach().to(torch.float64)[m]
    adv = advantages.detach().to(torch.float64)[m]
    return float(((lp - lp.mean()) * (adv - adv.mean())).mean())


def _pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation; nan for fewer than 3 points or a constant series."""
    n = len(xs)
    if n < 3:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0.0 or syy <= 0.0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


class EntropyDynamics:
    """Compare the entropy change Cov(log pi, A) predicts with the change that happens.

    Cui et al. 2025: for a softmax policy under natural policy gradient with step size eta,
    H(pi_{k+1}) - H(pi_k) ~= -eta * Cov_k(log pi, A). Call :meth:`update` once per RL step,
    after the update, with that step's rollout entropy H_k (``entropy/mean``), its covariance
    Cov_k (``cov/logp_adv``) and ``lr_scale``. It returns

    * ``entropy/predicted_delta`` = -lr_scale * Cov_k: the change predicted for the *next*
      step (H_{k+1} - H_k), so in the metrics file it lines up with the next row's actual delta;
    * ``entropy/actual_delta`` = H_k - H_{k-1} (nan at the first step);
    * ``entropy/pred_corr``: Pearson correlation of (predicted_{k-1}, actual_k) pairs over
      the last ``window`` steps; nan until 3 pairs exist or while either series is constant.

    ``lr_scale`` stands for eta. A sensible value is the learning rate times the number of
    optimizer steps per rollout, but Adam, clipping and several epochs make the true scale
    unknown: only the sign of the prediction and its correlation with the actual change are
    meaningful; the magnitude is right only up to a constant factor.

    ``actual_delta`` compares two different prompt batches; the change the update caused on its
    own batch is ``entropy/delta_same_batch`` (train.forecast), which the report scores
    ``predicted_delta`` of the same row against (report.forecast).
    """

    def __init__(self, *, window: int = 20) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 3:
            raise ValueError(f"window must be an int >= 3 (Pearson needs 3 points), got {window!r}")
        self.window = window
        self.prev_entropy: float | None = None
        self.prev_predicted: float | None = None
        self.pairs: deque[tuple[float, float]] = deque(maxlen=window)

    def update(self, step_entropy: float, cov: float, lr_scale: float) -> dict[str, float]:
        """Record step k and return the three ``entropy/*`` dynamics metrics (see class)."""
        if not math.isfinite(lr_scale) or lr_scale < 0:
            raise ValueError(f"lr_scale must be finite and >= 0, got {lr_scale!r}")
        h, c = float(step_entropy), float(cov)
        predicted = -lr_scale * c
        actual = math.nan if self.prev_entropy is None else h - self.prev_entropy
        if self.prev_predicted is not None and math.isfinite(actual + self.prev_predicted):
            self.pairs.append((self.prev_predicted, actual))
        self.prev_entropy = h if math.isfinite(h) else None
        self.prev_predicted = predicted
        xs = [p for p, _ in self.pairs]
        ys = [a for _, a in self.pairs]
        return {
            "entropy/predicted_delta": predicted,
            "entropy/actual_delta": actual,
            "entropy/pred_corr": _pearson(xs, ys),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: plain Python values, JSON- and torch.save-friendly."""
        return {
            "window": self.window,
            "prev_entropy": self.prev_entropy,
            "prev_predicted": self.prev_predicted,
            "pairs": [list(p) for p in self.pairs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; raises ValueError on a malformed dict."""
        try:
            window = int(state["window"])
            pairs = [(float(p), float(a)) for p, a in state["pairs"]]
            prev_h, prev_p = state["prev_entropy"], state["prev_predicted"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an EntropyDynamics state dict: {exc!r}") from exc
        if window < 3:
            raise ValueError(f"state window must be >= 3, got {window}")
        self.window = window
        self.pairs = deque(pairs, maxlen=window)
        self.prev_entropy = None if prev_h is None else float(prev_h)
        self.prev_predicted = None if prev_p is None else float(prev_p)
