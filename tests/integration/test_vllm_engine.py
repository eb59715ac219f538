"""VLLMEngine: without vLLM (import, the extra's error), against a fake ``vllm`` module that has
the real objects' attributes (conversion, sampling parameters, log-prob modes, weight sync and its
fallbacks, a short training run), and, on a GPU with vLLM installed, against the real thing.

The fake lives in fake_vllm.py (its docstring says what it mimics).
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from fake_vllm import (
    EOS,
    CompletionOutput,
    Logprob,
    RequestOutput,
    ScriptedLLM,
    make_vllm,
)

from entropy_rl.engine.vllm import (
    VLLMEngine,
    outputs_to_generation,
    vllm_param_name,
    weights_fingerprint,
)


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch):
    """install(llm_cls, logprobs_mode=True) puts a fake vllm in sys.modules for this test; the
    in-process env var starts unset and is restored afterwards."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "placeholder")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")

    def _install(llm: type = ScriptedLLM, *, logprobs_mode: bool = True) -> types.ModuleType:
        mod = make_vllm(llm, logprobs_mode=logprobs_mode)
        monkeypatch.setitem(sys.modules, "vllm", mod)
        return mod

    return _install


def variant(**attrs: Any) -> type:
    return type("VariantLLM", (ScriptedLLM,), attrs)


# --------------------------------------------------------------------------- without vLLM
def test_module_imports_and_constructor_names_the_extra_without_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    mod = importlib.reload(importlib.import_module("entropy_rl.engine.vllm"))
    with pytest.raises(ImportError, match=r"pip install 'entropy-rl\[vllm\]'"):
        mod.VLLMEngine("some/model")


# --------------------------------------------------------------------------- construction
def test_constructor_builds_llm_in_process_with_processed_logprobs(install):
    import os

    install()
    eng = VLLMEngine("m/path", tokenizer="tok/path", max_model_len=64, enforce_eager=True)
    assert eng.llm.kwargs == {
        "model": "m/path",
        "gpu_memory_utilization": 0.3,
        "dtype": "auto",
        "enable_prefix_caching": True,
        "seed": 0,
        "max_model_len": 64,
        "tokenizer": "tok/path",
        "logprobs_mode": "processed_logprobs",
        "enforce_eager": True,
    }
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert eng.logprobs_processed and eng.eos_ids == [EOS]  # EOS from vLLM's tokenizer


def test_constructor_keeps_a_users_multiprocessing_choice_and_tokenizer_eos(install, monkeypatch):
    import os

    install()
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    eng = VLLMEngine("m", tokenizer=SimpleNamespace(eos_token_id=7))
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert "tokenizer" not in eng.llm.kwargs and "max_model_len" not in eng.llm.kwargs
    assert eng.eos_ids == [7]
    assert VLLMEngine(
        "m", eos_token_id=[5, 6], tokenizer=SimpleNamespace(eos_token_id=7)
    ).eos_ids == [
        5,
        6,
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"logprobs_mode": "processed_logits"}, "logprobs_mode"),
    ],
)
def test_constructor_rejects_bad_arguments(install, kwargs, match):
    install()
    with pytest.raises(ValueError, match=match):
        VLLMEngine("m", **kwargs)


def test_logprobs_mode_on_an_old_vllm_is_refused(install):
    install(logprobs_mode=False)
    with pytest.raises(ValueError, match=r"vLLM >= 0.10; vLLM 0.0.fake"):
        VLLMEngine("m", logprobs_mode="processed_logprobs")


def test_raw_logprobs_mode_is_passed_through(install):
    install()
    eng = VLLMEngine("m", logprobs_mode="raw_logprobs")
    assert eng.llm.kwargs["logprobs_mode"] == "raw_logprobs" and not eng.logprobs_processed


# --------------------------------------------------------------------------- generation
def test_generate_is_prompt_major_with_truncation_and_sampler_logprobs(install):
    install()
    eng = VLLMEngine("m")
    prompts = [[5, 6], [7]]
    gen = eng.generate(prompts, n=2, temperature=0.7, top_p=0.9, max_new_tokens=3)
    # row i*n+j = sample j of prompt i (the fake returned j=1 before j=0)
    assert gen.prompt_ids == [[5, 6], [5, 6], [7], [7]]
    assert gen.completion_ids == [[5, EOS], [6, 6, 6], [7, EOS], [8, 8, 8]]
    assert gen.truncated == [False, True, False, True]
    # -(0.1 (i+1) + 0.01 j + 0.001 t): the sampled token's entry, not the rank-1 token 99's
    assert gen.sampler_logprobs == [
        pytest.approx([-0.1, -0.101], abs=1e-12),
        pytest.approx([-0.11, -0.111, -0.112], abs=1e-12),
        pytest.approx([-0.2, -0.201], abs=1e-12),
        pytest.approx([-0.21, -0.211, -0.212], abs=1e-12),
    ]
    inputs, sp, use_tqdm = eng.llm.calls[-1]
    assert inputs == [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [7]}]
    assert use_tqdm is False
    assert sp.kwargs == {
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 3,
        "logprobs": 0,
        "detokenize": False,
        "stop_token_ids": [EOS],
    }


