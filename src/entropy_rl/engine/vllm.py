"""Rollout engine on vLLM (``pip install 'entropy-rl[vllm]'``), colocated with the trainer.

:class:`VLLMEngine` serves the same interface as engine.hf (token ids in, ``Generation`` out)
from a ``vllm.LLM`` built in the trainer's own process, on the trainer's GPU. vLLM is imported
only when an engine is constructed, so this module imports without it.

Three things make it a *training* engine rather than an inference server:

* **Weight sync.** ``sync_weights(model)`` copies the trainer's parameters into vLLM's model
  with the model's own ``load_weights`` (the path TRL's colocate mode takes), then clears the
  prefix cache, whose KV entries were computed with the old weights. The push is skipped when
  the weights did not change since the last push (a float32 sum and L2 norm per tensor).
  To reach vLLM's model the engine core must run in this process: the constructor sets
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless it is already set.
* **Sampler log-probs.** Each sampled token's log-prob as the sampler computed it
  (``SamplingParams(logprobs=0)``) is kept in ``Generation.sampler_logprobs`` for truncated
  importance sampling (trainer: ``algo.tis_cap``). vLLM >= 0.10 is asked for
  ``logprobs_mode="processed_logprobs"``: log softmax of the logits *after* temperature (and
  top-k / top-p masking), the distribution tokens were really drawn from, comparable with the
  trainer's log softmax(logits / T). Older V1 engines return raw log softmax(logits); those are
  kept only where they coincide (T = 1, top_p = 1), else dropped with a warning.
* **Order.** Rows are prompt-major (row ``i * n + j`` is sample ``j`` of prompt ``i``), as vLLM's
  ``RequestOutput`` list follows the prompts and each request's completions are sorted by index.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from entropy_rl.engine.base import Generation
from entropy_rl.errors import ConfigError, MissingExtraError

__all__ = ["VLLMEngine", "outputs_to_generation"]

INSTALL_HINT = "pip install 'entropy-rl[vllm]'"
_INPROC_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
_LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")
# Wrapper prefixes that never appear in vLLM's names: DDP, torch.compile, activation checkpointing.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_checkpoint_wrapped_module.")
# Paths from vllm.LLM to a model runner when the engine core runs in this process:
# V0 and V1-in-process (LLMEngine.model_executor; WorkerWrapperBase forwards to .worker), and
# V1's engine core reached explicitly.
_RUNNER_PATHS = (
    ("llm_engine", "model_executor", "driver_worker", "model_runner"),
    ("llm_engine", "model_executor", "driver_worker", "worker", "model_runner"),
    (
        "llm_engine",
        "engine_core",
        "engine_core",
        "model_executor",
        "driver_worker",
        "worker",
        "model_runner",
    ),
)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise MissingExtraError(f"VLLMEngine needs vLLM: {INSTALL_HINT}") from exc
    return vllm


def _id_list(eos: int | Sequence[int] | None) -> list[int]:
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def _engine_arg_names(vllm: Any) -> set[str]:
    """Field names of ``vllm.EngineArgs`` (the keywords ``vllm.LLM`` forwards), empty if unknown."""
    args = getattr(vllm, "EngineArgs", None)
    if args is None or not dataclasses.is_dataclass(args):
        return set()
    return {f.name for f in dataclasses.fields(args)}


def vllm_param_name(name: str) -> str:
    """A trainer parameter name as vLLM's ``load_weights`` expects it: the Hugging Face name
    without DDP / torch.compile / checkpoint-wrapper prefixes."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


@torch.no_grad()
def weights_fingerprint(named: Sequence[tuple[str, torch.Tensor]]) -> tuple[Any, torch.Tensor]:
    """(identity, stats) of a list of named tensors: names, storage, shapes and dtypes, and a
    (P, 2) float32 CPU tensor of each tensor's sum and L2 norm. An optimizer step changes the
    stats bitwise (torch reductions are deterministic), whatever in-place path it took; fused
    optimizers and ``p.data`` writes do not bump ``Tensor._version``, so that counter is not used.
    """
    key = tuple((n, p.data_ptr(), tuple(p.shape), str(p.dtype)) for n, p in named)
    stats = [
        torch.stack((p.sum(dtype=torch.float32), torch.linalg.vector_norm(p, dtype=torch.float32)))
        for _, p in named
    ]
    if not stats:
        return key, torch.zeros((0, 2))
    if len({s.device for s in stats}) == 1:
        return key, torch.stack(stats).cpu()  # one device sync
    return key, torch.stack([s.cpu() for s in stats])


