"""The compute limit of an RL step of entropy_rl.Trainer on a real model: its FLOPs at this
machine's GEMM rates, measured when called. vs_trl.py prints it after each comparison of a
chat setting (``print_limit``): the share of the limit ours reaches, and TRL's step over it.

``setting`` is a vs_trl.Setting (model_dir, examples, chat, prompts_per_step, rows).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch


def step_flops(
    *,
    matmul_params: int,
    head_params: int,
    layers: int,
    d_attn: int,
    prompt_lens: list[int],
    rows: int,
    completion_tokens: float,
    passes: int,
) -> tuple[float, float]:
    """(generation, update) FLOPs of one RL step done the way ours does it: each prompt once
    (prefill and update), each completion token but a row's last fed forward once per pass,
    the head on every completion token.

    W = 2 x matmul_params (every weight a token multiplies by, head included), Hd = 2 x
    head_params, A(ctx) = layers x 4 x d_attn x ctx (scores and values), T =
    completion_tokens, F = T - rows (tokens fed forward: a row's last token predicts nothing),
    c = T / rows, n_bar = mean prompt length:

        prompts = sum_i n_i (W - Hd) + A(n_i) n_i / 2    (no head; causal: mean context n/2)
        gen     = prompts + P Hd + F (W + A(n_bar + c / 2))
                  (the head at each prompt's end gives its G first tokens; each fed token
                  gives the next one)
        update  = passes x 3 x (prompts + F (W - Hd + A(n_bar + c / 2)) + T Hd)
                  (the head once per completion token, the first from the prompt's last
                  position; backward ~ 2 forwards; the sampler's log-probs are pi_old's)

    Not counted: the same-batch entropy forecast's two no-grad forwards, which the trainer runs
    every ``control.forecast_every`` steps (4 by default).
    """
    w, hd = 2.0 * matmul_params, 2.0 * head_params

    def att(ctx: float) -> float:
        return layers * 4.0 * d_attn * ctx

    n_bar = sum(prompt_lens) / len(prompt_lens)
    prompts = sum(n * (w - hd) + att(n) * n / 2 for n in prompt_lens)
    fed = completion_tokens - rows
    ctx = att(n_bar + completion_tokens / rows / 2)
    gen = prompts + len(prompt_lens) * hd + fed * (w + ctx)
    update = passes * 3.0 * (prompts + fed * (w - hd + ctx) + completion_tokens * hd)
    return gen, update


def compute_limit(
    setting: Any, tokens: float, passes: int, *, update_share: float = 1.0
) -> dict[str, float]:
    """Seconds ours' step would take at this machine's GEMM rates, measured now: generation's
    FLOPs at the decode shapes (every weight times a (rows, D) activation), the update's at
    the update's (times a (prompt + completion positions, D) one); see ``step_flops``. The
    update's FLOPs are scaled by ``update_share``, the share of rows it ran (rows with
    advantage 0 are left out whole groups at a time: about that share of its prompts and
    completion tokens; rows differ in length, so it is an estimate)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from decode import gemm_gflops, matmul_weights
    from entropy_rl.train.encoding import Encoder

    model = AutoModelForCausalLM.from_pretrained(setting.model_dir, dtype=torch.float32)
    enc = Encoder(AutoTokenizer.from_pretrained(setting.model_dir), chat_template=setting.chat)
    p, draws = setting.prompts_per_step, 8  # mean over 8 steps' worth of prompts
    all_lens = [len(enc.encode(e)) for e in setting.examples[: p * draws]]
    cfg = model.config
    weights = matmul_weights(model)
    heads = cfg.num_attention_heads
    d_attn = heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    common = {
        "matmul_params": sum(w.numel() for w in weights),
        "head_params": model.get_output_embeddings().weight.numel(),
        "layers": cfg.num_hidden_layers, "d_attn": d_attn, "rows": setting.rows,
        "completion_tokens": tokens, "passes": passes,
    }  # fmt: skip
    flops = [step_flops(prompt_lens=all_lens[k * p : k * p + p], **common) for k in range(draws)]
    gen, upd = (statistics.mean(f[i] for f in flops) for i in (0, 1))
    upd *= update_share
    positions = round(statistics.mean(all_lens) * p + tokens)
    dec_rate = gemm_gflops([(setting.rows, w.shape[1], w.shape[0]) for w in weights])
    upd_rate = gemm_gflops([(positions, w.shape[1], w.shape[0]) for w in weights], repeats=3)
    return {
        "gen_gflop": gen / 1e9, "update_gflop": upd / 1e9, "dec_rate": dec_rate,
        "upd_rate": upd_rate, "gen_s": gen / dec_rate / 1e9, "update_s": upd / upd_rate / 1e9,
    }  # fmt: skip


def print_limit(setting: Any, med: dict[str, dict[str, float]], args: Any) -> None:
    """The compute-limit line: ours' step at the matmul limit, what share of it ours reaches,
    and the most any implementation of ours' arithmetic could show against each TRL step."""
    if "ours" not in med or not setting.chat:
        return
    if args.dtype != "float32":
        print("compute limit: not computed under bfloat16 (the calibration times float32 GEMMs)")
        return
    share = 1.0 - med["ours"].get("zero_adv", 0.0)
    lim = compute_limit(setting, med["ours"]["tokens"], args.passes, update_share=share)
    total = lim["gen_s"] + lim["update_s"]
    ran = "" if share == 1.0 else f", over the {share:.0%} of rows it ran"
    print(f"compute limit of ours' step (its FLOPs at this machine's GEMM rates, measured now, "
          f"{args.threads} threads{ran}): generation {lim['gen_gflop']:.0f} GFLOP at "
          f"{lim['dec_rate']:.0f} GFLOP/s ({setting.rows}-row decode shapes) = "
          f"{lim['gen_s']:.2f} s; update {lim['update_gflop']:.0f} GFLOP at "
          f"{lim['upd_rate']:.0f} GFLOP/s = {lim['update_s']:.2f} s; step {total:.2f} s")  # fmt: skip
    m = med["ours"]
    print(f"ours reaches {total / m['step_s']:.0%} of it (generation "
          f"{lim['gen_s'] / m['gen_s']:.0%}, the rest {lim['update_s'] / m['other_s']:.0%})")  # fmt: skip
    for base in ("trl", "trl-nogc", "trl-nogc-mb32"):
        if base in med:
            print(f"{base}'s step / ours at the limit: x{med[base]['step_s'] / total:.2f} "
                  "(the most ours' arithmetic could show here)")  # fmt: skip
