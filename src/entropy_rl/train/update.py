"""The policy update of one RL step: several epochs of shuffled mini-batches over the rollout.

Old log-probs are recorded once per rollout (before the first optimizer step), so from the
second mini-batch on the update is off-policy and the clip can act. Each mini-batch is one
optimizer step, accumulated over micro-batches; the token-mean normaliser is the mini-batch's
token count (``num_tokens``), so accumulation does not change the loss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from entropy_rl.ops.kl import kl_ref_metrics
from entropy_rl.ops.losses import policy_loss
from entropy_rl.ops.regularizers import entropy_bonus, kl_penalty
from entropy_rl.train.batch import RolloutBatch, policy_token_stats
from entropy_rl.train.distributed import (
    DistInfo,
    all_gather_sizes,
    all_reduce,
    micro_batches,
    reduce_metrics,
    sum_gradients,
    to_local,
)
from entropy_rl.train.precision import LossScaler
from entropy_rl.train.sharding import sharded_token_stats
from entropy_rl.train.shared_prompt import prompt_keys
from entropy_rl.train.token_weights import tis_weights


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
    sharded: bool = False
    """FSDP-sharded model (train.sharding): FSDP sums the gradients, ranks run the same number
    of passes, and token statistics run inside the model's forward."""
    autocast: torch.dtype | None = None
    """Compute dtype of every forward (pi_old, pi_ref, update) under ``torch.autocast``
    (model.dtype; train.precision); None: plain float32."""
    shared_prompt: bool = False
    """Run each prompt once per micro-batch and its completions against its key/value cache
    (train.shared_prompt): the same values and gradients as the plain layout, less work.
    Micro-batches then hold a prompt's rows together (``by_length``)."""
    old_in_update: bool = False
    """pi_old is the update's own forward, detached (``pi_old_from_update``): no pi_old forward
    before the update; ``ppo_update`` computes the TIS weights per micro-batch and hands the
    forward's statistics back (``pi_old_out``)."""
    tis_cap: float | None = None
    """With ``old_in_update``: the truncated-importance-sampling cap (algo.tis_cap) applied per
    micro-batch where the engine reported its own log-probs; None: only ``mismatch/k3``."""
    skip_zero_advantage: bool = False
    """Leave out of the update the rows whose gradient is exactly 0 (advantage 0 at every
    token, ``rows_without_gradient``): the same gradient and optimizer step, less work."""


# Policy losses in which every token's gradient is its advantage times a finite factor, so a
# row whose advantage is 0 at every token adds exactly 0 to the gradient. Not clip_cov and
# kl_cov: they choose tokens by a covariance over the whole micro-batch, which those rows move.
ADVANTAGE_WEIGHTED_LOSSES = ("ppo", "entropic", "cispo", "gspo", "gpg")
# Metrics that are 0 on a token with advantage 0 under these losses (their clips need A > 0 or
# A < 0; gpg has none), so the tokens of left-out rows join their token means as zeros and
# the fractions keep their meaning, fractions of every response token. cispo clips the
# weight whatever the sign of A: its fractions cover the rows that ran.
_ZERO_AT_ZERO_ADVANTAGE = {
    loss: ("clip/upper_frac", "clip/lower_frac", "clip/dual_frac")
    for loss in ("ppo", "entropic", "gspo", "gpg")
}


def rows_without_gradient(batch: RolloutBatch, s: UpdateSettings) -> Tensor | None:
    """(B,) bool: the rows of ``batch`` whose loss adds exactly 0 to the gradient, or None when
    no row can be left out.

    A row qualifies when its advantage is 0 at every response token (``token_advantages`` when
    set, e.g. entropy-shaped, else the row's ``advantages``), the policy loss is weighted by
    the advantage token by token (``ADVANTAGE_WEIGHTED_LOSSES``) and no other term acts on it
    (no entropy bonus, no KL penalty in the loss). In GRPO-style batches these are the groups
    whose samples all earned the same reward (``groups/zero_var_frac``): their advantage
    A = r - mean(r) is 0. The update normalises by the whole mini-batch's tokens and sequences
    either way, so leaving them out changes the gradient only by the order of float additions.
    None also with ``s.skip_zero_advantage`` off and under FSDP sharding (``s.sharded``: every
    rank must run the same passes)."""
    extra_terms = s.entropy_coef > 0 or (s.kl_coef > 0 and s.kl_in_loss)
    if not s.skip_zero_advantage or s.sharded or extra_terms:
        return None
    if s.loss not in ADVANTAGE_WEIGHTED_LOSSES:
        return None
    adv = batch.advantages[:, None] if batch.token_advantages is None else batch.token_advantages
    return ((adv * batch.mask) == 0).all(1)


