"""Benchmark: peak memory of one policy-update micro-step at a 151,936 vocabulary (CPU).

A Qwen2-shaped model with random weights (default: the Qwen2.5-0.5B shape, hidden 896,
intermediate 4864, 14 heads / 2 KV heads, vocabulary 151,936, tied embeddings; --layers of
its 24 layers) takes one micro-step of the policy update on B sequences of prompt + response
tokens: forward, loss, backward. Ways (each in a fresh subprocess, interleaved over --repeats):

  baseline  base model only, loss = mean(h^2) over the response positions' hidden states: no
            LM head at all. What the model and its activations cost alone (the tied [V, D]
            embedding still gets its dense gradient, so parameters and gradients are the same
            as in the other ways).
  fused     our trainer's micro-step, entropy_rl.train.update._micro_batch_loss with
            logits_mode="fused" at the default model.chunk_size: policy_token_stats ->
            fused_logprobs_entropy (chunked, never holds [tokens, V] logits), PPO clip loss,
            token-mean, entropy bonus 0.01.
  ours-full the same trainer micro-step with logits_mode="full" (model.logits=full): the
            model's own [B, L, V] logits, gathered to [B, T, V], chunked log-probs / entropy.
  full      naive: model logits [B, L, V] -> gather [B, T, V] -> log_softmax -> gather +
            H = -sum exp(logp) logp (what a plain implementation and TRL on CPU do), then the
            same loss as fused.

Peak memory: the process's resident set (RSS). Before the model is built, RSS0 is read from
/proc/self/status; after model and batch are built the high-water mark is reset
(/proc/self/clear_refs, "5") and VmHWM is read after backward; peak = VmHWM - RSS0, so it
includes the parameters. Without /proc it falls back to resource.getrusage ru_maxrss (then
the peak also holds the model's construction). Reported: the median over --repeats.

The 24-layer rows are an extrapolation, not a measurement: every way is also run at
--small-layers; its (peak(L) - peak(L_small)) / (L - L_small) is what one layer adds to that
way's peak (the layer's parameters, and whatever of its gradients and activations is alive at
that way's peak), and its measured peak is extended by that slope to --target-layers.

    python benchmarks/update_memory.py [--layers 4] [--small-layers 2] [--batch 4]
        [--prompt 64] [--response 256] [--repeats 3] [--ways baseline fused ours-full full]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (README: Conditions)

import argparse
import gc
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from torch import Tensor

from procmem import proc_status_kb, reset_peak

MB = 1024 * 1024
FLOAT32_BYTES = 4
ENTROPY_COEF = 0.01
QWEN25_05B = {
    "hidden": 896,
    "intermediate": 4864,
    "heads": 14,
    "kv_heads": 2,
    "vocab": 151_936,
    "layers": 24,
}
WAYS = ("baseline", "fused", "ours-full", "full")


# ----------------------------------------------------------------- pure byte accounting


def qwen2_param_count(
    *,
    hidden: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    layers: int,
    tied: bool = True,
) -> dict[str, int]:
    """Parameter count of a Qwen2 decoder (q/k/v with bias, o_proj without, SwiGLU MLP, RMSNorm).

        per layer = (D^2 + D) + 2 (D kv + kv) + D^2 + 3 D I + 2 D,   kv = D / heads * kv_heads
        total = V D (embedding; + V D again if untied) + layers * per layer + D (final norm)

    Qwen2.5-0.5B (D 896, I 4864, 14/2 heads, V 151,936, 24 layers, tied): 494,032,768.
    Returns {"embedding", "per_layer", "lm_head", "total"}.
    """
    for name, v in (
        ("hidden", hidden),
        ("intermediate", intermediate),
        ("heads", heads),
        ("kv_heads", kv_heads),
        ("vocab", vocab),
    ):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if layers < 0:
        raise ValueError(f"layers must be >= 0, got {layers}")
    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"hidden ({hidden}) must be divisible by heads ({heads}) and heads by kv_heads "
            f"({kv_heads})"
        )
    kv = hidden // heads * kv_heads
    per_layer = (hidden * hidden + hidden) + 2 * (hidden * kv + kv) + hidden * hidden
    per_layer += 3 * hidden * intermediate + 2 * hidden
    embedding = vocab * hidden
    lm_head = 0 if tied else vocab * hidden
    total = embedding + lm_head + layers * per_layer + hidden
    return {"embedding": embedding, "per_layer": per_layer, "lm_head": lm_head, "total": total}


def logits_copy_bytes(rows: int, vocab: int, *, dtype_bytes: int = FLOAT32_BYTES) -> int:
    """Bytes of one materialised [rows, V] tensor: rows * V * dtype_bytes (rows = B * T)."""
    if rows < 0 or vocab < 1 or dtype_bytes < 1:
        raise ValueError(
            f"need rows >= 0, vocab >= 1, dtype_bytes >= 1; got {rows}, {vocab}, {dtype_bytes}"
        )
    return rows * vocab * dtype_bytes


def fused_buffer_bytes(
    rows: int, vocab: int, *, chunk_size: int, dtype_bytes: int = FLOAT32_BYTES
) -> int:
    """Bytes of the fused path's two reused [min(chunk, rows), V] buffers (forward or backward)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return 2 * logits_copy_bytes(min(chunk_size, rows), vocab, dtype_bytes=dtype_bytes)


