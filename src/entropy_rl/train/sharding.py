"""Parameter sharding with FSDP2, configured by Accelerate: ``accelerate launch --config_file
fsdp.yaml -m entropy_rl.cli train ...`` (examples/accelerate/fsdp.yaml, docs/scaling.md).

Accelerate's launcher exports the FSDP section of the config as environment variables
(``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``FSDP_AUTO_WRAP_POLICY``, ...); Accelerate's own
``FullyShardedDataParallelPlugin`` reads them and Accelerate's ``fsdp2_prepare_model`` applies
``torch.distributed.fsdp.fully_shard`` to each decoder layer and the model, exactly as
``Accelerator.prepare`` does on GPUs. We call those two pieces directly rather than
``Accelerator.prepare``: Accelerate enables FSDP only on accelerators (a CPU launch falls back to
plain data parallelism), and our update owns its optimizer, gradient arithmetic and clipping.

What changes relative to data parallelism (train.distributed), and why the parameters stay
those of one process on the global batch:

- gradients: FSDP reduce-scatters each backward's gradients, *averaging* over ranks by default;
  the gradient divide factor is set to 1 so they are *summed*, as the loss is already each
  rank's share of the global token-mean (the normaliser is the global token count);
- clipping: ``clip_grad_norm_`` on the sharded (DTensor) gradients computes the global norm;
- forwards: every forward/backward all-gathers shards, so all ranks run the same number of
  them (train.distributed.micro_batches pads with zero-weight passes);
- token statistics: the fused log-prob / entropy kernel reads ``lm_head.weight``, which is
  sharded outside a forward; ``sharded_token_stats`` runs the kernel *as* the head's forward,
  inside the model's own forward, where FSDP has gathered the weight;
- rollouts and evaluation run on a full-weight replica (one per rank) refreshed by ``gather``
  on every rank: generation lengths differ across ranks, so generating on the sharded model
  would deadlock its all-gathers. The replica costs one copy of the weights per rank; FSDP
  still shards the gradients and the optimizer state (AdamW: 2 fp32 moments per weight);
- checkpoints: the full state dict is gathered on every rank, rank 0 writes it as today
  (train.checkpoint, atomic); the optimizer state is saved keyed by parameter name.

FSDP1 (``fsdp_version: 1``) and DeepSpeed are refused with a ConfigError naming the fix.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from entropy_rl.errors import MissingExtraError
from entropy_rl.ops.token_stats import fused_logprobs_entropy
from entropy_rl.train.batch import RolloutBatch, _response_index, policy_token_stats
from entropy_rl.train.config import SHARDING_MODES, ConfigError
from entropy_rl.train.distributed import DistInfo
from entropy_rl.train.precision import autocast as amp_autocast


def resolve_sharding(mode: str, *, world_size: int, env: Mapping[str, str] | None = None) -> str:
    """``none`` or ``fsdp`` for run.sharding=``mode`` under the launcher environment ``env``.

    auto: fsdp when ``accelerate launch`` was given an FSDP config (ACCELERATE_USE_FSDP=true)
    and there is more than one process, else none. fsdp: required (needs > 1 process).
    none: plain data parallelism even under an FSDP launch. A DeepSpeed launch
    (ACCELERATE_USE_DEEPSPEED=true) and FSDP_VERSION=1 raise ConfigError unless mode is none.
    """
    if mode not in SHARDING_MODES:
        raise ConfigError(
            f"run.sharding={mode!r} is not allowed; choose one of {list(SHARDING_MODES)}"
        )
    env = os.environ if env is None else env
    if mode == "none":
        return "none"
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ConfigError(
            "accelerate launch was given a DeepSpeed config: DeepSpeed is not supported (its engine "
            "owns backward, clipping and the optimizer step). Use an FSDP config "
            "(examples/accelerate/fsdp.yaml), or run.sharding=none for plain data parallelism"
        )
    fsdp_env = env.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if mode == "auto" and not (fsdp_env and world_size > 1):
        return "none"
    if world_size < 2:
        raise ConfigError(
            f"run.sharding=fsdp needs at least 2 processes, got {world_size}: launch with "
            "accelerate launch --num_processes N (or torchrun --nproc_per_node N)"
        )
    version = env.get("FSDP_VERSION", "2")
    if version != "2":
        raise ConfigError(
            f"fsdp_version: {version} is not supported; set fsdp_version: 2 in the accelerate "
            "config (FSDP2, torch.distributed.fsdp.fully_shard)"
        )
    return "fsdp"


class NoSharding:
    """Every rank holds the full model (one process, or data parallelism): the identity."""

    enabled = False

    def prepare(self, model: Any, ref_model: Any, engine: Any) -> tuple[Any, Any, Any]:
        return model, ref_model, engine

    def gather(self, model: Any) -> None:
        """Refresh the rollout replica from the training weights (a collective when sharded)."""

    def full_model(self, model: Any) -> Any:
        """A model with the full current weights on every rank (for saving)."""
        return model

    def optimizer_state(self, model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_model_state(
        self, model: Any, weights: dict[str, Tensor]
    ) -> tuple[list[str], list[str]]:
        """Load full weights; returns (missing, unexpected) keys."""
        missing, unexpected = model.load_state_dict(weights, strict=False)
        return list(missing), list(unexpected)

    def load_optimizer_state(
        self, model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        if _keyed_by_name(state):  # written by a sharded run
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            optimizer.zero_grad(set_to_none=True)  # else torch skips creating the state to fill
            set_optimizer_state_dict(
                model, optimizer, state, options=StateDictOptions(full_state_dict=True)
            )
        else:
            optimizer.load_state_dict(state)


class FSDPSharding(NoSharding):
    """FSDP2 through Accelerate's plugin (read from the ``accelerate launch`` environment)."""

    enabled = True

    def __init__(self, info: DistInfo, env: Mapping[str, str] | None = None) -> None:
        try:
            from accelerate.utils import FullyShardedDataParallelPlugin
        except ImportError as e:
            raise MissingExtraError(
                "run.sharding=fsdp needs accelerate: pip install 'entropy-rl[accelerate]'"
            ) from e
        env = os.environ if env is None else env
        self.info = info
        self.plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
        self.mixed_precision = env.get("ACCELERATE_MIXED_PRECISION", "no")
        if self.mixed_precision != "no":
            self.plugin.set_mixed_precision(self.mixed_precision)
        self.replica: Any = None

    def _shard(self, model: Any) -> Any:
        from accelerate.utils import fsdp2_apply_ac, fsdp2_prepare_model
        from torch.distributed.fsdp import FSDPModule

        device = next(model.parameters()).device
        # fsdp2_prepare_model reads these attributes of an Accelerator (no device mesh: 1-D FSDP)
        view = SimpleNamespace(
            state=SimpleNamespace(fsdp_plugin=self.plugin), device=device,
            mixed_precision=self.mixed_precision, is_main_process=self.info.is_main,
            torch_device_mesh=None,
        )  # fmt: skip
        if self.plugin.activation_checkpointing and any(
            p.requires_grad for p in model.parameters()
        ):
            self.plugin.set_auto_wrap_policy(model)
            if self.plugin.auto_wrap_policy is None:
                raise ConfigError(
                    "fsdp_activation_checkpointing needs fsdp_auto_wrap_policy "
                    "TRANSFORMER_BASED_WRAP or SIZE_BASED_WRAP (it checkpoints the wrapped layers)"
                )
            model = fsdp2_apply_ac(view, model)  # as Accelerator.prepare: before sharding
        model = fsdp2_prepare_model(view, model)
        for m in model.modules():
            if isinstance(m, FSDPModule):
                m.set_gradient_divide_factor(1.0)  # sum over ranks (module docstring)
                m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
        return model

    def prepare(self, model: Any, ref_model: Any, engine: Any) -> tuple[Any, Any, Any]:
        """Keep a full replica for rollouts, shard the policy (and the reference model) in place,
        and make the engine generate with the replica. Build the optimizer after this."""
        self.replica = copy.deepcopy(model).eval().requires_grad_(False)
        model = self._shard(model)
        if ref_model is not None:
            ref_model = self._shard(ref_model)
        return model, ref_model, ReplicaEngine(engine, self)

    def gather(self, model: Any) -> None:
        """Copy the training weights into the replica, one all-gathered parameter at a time.
        Every rank must call it at the same point."""
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        for m in model.modules():  # a no-grad forward can leave a unit unsharded
            if isinstance(m, FSDPModule):
                m.reshard()
        mine = dict(self.replica.named_parameters())
        with torch.no_grad():
            for name, p in model.named_parameters():
                full = p.full_tensor() if isinstance(p, DTensor) else p
                mine[_canonical(name)].copy_(full)

    def full_model(self, model: Any) -> Any:
        self.gather(model)
        return self.replica

    def optimizer_state(self, model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimizer state keyed by parameter name, on rank 0 (a collective)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return dict(get_optimizer_state_dict(model, optimizer, options=opts))

    def load_model_state(
        self, model: Any, weights: dict[str, Tensor]
    ) -> tuple[list[str], list[str]]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        opts = StateDictOptions(full_state_dict=True, strict=False)
        full: dict[str, Any] = dict(weights)
        missing, unexpected = set_model_state_dict(model, full, options=opts)
        return list(missing), list(unexpected)

    def load_optimizer_state(
        self, model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        if not _keyed_by_name(state):  # written by an unsharded run: ids -> parameter names
            state = _ids_to_names(model, state)
        opts = StateDictOptions(full_state_dict=True)
        optimizer.zero_grad(set_to_none=True)  # else torch skips creating the state to fill
        set_optimizer_state_dict(model, optimizer, state, options=opts)


def make_sharding(mode: str, info: DistInfo) -> NoSharding:
    """The sharding that run.sharding=``mode`` asks for in this launch (see resolve_sharding)."""
    if resolve_sharding(mode, world_size=info.world_size) == "fsdp":
        return FSDPSharding(info)
    return NoSharding()


class ReplicaEngine:
    """A rollout engine that generates with the sharding's full-weight replica: sync_weights
    hands the replica to the wrapped engine whatever model it is given (the caller refreshed it
    with ``FSDPSharding.gather`` on every rank; evaluation then runs on rank 0 alone)."""

    def __init__(self, engine: Any, sharding: FSDPSharding) -> None:
        self.engine = engine
        self.sharding = sharding

    def sync_weights(self, model: Any) -> None:
        self.engine.sync_weights(self.sharding.replica)

    def __getattr__(self, name: str) -> Any:  # generate, exact_logprobs, ...
        return getattr(self.engine, name)


def sharded_token_stats(
    model: Any,
    batch: RolloutBatch,
    *,
    temperature: float,
    mode: str = "fused",
    chunk_size: int = 1024,
    with_top1: bool = False,
    autocast: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``policy_token_stats`` for an FSDP-sharded model: same outputs (logp, entropy, top1),
    each (B, T) float32.

    ``fused``: the fused kernel (ops.token_stats.fused_logprobs_entropy) runs as the output
    head's forward inside the model's own forward, so FSDP has gathered ``lm_head.weight`` (and
    will reduce-scatter its gradient); the head returns (B, T, 2 or 3) stacked statistics in
    place of (B, L, V) logits. ``full``: the model's own logits, as in policy_token_stats.
    ``autocast``: the model's forward under ``torch.autocast``, the fused head in float32 (as in
    policy_token_stats).
    """
    if mode != "fused":
        return policy_token_stats(
            model, batch, temperature=temperature, mode=mode, chunk_size=chunk_size,
            with_top1=with_top1, autocast=autocast,
        )  # fmt: skip
    device = next(model.parameters()).device
    index = _response_index(batch).to(device)  # (B, T)
    targets = batch.targets.clamp(min=0).to(device)  # (B, T)
    head = model.get_output_embeddings()

    def head_forward(hidden: Tensor) -> Tensor:  # (B, L, D) final hidden states
        h = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, T, D)
        with torch.autocast(device.type, enabled=False):  # the head in float32 (mixed precision)
            out = fused_logprobs_entropy(
                h, head.weight, targets, bias=getattr(head, "bias", None),
                temperature=temperature, chunk_size=chunk_size, return_top1=with_top1,
            )  # fmt: skip
        return torch.stack([o.float() for o in out], dim=-1)  # (B, T, 2 or 3)

    head.forward = head_forward  # instance attribute: FSDP's hooks still wrap the call
    try:
        with amp_autocast(device, autocast):
            stats = model(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                use_cache=False,
            ).logits
    finally:
        del head.forward
    return stats[..., 0], stats[..., 1], (stats[..., 2] if with_top1 else None)


def _canonical(name: str) -> str:
    """A parameter's name without activation checkpointing's wrapper (as in the state dict)."""
    return name.replace("_checkpoint_wrapped_module.", "")


def _keyed_by_name(state: dict[str, Any]) -> bool:
    return any(isinstance(k, str) for k in state.get("state", {}))


def _ids_to_names(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """An ``optimizer.state_dict()`` (parameters numbered in ``model.parameters()`` order, as the
    trainer builds its optimizer) re-keyed by parameter name for set_optimizer_state_dict."""
    names = [_canonical(n) for n, _ in model.named_parameters()]
    groups = []
    for g in state["param_groups"]:
        groups.append({**g, "params": [names[i] for i in g["params"]]})
    return {
        "state": {names[i]: v for i, v in state["state"].items()},
        "param_groups": groups,
    }