def test_greedy_is_one_argmax_completion_without_logprobs(install):
    install()
    eng = VLLMEngine("m")
    gen = eng.generate([[5], [7]], n=8, temperature=0.7, top_p=0.5, max_new_tokens=4, greedy=True)
    _, sp, _ = eng.llm.calls[-1]
    assert (sp.n, sp.temperature, sp.top_p, sp.logprobs) == (1, 0.0, 1.0, None)
    assert gen.completion_ids == [[5, EOS], [7, EOS]] and gen.sampler_logprobs is None


def test_raw_logprobs_of_an_old_v1_engine_are_dropped_unless_t1(install):
    install(variant(v1=True), logprobs_mode=False)
    eng = VLLMEngine("m")
    assert "logprobs_mode" not in eng.llm.kwargs and not eng.logprobs_processed
    with pytest.warns(UserWarning, match="raw model distribution"):
        gen = eng.generate([[5]], n=2, temperature=0.7, top_p=1.0, max_new_tokens=3)
    assert gen.sampler_logprobs is None and eng.llm.calls[-1][1].logprobs is None
    # at T = 1 without top-p the raw distribution is the sampled one: kept
    gen = eng.generate([[5]], n=2, temperature=1.0, top_p=1.0, max_new_tokens=3)
    assert gen.sampler_logprobs is not None and len(gen.sampler_logprobs) == 2


def test_v0_engine_reports_processed_logprobs_without_the_mode(install):
    install(variant(v1=False), logprobs_mode=False)
    eng = VLLMEngine("m")
    assert eng.logprobs_processed
    gen = eng.generate([[5]], n=1, temperature=0.5, top_p=1.0, max_new_tokens=2)
    assert gen.sampler_logprobs == [pytest.approx([-0.1, -0.101], abs=1e-12)]


def test_seed_per_request_gives_each_prompt_a_block_of_n_seeds(install):
    install()
    eng = VLLMEngine("m", seed=3, seed_per_request=True)
    eng.generate([[5], [6], [7]], n=4, temperature=1.0, top_p=1.0, max_new_tokens=2)
    first = [sp.seed for sp in eng.llm.calls[-1][1]]
    # vLLM seeds sample j of a request with seed + j: blocks of n = 4 never overlap
    assert [s - first[0] for s in first] == [0, 4, 8]
    eng.generate([[5], [6], [7]], n=4, temperature=1.0, top_p=1.0, max_new_tokens=2)
    assert [sp.seed for sp in eng.llm.calls[-1][1]] != first  # a new call, new seeds
    again = VLLMEngine("m", seed=3, seed_per_request=True)
    again.generate([[5], [6], [7]], n=4, temperature=1.0, top_p=1.0, max_new_tokens=2)
    assert [sp.seed for sp in again.llm.calls[-1][1]] == first  # reproducible
    assert not hasattr(VLLMEngine("m").llm, "seed")  # off by default: no per-request seeds


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"n": 0}, "n must be"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"prompts": [[1], []]}, "non-empty"),
    ],
)
def test_generate_rejects_bad_arguments(install, kwargs, match):
    install()
    eng = VLLMEngine("m")
    args = {"prompts": [[1]], "n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 2}
    with pytest.raises(ValueError, match=match):
        eng.generate(**(args | kwargs))


def _req(prompt: list[int], *comps: CompletionOutput) -> RequestOutput:
    return RequestOutput("0", None, prompt, None, list(comps))


def _comp(index: int, ids: list[int], finish: str | None, lps: list[float] | None = None):
    entries = None if lps is None else [{t: Logprob(v)} for t, v in zip(ids, lps, strict=False)]
    return CompletionOutput(index, "", ids, None, entries, finish)


def test_eos_as_the_last_allowed_token_is_not_truncated():
    # vLLM checks the length cap before EOS: finish_reason "length" although EOS ended it
    gen = outputs_to_generation(
        [[1]], [_req([1], _comp(0, [4, EOS], "length"), _comp(1, [4, 4], "length"))],
        n=2, eos_ids=[EOS], with_logprobs=False,
    )  # fmt: skip
    assert gen.truncated == [False, True] and gen.sampler_logprobs is None


def test_a_completion_without_logprobs_empties_sampler_logprobs():
    gen = outputs_to_generation(
        [[1]], [_req([1], _comp(0, [3], "stop", [-0.5]), _comp(1, [3], "stop", None))], n=2
    )
    assert gen.sampler_logprobs is None and gen.completion_ids == [[3], [3]]


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        ([], "0 outputs for 1 prompts"),
        ([_req([9], _comp(0, [3], "stop"))], "another prompt"),
        ([_req([1], _comp(0, [3], "stop"), _comp(1, [3], "stop"))], "2 completions"),
        ([_req([1], _comp(0, [3], "abort"))], "'abort'"),
        ([_req([1], _comp(0, [3, 4], "stop", [-0.1]))], "1 log-prob entries for 2"),
        (
            [_req([1], CompletionOutput(0, "", [3], None, [{5: Logprob(-0.1)}], "stop"))],
            "lack the sampled token 3",
        ),
    ],
)
def test_outputs_that_do_not_match_the_request_raise(outputs, match):
    with pytest.raises(RuntimeError, match=match):
        outputs_to_generation([[1]], outputs, n=1)


