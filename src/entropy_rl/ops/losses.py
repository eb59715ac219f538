"""Policy-gradient losses, registered by name (`aggregate`, re-exported here, lives in ops.aggregate).

Notation (docs/concepts.md, "Policy losses"): a response token o_t sampled from pi_old,
``r_t = exp(log pi_theta(o_t) - log pi_old(o_t))``, advantage ``A_t``, response mask ``M``.
Every loss returns a per-token matrix ``L`` [B, T] (minimised); `aggregate` reduces it.

Entry point::

    loss, metrics = policy_loss("ppo", logprobs=lp, old_logprobs=old, advantages=adv,
                                mask=mask, agg="token-mean", num_tokens=n_step, eps_high=0.28)

``policy_loss`` validates shapes, detaches ``old_logprobs`` and ``advantages``, replaces
everything at masked positions with 0 (padding may hold NaN/inf and still never matters, for
values and gradients), computes in at least float32, calls the registered loss, aggregates,
and computes the shared metrics in `policy_metrics`.

Metrics are token means over *this call's* valid tokens; ``_count/tokens`` (valid tokens) and
``_count/upper_clipped`` let a caller weight them exactly across micro-batches and ranks
(``ratio/max`` combines by max, ``clip/upper_old_prob`` is weighted by ``_count/upper_clipped``).
With no valid token every metric is 0.0.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from entropy_rl.ops.aggregate import AGG_MODES, aggregate
from entropy_rl.ops.kl import kl_estimate

__all__ = [
    "AGG_MODES",
    "POLICY_LOSSES",
    "LossTerms",
    "aggregate",
    "available_policy_losses",
    "policy_loss",
    "policy_metrics",
    "register_policy_loss",
]

# ---- Registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossTerms:
    """What a registered loss returns.

    Attributes:
        loss: [B, T] per-token loss (minimised), not yet aggregated.
        upper, lower, dual: [B, T] bool, the tokens where that clip changed the update, or
            None for a loss without that clip (its fraction is then reported as 0).
        extra: loss-specific metrics (python floats), e.g. ``clip/cov_frac``.
    """

    loss: Tensor
    upper: Tensor | None = None
    lower: Tensor | None = None
    dual: Tensor | None = None
    extra: dict[str, float] = field(default_factory=dict)


PolicyLossFn = Callable[..., LossTerms]
POLICY_LOSSES: dict[str, PolicyLossFn] = {}
_INPUTS = ("logprobs", "old_logprobs", "advantages", "valid")


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator registering ``fn(logprobs, old_logprobs, advantages, valid, *, hparams...)``.

    The four inputs are [B, T] (already broadcast, masked positions zeroed, ``valid`` bool);
    every hyperparameter must be keyword-only with a default. Returns ``fn`` unchanged.
    """

    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        params = list(inspect.signature(fn).parameters.values())
        positional = tuple(p.name for p in params[: len(_INPUTS)])
        rest = params[len(_INPUTS) :]
        if positional != _INPUTS or any(
            p.kind is not p.KEYWORD_ONLY or p.default is p.empty for p in rest
        ):
            raise ValueError(
                f"policy loss {name!r} must have signature fn({', '.join(_INPUTS)}, *, "
                "hparam=default, ...)"
            )
        POLICY_LOSSES[name] = fn
        return fn

    return decorator


def available_policy_losses() -> tuple[str, ...]:
    """Names accepted by `policy_loss`, sorted."""
    return tuple(sorted(POLICY_LOSSES))


def _hparam_names(fn: PolicyLossFn) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)[len(_INPUTS) :]


# ---- Hyperparameter checks (shared by the losses) --------------------------------------------


def _check_range(name: str, value: float, *, low: float, high: float, closed_high: bool) -> None:
    ok = (
        isinstance(value, int | float)
        and low <= value
        and (value <= high if closed_high else value < high)
    )
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value!r}")


