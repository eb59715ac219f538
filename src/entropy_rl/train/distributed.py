"""Data parallelism on torch.distributed, launched by ``torchrun`` or ``accelerate launch``.

Each rank samples its share of the prompt groups and holds its own rows of the rollout. The
update keeps the single-process arithmetic exactly:

- the mini-batches are cut from one *global* permutation of all ranks' rows (same generator on
  every rank), each rank computing the rows it owns;
- the token-mean normaliser is the global token count of the mini-batch (an all-reduce), so
  each rank's loss is its share of the global loss and the summed gradients are the global one;
- gradients are summed across ranks before clipping; the finite check is global.

So N processes on a global batch give the parameters of 1 process on that batch (up to float
summation order), and every logged metric is a global one. With one process every function
here is the identity and torch.distributed is never initialised. Parameter sharding (FSDP2,
configured by ``accelerate launch``) keeps the same arithmetic: see train.sharding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group that torchrun / accelerate launch describe in the environment
    (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a no-op for a single process.

    On CUDA each rank takes GPU ``LOCAL_RANK`` (so ``torch.device("cuda")`` is its own GPU) and
    the group has NCCL for CUDA tensors and gloo for the CPU scalars and objects the trainer
    exchanges (an NCCL-only group cannot reduce CPU tensors)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


def to_local(x: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded (DTensor) tensor; a replicated DTensor (e.g. the norm that
    ``clip_grad_norm_`` returns for sharded gradients) is its full value. Plain tensors pass."""
    from torch.distributed.tensor import DTensor

    return x.to_local() if isinstance(x, DTensor) else x


def micro_batches(
    idx: torch.Tensor, size: int, info: DistInfo, *, aligned: bool = False
) -> list[torch.Tensor]:
    """``idx`` cut into micro-batches of at most ``size`` rows (no empty one). ``aligned``: pad
    the list with empty index tensors up to the largest count over ranks, because with sharded
    parameters every forward and backward is a collective (an all-gather of the shards) that
    all ranks must run together; the caller runs a zero-weight pass for an empty entry."""
    parts = [p for p in idx.split(size) if len(p)]
    if aligned:
        most = int(all_reduce(torch.tensor(len(parts)), info, "max"))
        parts += [idx[:0]] * (most - len(parts))
    return parts


def all_reduce(x: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """In place; returns x. ``op``: sum, max or min."""
    if info.enabled:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(x, op=ops[op])
    return x


def all_gather_sizes(n: int, info: DistInfo) -> list[int]:
    if not info.enabled:
        return [n]
    t = torch.tensor([n], dtype=torch.long)
    out = [torch.zeros(1, dtype=torch.long) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return [int(x) for x in out]


def all_gather_rows(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate each rank's [B_r, T_r] (or [B_r]) tensor in rank order, padding T with 0."""
    if not info.enabled:
        return x
    sizes = all_gather_sizes(x.shape[0], info)
    width = int(all_reduce(torch.tensor(x.shape[1] if x.dim() > 1 else 0), info, "max"))
    if x.dim() > 1 and x.shape[1] < width:
        x = torch.nn.functional.pad(x, (0, width - x.shape[1]))
    buf_shape = (max(sizes), *x.shape[1:])
    padded = torch.zeros(buf_shape, dtype=x.dtype)
    padded[: x.shape[0]] = x
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:n] for o, n in zip(out, sizes, strict=True)])


def sum_gradients(model: Any, info: DistInfo) -> None:
    """Sum every parameter's gradient across ranks (missing grads count as zeros)."""
    if not info.enabled:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        assert p.grad is not None
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def reduce_metrics(
    metrics: dict[str, float],
    info: DistInfo,
    *,
    how: dict[str, str] | None = None,
    default: str = "mean",
) -> dict[str, float]:
    """Combine per-rank scalar metrics: ``how[key]`` (else ``default``) is mean, sum or max. Ranks may
    hold different key sets (a rank without rows reports nothing): a mean is over the ranks
    that report the key."""
    if not info.enabled:
        return metrics
    gathered: list[dict[str, float]] = [{} for _ in range(info.world_size)]
    dist.all_gather_object(gathered, metrics)
    out: dict[str, float] = {}
    for k in sorted({k for d in gathered for k in d}):
        vals = [float(d[k]) for d in gathered if k in d]
        mode = (how or {}).get(k, default)
        out[k] = max(vals) if mode == "max" else sum(vals) / (1 if mode == "sum" else len(vals))
    return out


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