def _token_stats(
    model: Any, rows: RolloutBatch, s: UpdateSettings, *, with_top1: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(log-prob, entropy, top-1 or None) of ``rows``' completion tokens under ``model``, for
    the update and pi_old: unsharded without the attention mask on right-padded rows
    (``policy_token_stats(skip_pad_mask=True)``: the same values at completion tokens, less
    work), sharded inside the model's forward (``sharded_token_stats``)."""
    kw: dict[str, Any] = {"temperature": s.temperature, "mode": s.logits_mode,
                          "chunk_size": s.chunk_size, "with_top1": with_top1}  # fmt: skip
    if s.sharded:
        return sharded_token_stats(model, rows, autocast=s.autocast, **kw)
    return policy_token_stats(
        model, rows, skip_pad_mask=True, autocast=s.autocast, shared_prompt=s.shared_prompt, **kw
    )


def _write_pi_old(
    pi_old_out: dict[str, Tensor], idx: Tensor, stats: tuple[Tensor, Tensor, Tensor | None]
) -> None:
    """Rows ``idx`` of ``pi_old_out``'s log-prob, entropy and top-1 (each (B, T) on the CPU)
    from one forward's statistics, each (len(idx), T') with T' <= T."""
    for k, v in zip(("logprobs", "entropy", "top1"), stats, strict=True):
        assert v is not None
        pi_old_out[k][idx, : v.shape[1]] = v.float().cpu()


def warn_if_on_policy(epochs: int, mini_batches: int) -> None:
    if epochs == 1 and mini_batches == 1:
        warnings.warn(
            "algo.ppo_epochs=1 and algo.mini_batches=1: every update is on-policy, the ratio is "
            "exactly 1 and the clip never acts (eps_low/eps_high have no effect). Use several "
            "epochs or mini-batches for clip-higher to matter (verl #791, TRL #3120).",
            UserWarning,
            stacklevel=2,
        )


def sampler_is_pi_old(
    engine: Any, batch: RolloutBatch, *, autocast: torch.dtype | None = None
) -> bool:
    """True when the rollout engine's per-token statistics in ``batch`` are pi_old's exactly:
    the engine says so (``exact_logprobs``: the trainer's own fp32 weights, fp32 compute, full
    softmax(logits / T)), the update computes pi_old in float32 too (``autocast`` None or
    float32: under mixed precision the engine's and the update's low-precision kernels round
    differently, so the statistics are close, not pi_old's), and the engine reported log-prob,
    entropy and top-1 for every row. The pi_old forward is then redundant, and so is truncated
    importance sampling (the ratio is 1)."""
    have = (batch.sampler_logprobs, batch.sampler_entropy, batch.sampler_top1)
    fp32 = autocast is None or autocast == torch.float32
    exact = bool(getattr(engine, "exact_logprobs", False))
    return fp32 and exact and all(x is not None for x in have)


def pi_old_from_update(s: UpdateSettings, *, exact: bool, needs_old_first: bool) -> bool:
    """True when the update's own forward can stand in for the no-grad pi_old forward.

    With one epoch of one mini-batch the update takes a single optimizer step, after every
    micro-batch has run its forward, so each forward runs at the weights that made the rollout:
    pi_old is its log-probs, detached, and the ratio is 1 (TRL's GRPOTrainer does the same at
    ``num_iterations=1``). Worth it only when the engine's statistics are not pi_old's already
    (``exact``, see ``sampler_is_pi_old``: then no forward runs either way), and possible only
    when nothing needs pi_old before the update (``needs_old_first``: entropy-shaped advantages,
    a KL penalty in the reward). It saves one forward over the rollout, a third of the update's
    arithmetic, wherever the sampler is not the trainer: mixed precision, vLLM, ``generate``."""
    return s.epochs == 1 and s.mini_batches == 1 and not exact and not needs_old_first


@torch.no_grad()
def record_old_logprobs(
    model: Any,
    ref_model: Any | None,
    batch: RolloutBatch,
    s: UpdateSettings,
    *,
    from_sampler: bool = False,
    info: DistInfo = DistInfo(),  # noqa: B008  (frozen dataclass: a safe default)
) -> dict[str, Tensor]:
    """pi_old log-probs (and pi_ref's) for the whole rollout, plus the rollout policy's entropy and
    top-1 probability for the monitor: one no-grad forward, no extra pass for monitoring.

    Returns ``logprobs``, ``entropy``, ``top1`` (and ``ref_logprobs`` with a reference model),
    each (B, T) float32 on the CPU (values beyond a completion are meaningless: mask them). ``from_sampler=True`` takes the
    first three from the engine's statistics in ``batch`` (see ``sampler_is_pi_old``) instead
    of the policy's forward; the reference model's forward still runs. ``s.old_in_update``
    (``pi_old_from_update``) runs no policy forward and returns ``ref_logprobs`` alone (or
    nothing): ``ppo_update`` records the other three from its own forward.
    """
    t = batch.targets.shape[1]
    parts: dict[str, list[Tensor]] = {"logprobs": [], "entropy": [], "top1": [], "ref_logprobs": []}
    if from_sampler:
        given = {"logprobs": batch.sampler_logprobs, "entropy": batch.sampler_entropy,
                 "top1": batch.sampler_top1}  # fmt: skip
        for k, v in given.items():
            if v is None:
                raise ValueError(f"from_sampler=True needs batch.sampler_{k}; it is None")
            parts[k].append(v.float().cpu().clone())

    policy = not (from_sampler or s.old_in_update)
    forwards = ([model] if policy else []) + ([] if ref_model is None else [ref_model])
    aligned = s.sharded and bool(forwards)
    for idx in micro_batches(torch.arange(len(batch)), s.micro_batch_size, info, aligned=aligned):
        if len(idx) == 0:  # sharded: keep step with the other ranks' forwards, output unused
            for m in forwards:
                _token_stats(m, batch.rows(torch.arange(1)), s)
            continue
        mb = batch.rows(idx)  # trimmed to its own longest completion: pad back to t
        mb_out: dict[str, Tensor | None] = {}
        if policy:
            lp, ent, top1 = _token_stats(model, mb, s, with_top1=True)
            mb_out = {"logprobs": lp, "entropy": ent, "top1": top1}
        if ref_model is not None:
            mb_out["ref_logprobs"] = _token_stats(ref_model, mb, s)[0]
        for k, v in mb_out.items():
            assert v is not None
            parts[k].append(torch.nn.functional.pad(v.cpu(), (0, t - v.shape[1])))
    return {k: torch.cat(v) for k, v in parts.items() if v}


def _grads_finite(model: Any, info: DistInfo) -> bool:
    ok = all(
        p.grad is None or bool(torch.isfinite(to_local(p.grad)).all()) for p in model.parameters()
    )
    return bool(all_reduce(torch.tensor(float(ok)), info, "min") > 0)


class _Accumulator:
    """Combines per-micro-batch metrics of one update exactly, across micro-batches and ranks.

    Token means are weighted by ``_count/tokens``, each key over the micro-batches that report
    it; ``*/max`` keys take the max; ``loss/*`` keys are summed (each micro-batch returns its
    share of the step's loss) and averaged over optimizer steps; ``clip/upper_old_prob`` is
    weighted by the number of upper-clipped tokens.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.maxes: dict[str, float] = {}
        self.losses: dict[str, float] = {}
        self.upper_count = self.upper_prob = 0.0

    def add(self, m: dict[str, float]) -> None:
        w = float(m.pop("_count/tokens"))
        n_up = float(m.pop("_count/upper_clipped", 0.0))
        self.upper_count += n_up
        self.upper_prob += m.pop("clip/upper_old_prob", 0.0) * n_up
        for k, v in m.items():
            if k.startswith("loss/"):
                self.losses[k] = self.losses.get(k, 0.0) + v
            elif k.endswith("/max"):
                self.maxes[k] = max(self.maxes.get(k, -math.inf), v)
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v * w
                self.weights[k] = self.weights.get(k, 0.0) + w

    def add_zeros(self, keys: Sequence[str], tokens: float) -> None:
        """``tokens`` more tokens at value 0 in the means of ``keys``."""
        for k in keys:
            self.weights[k] = self.weights.get(k, 0.0) + tokens

    def result(self, info: DistInfo, n_steps: int) -> dict[str, float]:
        local = {**self.sums, **self.losses, **{f"_w:{k}": w for k, w in self.weights.items()},
                 "_uc": self.upper_count, "_up": self.upper_prob}  # fmt: skip
        summed = reduce_metrics(local, info, default="sum")
        maxed = reduce_metrics(self.maxes, info, default="max")
        n_up, up = summed.pop("_uc"), summed.pop("_up")
        weights = {k[3:]: summed.pop(k) for k in list(summed) if k.startswith("_w:")}
        # a key only left-out rows reported (add_zeros) has no sum: it stays absent
        out = {
            k: v / (max(n_steps, 1) if k.startswith("loss/") else max(weights[k], 1.0))
            for k, v in summed.items()
        }
        out["clip/upper_old_prob"] = up / n_up if n_up else 0.0
        out |= maxed
        return out


def ppo_update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    s: UpdateSettings,
    *,
    generator: torch.Generator,
    info: DistInfo = DistInfo(),  # noqa: B008  (frozen dataclass: a safe default)
    scaler: LossScaler | None = None,
    pi_old_out: dict[str, Tensor] | None = None,
) -> tuple[dict[str, float], int]:
    """Run ``epochs x mini_batches`` optimizer steps on ``batch``; return (metrics, bad_steps).

    Mini-batches are cut from one permutation of the *global* rows (all ranks), so the update
    does not depend on the number of processes (see train.distributed). Metrics describe the
    whole update (every micro-batch of every pass). A mini-batch whose loss or gradient is not
    finite on any rank is skipped (no optimizer step) and counted in ``bad_steps``.

    ``scaler`` (float16 compute, train.precision.LossScaler): each micro-batch's loss is scaled
    before backward and the gradients unscaled before clipping; a mini-batch with a finite loss
    whose scaled gradients overflow is skipped, halves the scale and counts in
    ``update/overflow_steps`` (not in ``bad_steps``).

    ``s.old_in_update`` (``pi_old_from_update``: one epoch, one mini-batch): pi_old is each
    micro-batch's own forward, detached, and ``batch.old_logprobs`` may be None. The forward's
    ``logprobs``, ``entropy`` and ``top1`` at the rollout's weights are then written into
    ``pi_old_out`` (given empty; each (B, T) float32 on the CPU), as ``record_old_logprobs``
    would have returned them (values beyond a completion are meaningless: mask them).

    ``s.skip_zero_advantage``: rows without a gradient (``rows_without_gradient``) are left
    out of the forward and backward (with ``pi_old_out``, of the backward only); the
    normalisers still count them, so the step is the same as long as their loss is finite (a
    left-out row whose forward would give inf or NaN no longer makes the step non-finite).
    The clip fractions still count their tokens (as zeros, ``_ZERO_AT_ZERO_ADVANTAGE``); the
    other token means (ratio, ``kl/old_approx``, ``prob/confident_frac``, cispo's fractions)
    describe the rows that ran, and ``update/zero_adv_rows_frac`` says what share was left
    out.
    """
    assert batch.old_logprobs is not None or s.old_in_update
    if s.old_in_update:
        assert s.epochs == 1 and s.mini_batches == 1, "pi_old from the update needs 1 x 1"
    if pi_old_out is not None:
        shape = batch.targets.shape
        pi_old_out |= {k: torch.zeros(shape) for k in ("logprobs", "entropy", "top1")}
    acc = _Accumulator()
    grad_norms: list[float] = []
    steps = bad = overflows = 0
    sizes = all_gather_sizes(len(batch), info)
    offset, n_local = sum(sizes[: info.rank]), len(batch)
    silent = rows_without_gradient(batch, s)
    left_out = 0
    for _ in range(s.epochs):
        perm = torch.randperm(sum(sizes), generator=generator)
        for mb_global in perm.tensor_split(s.mini_batches):
            if len(mb_global) == 0:
                continue
            mine = mb_global[(mb_global >= offset) & (mb_global < offset + n_local)] - offset
            num_tokens = float(all_reduce(batch.mask[mine].sum().double(), info))
            first = int(mb_global[0]) - offset
            mine, quiet = _split_silent(mine, silent, first, info)
            left_out += len(quiet)
            acc.add_zeros(_ZERO_AT_ZERO_ADVANTAGE.get(s.loss, ()), float(batch.mask[quiet].sum()))
            if pi_old_out is not None and len(quiet):  # their pi_old: a forward, no backward
                _record_forward(model, batch, quiet, s, pi_old_out, acc)
            mine = by_length(batch, mine, s.micro_batch_size, by_prompt=s.shared_prompt)
            optimizer.zero_grad(set_to_none=True)
            finite = True
            for idx in micro_batches(mine, s.micro_batch_size, info, aligned=s.sharded):
                if len(idx) == 0:  # sharded: a zero-weight pass keeps step with the other ranks
                    _zero_pass(model, batch, s).backward()
                    continue
                loss, m, seen = _micro_batch_loss(
                    model, batch.rows(idx), s, num_tokens=num_tokens, num_seqs=len(mb_global)
                )
                if pi_old_out is not None and seen is not None:
                    _write_pi_old(pi_old_out, idx, seen)
                if not torch.isfinite(loss):
                    finite = False
                    if s.sharded:
                        loss.backward()  # every rank runs every backward; step skipped below
                        continue
                    if pi_old_out is None:
                        break
                if not finite and not s.sharded:
                    continue  # the step is lost; the forwards go on for pi_old_out's every row
                (loss if scaler is None else loss * scaler.scale).backward()
                acc.add(m)
            if not s.sharded:  # FSDP has summed them (train.sharding)
                sum_gradients(model, info)
            finite = bool(all_reduce(torch.tensor(float(finite)), info, "min") > 0)
            if finite and _grads_finite(model, info):
                if scaler is not None:
                    scaler.unscale_(model.parameters())
                    scaler.update(overflow=False)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip or math.inf)
                grad_norms.append(float(to_local(norm)))
                optimizer.step()
                steps += 1
            elif finite and scaler is not None:  # the scaled gradients overflowed float16
                scaler.update(overflow=True)
                overflows += 1
                optimizer.zero_grad(set_to_none=True)
            else:
                bad += 1
                optimizer.zero_grad(set_to_none=True)
                warnings.warn(
                    "non-finite loss or gradient: optimizer step skipped",
                    RuntimeWarning,
                    stacklevel=2,
                )
    metrics = acc.result(info, steps + bad + overflows)
    if silent is not None:
        n_left_out = float(all_reduce(torch.tensor(float(left_out)), info))
        metrics["update/zero_adv_rows_frac"] = n_left_out / (s.epochs * max(sum(sizes), 1))
    if grad_norms:
        metrics["grad/norm"] = sum(grad_norms) / len(grad_norms)
    metrics["update/bad_steps"] = float(bad)
    metrics["update/optimizer_steps"] = float(steps)
    if scaler is not None:
        metrics["update/overflow_steps"] = float(overflows)
        metrics["update/loss_scale"] = scaler.scale
    return metrics, bad


def by_length(
    batch: RolloutBatch, idx: Tensor, micro_batch_size: int, *, by_prompt: bool = False
) -> Tensor:
    """The rows ``idx`` of one mini-batch ordered by sequence length (stable: ties keep their
    shuffled order), so that micro-batches cut from it group rows of similar length and each is
    trimmed to a shorter width (``RolloutBatch.rows``). The loss is a sum over the mini-batch's
    tokens with a mini-batch-wide normaliser, so the grouping changes the gradient only by the
    order of float additions (``tests/unit/test_update_speed_invariance.py``). ``idx`` comes
    back unchanged when it fits one micro-batch (nothing to group).

    ``by_prompt=True`` (the shared-prompt layout): rows of one prompt first kept together, the
    prompts ordered by their longest row, and by length within a prompt, so that a
    micro-batch runs each of its prompts once for as many of the prompt's rows as it can."""
    if len(idx) <= micro_batch_size:
        return idx
    lengths = batch.attention_mask[idx].sum(1)  # (n,)
    if not by_prompt:
        return idx[torch.sort(lengths, stable=True).indices]
    keys = prompt_keys(batch.input_ids[idx], batch.prompt_lens[idx])
    longest: dict[tuple[int, ...], int] = {}
    for k, n in zip(keys, lengths.tolist(), strict=True):
        longest[k] = max(longest.get(k, 0), n)
    rank = {k: r for r, k in enumerate(sorted(longest, key=lambda k: (longest[k], k)))}
    order = sorted(range(len(idx)), key=lambda i: (rank[keys[i]], int(lengths[i])))
    return idx[torch.tensor(order, dtype=torch.long)]


def _split_silent(
    idx: Tensor, silent: Tensor | None, first: int, info: DistInfo
) -> tuple[Tensor, Tensor]:
    """This rank's rows ``idx`` of one mini-batch split into those the update runs and those it
    leaves out (``silent``: ``rows_without_gradient``). When every rank's rows are silent, the
    mini-batch's first row (``first``, this rank's index of it; outside ``idx`` on the other
    ranks) still runs, on the rank that holds it: the optimizer then steps on zero gradients,
    as with every row (Adam's moments and weight decay still act), the update's metrics keep
    their keys, and 1 or N processes run the same rows."""
    if silent is None:
        return idx, idx[:0]
    flags = silent[idx]
    live, quiet = idx[~flags], idx[flags]
    if int(all_reduce(torch.tensor(len(live)), info)) == 0:
        keep = quiet == first
        live, quiet = quiet[keep], quiet[~keep]
    return live, quiet


@torch.no_grad()
def _record_forward(
    model: Any, batch: RolloutBatch, idx: Tensor, s: UpdateSettings,
    pi_old_out: dict[str, Tensor], acc: _Accumulator,
) -> None:  # fmt: skip
    """pi_old's statistics of rows the update leaves out, when pi_old is the update's forward
    (``s.old_in_update``): a no-grad forward writes them into ``pi_old_out``, and their TIS
    metrics (``mismatch/k3``, ``tis/*``) join the update's token means."""
    idx = by_length(batch, idx, s.micro_batch_size, by_prompt=s.shared_prompt)
    for part in idx.split(s.micro_batch_size):
        mb = batch.rows(part)
        stats = _token_stats(model, mb, s, with_top1=True)
        _write_pi_old(pi_old_out, part, stats)
        logp = stats[0]
        if mb.sampler_logprobs is not None:
            mask = mb.mask.to(logp.device)
            sampler = mb.sampler_logprobs.to(logp.device)
            _, tis = tis_weights(logp.float(), sampler, mask, cap=s.tis_cap)
            acc.add({**tis, "_count/tokens": float(mask.sum())})


def _zero_pass(model: Any, batch: RolloutBatch, s: UpdateSettings) -> Tensor:
    """0 x (the statistics of one row): the same forward and backward as a micro-batch, so every
    parameter gets its (zero) gradient and the sharded collectives line up across ranks."""
    logp, ent, _ = _token_stats(model, batch.rows(torch.arange(1)), s)
    return (logp.sum() + ent.sum()) * 0.0


def _micro_batch_loss(
    model: Any, mb: RolloutBatch, s: UpdateSettings, *, num_tokens: float, num_seqs: int
) -> tuple[Tensor, dict[str, float], tuple[Tensor, Tensor, Tensor] | None]:
    """Policy loss (+ entropy bonus, + KL) of one micro-batch, scaled for accumulation, its
    metrics, and with ``s.old_in_update`` the forward's detached (log-prob, entropy, top-1),
    which are pi_old's (else None)."""
    logp, ent, top1 = _token_stats(model, mb, s, with_top1=s.old_in_update)
    mask = mb.mask.to(logp.device)
    adv = mb.advantages.to(logp.device)  # (B,)
    if mb.token_advantages is not None:  # (B, T), e.g. entropy-shaped (Cheng et al.)
        adv = mb.token_advantages.to(logp.device)
    weights, tis = mb.token_weights, dict[str, float]()
    if s.old_in_update:
        old = logp.detach()
        if mb.sampler_logprobs is not None:  # TIS against pi_old = this forward
            sampler = mb.sampler_logprobs.to(logp.device)
            weights, tis = tis_weights(old.float(), sampler, mask, cap=s.tis_cap)
    else:
        assert mb.old_logprobs is not None
        old = mb.old_logprobs.to(logp.device)
    if weights is not None:  # (B, T) per-token importance weights (TIS)
        adv = (adv if adv.dim() == 2 else adv[:, None]) * weights.to(logp.device)
    agg_kw: dict[str, Any] = {"num_tokens": num_tokens, "num_seqs": num_seqs, "max_len": s.max_len}
    loss, metrics = policy_loss(
        s.loss,
        logprobs=logp,
        old_logprobs=old,
        advantages=adv,
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
    metrics |= tis
    metrics["loss/total"] = float(total.detach())
    if not s.old_in_update:
        return total, metrics, None
    assert top1 is not None
    return total, metrics, (old, ent.detach(), top1.detach())
