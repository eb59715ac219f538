"""entropy-rl: RL fine-tuning of language models with the policy's entropy as a first-class quantity.

The curated public API. Every name loads on first use, so ``import entropy_rl`` (and
``entropy-rl --help`` / ``--version``) imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "available_advantages": "entropy_rl.ops.advantages",
    "compute_advantages": "entropy_rl.ops.advantages",
    "register_advantage": "entropy_rl.ops.advantages",
    "ClipBounds": "entropy_rl.ops.clip",
    "clip_bounds": "entropy_rl.ops.clip",
    "kl_estimate": "entropy_rl.ops.kl",
    "aggregate": "entropy_rl.ops.losses",
    "available_policy_losses": "entropy_rl.ops.losses",
    "policy_loss": "entropy_rl.ops.losses",
    "register_policy_loss": "entropy_rl.ops.losses",
    "entropy_bonus": "entropy_rl.ops.regularizers",
    "entropy_shaped_advantages": "entropy_rl.ops.regularizers",
    "high_entropy_mask": "entropy_rl.ops.regularizers",
    "fused_logprobs_entropy": "entropy_rl.ops.token_stats",
    "token_entropy": "entropy_rl.ops.token_stats",
    "token_logprobs": "entropy_rl.ops.token_stats",
    "Trainer": "entropy_rl.train.trainer",
    "Config": "entropy_rl.train.config",
    "build_config": "entropy_rl.train.config",
    "available_presets": "entropy_rl.train.config",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on use
    from entropy_rl.ops.advantages import (
        available_advantages,
        compute_advantages,
        register_advantage,
    )
    from entropy_rl.ops.clip import ClipBounds, clip_bounds
    from entropy_rl.ops.kl import kl_estimate
    from entropy_rl.ops.losses import (
        aggregate,
        available_policy_losses,
        policy_loss,
        register_policy_loss,
    )
    from entropy_rl.ops.regularizers import (
        entropy_bonus,
        entropy_shaped_advantages,
        high_entropy_mask,
    )
    from entropy_rl.ops.token_stats import fused_logprobs_entropy, token_entropy, token_logprobs
    from entropy_rl.train.config import Config, available_presets, build_config
    from entropy_rl.train.trainer import Trainer

__all__ = [
    "ClipBounds",
    "Config",
    "Trainer",
    "aggregate",
    "available_advantages",
    "available_policy_losses",
    "available_presets",
    "build_config",
    "clip_bounds",
    "compute_advantages",
    "entropy_bonus",
    "entropy_shaped_advantages",
    "fused_logprobs_entropy",
    "high_entropy_mask",
    "kl_estimate",
    "policy_loss",
    "register_advantage",
    "register_policy_loss",
    "token_entropy",
    "token_logprobs",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later look-ups do not come here
        return value
    raise AttributeError(f"module 'entropy_rl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
