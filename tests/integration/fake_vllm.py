"""A fake ``vllm`` module with the real objects' attributes, for test_vllm_engine.py.

Its outputs mimic vLLM's: ``RequestOutput.outputs[j]`` is a ``CompletionOutput`` with ``index``,
``token_ids``, ``logprobs`` (one ``{token_id: Logprob}`` per position) and ``finish_reason``; the
completions of a request come back in reverse index order, so the engine's sort by index is
exercised. ``ScriptedLLM`` samples by a script (``scripted``); ``make_vllm`` builds the module.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

EOS = 2


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool = True


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)
        self.kwargs = kwargs


@dataclass
class EngineArgs:  # vLLM >= 0.10
    model: str = ""
    logprobs_mode: str = "raw_logprobs"


@dataclass
class OldEngineArgs:  # vLLM < 0.10
    model: str = ""


class FakeVllmModel:
    """vLLM's nn.Module stand-in: records what load_weights receives."""

    def __init__(self) -> None:
        self.loads: list[list[tuple[str, torch.Tensor]]] = []

    def load_weights(self, weights: Any) -> None:
        self.loads.append([(n, w.clone()) for n, w in weights])


def scripted(i: int, j: int, prompt: list[int], max_tokens: int) -> tuple[list[int], str]:
    """Sample j of prompt i: even j -> [prompt[0] + j, EOS] ("stop"); odd j -> prompt[0] + j
    repeated max_tokens times ("length")."""
    if j % 2 == 0:
        return [prompt[0] + j, EOS], "stop"
    return [prompt[0] + j] * max_tokens, "length"


def scripted_logprob(i: int, j: int, t: int) -> float:
    return -(0.1 * (i + 1) + 0.01 * j + 0.001 * t)


class ScriptedLLM:
    """``vllm.LLM`` stand-in. Class attributes choose which weight-sync paths exist."""

    inproc = True  # llm.llm_engine.model_executor.driver_worker.model_runner.model
    v1 = True
    rpc_ok = True
    apply_ok = True

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.vllm_model = FakeVllmModel()
        module = "vllm.v1.engine.llm_engine" if self.v1 else "vllm.engine.llm_engine"
        self.llm_engine = type("LLMEngine", (), {"__module__": module})()
        if self.inproc:
            runner = SimpleNamespace(model=self.vllm_model)
            self.llm_engine.model_executor = SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=runner)
            )
        self.calls: list[tuple[list[dict[str, list[int]]], Any, bool]] = []
        self.rpc_calls = 0
        self.apply_calls = 0
        self.prefix_resets = 0

    def get_tokenizer(self) -> Any:
        return SimpleNamespace(eos_token_id=EOS)

    def reset_prefix_cache(self) -> None:
        self.prefix_resets += 1

    def collective_rpc(self, method: Any, timeout: Any = None, args: tuple = (), kwargs=None):
        self.rpc_calls += 1
        if not self.rpc_ok:  # what msgspec says without VLLM_ALLOW_INSECURE_SERIALIZATION
            raise TypeError("Object of type <class 'function'> is not serializable")
        worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.vllm_model))
        return [method(worker, *args, **(kwargs or {}))]

    def apply_model(self, func: Any) -> list[Any]:
        self.apply_calls += 1
        if not self.apply_ok:
            raise RuntimeError("apply_model is not supported")
        return [func(self.vllm_model)]

    def generate(self, prompts: Any, sampling_params: Any, use_tqdm: bool = True):
        self.calls.append((prompts, sampling_params, use_tqdm))
        sp = sampling_params[0] if isinstance(sampling_params, list) else sampling_params
        outs = []
        for i, p in enumerate(prompts):
            comps = []
            for j in range(sp.n):
                ids, finish = scripted(i, j, p["prompt_token_ids"], sp.max_tokens)
                lps = None
                if sp.logprobs is not None:  # the sampled token, plus a more likely one (rank 1)
                    lps = [
                        {tok: Logprob(scripted_logprob(i, j, t), rank=3), 99: Logprob(-0.01, 1)}
                        for t, tok in enumerate(ids)
                    ]
                comps.append(CompletionOutput(j, "", ids, None, lps, finish, None))
            outs.append(RequestOutput(str(i), None, list(p["prompt_token_ids"]), None, comps[::-1]))
        return outs


def make_vllm(llm: type, *, logprobs_mode: bool = True) -> types.ModuleType:
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.0.fake"  # type: ignore[attr-defined]
    mod.LLM = llm  # type: ignore[attr-defined]
    mod.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    mod.EngineArgs = EngineArgs if logprobs_mode else OldEngineArgs  # type: ignore[attr-defined]
    return mod