def _find_vllm_model(llm: Any) -> Any | None:
    """vLLM's nn.Module when its engine core runs in this process, else None."""
    for path in _RUNNER_PATHS:
        obj = llm
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is None:
            continue
        get_model = getattr(obj, "get_model", None)  # unwraps CUDA-graph wrappers in V1
        model = get_model() if callable(get_model) else getattr(obj, "model", None)
        if model is not None and callable(getattr(model, "load_weights", None)):
            return model
    return None


def _load_on_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Run on each vLLM worker through ``collective_rpc`` (module level: picklable)."""
    runner = worker.model_runner
    get_model = getattr(runner, "get_model", None)
    model = get_model() if callable(get_model) else runner.model
    model.load_weights(weights)


def _load_on_model(model: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Run on each vLLM model through ``apply_model``."""
    model.load_weights(weights)


def _sampled_logprobs(token_ids: list[int], logprobs: Any) -> list[float] | None:
    """Log-prob of each sampled token from vLLM's per-position ``{token_id: Logprob}`` maps."""
    if logprobs is None:
        return None
    if len(logprobs) != len(token_ids):
        raise RuntimeError(
            f"vLLM returned {len(logprobs)} log-prob entries for {len(token_ids)} tokens"
        )
    out: list[float] = []
    for pos, (tok, entry) in enumerate(zip(token_ids, logprobs, strict=True)):
        lp = entry.get(tok) if entry is not None else None
        if lp is None:
            raise RuntimeError(
                f"vLLM's log-probs at position {pos} lack the sampled token {tok}; "
                "the engine must be asked for logprobs=0 (the sampled token's)"
            )
        out.append(float(getattr(lp, "logprob", lp)))
    return out


def outputs_to_generation(
    prompts: list[list[int]],
    outputs: Sequence[Any],
    *,
    n: int,
    eos_ids: Sequence[int] = (),
    with_logprobs: bool = True,
) -> Generation:
    """vLLM ``RequestOutput`` s (one per prompt, ``n`` completions each) -> prompt-major Generation.

    Row ``i * n + j`` is completion ``j`` (by ``CompletionOutput.index``) of prompt ``i``.
    ``truncated`` is ``finish_reason == "length"`` unless the last token is an EOS id (vLLM
    reports "length" when EOS is the last allowed token). ``sampler_logprobs`` is None when
    ``with_logprobs`` is False or any completion came back without log-probs.

    Raises:
        RuntimeError: outputs that do not match the prompts (count, order, n), or a completion
            that finished for another reason than "stop" / "length" (e.g. "abort").
    """
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    eos = set(eos_ids)
    prompt_rows: list[list[int]] = []
    completions: list[list[int]] = []
    truncated: list[bool] = []
    logprobs: list[list[float]] | None = [] if with_logprobs else None
    for i, (prompt, req) in enumerate(zip(prompts, outputs, strict=True)):
        got = getattr(req, "prompt_token_ids", None)
        if got is not None and list(got) != list(prompt):
            raise RuntimeError(f"vLLM output {i} belongs to another prompt (order lost)")
        comps = sorted(req.outputs, key=lambda c: c.index)
        if len(comps) != n:
            raise RuntimeError(f"vLLM returned {len(comps)} completions for prompt {i}, asked {n}")
        for c in comps:
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(
                    f"vLLM completion {c.index} of prompt {i} finished with "
                    f"{c.finish_reason!r}; expected 'stop' or 'length'"
                )
            ids = list(c.token_ids)
            prompt_rows.append(prompt)
            completions.append(ids)
            truncated.append(c.finish_reason == "length" and not (ids and ids[-1] in eos))
            if logprobs is not None:
                lps = _sampled_logprobs(ids, c.logprobs)
                if lps is None:
                    logprobs = None
                else:
                    logprobs.append(lps)
    return Generation(
        prompt_ids=prompt_rows,
        completion_ids=completions,
        truncated=truncated,
        sampler_logprobs=logprobs,
    )


