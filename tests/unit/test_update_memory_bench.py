"""The byte accounting of benchmarks/update_memory.py, with hand-worked numbers."""

from __future__ import annotations

import pytest
import torch

from benchmark_scripts import load_benchmark

um = load_benchmark("update_memory")

QWEN = {"hidden": 896, "intermediate": 4864, "heads": 14, "kv_heads": 2, "vocab": 151_936}


def test_qwen25_05b_param_count() -> None:
    c = um.qwen2_param_count(**QWEN, layers=24)
    # embedding 151,936 * 896 = 136,134,656
    assert c["embedding"] == 136_134_656
    # kv = 896 / 14 * 2 = 128; q 896*896 + 896 = 803,712; k = v = 896*128 + 128 = 114,816;
    # o 896*896 = 802,816; MLP 3*896*4864 = 13,074,432; 2 norms 1,792 -> 14,912,384
    assert c["per_layer"] == 14_912_384
    assert c["lm_head"] == 0  # tied
    # 136,134,656 + 24 * 14,912,384 (= 357,897,216) + 896 = 494,032,768 (Qwen2.5-0.5B's count)
    assert c["total"] == 494_032_768
    untied = um.qwen2_param_count(**QWEN, layers=24, tied=False)
    assert untied["total"] == 494_032_768 + 136_134_656


def test_param_count_matches_transformers_model() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = {"hidden": 16, "intermediate": 24, "heads": 4, "kv_heads": 2, "vocab": 50}
    cfg = Qwen2Config(
        vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())  # parameters() counts the tied weight once
    # kv = 16/4*2 = 8: q 272, k = v = 136, o 256, MLP 1152, norms 32 -> 1984 per layer;
    # 50*16 = 800 + 3 * 1984 + 16 = 6768
    assert n == um.qwen2_param_count(**shape, layers=3)["total"] == 6768


def test_logits_bytes() -> None:
    # B=4, T=256, V=151,936, float32: 1024 * 151,936 * 4 = 622,329,856 bytes (593.5 MiB)
    assert um.logits_copy_bytes(4 * 256, 151_936) == 622_329_856
    # bf16 [B, L, V], L = 64 + 256: 1280 * 151,936 = 194,478,080 elements, * 2 bytes
    assert um.logits_copy_bytes(4 * 320, 151_936, dtype_bytes=2) == 388_956_160
    # fused: two [min(512, 1024), V] buffers = 2 * 512 * 151,936 * 4 = 622,329,856
    assert um.fused_buffer_bytes(1024, 151_936, chunk_size=512) == 622_329_856
    # fewer rows than a chunk: buffers are [rows, V]: 2 * 100 * 1000 * 4 = 800,000
    assert um.fused_buffer_bytes(100, 1000, chunk_size=512) == 800_000
    with pytest.raises(ValueError, match="chunk_size"):
        um.fused_buffer_bytes(10, 10, chunk_size=0)
    with pytest.raises(ValueError, match="rows"):
        um.logits_copy_bytes(-1, 10)


def test_peak_breakdown_shares() -> None:
    d = um.peak_breakdown(peak_mb=5000.0, baseline_mb=2000.0, params_mb=750.0, grads_mb=750.0)
    assert d["above_params_grads_mb"] == 3500.0  # 5000 - 750 - 750
    assert d["activations_mb"] == 500.0  # 2000 - 1500
    assert d["logits_mb"] == 3000.0  # 5000 - 2000
    assert d["logits_share"] == pytest.approx(0.6)  # 3000 / 5000
    assert d["model_act_share"] == pytest.approx(0.4)  # 2000 / 5000
    parts = ("params_share", "grads_share", "activations_share", "logits_share")
    assert sum(d[k] for k in parts) == pytest.approx(1.0, abs=1e-12)  # .15 + .15 + .1 + .6
    with pytest.raises(ValueError, match="peak_mb"):
        um.peak_breakdown(peak_mb=0.0, baseline_mb=1.0, params_mb=0.0, grads_mb=0.0)


def test_extrapolate_layers() -> None:
    # 3000 MB at 4 layers, 250 MB per layer, to 24 layers: 3000 + 20 * 250 = 8000
    assert um.extrapolate_layers(peak_mb=3000.0, layers=4, slope_mb=250.0, target=24) == 8000.0
    with pytest.raises(ValueError, match="layers"):
        um.extrapolate_layers(peak_mb=1.0, layers=8, slope_mb=1.0, target=4)


def test_naive_full_loss_equals_trainer_fused_loss() -> None:
    """The `full` way's hand-written loss is the trainer's fused micro-step loss (tiny model)."""
    import argparse

    torch.set_num_threads(1)
    args = argparse.Namespace(
        hidden=16, intermediate=24, heads=4, kv_heads=2, vocab=40, batch=2, prompt=3,
        response=5, chunk=4,
    )  # fmt: skip
    model = um.build_model(args, 2)
    batch = um.build_rollout(args)
    losses = {
        w: float(um.step_loss(w, model, batch, chunk_size=4).detach()) for w in ("fused", "full")
    }
    assert losses["full"] == pytest.approx(losses["fused"], rel=1e-5)
