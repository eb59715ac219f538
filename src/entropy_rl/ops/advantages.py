"""Advantage estimators, registered by name.

Outcome-reward estimators take one scalar reward per completion, laid out group-major:
``rewards[g * group_size + i]`` is sample ``i`` of prompt ``g`` (shape ``[B]``, ``B = n_groups *
group_size``), and return one advantage per completion (``[B]``), broadcast over its tokens by the
loss. GAE works on token-level rewards and values (``[B, T]``) and returns ``[B, T]``.

References (docs/concepts.md, "Advantage estimators"):
- GRPO (Shao et al. 2024): A = (R - mean_g R) / (std_g R + eps); Dr. GRPO (Liu et al. 2025) drops
  the division by the std (``scale_by_std=False``).
- RLOO (Ahmadian et al. 2024): A_i = R_i - mean_{j != i} R_j.
- REINFORCE++ baseline (Hu 2025): A = R - mean_g R, then whitened over the whole batch.
- W-REINFORCE (Zhu et al. 2025): u = 2R - 1, A = lambda * u for u > 0, else u (no baseline).
- GAE (Schulman et al. 2016): delta_t = r_t + gamma V_{t+1} - V_t, A_t = sum_l (gamma lambda)^l delta_{t+l}.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

AdvantageFn = Callable[..., Tensor]
ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: make ``fn`` selectable as ``compute_advantages(name, ...)``."""

    def wrap(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGES[name] = fn
        return fn

    return wrap


GROUP_BASELINED = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")
"""Estimators whose group baseline gives a group of equal rewards zero advantage (not
w_reinforce: a failing group gets -1 each; not gae: a critic's baseline)."""


def available_advantages() -> list[str]:
    return sorted(ADVANTAGES)


def compute_advantages(name: str, rewards: Tensor, **kwargs: object) -> Tensor:
    """Advantages by estimator name; see the module docstring for shapes.

    Example: ``compute_advantages("grpo", torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=2)``
    gives ``[0.7071, -0.7071, 0, 0]`` (the second group has no variance).
    """
    if name not in ADVANTAGES:
        raise ValueError(
            f"unknown advantage estimator {name!r}; choose one of {available_advantages()}"
        )
    return ADVANTAGES[name](rewards, **kwargs)


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """[B] -> [n_groups, G] view, with a clear error when B is not a multiple of G."""
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be 1-D [n_groups * group_size], got shape {tuple(rewards.shape)}"
        )
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards are not a whole number of groups of size {group_size}"
        )
    return rewards.float().view(-1, group_size)


@register_advantage("grpo")
def grpo_advantages(
    rewards: Tensor, *, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO group-normalised advantage; ``scale_by_std=False`` is Dr. GRPO.

    A_i = (R_i - mean_g) / (std_g + eps), std the unbiased sample std over the group (as TRL and
    verl use). A group whose rewards are all equal gets A = 0 for every sample. [B] -> [B].
    """
    r = _groups(rewards, group_size)  # (n_groups, G)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        if group_size < 2:
            raise ValueError(
                "scale_by_std needs group_size >= 2 (the std of one sample is undefined)"
            )
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


@register_advantage("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, *, group_size: int) -> Tensor:
    """Dr. GRPO: A_i = R_i - mean_g (no std division). [B] -> [B]."""
    return grpo_advantages(rewards, group_size=group_size, scale_by_std=False)


@register_advantage("rloo")
def rloo_advantages(rewards: Tensor, *, group_size: int) -> Tensor:
    """RLOO leave-one-out baseline: A_i = R_i - (sum_g R - R_i) / (G - 1). [B] -> [B].

    Equal to G/(G-1) * (R_i - mean_g).
    """
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2 (the baseline leaves one sample out)")
    r = _groups(rewards, group_size)
    baseline = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
    return (r - baseline).reshape(-1)


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(
    rewards: Tensor, *, group_size: int, eps: float = 1e-6
) -> Tensor:
    """REINFORCE++ with group baseline: A = R - mean_g, then whitened over the batch.

    A_i = (c_i - mean_batch c) / (std_batch c + eps) with c = R - mean_g. [B] -> [B].
    """
    c = _groups(rewards, group_size) - _groups(rewards, group_size).mean(dim=1, keepdim=True)
    c = c.reshape(-1)
    if c.numel() < 2:
        return torch.zeros_like(c)
    return (c - c.mean()) / (c.std() + eps)


@register_advantage("w_reinforce")
def w_reinforce_advantages(rewards: Tensor, *, group_size: int, pos_weight: float = 0.1) -> Tensor:
    """W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347, "The Surprising Effectiveness of
    Negative Reinforcement in LLM Reasoning"): positive samples down-weighted by lambda.

    The paper's reward is +1 (correct) / -1 (wrong) with no baseline, and its objective
    lambda * L_PSR + L_NSR weights positive-sample reinforcement by lambda (0.1 in the paper).
    Our rewards lie in [0, 1], so u_i = 2 R_i - 1 maps them onto the paper's scale::

        A_i = lambda * u_i  if u_i > 0,   A_i = u_i  otherwise        [B] -> [B]

    R = 1 -> lambda, R = 0 -> -1, R = 0.5 -> 0 (a half reward is neither reinforced nor
    penalised). lambda = 1 is REINFORCE on +-1 rewards; lambda = 0 is negative samples only
    (their NSR). No group baseline: a group whose samples all fail still gets A = -1 each,
    unlike GRPO; ``group_size`` only checks the layout. Their code scales the advantage in
    the same way (its PPO-clipped actor loss is unchanged).
    """
    if isinstance(pos_weight, bool) or not (
        isinstance(pos_weight, int | float) and 0 <= pos_weight < float("inf")
    ):
        raise ValueError(f"pos_weight must be a finite number >= 0, got {pos_weight!r}")
    u = 2.0 * _groups(rewards, group_size).reshape(-1) - 1.0
    return torch.where(u > 0, pos_weight * u, u)


@register_advantage("gae")
def gae_advantages(
    rewards: Tensor,
    *,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> Tensor:
    """Generalised advantage estimation over response tokens.

    rewards, values, mask: [B, T] (mask 1 on response tokens, which must form one contiguous run
    starting at t=0 of the response; padding after it). The value after the last valid token is 0
    (episode end). delta_t = r_t + gamma V_{t+1} - V_t; A_t = delta_t + gamma lam A_{t+1}.
    Returns the advantages [B, T] (0 on padding); returns are ``A + V``.
    """
    if not 0.0 <= gamma <= 1.0 or not 0.0 <= lam <= 1.0:
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            "gae needs rewards, values and mask of the same [B, T] shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    m = mask.to(values.dtype)
    v = values * m
    r = rewards * m
    adv = torch.zeros_like(v)
    last = torch.zeros_like(v[:, 0])
    t_len = v.shape[1]
    for t in reversed(range(t_len)):
        next_v = v[:, t + 1] if t + 1 < t_len else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        adv[:, t] = last
    return adv