def peak_breakdown(
    *, peak_mb: float, baseline_mb: float, params_mb: float, grads_mb: float
) -> dict[str, float]:
    """Split a measured peak into parameters, gradients, activations and the logits path.

        activations = baseline peak - params - grads      (model + activations alone)
        logits path = peak - baseline peak                (everything the LM-head stats add)
    Shares are fractions of ``peak_mb``; the four sum to 1.
    """
    if peak_mb <= 0:
        raise ValueError(f"peak_mb must be > 0, got {peak_mb}")
    act = baseline_mb - params_mb - grads_mb
    logits = peak_mb - baseline_mb
    return {
        "above_params_grads_mb": peak_mb - params_mb - grads_mb,
        "activations_mb": act,
        "logits_mb": logits,
        "params_share": params_mb / peak_mb,
        "grads_share": grads_mb / peak_mb,
        "activations_share": act / peak_mb,
        "logits_share": logits / peak_mb,
        "model_act_share": baseline_mb / peak_mb,
    }


def extrapolate_layers(*, peak_mb: float, layers: int, slope_mb: float, target: int) -> float:
    """Peak at ``target`` layers from a peak measured at ``layers``: peak + (target - layers) *
    slope, slope = what one layer added to the measured peak. An extrapolation."""
    if layers < 1 or target < layers:
        raise ValueError(f"need 1 <= layers <= target, got layers={layers}, target={target}")
    return peak_mb + (target - layers) * slope_mb


# ----------------------------------------------------------------- worker (one way, one process)


def build_model(args: argparse.Namespace, layers: int) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).float()
    model.train()
    return model


def build_rollout(args: argparse.Namespace) -> Any:
    from entropy_rl.train.batch import build_batch

    g = torch.Generator().manual_seed(1)
    b, v = args.batch, args.vocab
    prompts = torch.randint(0, v, (b, args.prompt), generator=g).tolist()
    completions = torch.randint(0, v, (b, args.response), generator=g).tolist()
    batch = build_batch(
        prompts,
        completions,
        rewards=torch.randn(b, generator=g),
        advantages=torch.randn(b, generator=g),
        pad_token_id=0,
    )
    # pi_old near a random model's log-probs (~ -log V): the ratio is ~1 and the clip acts on some
    batch.old_logprobs = -math.log(v) + 0.1 * torch.randn(batch.mask.shape, generator=g)
    return batch


def _settings(mode: str, chunk_size: int, max_len: int) -> Any:
    from entropy_rl.train.update import UpdateSettings

    return UpdateSettings(
        loss="ppo",
        loss_kwargs={"eps_low": 0.2, "eps_high": 0.28},
        agg="token-mean",
        epochs=1,
        mini_batches=1,
        micro_batch_size=10**9,
        temperature=1.0,
        grad_clip=1.0,
        entropy_coef=ENTROPY_COEF,
        kl_coef=0.0,
        kl_kind="k3",
        kl_in_loss=True,
        logits_mode=mode,
        chunk_size=chunk_size,
        max_len=max_len,
    )


