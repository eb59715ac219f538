"""Mixed precision: float32 master weights and optimizer state, bfloat16 / float16 compute.

``model.dtype=bfloat16`` (or ``float16``) does what the field does (Micikevicius et al. 2018,
"Mixed Precision Training"; PyTorch AMP; verl's FSDP mixed-precision policy):

- the policy's parameters, their gradients and AdamW's two moments stay float32 (the *master*
  weights): the optimizer adds each update to a float32 number;
- forward passes (rollout, pi_old / pi_ref, update) run under ``torch.autocast(dtype)``: the
  matmuls read bfloat16 copies of the weights and produce bfloat16 activations;
- float16 (5 exponent bits) needs dynamic loss scaling (``LossScaler``); bfloat16 has float32's
  exponent range and needs none.

Why not bfloat16 parameters: an AdamW step moves a weight by about ``lr`` (|m / sqrt(v)| <= 1
early on), while bfloat16 (8 significant bits) spaces the numbers near ``w`` by
2^(floor(log2 |w|) - 7); an update smaller than half of that spacing rounds back to ``w``. At
lr = 5e-6 a weight of 0.02 (spacing 2^-13 = 1.2e-4) never moves; a float32 master does.

Memory (per parameter): float32 weight 4 + gradient 4 + AdamW moments 8 = 16 bytes, whatever
``model.dtype``; autocast adds a transient bfloat16 copy (2 bytes) of the weights in use, the KV
rollout engine one bfloat16 copy (2 bytes) per rollout, a reference model (``algo.kl_coef > 0``)
4 bytes. The low precision halves activation memory (and the KV cache) and runs the matmuls on
the accelerator's bfloat16 / float16 units; it does not shrink the parameters.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DTYPES", "LossScaler", "autocast", "compute_dtype", "to_master_weights"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of ``model.dtype=name``: None for float32 (no autocast)."""
    dtype = DTYPES[name]
    return None if dtype == torch.float32 else dtype


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast(device type, dtype)`` around the block; a no-op when ``dtype`` is None
    or float32 (plain float32 compute)."""
    if dtype is None or dtype == torch.float32:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield


def to_master_weights(model: Any) -> list[str]:
    """Cast every floating parameter and buffer of ``model`` that is not float32 (or float64) to
    float32, in place; return the names of the parameters that were cast."""
    low = (torch.bfloat16, torch.float16)
    cast = [n for n, p in model.named_parameters() if p.dtype in low]
    for p in model.parameters():
        if p.dtype in low:
            p.data = p.data.float()  # the same Parameter object: tied weights stay tied
    for module in model.modules():
        for name, b in module.named_buffers(recurse=False):
            if b.dtype in low:
                module._buffers[name] = b.float()
    return cast


@dataclass
class LossScaler:
    """Dynamic loss scaling for float16 compute (Micikevicius et al. 2018, section 3.2; the rule
    and defaults of ``torch.amp.GradScaler``).

    The loss is multiplied by ``scale`` before backward, so activation gradients below float16's
    smallest subnormal (6e-8) survive; ``unscale_`` divides the float32 gradients by ``scale``
    before clipping and the optimizer step. A step whose scaled gradients overflow (inf / NaN) is
    skipped and ``scale`` halves; ``growth_interval`` good steps in a row double it.

    Why not ``torch.amp.GradScaler``: it decides "overflow" per device inside ``unscale_``, while
    the update already decides "finite gradients" once for all ranks (train.distributed,
    train.sharding); this class applies the same rule to that one decision.
    """

    scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    good_steps: int = 0

    def unscale_(self, params: Iterable[torch.nn.Parameter]) -> None:
        inv = 1.0 / self.scale
        for p in params:
            if p.grad is not None:
                p.grad.mul_(inv)

    def update(self, *, overflow: bool) -> None:
        """After each optimizer step (``overflow=False``) or skipped overflow (``True``)."""
        if overflow:
            self.scale = max(self.scale * self.backoff_factor, 2.0**-24)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            grown = self.scale * self.growth_factor
            self.scale = grown if math.isfinite(grown) else self.scale
            self.good_steps = 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "good_steps": float(self.good_steps)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
