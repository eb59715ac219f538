"""entropy-rl: RL fine-tuning of language models with the policy's entropy as a first-class quantity.

The curated public API. Heavy pieces (the trainer, which needs transformers) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from entropy_rl.ops.advantages import available_advantages, compute_advantages, register_advantage
from entropy_rl.ops.clip import ClipBounds, clip_bounds
from entropy_rl.ops.kl import kl_estimate
from entropy_rl.ops.losses import (
    aggregate,
    available_policy_losses,
    policy_loss,
    register_policy_loss,
)
from entropy_rl.ops.regularizers import entropy_bonus, entropy_shaped_advantages, high_entropy_mask
from entropy_rl.ops.token_stats import fused_logprobs_entropy, token_entropy, token_logprobs

__version__ = "0.1.0"

_LAZY = {
    "Trainer": "entropy_rl.train.trainer",
    "Config": "entropy_rl.train.config",
    "build_config": "entropy_rl.train.config",
    "available_presets": "entropy_rl.train.config",
}

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
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'entropy_rl' has no attribute {name!r}")