def step_loss(way: str, model: Any, batch: Any, *, chunk_size: int) -> Tensor:
    """The loss of one micro-step for ``way`` (forward only; the caller runs backward)."""
    from entropy_rl.ops.losses import policy_loss
    from entropy_rl.ops.regularizers import entropy_bonus
    from entropy_rl.train.batch import _response_index
    from entropy_rl.train.update import _micro_batch_loss

    ntok, t = float(batch.mask.sum()), batch.targets.shape[1]
    if way in ("fused", "ours-full"):  # the trainer's own micro-step
        s = _settings("fused" if way == "fused" else "full", chunk_size, t)
        return _micro_batch_loss(model, batch, s, num_tokens=ntok, num_seqs=len(batch))[0]
    index = _response_index(batch)  # (B, T)
    if way == "baseline":
        hidden = model.base_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state  # (B, L, D)
        h = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, T, D)
        return h.square().mean()
    if way != "full":
        raise ValueError(f"way must be one of {WAYS}, got {way!r}")
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    z = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))  # (B, T, V)
    logp_all = torch.log_softmax(z.float(), dim=-1)
    logp = logp_all.gather(-1, batch.targets.clamp(min=0)[..., None]).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    agg_kw: dict[str, Any] = {"num_tokens": ntok, "num_seqs": len(batch), "max_len": t}
    loss, _ = policy_loss(
        "ppo",
        logprobs=logp,
        old_logprobs=batch.old_logprobs,
        advantages=batch.advantages,
        mask=batch.mask,
        agg="token-mean",
        eps_low=0.2,
        eps_high=0.28,
        **agg_kw,
    )
    return loss + entropy_bonus(ent, batch.mask, coef=ENTROPY_COEF, agg="token-mean", **agg_kw)


def _warm_up(args: argparse.Namespace) -> None:
    """One micro-step of ``args.worker`` on a tiny model of the same code path, so that lazy
    imports, kernel libraries and thread pools are loaded before RSS0 is read."""
    tiny = argparse.Namespace(
        **{
            **vars(args),
            "hidden": 32,
            "intermediate": 64,
            "heads": 2,
            "kv_heads": 1,
            "vocab": 64,
            "batch": 2,
            "prompt": 4,
            "response": 4,
        }
    )
    model = build_model(tiny, 1)
    step_loss(args.worker, model, build_rollout(tiny), chunk_size=args.chunk).backward()
    del model


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    _warm_up(args)
    gc.collect()
    rss0_kb = proc_status_kb("VmRSS") or 0
    model = build_model(args, args.layers)
    batch = build_rollout(args)
    gc.collect()
    rss_model_kb = proc_status_kb("VmRSS") or 0
    exact = reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    loss = step_loss(args.worker, model, batch, chunk_size=args.chunk)
    loss.backward()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_kb = proc_status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF)[2]
    grad_mb = sum(p.grad.numel() for p in model.parameters() if p.grad is not None) * 4 / MB
    print(
        json.dumps(
            {
                "peak_mb": ((peak_kb or 0) - rss0_kb) / 1024,
                "model_rss_mb": (rss_model_kb - rss0_kb) / 1024,
                "grads_allocated_mb": grad_mb,
                "loss": float(loss.detach()),
                "time_s": wall,
                "cpu_s": cpu,
                "peak_exact": exact,
            }
        )
    )


# ----------------------------------------------------------------- driver


def _run_way(args: argparse.Namespace, way: str, layers: int) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--worker", way, "--layers", str(layers)]
    for k in (
        "hidden",
        "intermediate",
        "heads",
        "kv_heads",
        "vocab",
        "batch",
        "prompt",
        "response",
        "chunk",
        "threads",
    ):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        print(f"{way} ({layers} layers) FAILED (rc {res.returncode}): {res.stderr[-400:]}")
        return None
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"  {way:>9} {layers:>2}L  peak {out['peak_mb']:7.0f} MB  {out['time_s']:6.1f} s",
        flush=True,
    )
    return out