# --------------------------------------------------------------------------- weight sync
@pytest.fixture
def policy():
    pytest.importorskip("transformers")
    from entropy_rl.tasks.model import build_tiny_model

    return build_tiny_model(19, layers=1, hidden=8, heads=2, kv_heads=1, mlp=16, seed=0)


def _assert_loaded(load: list[tuple[str, torch.Tensor]], model: torch.nn.Module) -> None:
    named = list(model.named_parameters())
    assert [n for n, _ in load] == [n for n, _ in named]  # tied lm_head appears once
    for (_, got), (_, p) in zip(load, named, strict=True):
        assert torch.equal(got, p.detach())


def test_sync_pushes_named_parameters_then_skips_until_an_update(install, policy):
    install()
    eng = VLLMEngine("m")
    eng.sync_weights(policy)
    loads = eng.llm.vllm_model.loads
    assert eng.pushes == 1 and len(loads) == 1 and eng.llm.prefix_resets == 1
    _assert_loaded(loads[0], policy)
    assert "model.embed_tokens.weight" in [n for n, _ in loads[0]]
    eng.sync_weights(policy)  # unchanged: no push, no cache reset
    assert eng.pushes == 1 and len(loads) == 1 and eng.llm.prefix_resets == 1
    # a fused AdamW step does not bump Tensor._version; the fingerprint still sees it
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3, fused=True)
    versions = [p._version for p in policy.parameters()]
    policy(torch.tensor([[1, 3, 4]])).logits.square().mean().backward()
    opt.step()
    assert [p._version for p in policy.parameters()] == versions
    eng.sync_weights(policy)
    assert eng.pushes == 2 and eng.llm.prefix_resets == 2
    _assert_loaded(loads[1], policy)
    with torch.no_grad():  # a write through .data, invisible to autograd's counter too
        policy.model.norm.weight.data[0] += 1.0
    eng.sync_weights(policy)
    assert eng.pushes == 3
    eng.sync_weights(policy, force=True)
    assert eng.pushes == 4


def test_sync_falls_back_to_collective_rpc_then_apply_model(install, policy):
    install(variant(inproc=False))
    eng = VLLMEngine("m")
    eng.sync_weights(policy)  # no in-process runner: collective_rpc on each worker
    assert eng.llm.rpc_calls == 1 and eng.llm.apply_calls == 0
    _assert_loaded(eng.llm.vllm_model.loads[0], policy)

    install(variant(inproc=False, rpc_ok=False))
    eng = VLLMEngine("m")
    eng.sync_weights(policy)
    assert eng.llm.rpc_calls == 1 and eng.llm.apply_calls == 1
    _assert_loaded(eng.llm.vllm_model.loads[0], policy)
    eng.sync_weights(policy, force=True)  # the path that worked is tried first
    assert eng.llm.rpc_calls == 1 and eng.llm.apply_calls == 2


def test_sync_error_names_the_vllm_version_and_every_path(install, policy):
    install(variant(inproc=False, rpc_ok=False, apply_ok=False))
    eng = VLLMEngine("m")
    with pytest.raises(RuntimeError) as err:
        eng.sync_weights(policy)
    msg = str(err.value)
    assert "vLLM 0.0.fake" in msg
    for part in ("load_weights: AttributeError", "collective_rpc: TypeError", "apply_model"):
        assert part in msg
    assert eng.pushes == 0 and eng.llm.prefix_resets == 0
    with pytest.raises(RuntimeError):  # nothing was recorded as pushed: it tries again
        eng.sync_weights(policy)


