"""Choosing and building the rollout engine, and saying what a run actually runs on.

``build_engine`` turns ``rollout.engine`` (auto / kv / hf / vllm) into an engine over the policy;
``run_info`` is the record of what was chosen (engine, logits path, dtype, threads, stop tokens)
that the trainer prints once at start and writes to ``run_info.json`` in the run directory.
"""

from __future__ import annotations

from typing import Any

import torch

from entropy_rl.engine.base import RolloutEngine
from entropy_rl.engine.hf import HFGenerateEngine
from entropy_rl.engine.kv import KVCacheEngine, resolve_engine
from entropy_rl.errors import ConfigError

__all__ = ["build_engine", "engine_name", "format_run_info", "run_info", "set_threads"]


def build_engine(
    name: str,
    model: Any,
    *,
    pad_token_id: int,
    stop_token_ids: list[int],
    batch_size: int = 256,
    model_path: str | None = None,
    tokenizer: Any = None,
    seed: int = 0,
    engine_kwargs: dict[str, Any] | None = None,
    compute_dtype: torch.dtype | None = None,
) -> RolloutEngine:
    """The engine ``rollout.engine=name`` selects for ``model`` (``resolve_engine``: auto -> kv
    for supported float32 models, else hf), generating until any of ``stop_token_ids`` (EOS and
    the chat template's end-of-turn token) or the length cap. ``vllm`` loads ``model_path`` with
    ``tokenizer`` and ``engine_kwargs``; ``seed`` seeds its sampler. ``compute_dtype`` (mixed
    precision, train.precision): kv and hf generate in that dtype over float32 master weights.

    Raises:
        ConfigError: ``kv`` on a model it does not support (naming what), or ``vllm`` without a
            model directory.
    """
    kind, stops = resolve_engine(name, model), list(stop_token_ids)
    if kind == "vllm":
        from entropy_rl.engine.vllm import VLLMEngine

        if model_path is None:
            raise ConfigError("rollout.engine=vllm needs model.path (vLLM loads the model itself)")
        kw = engine_kwargs or {}
        return VLLMEngine(model_path, tokenizer=tokenizer, seed=seed, eos_token_id=stops, **kw)
    if kind == "kv":
        try:  # the fast default: its sampler statistics replace the pi_old forward
            return KVCacheEngine(
                model, pad_token_id=pad_token_id, eos_token_id=stops, batch_size=batch_size,
                compute_dtype=compute_dtype,
            )  # fmt: skip
        except ValueError as e:
            raise ConfigError(f"rollout.engine=kv: {e}") from e
    return HFGenerateEngine(
        model, pad_token_id=pad_token_id, eos_token_id=stops, batch_size=batch_size,
        compute_dtype=compute_dtype,
    )  # fmt: skip


def set_threads(threads: int | None, model: Any, device: Any) -> int:
    """Set torch's intra-op thread count: ``threads`` when given, else 1 for a model under 20M
    parameters on CPU (more threads only add synchronisation there), else torch's default.
    Returns the count in effect."""
    if threads:
        torch.set_num_threads(threads)
    elif torch.device(device).type == "cpu" and sum(p.numel() for p in model.parameters()) < 20e6:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def engine_name(engine: Any) -> str:
    """``kv``, ``hf`` or ``vllm`` for the built-in engines (also behind a sharding wrapper),
    else the engine's class name."""
    inner = getattr(engine, "engine", engine)  # sharding.ReplicaEngine wraps the real one
    for cls, name in ((KVCacheEngine, "kv"), (HFGenerateEngine, "hf")):
        if isinstance(inner, cls):
            return name
    if type(inner).__name__ == "VLLMEngine":  # not imported here: vllm is an optional extra
        return "vllm"
    return type(inner).__name__


def run_info(
    engine: Any, model: Any, *, logits: str, device: Any, stop_token_ids: list[int],
    tokenizer: Any = None, chat_template: bool = False, world_size: int = 1,
    compute_dtype: torch.dtype | None = None, shared_prompt: bool | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What a run actually runs on: engine name, logits path of the update (``fused`` or
    ``full``), parameter dtype(s), the compute dtype of the forwards (autocast under mixed
    precision, else the parameters'), torch's intra-op thread count, device, stop tokens,
    and whether the forwards over the rollout run each prompt once (train.shared_prompt)."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    tokens = None
    if tokenizer is not None:
        tokens = [str(t) for t in tokenizer.convert_ids_to_tokens(list(stop_token_ids))]
    return {
        "engine": engine_name(engine),
        "logits": logits,
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "compute_dtype": str(compute_dtype).removeprefix("torch.") if compute_dtype else None,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "world_size": world_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": chat_template,
        "stop_token_ids": list(stop_token_ids),
        "stop_tokens": tokens,
        "exact_logprobs": bool(getattr(engine, "exact_logprobs", False)),
        "shared_prompt": shared_prompt,
    }


def format_run_info(info: dict[str, Any]) -> str:
    """One line of ``run_info`` for stderr."""
    stops = info.get("stop_tokens") or info["stop_token_ids"]
    compute = f" compute={info['compute_dtype']}" if info.get("compute_dtype") else ""
    if info.get("shared_prompt") is not None:
        compute += f" shared_prompt={'on' if info['shared_prompt'] else 'off'}"
    return (
        f"entropy-rl: engine={info['engine']} logits={info['logits']} dtype={info['dtype']}"
        f"{compute} threads={info['threads']} device={info['device']} "
        f"params={info['parameters'] / 1e6:.1f}M stop={','.join(map(str, stops))}"
    )
