"""GPU check: the CUDA paths against references, and the time of one RL step.

For a bare CUDA machine (torch, transformers, accelerate, triton; no internet, pytest not
needed); about 2-4 minutes on one H100::

    scripts/gpu_check.sh [--model DIR]        # or: python scripts/gpu_check.py [--model DIR]

Checks (each prints PASS / FAIL with its numbers; ``pytest -m cuda`` runs the same functions
through tests/integration/test_cuda.py):

- ``fused_stats_{float32,bfloat16}``: ops.token_stats.fused_logprobs_entropy on the GPU (inputs
  in that dtype) against a float64 reference on the same values: log-probs, entropy, top-1 and
  the gradients of hidden states and head weight.
- ``token_stats_autocast``: policy_token_stats under bfloat16 autocast (mixed precision) within
  bfloat16 rounding of float32, gradients float32.
- ``kv_engine_{float32,bfloat16}``: engine.kv's next-token logits against the model's forward
  (float32: 1e-4; bfloat16 compute: against the model under autocast); float32 sampler
  statistics against the trainer's pi_old.
- ``trainer_bfloat16``: 3 RL steps of a tiny model with model.dtype=bfloat16 on fixed rollouts
  move the weights like a float32 run (relative difference of the updates < 0.1).

Timing: one RL step (rollout, then pi_old + update) of a model with SmolLM2-135M's shapes
(random weights, a 49,152-word tokenizer: completions run to max_new_tokens) in float32 and
bfloat16, with the shared-prompt update (the default) and without it (``plain layout``), and
the fused log-prob + entropy forward and backward at H = 4096, V = 131,072 and 151,936, 4,096
and 8,192 tokens in bfloat16 (beside Liger Kernel's fused linear cross-entropy where its
wheel is installed); and of the model in ``--model DIR`` (e.g. SmolLM2-135M-Instruct from
``entropy-rl get-model smollm2``) if given. Without CUDA the script says so and exits 0
(``--device cpu`` runs it on the CPU, for debugging the script).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

BF16_EPS = 2.0**-8  # bfloat16's relative spacing (8 significant bits)
SMOLLM2_SHAPES = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                  "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                  "max_position_embeddings": 8192, "rope_theta": 100000.0,
                  "tie_word_embeddings": True}  # fmt: skip


# ------------------------------------------------------------------------------------ checks
def check_fused_stats(device: str, dtype: torch.dtype) -> dict[str, float]:
    """fused_logprobs_entropy vs float64 on the same (dtype-rounded) values, N=384 rows, V=32k."""
    from entropy_rl.ops.token_stats import fused_logprobs_entropy

    g = torch.Generator().manual_seed(0)
    n, d, v = 384, 256, 32768
    h64 = (torch.randn(n, d, generator=g) * 2).to(dtype).double()  # values representable in dtype
    w64 = (torch.randn(v, d, generator=g) / math.sqrt(d)).to(dtype).double()
    ids = torch.randint(0, v, (n,), generator=g)
    h = h64.to(device, dtype).requires_grad_(True)
    w = w64.to(device, dtype).requires_grad_(True)
    lp, ent, top1 = fused_logprobs_entropy(h, w, ids.to(device), temperature=0.7, chunk_size=128,
                                           return_top1=True)  # fmt: skip
    (lp.sum() + 0.5 * ent.sum()).backward()
    h_ref, w_ref = h64.clone().requires_grad_(True), w64.clone().requires_grad_(True)
    logp = torch.log_softmax(h_ref @ w_ref.T / 0.7, dim=-1)  # (N, V) float64
    lp_ref = logp.gather(1, ids[:, None]).squeeze(1)
    ent_ref = -(logp.exp() * logp).sum(-1)
    (lp_ref.sum() + 0.5 * ent_ref.sum()).backward()
    assert h.grad is not None and w.grad is not None and h_ref.grad is not None
    assert w_ref.grad is not None
    err = {
        "logp": float((lp.detach().double().cpu() - lp_ref.detach()).abs().max()),
        "entropy": float((ent.detach().double().cpu() - ent_ref.detach()).abs().max()),
        "top1": float((top1.double().cpu() - logp.exp().amax(-1).detach()).abs().max()),
        "grad_h_rel": _rel(h.grad, h_ref.grad),
        "grad_w_rel": _rel(w.grad, w_ref.grad),
    }
    # float32 compute whatever the input dtype (logits ~ +-10: a few float32 ulps);
    # bf16 inputs get bf16 gradients: one bf16 rounding of a float32 result
    grad_tol = 1e-4 if dtype == torch.float32 else 2 * BF16_EPS
    assert max(err["logp"], err["entropy"], err["top1"]) < 2e-4, err
    assert err["grad_h_rel"] < grad_tol and err["grad_w_rel"] < grad_tol, err
    return err


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double().cpu() - ref).norm() / ref.norm())


def _tiny_model(device: str, seed: int = 0, vocab: int = 19) -> Any:
    """A 2-layer Qwen2 with weights large enough for spread-out logits."""
    from entropy_rl.tasks.model import build_tiny_model

    model = build_tiny_model(vocab, layers=2, hidden=64, heads=4, kv_heads=2, mlp=128, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 1.5 / math.sqrt(p.shape[1]))
    return model.to(device).eval()


def check_token_stats_autocast(device: str) -> dict[str, float]:
    """policy_token_stats under bf16 autocast vs float32 on the same model and batch."""
    from entropy_rl.train.batch import build_batch, policy_token_stats

    model = _tiny_model(device, vocab=4096)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 4096, (k,), generator=g).tolist() for k in (5, 9, 3, 7)]
    comps = [torch.randint(3, 4096, (k,), generator=g).tolist() for k in (12, 4, 16, 9)]
    batch = build_batch(prompts, comps, rewards=torch.zeros(4), advantages=torch.zeros(4),
                        pad_token_id=0)  # fmt: skip
    seen = batch.targets != -1
    out: dict[str, float] = {}
    for mode in ("fused", "full"):
        with torch.no_grad():
            ref, ref_h, _ = policy_token_stats(model, batch, temperature=1.0, mode=mode)
        lp, ent, _ = policy_token_stats(model, batch, temperature=1.0, mode=mode,
                                        autocast=torch.bfloat16)  # fmt: skip
        (lp[seen.to(lp.device)].sum()).backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32
                   for p in model.parameters())  # fmt: skip
        model.zero_grad(set_to_none=True)
        m = seen.to(lp.device)
        out[f"{mode}_logp_err"] = float((lp.detach() - ref)[m].abs().max())
        out[f"{mode}_entropy_err"] = float((ent.detach() - ref_h)[m].abs().max())
        assert 0 < out[f"{mode}_logp_err"] < 64 * BF16_EPS, out  # ran in bf16, bf16-close
        assert out[f"{mode}_entropy_err"] < 64 * BF16_EPS, out
    return out


def check_kv_engine(device: str, dtype: torch.dtype) -> dict[str, float]:
    """engine.kv next-token logits vs the model's forward on left-padded prompts; with float32,
    the sampler's statistics vs the trainer's pi_old forward."""
    from entropy_rl.engine.kv import KVCacheEngine
    from entropy_rl.train.batch import build_batch, policy_token_stats
    from entropy_rl.train.precision import autocast

    model = _tiny_model(device, vocab=4096)
    amp = None if dtype == torch.float32 else dtype
    eng = KVCacheEngine(model, pad_token_id=0, eos_token_id=2, compute_dtype=amp)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19, 20]]
    ids, att = eng._left_pad(prompts, 1, device)
    with torch.no_grad(), autocast(device, amp):
        ref = model(input_ids=ids, attention_mask=att).logits[:, -1].float()
    got = eng.logits_last(ids, att).float()
    scale = float(ref.abs().max())
    out = {"logits_err": float((got - ref).abs().max()), "logits_scale": scale}
    tol = 1e-4 * max(scale, 1.0) if amp is None else 16 * BF16_EPS * scale
    assert out["logits_err"] < tol, out
    if amp is None:
        torch.manual_seed(0)
        gen = eng.generate(prompts, n=4, temperature=1.0, top_p=1.0, max_new_tokens=16)
        batch = build_batch(gen.prompt_ids, gen.completion_ids, rewards=torch.zeros(len(gen)),
                            advantages=torch.zeros(len(gen)), pad_token_id=0,
                            sampler_logprobs=gen.sampler_logprobs,
                            sampler_entropy=gen.sampler_entropy, sampler_top1=gen.sampler_top1)  # fmt: skip
        with torch.no_grad():
            lp, ent, _ = policy_token_stats(model, batch, temperature=1.0, mode="fused")
        seen = batch.targets != -1
        assert batch.sampler_logprobs is not None and batch.sampler_entropy is not None
        out["sampler_logp_err"] = float((batch.sampler_logprobs - lp.cpu())[seen].abs().max())
        out["sampler_entropy_err"] = float((batch.sampler_entropy - ent.cpu())[seen].abs().max())
        assert max(out["sampler_logp_err"], out["sampler_entropy_err"]) < 1e-3, out
    else:
        assert not eng.exact_logprobs
    return out


def check_trainer_bf16(device: str) -> dict[str, float]:
    """3 RL steps with model.dtype=bfloat16 vs float32 on the same fixed rollouts."""
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from fixed_rollouts import train_delta  # the CPU test's own harness

    from entropy_rl.tasks.model import build_tiny_model
    from entropy_rl.tasks.tokenizer import build_char_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tok = build_char_tokenizer()
        build_tiny_model(len(tok), layers=2, hidden=32, heads=2, kv_heads=1, mlp=64,
                         seed=0).save_pretrained(d / "m")  # fmt: skip
        tok.save_pretrained(d / "m")
        d32 = train_delta(d / "m", d / "a", "float32", device=device)
        d16 = train_delta(d / "m", d / "b", "bfloat16", device=device)
    out = {"moved_frac": float((d16 != 0).float().mean()),
           "rel_diff": float((d16 - d32).norm() / d32.norm())}  # fmt: skip
    assert out["moved_frac"] > 0.99 and out["rel_diff"] < 0.1, out
    return out


CHECKS: dict[str, Callable[[str], dict[str, float]]] = {
    "fused_stats_float32": lambda dev: check_fused_stats(dev, torch.float32),
    "fused_stats_bfloat16": lambda dev: check_fused_stats(dev, torch.bfloat16),
    "token_stats_autocast": check_token_stats_autocast,
    "kv_engine_float32": lambda dev: check_kv_engine(dev, torch.float32),
    "kv_engine_bfloat16": lambda dev: check_kv_engine(dev, torch.bfloat16),
    "trainer_bfloat16": check_trainer_bf16,
}


# ------------------------------------------------------------------------------------ timing
def _word_tokenizer(vocab: int) -> Any:
    """A fixed word-level tokenizer of ``vocab`` ids (no files needed)."""
    from tokenizers import decoders, pre_tokenizers

    from entropy_rl.tasks.tokenizer import SPECIAL_TOKENS, word_level_tokenizer

    words = tuple(f"w{i}" for i in range(vocab - len(SPECIAL_TOKENS)))
    return word_level_tokenizer((*SPECIAL_TOKENS, *words), pre_tokenizer=pre_tokenizers.Whitespace(),
                                decoder=decoders.WordPiece())  # fmt: skip


def _smollm2_shaped(seed: int = 0) -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _word_tokenizer(SMOLLM2_SHAPES["vocab_size"])
    cfg = LlamaConfig(**SMOLLM2_SHAPES, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg), tok


def time_rl_step(model: Any, tok: Any, *, device: str, dtype: str, engine: str, steps: int,
                 prompts: int, group: int, max_new: int, chat: bool,
                 shared_prompt: bool | None = None) -> dict[str, float]:  # fmt: skip
    """Median wall time of rollout and update over ``steps`` RL steps after one warm-up step."""
    from entropy_rl.train.config import build_config
    from entropy_rl.train.trainer import Trainer

    over = {"model.dtype": dtype, "run.device": device, "rollout.engine": engine,
            "rollout.prompts_per_step": prompts, "rollout.group_size": group,
            "rollout.max_new_tokens": max_new, "rollout.dynamic_sampling": False,
            "eval.every": 0, "run.save_every": 0, "run.progress": False, "algo.lr": 5e-6,
            "algo.ppo_epochs": 1, "algo.mini_batches": 2, "algo.micro_batch_size": 16,
            "data.chat_template": chat, "control.detector": False,
            "model.shared_prompt": shared_prompt}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        over["run.out_dir"] = tmp
        cfg = build_config(
            preset="grpo", overrides=[f"{k}={json.dumps(v)}" for k, v in over.items()]
        )
        trainer = Trainer(cfg, model=model, tokenizer=tok)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for _ in range(steps + 1):
            trainer.step += 1
            t0 = time.perf_counter()
            batch, metrics = trainer.rollout()
            _sync(device)
            t1 = time.perf_counter()
            if batch is not None:
                metrics |= trainer.update(batch)
            _sync(device)
            t2 = time.perf_counter()
            rows.append((t1 - t0, t2 - t1, metrics.get("_tokens", 0.0)))
    rows = rows[1:]  # the first step compiles kernels and fills caches
    out = {"rollout_s": statistics.median(r[0] for r in rows),
           "update_s": statistics.median(r[1] for r in rows),
           "tokens_per_step": statistics.median(r[2] for r in rows)}  # fmt: skip
    out["tokens_per_s"] = out["tokens_per_step"] / (out["rollout_s"] + out["update_s"])
    if device == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def time_fused_stats(device: str, *, hidden: int, vocab: int, tokens: int,
                     repeats: int = 5) -> dict[str, float]:  # fmt: skip
    """Forward + backward of the fused log-prob + entropy (ops.token_stats) at (tokens, hidden)
    x (vocab, hidden) in bfloat16, median ms over ``repeats``, peak memory; beside it Liger
    Kernel's fused linear cross-entropy (log-probs only, no entropy) where its package is
    importable. Published anchors: Liger's CuTe kernel with differentiable entropy 24.9 ms at
    4096 x 4096 x 131,072 on an H200, verl's kernel 50.9 ms."""
    from entropy_rl.ops.token_stats import fused_logprobs_entropy

    g = torch.Generator(device=device).manual_seed(0)
    h = (torch.randn(tokens, hidden, device=device, generator=g) * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(vocab, hidden, device=device, generator=g) * hidden**-0.5).bfloat16()
    w.requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device=device, generator=g)

    def ours() -> None:
        lp, ent = fused_logprobs_entropy(h[None], w, y[None], chunk_size=1024)[:2]
        (lp.float().sum() + ent.float().sum()).backward()

    fns: dict[str, Callable[[], None]] = {"ours": ours}
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(reduction="sum")
        fns["liger"] = lambda: liger(w, h, y).backward()
    except ImportError:
        pass
    out: dict[str, float] = {}
    for name, fn in fns.items():
        fn()  # warm-up: kernels, allocator
        _sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ts = []
        for _ in range(repeats):
            h.grad = w.grad = None
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
        out[f"{name}_ms"] = 1e3 * statistics.median(ts)
        if device == "cuda":
            out[f"{name}_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ runner
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", help="a model directory to time (e.g. SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (script debugging)")
    p.add_argument("--only", nargs="*", help="run only these checks (names below)")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--no-checks", action="store_true", help="timing only (pytest ran the checks)")
    p.add_argument("--steps", type=int, default=2, help="timed RL steps per setting")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--chat", action="store_true", help="--model prompts through its chat template")
    p.add_argument("--no-fused", action="store_true", help="skip the fused-statistics timing")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: nothing checked (use --device cpu to debug)")
        return 0
    import transformers

    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"gpu_check on {name}: torch {torch.__version__}, transformers "
          f"{transformers.__version__}, CUDA {torch.version.cuda}", flush=True)  # fmt: skip
    failed = []
    for check, fn in CHECKS.items():
        if a.no_checks or (a.only and check not in a.only):
            continue
        t0 = time.perf_counter()
        try:
            nums = fn(a.device)
        except Exception:  # report every check; the exit code says whether any failed
            failed.append(check)
            print(f"FAIL {check} ({time.perf_counter() - t0:.1f} s)\n{traceback.format_exc()}")
            continue
        shown = "  ".join(f"{k}={v:.3g}" for k, v in nums.items())
        print(f"PASS {check} ({time.perf_counter() - t0:.1f} s)  {shown}", flush=True)
    if not a.no_timing:
        kw: dict[str, Any] = {"device": a.device, "steps": a.steps, "prompts": a.prompts,
                              "group": a.group, "max_new": a.max_new}  # fmt: skip
        runs: list[tuple[str, Callable[[], tuple[Any, Any]], dict[str, Any]]] = [
            (f"smollm2-shaped random {dt} {eng}", _smollm2_shaped,
             {"dtype": dt, "engine": eng, "chat": False})
            for dt, eng in (("float32", "kv"), ("bfloat16", "kv"), ("bfloat16", "hf"))
        ]  # fmt: skip
        runs.append(("smollm2-shaped random float32 kv plain layout", _smollm2_shaped,
                     {"dtype": "float32", "engine": "kv", "chat": False,
                      "shared_prompt": False}))  # fmt: skip
        if a.model:
            from types import SimpleNamespace

            from entropy_rl.models import load_model

            def real() -> tuple[Any, Any]:
                ns = SimpleNamespace
                return load_model(ns(model=ns(path=a.model, trust_remote_code=False),  # type: ignore[no-any-return]
                                     data=ns(task="addition")))  # fmt: skip

            runs += [(f"{Path(a.model).name} {dt} kv", real,
                      {"dtype": dt, "engine": "kv", "chat": a.chat}) for dt in ("float32", "bfloat16")]  # fmt: skip
        for label, make, setting in runs:
            t0 = time.perf_counter()
            try:
                model, tok = make()
                nums = time_rl_step(model, tok, **kw, **setting)
            except Exception:
                failed.append(f"timing {label}")
                print(f"FAIL timing {label}\n{traceback.format_exc()}")
                continue
            shown = "  ".join(f"{k}={v:.3g}" for k, v in nums.items())
            print(f"TIME {label} ({a.prompts}x{a.group}, <= {a.max_new} new tokens; "
                  f"{time.perf_counter() - t0:.0f} s in all)  {shown}", flush=True)  # fmt: skip
    if not a.no_fused:
        sizes = [(4096, v, n) for v in (131072, 151936) for n in (4096, 8192)]
        if a.device != "cuda":  # script debugging on a CPU: one small size
            sizes = [(64, 4096, 256)]
        for hidden, vocab, tokens in sizes:
            label = f"fused log-prob+entropy fwd+bwd bf16 H={hidden} V={vocab} N={tokens}"
            try:
                nums = time_fused_stats(a.device, hidden=hidden, vocab=vocab, tokens=tokens)
            except Exception:
                failed.append(f"timing {label}")
                print(f"FAIL timing {label}\n{traceback.format_exc()}")
                continue
            print(f"TIME {label}  " + "  ".join(f"{k}={v:.3g}" for k, v in nums.items()),
                  flush=True)  # fmt: skip
    print("gpu_check: " + (f"FAILED: {', '.join(failed)}" if failed else "all passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
