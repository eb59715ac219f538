"""The policy update of one RL step: several epochs of shuffled mini-batches over the rollout.

Old log-probs are recorded once per rollout (before the first optimizer step), so from the
second mini-batch on the update is off-policy and the clip can act. Each mini-batch is one
optimizer step, accumulated over micro-batches; the token-mean normaliser is the mini-batch's
token count (``num_tokens``), so accumulation does not change the loss.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from entropy_rl.ops.kl import kl_ref_metrics
from entropy_rl.ops.losses import policy_loss
from entropy_rl.ops.regularizers import entropy_bonus, kl_penalty
from entropy_rl.train.batch import RolloutBatch, policy_token_stats


@dataclass
class UpdateSettings:
    loss: str
    loss_kwargs: dict[str, Any]
    agg: str
    epochs: int
    mini_batches: int
    micro_batch_size: int
    temperature: float
    grad_clip: float
    entropy_coef: float
    kl_coef: float
    kl_kind: str
    kl_in_loss: bool
    logits_mode: str
    chunk_size: int
    max_len: int
    """Constant length of seq-mean-token-sum-norm (Dr. GRPO); the max completion length."""


def warn_if_on_policy(epochs: int, mini_batches: int) -> None:
    if epochs == 1 and mini_batches == 1:
        warnings.warn(
            "algo.ppo_epochs=1 and algo.mini_batches=1: every update is on-policy, the ratio is "
            "exactly 1 and the clip never acts (eps_low/eps_high have no effect). Use several "
            "epochs or mini-batches for clip-higher to matter (REFERENCE.md section 5).",
            UserWarning,
            stacklevel=2,
        )


@torch.no_grad()
def record_old_logprobs(
    model: Any, ref_model: Any | None, batch: RolloutBatch, s: UpdateSettings
) -> dict[str, Tensor]:
    """pi_old log-probs (and pi_ref's) for the whole rollout, plus the rollout policy's entropy and
    top-1 probability for the monitor: one no-grad forward, no extra pass for monitoring."""
    logps, ents, top1s, refs = [], [], [], []
    for idx in torch.arange(len(batch)).split(s.micro_batch_size):
        mb = batch.rows(idx)
        t = batch.targets.shape[1]
        lp, ent, top1 = policy_token_stats(
            model,
            mb,
            temperature=s.temperature,
            mode=s.logits_mode,
            chunk_size=s.chunk_size,
            with_top1=True,
        )
        pad = t - lp.shape[1]
        logps.append(torch.nn.functional.pad(lp.cpu(), (0, pad)))
        ents.append(torch.nn.functional.pad(ent.cpu(), (0, pad)))
        assert top1 is not None
        top1s.append(torch.nn.functional.pad(top1.cpu(), (0, pad)))
        if ref_model is not None:
            rlp, _, _ = policy_token_stats(
                ref_model,
                mb,
                temperature=s.temperature,
                mode=s.logits_mode,
                chunk_size=s.chunk_size,
            )
            refs.append(torch.nn.functional.pad(rlp.cpu(), (0, pad)))
    out = {"logprobs": torch.cat(logps), "entropy": torch.cat(ents), "top1": torch.cat(top1s)}
    if refs:
        out["ref_logprobs"] = torch.cat(refs)
    return out


def _grads_finite(model: Any) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def ppo_update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    s: UpdateSettings,
    *,
    generator: torch.Generator,
) -> tuple[dict[str, float], int]:
    """Run ``epochs x mini_batches`` optimizer steps on ``batch``; return (metrics, bad_steps).

    Metrics are token-weighted means over every micro-batch of every pass (``*/max`` keys: the
    max), so the clip fractions describe the whole update. A mini-batch whose loss or gradient
    is not finite is skipped (no optimizer step) and counted in ``bad_steps``.
    """
    assert batch.old_logprobs is not None
    sums: dict[str, float] = {}  # token-weighted
    maxes: dict[str, float] = {}
    losses: dict[str, float] = {}  # summed over micro-batches: each is its share of the step's loss
    grad_norms: list[float] = []
    upper_count = upper_prob = 0.0  # clip/upper_old_prob is a mean over upper-clipped tokens
    weight = 0.0
    steps = 0
    bad = 0
    n = len(batch)
    for _ in range(s.epochs):
        perm = torch.randperm(n, generator=generator)
        for mb_idx in perm.tensor_split(s.mini_batches):
            if len(mb_idx) == 0:
                continue
            num_tokens = float(batch.mask[mb_idx].sum())
            optimizer.zero_grad(set_to_none=True)
            finite = True
            for idx in mb_idx.split(s.micro_batch_size):
                mb = batch.rows(idx)
                loss, m = _micro_batch_loss(
                    model, mb, s, num_tokens=num_tokens, num_seqs=len(mb_idx)
                )
                if not torch.isfinite(loss):
                    finite = False
                    break
                loss.backward()
                w = float(m.pop("_count/tokens"))
                n_up = float(m.pop("_count/upper_clipped", 0.0))
                weight += w
                upper_count += n_up
                upper_prob += m.pop("clip/upper_old_prob", 0.0) * n_up
                for k, v in m.items():
                    if k.startswith("loss/"):
                        losses[k] = losses.get(k, 0.0) + v
                    elif k.endswith("/max"):
                        maxes[k] = max(maxes.get(k, -math.inf), v)
                    else:
                        sums[k] = sums.get(k, 0.0) + v * w
            if finite and _grads_finite(model):
                norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), s.grad_clip or float("inf")
                )
                grad_norms.append(float(norm))
                optimizer.step()
                steps += 1
            else:
                bad += 1
                optimizer.zero_grad(set_to_none=True)
                warnings.warn(
                    "non-finite loss or gradient: optimizer step skipped",
                    RuntimeWarning,
                    stacklevel=2,
                )
    metrics = {k: v / max(weight, 1.0) for k, v in sums.items()}
    metrics["clip/upper_old_prob"] = upper_prob / upper_count if upper_count else 0.0
    if grad_norms:
        metrics["grad/norm"] = sum(grad_norms) / len(grad_norms)
    metrics.update(maxes)
    metrics.update({k: v / max(steps + bad, 1) for k, v in losses.items()})
    metrics["update/optimizer_steps"] = float(steps)
    metrics["update/bad_steps"] = float(bad)
    return metrics, bad


def _micro_batch_loss(
    model: Any, mb: RolloutBatch, s: UpdateSettings, *, num_tokens: float, num_seqs: int
) -> tuple[Tensor, dict[str, float]]:
    """Policy loss (+ entropy bonus, + KL) of one micro-batch, scaled for accumulation."""
    assert mb.old_logprobs is not None
    logp, ent, _ = policy_token_stats(
        model, mb, temperature=s.temperature, mode=s.logits_mode, chunk_size=s.chunk_size
    )
    mask = mb.mask.to(logp.device)
    agg_kw: dict[str, Any] = {"num_tokens": num_tokens, "num_seqs": num_seqs, "max_len": s.max_len}
    loss, metrics = policy_loss(
        s.loss,
        logprobs=logp,
        old_logprobs=mb.old_logprobs.to(logp.device),
        advantages=mb.advantages.to(logp.device),
        mask=mask,
        agg=s.agg,
        **agg_kw,
        **s.loss_kwargs,
    )
    total = loss
    if s.entropy_coef > 0:
        bonus = entropy_bonus(ent, mask, coef=s.entropy_coef, agg=s.agg, **agg_kw)
        total = total + bonus
        metrics["loss/entropy_bonus"] = float(bonus.detach())
    if s.kl_coef > 0 and s.kl_in_loss and mb.ref_logprobs is not None:
        ref = mb.ref_logprobs.to(logp.device)
        total = total + kl_penalty(
            logp, ref, mask, coef=s.kl_coef, kind=s.kl_kind, agg=s.agg, **agg_kw
        )
        metrics |= kl_ref_metrics(logp, ref, mask, kind=s.kl_kind)
    # per-micro-batch metrics are reported as token means of this micro-batch
    metrics["loss/total"] = float(total.detach())
    return total, metrics
