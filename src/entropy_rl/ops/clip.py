"""What the PPO clip allows: the seed's worked example as a function.

For a token whose old probability is p, the clipped surrogate stops rewarding a move of the ratio
r = p_new / p beyond [1 - eps_low, 1 + eps_high]. So the new probability has a floor
(1 - eps_low) * p and a ceiling min((1 + eps_high) * p, 1) (a probability cannot exceed 1).
With eps = 0.2 a token at 0.9 may gain 0.1 (to 1.0) but a token at 0.01 only 0.002 (to 0.012):
the relative bound is fair in ratio and unfair in absolute room. DAPO's clip-higher raises
eps_high to give rare tokens room (Yu et al. 2025, "DAPO", sec. 3.1; docs/concepts.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClipBounds:
    """Room the clip leaves a token's probability (all in probability units, not ratios)."""

    p_old: float
    floor: float  # (1 - eps_low) * p_old
    ceiling: float  # min((1 + eps_high) * p_old, 1)
    room_up: float  # ceiling - p_old
    room_down: float  # p_old - floor
    rel_up: float  # room_up / p_old
    rel_down: float  # room_down / p_old


def clip_bounds(p_old: float, *, eps_low: float, eps_high: float) -> ClipBounds:
    """Floor and ceiling for the new probability of a token at ``p_old`` under the clip.

    floor = (1 - eps_low) p_old, ceiling = min((1 + eps_high) p_old, 1).
    Example (docs/concepts.md): p_old 0.4, eps_low 0.2 -> floor 0.32; p_old 0.9, eps_high 0.2 ->
    ceiling 1.0 (+0.1, +11%); p_old 0.01 -> 0.012 (+0.002, +20%).
    """
    if not 0.0 < p_old <= 1.0:
        raise ValueError(f"p_old must be a probability in (0, 1], got {p_old}")
    if not 0.0 <= eps_low < 1.0:
        raise ValueError(f"eps_low must be in [0, 1), got {eps_low}")
    if eps_high < 0.0:
        raise ValueError(f"eps_high must be >= 0, got {eps_high}")
    floor = (1.0 - eps_low) * p_old
    ceiling = min((1.0 + eps_high) * p_old, 1.0)
    return ClipBounds(
        p_old=p_old,
        floor=floor,
        ceiling=ceiling,
        room_up=ceiling - p_old,
        room_down=p_old - floor,
        rel_up=(ceiling - p_old) / p_old,
        rel_down=(p_old - floor) / p_old,
    )


def format_clip_table(probs: list[float], *, eps_low: float, eps_high: float) -> str:
    """A plain-text table of ``clip_bounds`` for each probability, symmetric PPO beside the given
    decoupled bounds (symmetric uses eps = eps_low on both sides)."""
    settings = [
        (f"PPO symmetric eps={eps_low:g}", eps_low, eps_low),
        (f"decoupled eps_low={eps_low:g} eps_high={eps_high:g}", eps_low, eps_high),
    ]
    head = (
        f"{'p_old':>8} {'floor':>8} {'ceiling':>8} {'room up':>9} {'rel up':>8} {'room down':>10}"
    )
    lines: list[str] = []
    for title, lo, hi in settings:
        lines += [title, head]
        for p in probs:
            b = clip_bounds(p, eps_low=lo, eps_high=hi)
            lines.append(
                f"{b.p_old:>8.4g} {b.floor:>8.4g} {b.ceiling:>8.4g} {b.room_up:>+9.4g} "
                f"{b.rel_up:>+8.1%} {-b.room_down:>+10.4g}"
            )
        lines.append("")
    lines.append(
        "The clip is relative: every token may move by the same ratio, so a rare token gains far "
        "less absolute probability than a likely one; raising eps_high widens the rare tokens' room."
    )
    return "\n".join(lines)