def _report(args: argparse.Namespace, runs: dict[tuple[str, int], list[dict[str, Any]]]) -> None:
    shape = {k: getattr(args, k) for k in ("hidden", "intermediate", "heads", "kv_heads", "vocab")}
    count = qwen2_param_count(**shape, layers=args.layers)
    params_mb = count["total"] * FLOAT32_BYTES / MB
    grads_mb = params_mb  # every parameter is trained (tied embedding: one [V, D] gradient)
    b, t, seq = args.batch, args.response, args.prompt + args.response
    med = {w: statistics.median(r["peak_mb"] for r in rs) for (w, n), rs in runs.items()
           if rs and n == args.layers}  # fmt: skip
    small = {w: statistics.median(r["peak_mb"] for r in rs) for (w, n), rs in runs.items()
             if rs and n == args.small_layers}  # fmt: skip
    wall = {w: statistics.median(r["time_s"] for r in rs) for (w, n), rs in runs.items()
            if rs and n == args.layers}  # fmt: skip
    if not med:
        print("no run succeeded")
        return
    one = runs[(next(iter(med)), args.layers)][0]
    print(
        f"\nparams {count['total']:,} = {params_mb:.0f} MB (measured RSS growth building model + "
        f"batch: {one['model_rss_mb']:.0f} MB); grads {grads_mb:.0f} MB (allocated after "
        f"backward: {one['grads_allocated_mb']:.0f} MB)"
    )
    bl = logits_copy_bytes(b * seq, args.vocab) / MB
    bt = logits_copy_bytes(b * t, args.vocab) / MB
    fb = fused_buffer_bytes(b * t, args.vocab, chunk_size=args.chunk) / MB
    print(
        f"logits-path tensors (computed, float32): one [B, L, V] copy = {b}*{seq}*{args.vocab}*4"
        f" = {bl:.0f} MB; one [B, T, V] copy = {b}*{t}*{args.vocab}*4 = {bt:.0f} MB; fused: two "
        f"[{min(args.chunk, b * t)}, V] buffers = {fb:.0f} MB"
    )
    computed = {"baseline": 0.0, "fused": fb, "ours-full": bl + bt, "full": bl + 4 * bt}
    print(
        "  (computed column: fused = its two buffers; ours-full = logits + gathered copy; full ="
        " logits + gathered, log_softmax, exp, exp*logp copies; forward only, backward adds "
        "gradients of the same shapes)"
    )
    if "baseline" not in med:
        print("no baseline run: no breakdown")
        return
    base = med["baseline"]
    hdr = (
        f"{'way':>9} {'params':>7} {'grads':>7} {'logits':>7} {'peak':>7} {'peak-P-G':>8} "
        f"{'act':>6} {'logits':>7} {'%logits':>7} {'%model+act':>10} {'wall s':>7}"
    )
    print(
        f"\n{args.layers} layers, B={b}, prompt {args.prompt} + response {t} tokens, "
        f"V={args.vocab:,}, chunk {args.chunk}; MB; median of {args.repeats}"
    )
    print(
        f"{'':>9} {'':>7} {'':>7} {'comp.':>7} {'meas.':>7} {'meas.':>8} {'meas.':>6} {'meas.':>7}"
    )
    print(hdr)
    for way, peak in med.items():
        d = peak_breakdown(peak_mb=peak, baseline_mb=base, params_mb=params_mb, grads_mb=grads_mb)
        print(
            f"{way:>9} {params_mb:>7.0f} {grads_mb:>7.0f} {computed[way]:>7.0f} {peak:>7.0f} "
            f"{d['above_params_grads_mb']:>8.0f} {d['activations_mb']:>6.0f} "
            f"{d['logits_mb']:>7.0f} {100 * d['logits_share']:>6.1f}% "
            f"{100 * d['model_act_share']:>9.1f}% {wall[way]:>7.1f}"
        )
    losses = {w: rs[-1]["loss"] for (w, n), rs in runs.items() if rs and n == args.layers}
    print(
        "loss (same model and batch; fused, ours-full and full must agree): "
        + ", ".join(f"{w} {v:.6f}" for w, v in losses.items())
    )
    if "fused" in med and "full" in med:
        above = (med["fused"] - 2 * params_mb) / (med["full"] - 2 * params_mb)
        print(
            f"fused / full peak: {med['fused'] / med['full']:.3f} (above params + grads: "
            f"{above:.3f})"
        )
    if not (1 <= args.small_layers < args.layers) or not set(med) <= set(small):
        return
    dl = args.layers - args.small_layers
    slope = {w: (med[w] - small[w]) / dl for w in med}  # MB one layer adds to each way's peak
    p_layer = count["per_layer"] * FLOAT32_BYTES / MB
    print(f"\nEXTRAPOLATION to {args.target_layers} layers (not measured): each way's peak grows "
          f"by its own measured per-layer slope, (peak at {args.layers}L - peak at "
          f"{args.small_layers}L) / {dl}; one layer's parameters = {p_layer:.0f} MB (+ the same "
          f"in gradients)")  # fmt: skip
    print("per-layer slope MB: " + ", ".join(f"{w} {v:.0f}" for w, v in slope.items()))
    full_params = qwen2_param_count(**shape, layers=args.target_layers)["total"] * 4 / MB
    ext = {w: extrapolate_layers(peak_mb=p, layers=args.layers, slope_mb=slope[w],
                                 target=args.target_layers) for w, p in med.items()}  # fmt: skip
    print(f"{'way':>9} {'params':>7} {'grads':>7} {'peak':>7} {'+ vs ' + str(args.layers) + 'L':>8}"
          f" {'peak-P-G':>8} {'%logits':>7} {'%model+act':>10}")  # fmt: skip
    for way, peak in ext.items():
        if "baseline" not in ext:
            break
        d = peak_breakdown(peak_mb=peak, baseline_mb=ext["baseline"], params_mb=full_params,
                           grads_mb=full_params)  # fmt: skip
        print(f"{way:>9} {full_params:>7.0f} {full_params:>7.0f} {peak:>7.0f} "
              f"{peak - med[way]:>8.0f} {d['above_params_grads_mb']:>8.0f} "
              f"{100 * d['logits_share']:>6.1f}% {100 * d['model_act_share']:>9.1f}%")  # fmt: skip
    if "fused" in ext and "full" in ext:
        print(f"fused / full peak (extrapolated): {ext['fused'] / ext['full']:.3f}")