class VLLMEngine:
    """Rollouts from an in-process ``vllm.LLM`` sharing the trainer's GPU.

    Args:
        model_path: checkpoint directory or hub id vLLM loads (the policy's starting weights;
            ``sync_weights`` overwrites them with the trainer's).
        tokenizer: a path / hub id passed to vLLM as its tokenizer, or a tokenizer object whose
            ``eos_token_id`` is used when ``eos_token_id`` is None (vLLM then loads its own
            tokenizer from ``model_path``; prompts are token ids either way).
        gpu_memory_utilization: fraction of the *whole* GPU's memory vLLM may take (its weights,
            activations and KV cache); the trainer lives in the rest. See docs/vllm.md.
        dtype: vLLM's weight/compute dtype ("auto": the checkpoint's).
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes (the G samples of a
            group share their prompt); reset after every weight push.
        seed: vLLM's sampling seed.
        max_model_len: longest prompt + completion (None: the model config's).
        eos_token_id: id(s) generation stops at (sent as ``stop_token_ids``); default: the
            tokenizer object's, else vLLM's own.
        seed_per_request: give every prompt its own seed derived from (seed, call, prompt index),
            so its samples do not depend on batching; vLLM samples seeded requests with
            per-request generators, which is slower.
        **llm_kwargs: passed to ``vllm.LLM`` (e.g. ``enforce_eager=True``, ``max_num_seqs``,
            ``enable_sleep_mode``); ``logprobs_mode`` may be "processed_logprobs" (default where
            supported) or "raw_logprobs".

    Raises:
        ImportError: vLLM is not installed (names the extra to install).
        ValueError: a bad memory fraction, length or ``logprobs_mode``.
    """

    def __init__(
        self,
        model_path: str,
        *,
        tokenizer: Any = None,
        gpu_memory_utilization: float = 0.3,
        dtype: str | torch.dtype = "auto",
        enable_prefix_caching: bool = True,
        seed: int = 0,
        max_model_len: int | None = None,
        eos_token_id: int | list[int] | None = None,
        seed_per_request: bool = False,
        **llm_kwargs: Any,
    ) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1] (a fraction of the GPU's memory), "
                f"got {gpu_memory_utilization}"
            )
        if max_model_len is not None and max_model_len <= 0:
            raise ConfigError(
                f"max_model_len must be a positive integer or None, got {max_model_len}"
            )
        asked_mode = "logprobs_mode" in llm_kwargs
        mode = llm_kwargs.pop("logprobs_mode", "processed_logprobs")
        if mode not in _LOGPROBS_MODES:
            raise ConfigError(f"logprobs_mode must be one of {_LOGPROBS_MODES}, got {mode!r}")
        vllm = _import_vllm()
        self.version = str(getattr(vllm, "__version__", "unknown"))
        kwargs: dict[str, Any] = {
            "model": str(model_path),
            "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype,
            "enable_prefix_caching": enable_prefix_caching,
            "seed": seed,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if isinstance(tokenizer, (str, os.PathLike)):
            kwargs["tokenizer"] = str(tokenizer)
        elif eos_token_id is None and tokenizer is not None:
            eos_token_id = getattr(tokenizer, "eos_token_id", None)
        has_mode = "logprobs_mode" in _engine_arg_names(vllm)
        if has_mode:
            kwargs["logprobs_mode"] = mode
        elif asked_mode:
            raise ConfigError(f"logprobs_mode needs vLLM >= 0.10; vLLM {self.version} is installed")
        # The engine core must live in this process for sync_weights to reach its model.
        os.environ.setdefault(_INPROC_ENV, "0")
        self.llm = vllm.LLM(**kwargs, **llm_kwargs)
        self._vllm = vllm
        self.seed = seed
        self.seed_per_request = seed_per_request
        self.eos_ids = _id_list(eos_token_id) or self._vllm_eos_ids()
        v1 = type(getattr(self.llm, "llm_engine", None)).__module__.startswith("vllm.v1")
        # V0's sampler reports processed log-probs; V1 before logprobs_mode reports raw ones.
        self.logprobs_processed = mode == "processed_logprobs" if has_mode else not v1
        self.pushes = 0
        """Weight pushes made so far (skipped syncs are not counted)."""
        self._calls = 0
        self._last_fingerprint: tuple[Any, torch.Tensor] | None = None
        self._push_order = ["load_weights", "collective_rpc", "apply_model"]
        self._warned_logprobs = False

    def _vllm_eos_ids(self) -> list[int]:
        try:
            eos = self.llm.get_tokenizer().eos_token_id
        except Exception:  # no tokenizer (skip_tokenizer_init) or an API change: vLLM's own EOS
            return []
        return _id_list(eos)

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        greedy: bool = False,
    ) -> Generation:
        """``n`` samples per prompt at ``temperature`` / ``top_p`` (one greedy completion when
        ``greedy``; greedy rows carry no sampler log-probs). Prompt-major rows."""
        if greedy:
            n, temperature, top_p = 1, 0.0, 1.0
        elif temperature <= 0:
            raise ValueError(
                f"temperature must be > 0 (use greedy=True for argmax), got {temperature}"
            )
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
        with_logprobs = not greedy and self._logprobs_comparable(temperature, top_p)
        base: dict[str, Any] = {
            "n": n,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_new_tokens,
            "logprobs": 0 if with_logprobs else None,  # 0: the sampled token's log-prob only
            "detokenize": False,  # ids are all we need
        }
        if self.eos_ids:
            base["stop_token_ids"] = list(self.eos_ids)
        self._calls += 1
        params: Any
        if self.seed_per_request and not greedy:
            # blocks of n seeds per prompt: vLLM seeds sample j of a request with seed + j
            start = random.Random(f"{self.seed}/{self._calls}").getrandbits(40)
            params = [
                self._vllm.SamplingParams(**base, seed=start + i * n) for i in range(len(prompts))
            ]
        else:
            params = self._vllm.SamplingParams(**base)
        inputs = [{"prompt_token_ids": list(p)} for p in prompts]  # vllm.inputs.TokensPrompt
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        gen = outputs_to_generation(
            prompts, outputs, n=n, eos_ids=self.eos_ids, with_logprobs=with_logprobs
        )
        if with_logprobs and gen.sampler_logprobs is None:
            self._warn_once(
                f"vLLM {self.version} returned no log-probs for logprobs=0; "
                "Generation.sampler_logprobs is left empty (no importance correction)"
            )
        return gen

    def _warn_once(self, message: str, *, stacklevel: int = 3) -> None:
        """One warning per engine, attributed to the code that called ``generate``."""
        if not self._warned_logprobs:
            warnings.warn(message, UserWarning, stacklevel=stacklevel)
            self._warned_logprobs = True

    def _logprobs_comparable(self, temperature: float, top_p: float) -> bool:
        """Raw log-probs equal the sampler's distribution only at T = 1 without top-p."""
        if self.logprobs_processed or (temperature == 1.0 and top_p == 1.0):
            return True
        self._warn_once(
            f"vLLM {self.version} reports log-probs of the raw model distribution, not of the "
            f"temperature-scaled one the tokens were sampled from (T={temperature}, "
            f"top_p={top_p}); Generation.sampler_logprobs is left empty, so no importance "
            "correction is applied. vLLM >= 0.10 (logprobs_mode) fixes this.",
            stacklevel=4,
        )
        return False

    # ------------------------------------------------------------------ weights
    def sync_weights(self, model: Any, *, force: bool = False) -> None:
        """Copy ``model``'s parameters into vLLM (skipped when unchanged since the last push,
        unless ``force``), then reset vLLM's prefix cache.

        Tries, in order (the first that works is tried first next time): the in-process model's
        ``load_weights``; ``llm.collective_rpc`` running ``load_weights`` on each worker;
        ``llm.apply_model``. Raises RuntimeError naming the vLLM version when none works.
        """
        named = [(vllm_param_name(n), p.detach()) for n, p in model.named_parameters()]
        fingerprint = weights_fingerprint(named)
        last = self._last_fingerprint
        if (
            not force
            and last is not None
            and last[0] == fingerprint[0]
            and torch.equal(last[1], fingerprint[1])
        ):
            return
        self._push(named)
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if callable(reset):
            reset()  # cached KV blocks were computed with the old weights
        self._last_fingerprint = fingerprint
        self.pushes += 1

    def _push(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        errors: list[str] = []
        for how in list(self._push_order):
            try:
                if how == "load_weights":
                    target = _find_vllm_model(self.llm)
                    if target is None:
                        raise AttributeError("no in-process model runner")
                    target.load_weights(weights)
                elif how == "collective_rpc":
                    self.llm.collective_rpc(_load_on_worker, args=(weights,))
                else:
                    self.llm.apply_model(functools.partial(_load_on_model, weights=weights))
            except Exception as e:  # each vLLM version breaks differently: try the next path
                errors.append(f"{how}: {type(e).__name__}: {e}")
                continue
            self._push_order.remove(how)
            self._push_order.insert(0, how)
            return
        raise RuntimeError(
            f"could not push weights into vLLM {self.version}; tried " + "; ".join(errors) + ". "
            f"Run vLLM's engine core in this process ({_INPROC_ENV}=0, set by VLLMEngine unless "
            "already set), or allow callables in collective_rpc "
            "(VLLM_ALLOW_INSECURE_SERIALIZATION=1)."
        )
