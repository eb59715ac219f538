"""Per-token changes to the advantages before the update: truncated importance sampling for
the train/inference mismatch (``importance_weights``, ``tis_weights``) and entropy-based
advantage shaping (``shape_advantages``)."""

from __future__ import annotations

import torch
from torch import Tensor

from entropy_rl.ops.regularizers import entropy_shaped_advantages
from entropy_rl.train.batch import RolloutBatch
from entropy_rl.train.distributed import DistInfo, all_reduce


def importance_weights(
    batch: RolloutBatch,
    *,
    cap: float | None,
    info: DistInfo = DistInfo(),  # noqa: B008  (frozen dataclass: a safe default)
) -> dict[str, float]:
    """Truncated importance sampling (TIS) for the train/inference mismatch: sets
    ``batch.token_weights`` (B, T) = min(pi_old / pi_sampler, cap) on response tokens when the
    engine reported its own log-probs (vLLM kernels, precision), and returns ``mismatch/k3``
    (k3 of log(pi_old / pi_sampler), token mean) plus ``tis/weight_mean`` and
    ``tis/capped_frac``. No sampler log-probs: {} and no weights; ``cap`` None: only the k3.
    The metrics are token means over every rank's tokens (``info``), like those the update
    computes per micro-batch when pi_old is its own forward (``pi_old_from_update``)."""
    if batch.sampler_logprobs is None or batch.old_logprobs is None:
        return {}
    batch.token_weights, local = tis_weights(
        batch.old_logprobs, batch.sampler_logprobs, batch.mask, cap=cap
    )
    n = batch.mask.sum().double()
    sums = all_reduce(
        torch.stack([torch.tensor(v, dtype=torch.float64) * n for v in local.values()] + [n]), info
    )
    return {k: float(sums[i] / sums[-1].clamp(min=1)) for i, k in enumerate(local)}


def tis_weights(
    old: Tensor, sampler: Tensor, mask: Tensor, *, cap: float | None
) -> tuple[Tensor | None, dict[str, float]]:
    """Truncated importance weights min(pi_old / pi_sampler, cap) * mask, each (B, T), and their
    metrics as token means over ``mask``: ``mismatch/k3`` (k3 of d = log(pi_old / pi_sampler):
    exp(-d) - 1 + d), ``tis/weight_mean``, ``tis/capped_frac``. ``cap`` None: no weights, the
    k3 alone."""
    n = mask.sum().clamp(min=1)
    d = old - sampler  # log(pi_old / pi_sampler)
    out = {"mismatch/k3": float(((torch.exp(-d) - 1 + d) * mask).sum() / n)}
    if cap is None:
        return None, out
    ratio = torch.exp(d)
    weights = ratio.clamp(max=cap) * mask
    out["tis/weight_mean"] = float((weights * mask).sum() / n)
    out["tis/capped_frac"] = float(((ratio > cap).float() * mask).sum() / n)
    return weights, out


def shape_advantages(
    batch: RolloutBatch, entropy: Tensor, *, alpha: float, kappa: float, info: DistInfo
) -> dict[str, float]:
    """Entropy-based advantage shaping (Cheng et al. 2025; ops.regularizers): sets
    ``batch.token_advantages`` (B, T) = (A + min(alpha * H_old, |A| / kappa)) on response tokens,
    ``entropy`` (B, T) the rollout policy's; returns ``adv/entropy_bonus``, the bonus's mean over
    all ranks' response tokens."""
    shaped = entropy_shaped_advantages(batch.advantages, entropy, alpha=alpha, kappa=kappa)
    batch.token_advantages = shaped * batch.mask
    sums = torch.stack([((shaped - batch.advantages[:, None]) * batch.mask).sum(),
                        batch.mask.sum()])  # fmt: skip
    all_reduce(sums, info)  # a global mean, like every logged metric
    return {"adv/entropy_bonus": float(sums[0] / sums[1].clamp(min=1))}