def _resolve_eps(
    eps: float | None,
    eps_low: float | None,
    eps_high: float | None,
    *,
    default: tuple[float, float],
    low_may_be_one: bool,
) -> tuple[float, float]:
    """Clip widths (eps_low, eps_high); ``eps`` sets both. eps_low = 1 means no lower bound."""
    if eps is not None:
        if eps_low is not None or eps_high is not None:
            raise ValueError("give either eps (both sides) or eps_low/eps_high, not both")
        eps_low = eps_high = eps
    low = default[0] if eps_low is None else eps_low
    high = default[1] if eps_high is None else eps_high
    _check_range("eps_low", low, low=0.0, high=1.0, closed_high=low_may_be_one)
    _check_range("eps_high", high, low=0.0, high=math.inf, closed_high=False)
    return float(low), float(high)


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0 < value <= 1):
        raise ValueError(f"{name} is a fraction and must be in (0, 1], got {value!r}")


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


# ---- Losses ----------------------------------------------------------------------------------


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, valid: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO surrogate ``max(-r*A, -clip(r, 1-eps_low, 1+eps_high)*A)`` and its clip masks.

    The clip removes the gradient exactly where ``upper = (r > 1+eps_high) & (A > 0)`` or
    ``lower = (r < 1-eps_low) & (A < 0)`` (TRL's definitions).
    """
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    upper = valid & (ratio > 1.0 + eps_high) & (advantages > 0)
    lower = valid & (ratio < 1.0 - eps_low) & (advantages < 0)
    return torch.maximum(unclipped, clipped), upper, lower


def _centered_cov(logprobs: Tensor, advantages: Tensor, valid: Tensor) -> Tensor:
    """Per-token ``(log pi_t - mean log pi)(A_t - mean A)``, means over valid tokens (detached)."""
    w = valid.to(logprobs.dtype)
    n = w.sum().clamp_min(1)
    lp = logprobs.detach()
    return (lp - (lp * w).sum() / n) * (advantages - (advantages * w).sum() / n) * w


@register_policy_loss("ppo")
def ppo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    valid: Tensor,
    *,
    eps: float | None = None,
    eps_low: float | None = None,
    eps_high: float | None = None,
    dual_clip_c: float | None = None,
) -> LossTerms:
    """PPO clip (Schulman et al. 2017), decoupled "clip-higher" (DAPO, Yu et al. 2025).

    ``L = max(-r*A, -clip(r, 1-eps_low, 1+eps_high)*A)``; defaults eps_low = eps_high = 0.2
    (symmetric PPO); DAPO uses eps_high = 0.28. ``eps`` sets both sides. eps_low in [0, 1).

    Dual clip (Ye et al. 2020, verl's ``clip_ratio_c``): for ``A < 0`` the loss is also capped
    at ``-c*A`` (``c = dual_clip_c > 1``; verl uses 3), which removes the gradient of tokens
    with ``r > c``; those are the ``dual`` tokens.
    """
    low, high = _resolve_eps(eps, eps_low, eps_high, default=(0.2, 0.2), low_may_be_one=False)
    if dual_clip_c is not None and not (isinstance(dual_clip_c, int | float) and dual_clip_c > 1):
        raise ValueError(f"dual_clip_c must be > 1 (or None to disable), got {dual_clip_c!r}")
    ratio = torch.exp(logprobs - old_logprobs)
    loss, upper, lower = _clipped_surrogate(ratio, advantages, valid, low, high)
    dual = None
    if dual_clip_c is not None:
        negative = advantages < 0
        loss = torch.where(negative, torch.minimum(loss, -advantages * dual_clip_c), loss)
        dual = valid & negative & (ratio > dual_clip_c)
    return LossTerms(loss, upper=upper, lower=lower, dual=dual)


@register_policy_loss("entropic")
def entropic(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    valid: Tensor,
    *,
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
    prob_threshold: float = 0.95,
    eps: float | None = None,
    eps_low: float | None = None,
    eps_high: float | None = None,
    dual_clip_c: float | None = None,
) -> LossTerms:
    """EntroPIC's loss (Yang et al. 2025, arXiv 2511.15248): PPO with advantage-sign weights
    on the tokens the policy is confident about.

    With ``C_t = [pi_theta(o_t) > prob_threshold]`` (the current policy's probability, detached,
    as in the authors' code) and ``L^ppo_t`` the `ppo` loss with the same clip arguments::

        w_t = pos_weight if C_t and A_t > 0;  neg_weight if C_t and A_t < 0;  1 otherwise
        L_t = w_t * L^ppo_t

    The ``entropic`` controller sets pos_weight = 1 + alpha, neg_weight = 1 - alpha each step
    (alpha > 0 when entropy is above its target: confident tokens are pushed up harder and down
    more gently, which lowers entropy). Weights 1 are `ppo` exactly; ``prob_threshold = 0``
    weights every token.

    Differences from the authors' verl code, which adds ``alpha * agg(-r * |A|)`` over the
    confident tokens to the PPO loss (inside the clip range the same per-token gradient
    weights 1 +/- alpha): (a) their extra term is a token mean over the confident tokens only,
    ours goes through the loss's own aggregate, so their alpha acts like ours times
    N / N_confident; (b) on clipped tokens their extra term keeps a gradient, ours scales a
    term that has none, so the trust region holds. Metric ``prob/confident_frac`` = confident
    valid tokens / N.
    """
    for name, w in (("pos_weight", pos_weight), ("neg_weight", neg_weight)):
        if not (isinstance(w, int | float) and 0 <= w < math.inf):
            raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
    _check_range("prob_threshold", prob_threshold, low=0.0, high=1.0, closed_high=False)
    terms = ppo(
        logprobs, old_logprobs, advantages, valid,
        eps=eps, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c,
    )  # fmt: skip
    confident = valid
    if prob_threshold > 0:
        confident = valid & (logprobs.detach() > math.log(prob_threshold))
    one = torch.ones_like(advantages)
    weight = torch.where(confident & (advantages > 0), pos_weight * one, one)
    weight = torch.where(confident & (advantages < 0), neg_weight * one, weight)
    n_valid = max(int(valid.sum()), 1)
    extra = {"prob/confident_frac": int(confident.sum()) / n_valid}
    return LossTerms(
        weight * terms.loss, upper=terms.upper, lower=terms.lower, dual=terms.dual, extra=extra
    )


@register_policy_loss("cispo")
def cispo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    valid: Tensor,
    *,
    eps_low: float = 1.0,
    eps_high: float = 0.28,
) -> LossTerms:
    """CISPO (MiniMax-M1, 2025): clip the importance weight, keep every token's gradient.

    ``L = -sg(clip(r, 1-eps_low, 1+eps_high)) * A * log pi_theta``.

    Defaults: eps_low = 1.0 is a floor of 0, i.e. no lower bound (the paper sets eps_low "to a
    large value" and tunes only eps_high; eps_low may be 1 here and nowhere else but clip_cov).
    eps_high = 0.28 is our choice, DAPO's clip-higher width, as in Trinity-RFT's CISPO defaults
    (the paper gives no single value). The clip acts on the weight whatever the sign of A, so
    here ``upper = r > 1+eps_high`` and ``lower = r < 1-eps_low`` for either sign.
    """
    low, high = _resolve_eps(None, eps_low, eps_high, default=(1.0, 0.28), low_may_be_one=True)
    ratio = torch.exp(logprobs - old_logprobs)
    weight = ratio.clamp(1.0 - low, 1.0 + high).detach()
    loss = -weight * advantages * logprobs
    return LossTerms(loss, upper=valid & (ratio > 1.0 + high), lower=valid & (ratio < 1.0 - low))


@register_policy_loss("gspo")
def gspo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    valid: Tensor,
    *,
    eps: float | None = None,
    eps_low: float | None = None,
    eps_high: float | None = None,
) -> LossTerms:
    """GSPO (Zheng et al. 2025, Qwen), in its GSPO-token form.

    Sequence ratio ``s_i = exp((1/n_i) sum_t M_it log r_it)``; per token
    ``s_it = sg(s_i) * pi_t / sg(pi_t)`` (value s_i, gradient s_i * grad log pi_t) and
    ``L_it = max(-s_it*A_it, -clip(s_it, 1-eps_low, 1+eps_high)*A_it)``.

    With one advantage per sequence (pass advantages of shape [B]) and
    ``agg="seq-mean-token-mean"`` this has exactly the value and gradient of sequence-level
    GSPO ``-min(s_i*A_i, clip(s_i)*A_i)`` averaged over sequences; other agg modes reweight
    sequences by length. Defaults eps_low = 3e-4, eps_high = 4e-4 (the paper's). The clip
    masks mark every token of a sequence whose ratio s_i is clipped.
    """
    low, high = _resolve_eps(eps, eps_low, eps_high, default=(3e-4, 4e-4), low_may_be_one=False)
    w = valid.to(logprobs.dtype)
    seq_log_ratio = ((logprobs - old_logprobs) * w).sum(1) / w.sum(1).clamp_min(1)  # (B,)
    seq_ratio = torch.exp(seq_log_ratio).detach()[:, None]  # (B, 1)
    token_ratio = seq_ratio * torch.exp(logprobs - logprobs.detach())  # (B, T), value s_i
    loss, upper, lower = _clipped_surrogate(token_ratio, advantages, valid, low, high)
    return LossTerms(loss, upper=upper, lower=lower)


@register_policy_loss("gpg")
def gpg(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    valid: Tensor,
) -> LossTerms:
    """GPG (Chu et al. 2025): plain policy gradient ``L = -A * log pi_theta``, no ratio.

    ``old_logprobs`` enters only the shared ratio metrics; there is no clip (fractions 0).
    """
    return LossTerms(-advantages * logprobs)


@register_policy_loss("clip_cov")
def clip_cov(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    valid: Tensor,
    *,
    clip_ratio: float = 2e-4,
    cov_lower: float = 1.0,
    cov_upper: float = 5.0,
    eps: float | None = None,
    eps_low: float | None = None,
    eps_high: float | None = None,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs").

    PPO surrogate (eps_low = eps_high = 0.2 by default; their scripts widen both to 1, which
    is allowed here: eps_low = 1 means no lower bound). Then, with
    ``cov_t = (log pi_t - mean log pi)(A_t - mean A)`` over the valid tokens, choose
    ``round(clip_ratio * N)`` tokens (N = valid tokens in this call, rounded half up)
    uniformly at random, without replacement, among valid tokens not already clipped with
    ``cov_lower < cov_t < cov_upper``, and detach them: their loss keeps its value (-r*A)
    but gets no gradient. Fewer candidates than that -> all are detached.

    Differences from verl's ``clip_cov``: verl detaches at least one token
    (``max(int(ratio*N), 1)``), and multiplies the term by 0 rather than detaching it
    (same gradient, different loss value). ``generator`` makes the choice reproducible.
    Metric ``clip/cov_frac`` = detached tokens / N.
    """
    low, high = _resolve_eps(eps, eps_low, eps_high, default=(0.2, 0.2), low_may_be_one=True)
    _check_fraction("clip_ratio", clip_ratio)
    if not (
        isinstance(cov_lower, int | float)
        and isinstance(cov_upper, int | float)
        and cov_lower < cov_upper
    ):
        raise ValueError(
            f"cov_lower must be a number below cov_upper, got ({cov_lower!r}, {cov_upper!r})"
        )
    ratio = torch.exp(logprobs - old_logprobs)
    loss, upper, lower = _clipped_surrogate(ratio, advantages, valid, low, high)
    cov = _centered_cov(logprobs, advantages, valid)
    candidates = valid & ~(upper | lower) & (cov > cov_lower) & (cov < cov_upper)
    n_valid = int(valid.sum())
    index = candidates.flatten().nonzero().squeeze(1)
    k = min(_round_half_up(clip_ratio * n_valid), index.numel())
    chosen = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
    if k > 0:
        perm_device = generator.device if generator is not None else index.device
        perm = torch.randperm(index.numel(), generator=generator, device=perm_device)
        chosen[index[perm[:k].to(index.device)]] = True
    loss = torch.where(chosen.view_as(valid), loss.detach(), loss)
    return LossTerms(loss, upper=upper, lower=lower, extra={"clip/cov_frac": k / max(n_valid, 1)})


@register_policy_loss("kl_cov")
def kl_cov(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    valid: Tensor,
    *,
    kl_cov_frac: float = 2e-3,
    kl_cov_coef: float = 1.0,
) -> LossTerms:
    """KL-Cov (Cui et al. 2025): no ratio clip; penalise the highest-covariance tokens.

    ``L_t = -r_t*A_t + beta * |log r_t| * [t in top-k by cov_t]`` with
    ``cov_t = (log pi_t - mean log pi)(A_t - mean A)`` over valid tokens,
    ``k = round(kl_cov_frac * N)`` (N = valid tokens in this call, rounded half up) and
    ``beta = kl_cov_coef`` (default 1).

    Unit trap: ``kl_cov_frac`` is a FRACTION in (0, 1]. The default 2e-3 (= 0.2%) is the 7B
    setting (2e-4 for 32B). Their repo's ``k_percent`` is in percent (0.2 for the same
    setting); verl's ``kl_cov_ratio`` is a fraction, like ours. verl penalises at least one
    token (``max(1, int(N*ratio))``). Metric ``clip/kl_cov_frac`` = penalised tokens / N.
    """
    _check_fraction("kl_cov_frac", kl_cov_frac)
    if not (isinstance(kl_cov_coef, int | float) and 0 <= kl_cov_coef < math.inf):
        raise ValueError(f"kl_cov_coef must be a finite number >= 0, got {kl_cov_coef!r}")
    log_ratio = logprobs - old_logprobs
    loss = -advantages * torch.exp(log_ratio)
    n_valid = int(valid.sum())
    k = _round_half_up(kl_cov_frac * n_valid)
    if k > 0:
        cov = _centered_cov(logprobs, advantages, valid)
        cov = torch.where(valid, cov, torch.full_like(cov, -math.inf)).flatten()
        penalised = torch.zeros_like(cov, dtype=torch.bool)
        penalised[torch.topk(cov, k).indices] = True
        penalty = kl_cov_coef * log_ratio.abs()
        loss = loss + torch.where(penalised.view_as(valid), penalty, torch.zeros_like(penalty))
    return LossTerms(loss, extra={"clip/kl_cov_frac": k / max(n_valid, 1)})


# ---- Entry point and shared metrics ----------------------------------------------------------


def _prepare(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Check shapes, broadcast [B] advantages, upcast, detach constants, zero the padding."""
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    for name, tensor in (("old_logprobs", old_logprobs), ("mask", mask)):
        if tensor.shape != logprobs.shape:
            raise ValueError(
                f"{name} must have the shape of logprobs {tuple(logprobs.shape)}, "
                f"got {tuple(tensor.shape)}"
            )
    if advantages.shape == logprobs.shape[:1]:
        advantages = advantages[:, None].expand_as(logprobs)
    elif advantages.shape != logprobs.shape:
        raise ValueError(
            f"advantages must be [B, T] {tuple(logprobs.shape)} or [B] "
            f"{tuple(logprobs.shape[:1])}, got {tuple(advantages.shape)}"
        )
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    valid = mask != 0
    zero = torch.zeros((), dtype=dtype, device=logprobs.device)
    return (
        torch.where(valid, logprobs.to(dtype), zero),
        torch.where(valid, old_logprobs.detach().to(dtype), zero),
        torch.where(valid, advantages.detach().to(dtype), zero),
        valid,
    )


def policy_metrics(
    logprobs: Tensor, old_logprobs: Tensor, valid: Tensor, terms: LossTerms
) -> dict[str, float]:
    """The shared metric set of every policy loss (names from docs/metrics.md).

    Token means over valid tokens of this call (N = ``_count/tokens``):

    * ``clip/upper_frac``, ``clip/lower_frac``, ``clip/dual_frac``: clipped tokens / N, masks
      from the loss (0 for a loss without that clip);
    * ``clip/upper_old_prob``: mean pi_old of the upper-clipped tokens (DAPO Fig. 3a), 0.0
      when none is clipped (weight by ``_count/upper_clipped`` when combining);
    * ``ratio/mean``, ``ratio/max``, ``ratio/abs_dev`` (mean |r - 1|) of the token ratio
      ``r = pi_theta / pi_old`` for every loss (GSPO's sequence ratio is not reported here);
    * ``kl/old_approx``: mean k3 estimate of KL(pi_old || pi_theta), i.e. ``r - 1 - log r``.

    Inputs are [B, T] with padding already zeroed (see `policy_loss`).
    """
    with torch.no_grad():
        lp, old = logprobs.detach(), old_logprobs.detach()
        zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
        n = valid.sum()
        n_safe = n.clamp_min(1).to(lp.dtype)
        ratio = torch.exp(torch.where(valid, lp - old, zero))  # 1 at padding

        def frac(m: Tensor | None) -> Tensor:
            return zero if m is None else (m & valid).sum() / n_safe

        upper = terms.upper & valid if terms.upper is not None else torch.zeros_like(valid)
        n_upper = upper.sum()
        upper_old_prob = torch.where(upper, old.exp(), zero).sum() / n_upper.clamp_min(1)
        ratio_max = torch.where(valid, ratio, torch.full_like(ratio, -math.inf)).max()
        kl_old = kl_estimate(old, lp, kind="k3")  # samples come from pi_old
        stats = {
            "clip/upper_frac": frac(terms.upper),
            "clip/lower_frac": frac(terms.lower),
            "clip/dual_frac": frac(terms.dual),
            "clip/upper_old_prob": upper_old_prob,
            "ratio/mean": torch.where(valid, ratio, zero).sum() / n_safe,
            "ratio/max": torch.where(n > 0, ratio_max, zero),
            "ratio/abs_dev": torch.where(valid, (ratio - 1).abs(), zero).sum() / n_safe,
            "kl/old_approx": torch.where(valid, kl_old, zero).sum() / n_safe,
            "_count/tokens": n.to(lp.dtype),
            "_count/upper_clipped": n_upper.to(lp.dtype),
        }
        values = torch.stack(list(stats.values())).tolist()  # one device sync
    return dict(zip(stats, values, strict=True))


def policy_loss(
    name: str,
    *,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    agg: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
    **hparams: object,
) -> tuple[Tensor, dict[str, float]]:
    """Compute the registered policy loss ``name``, aggregated, plus its metrics.

    Args:
        name: one of `available_policy_losses()`.
        logprobs: [B, T] log pi_theta of the sampled tokens (carries the gradient).
        old_logprobs: [B, T] log pi_old of the same tokens (detached here).
        advantages: [B, T], or [B] broadcast over tokens (detached here).
        mask: [B, T] bool or 0/1, nonzero = response token.
        agg, num_tokens, num_seqs, max_len: passed to `aggregate`.
        **hparams: keyword hyperparameters of that loss (see its docstring).

    Returns:
        ``(loss, metrics)``: a 0-dim tensor, and python floats (see `policy_metrics`; plus
        ``loss/policy`` and the loss's own extras such as ``clip/cov_frac``).
    """
    if name not in POLICY_LOSSES:
        raise ValueError(
            f"unknown policy loss {name!r}; available: {', '.join(available_policy_losses())}"
        )
    fn = POLICY_LOSSES[name]
    allowed = _hparam_names(fn)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for policy loss {name!r}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )
    if agg not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {agg!r}; allowed: {', '.join(AGG_MODES)}")
    lp, old, adv, valid = _prepare(logprobs, old_logprobs, advantages, mask)
    terms = fn(lp, old, adv, valid, **hparams)
    loss = aggregate(
        terms.loss, valid, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )
    metrics = policy_metrics(lp, old, valid, terms)
    metrics.update(terms.extra)
    metrics["loss/policy"] = float(loss.detach())
    return loss, metrics