def test_param_names_lose_wrapper_prefixes():
    assert vllm_param_name("module.model.layers.0.mlp.up_proj.weight") == (
        "model.layers.0.mlp.up_proj.weight"
    )
    assert vllm_param_name("_orig_mod.lm_head.weight") == "lm_head.weight"
    assert vllm_param_name("model.norm.weight") == "model.norm.weight"


def test_fingerprint_is_sum_and_norm_per_tensor():
    a = torch.tensor([3.0, -4.0])  # sum -1, norm 5
    b = torch.tensor([[1.0, 2.0], [2.0, 0.0]], dtype=torch.bfloat16)  # sum 5, norm 3
    key, stats = weights_fingerprint([("a", a), ("b", b)])
    assert torch.equal(stats, torch.tensor([[-1.0, 5.0], [5.0, 3.0]]))
    assert [k[0] for k in key] == ["a", "b"] and key[1][3] == "torch.bfloat16"


# --------------------------------------------------------------------------- in the trainer
class HFBackedLLM(ScriptedLLM):
    """A ``vllm.LLM`` stand-in that samples from its own transformers copy of the checkpoint and
    reports processed log-probs log softmax(logits / T) of the sampled tokens; load_weights
    copies into that copy. Stale weights or wrong-temperature log-probs show as a mismatch."""

    def __init__(self, **kwargs: Any) -> None:
        from transformers import AutoModelForCausalLM

        super().__init__(**kwargs)
        self.hf = AutoModelForCausalLM.from_pretrained(kwargs["model"]).eval()
        self.vllm_model = SimpleNamespace(load_weights=self._load_weights)
        self.llm_engine.model_executor.driver_worker.model_runner.model = self.vllm_model
        self.gen = torch.Generator().manual_seed(kwargs["seed"])

    @torch.no_grad()
    def _load_weights(self, weights: Any) -> None:
        params = dict(self.hf.named_parameters())
        for name, w in weights:
            params[name].copy_(w)

    @torch.no_grad()
    def generate(self, prompts: Any, sampling_params: Any, use_tqdm: bool = True):
        sp = sampling_params
        assert sp.top_p == 1.0
        outs = []
        for i, p in enumerate(prompts):
            prompt = list(p["prompt_token_ids"])
            seqs = torch.tensor([prompt] * sp.n)  # the n samples of a prompt side by side
            lps = []
            for _ in range(sp.max_tokens):  # rows run on after their EOS; cut below
                logits = self.hf(seqs).logits[:, -1].float()  # (n, V)
                if sp.temperature == 0:
                    logp = torch.log_softmax(logits, -1)
                    tok = logits.argmax(-1)
                else:
                    logp = torch.log_softmax(logits / sp.temperature, -1)
                    tok = torch.multinomial(logp.exp(), 1, generator=self.gen)[:, 0]
                lps.append(logp.gather(1, tok[:, None])[:, 0])
                seqs = torch.cat([seqs, tok[:, None]], 1)
            comps = []
            for j in range(sp.n):
                ids = seqs[j, len(prompt) :].tolist()
                stops = [t for t, x in enumerate(ids) if x in sp.stop_token_ids]
                finish = "stop" if stops else "length"
                ids = ids[: stops[0] + 1] if stops else ids
                keep = [{x: Logprob(float(lps[t][j]))} for t, x in enumerate(ids)]
                comps.append(
                    CompletionOutput(
                        j, "", ids, None, keep if sp.logprobs is not None else None, finish
                    )
                )
            outs.append(RequestOutput(str(i), None, prompt, None, comps))
        return outs


def odd_digits(example: Any, text: str) -> float:
    """A dense reward with spread inside a group: the number of odd digits."""
    return float(sum(ch in "13579" for ch in text))