def main() -> None:
    from entropy_rl.train.config import ModelConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=4, help="decoder layers (Qwen2.5-0.5B: 24)")
    p.add_argument(
        "--small-layers",
        type=int,
        default=2,
        help="every way also run at this depth, for its per-layer slope (0: skip)",
    )
    p.add_argument("--target-layers", type=int, default=QWEN25_05B["layers"])
    p.add_argument("--hidden", type=int, default=QWEN25_05B["hidden"])
    p.add_argument("--intermediate", type=int, default=QWEN25_05B["intermediate"])
    p.add_argument("--heads", type=int, default=QWEN25_05B["heads"])
    p.add_argument("--kv-heads", type=int, default=QWEN25_05B["kv_heads"])
    p.add_argument("--vocab", type=int, default=QWEN25_05B["vocab"])
    p.add_argument("--batch", type=int, default=4, help="sequences B in the micro-batch")
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens per sequence")
    p.add_argument("--response", type=int, default=256, help="response tokens T per sequence")
    p.add_argument(
        "--chunk",
        type=int,
        default=ModelConfig().chunk_size,
        help="fused chunk rows (default: the trainer's model.chunk_size)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    p.add_argument("--worker", choices=WAYS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        f"Qwen2 shape D={args.hidden} I={args.intermediate} heads={args.heads}/{args.kv_heads} "
        f"V={args.vocab:,} tied, random weights, float32, CPU threads={args.threads}; "
        f"peak = RSS high-water mark (/proc VmHWM) - RSS before the model"
    )
    plan = [(w, args.layers) for w in args.ways]
    if 1 <= args.small_layers < args.layers:
        plan += [(w, args.small_layers) for w in args.ways]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {k: [] for k in plan}
    for r in range(args.repeats):  # interleaved: the shared cores load every way alike
        print(f"round {r + 1}/{args.repeats}", flush=True)
        for way, layers in plan:
            out = _run_way(args, way, layers)
            if out is not None:
                runs[(way, layers)].append(out)
    _report(args, runs)


if __name__ == "__main__":
    main()