@pytest.mark.parametrize("stale", [False, True])
def test_trainer_with_vllm_engine_has_no_mismatch_unless_sync_breaks(
    install, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stale: bool
):
    from entropy_rl.train.config import build_config
    from entropy_rl.train.trainer import Trainer

    install(HFBackedLLM)
    if stale:  # a sync that reports success but never reaches vLLM
        monkeypatch.setattr(VLLMEngine, "_push", lambda self, weights: None)
    overrides = {
        "model.path": str(tiny_model_dir), "run.out_dir": str(tmp_path / "run"), "run.steps": 2,
        "run.progress": False, "run.save_every": 0, "rollout.prompts_per_step": 2,
        "rollout.group_size": 4, "rollout.temperature": 0.7, "rollout.max_new_tokens": 5,
        "algo.micro_batch_size": 8, "algo.warmup_steps": 1, "algo.lr": 3e-2, "algo.ppo_epochs": 2,
        "algo.mini_batches": 1, "eval.every": 1, "eval.n_prompts": 2, "eval.samples": 2,
    }  # fmt: skip
    cfg = build_config(
        preset="grpo", overrides=[f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = VLLMEngine(str(tiny_model_dir), tokenizer=tok, seed=0)
    trainer = Trainer(cfg, engine=engine, reward_fn=odd_digits)
    trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mismatch = [r["mismatch/k3"] for r in rows if "mismatch/k3" in r]
    assert len(mismatch) == 2
    # syncs: eval 0 (push), rollout 1 (same weights), eval 1 (push), rollout 2 (same), eval 2
    assert engine.pushes == 3
    if stale:  # step 2 sampled from the starting weights, trained ones compute pi_old
        assert mismatch[1] > 1e-4
    else:  # same weights, same temperature: only float summation order differs
        assert max(mismatch) < 1e-9
        assert all(abs(r["tis/weight_mean"] - 1.0) < 1e-5 for r in rows if "tis/weight_mean" in r)


# --------------------------------------------------------------------------- real vLLM, GPU
def _has_vllm() -> bool:
    try:
        importlib.import_module("vllm")
    except Exception:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available() or not _has_vllm(), reason="needs a CUDA GPU and vLLM"
)
def test_real_vllm_samples_reports_processed_logprobs_and_takes_pushed_weights(tmp_path: Path):
    """The built-in tiny Qwen2 (embeddings x30 so the distribution is sharp) in real vLLM:
    sampler log-probs match the trainer's log softmax(logits / T), not the raw log softmax;
    after a weight push they match the new weights, not the old ones (prefix cache reset)."""
    from transformers import AutoModelForCausalLM

    from entropy_rl.tasks.model import build_tiny_model
    from entropy_rl.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(30.0)  # logits of std ~5: T matters
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    old = AutoModelForCausalLM.from_pretrained(tmp_path).cuda().eval()
    policy = AutoModelForCausalLM.from_pretrained(tmp_path).cuda().eval()
    engine = VLLMEngine(
        str(tmp_path), eos_token_id=tok.eos_token_id, gpu_memory_utilization=0.2,
        dtype="bfloat16", max_model_len=64, enforce_eager=True, seed=0,
    )  # fmt: skip
    prompts = [tok.encode("12+34="), tok.encode("7+8=")]  # <bos> then characters
    temperature = 0.6

    @torch.no_grad()
    def reference(net: Any, gen: Any, *, raw: bool = False) -> list[float]:
        out: list[float] = []
        for p, c in zip(gen.prompt_ids, gen.completion_ids, strict=True):
            logits = net(torch.tensor([p + c], device="cuda")).logits[0, len(p) - 1 : -1]
            lp = torch.log_softmax(logits.float() / (1.0 if raw else temperature), -1)
            out += lp.gather(1, torch.tensor(c, device="cuda")[:, None])[:, 0].tolist()
        return out  # (total completion tokens,)

    def mean_abs(a: list[float], b: list[float]) -> float:
        return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)

    def sample() -> tuple[Any, list[float]]:
        gen = engine.generate(prompts, n=4, temperature=temperature, top_p=1.0, max_new_tokens=12)
        assert len(gen) == 8 and gen.sampler_logprobs is not None
        assert [len(x) for x in gen.sampler_logprobs] == [len(c) for c in gen.completion_ids]
        return gen, [x for row in gen.sampler_logprobs for x in row]

    engine.sync_weights(policy)
    gen, flat = sample()
    err = mean_abs(flat, reference(policy, gen))
    assert err < 0.05  # bf16 vLLM vs fp32 trainer
    assert mean_abs(flat, reference(policy, gen, raw=True)) > 5 * err  # processed, not raw

    with torch.no_grad():  # new weights: another random model, as sharp
        fresh = build_tiny_model(len(tok), seed=1)
        fresh.model.embed_tokens.weight.mul_(30.0)
        for p, q in zip(policy.parameters(), fresh.parameters(), strict=True):
            p.copy_(q.to(p.device))
    engine.sync_weights(policy)
    engine.sync_weights(policy)  # unchanged: skipped
    assert engine.pushes == 2
    gen, flat = sample()
    assert mean_abs(flat, reference(policy, gen)) < 0.05
    assert mean_abs(flat, reference(old, gen)) > 0.2  # the push took effect
