"""The built-in tiny policy: a ~1M-parameter Qwen2 decoder.

Default shape (docs/experiments.md): 4 layers, hidden 128, 4 attention heads with 2 KV heads (GQA),
SwiGLU MLP 512, tied input/output embeddings, RoPE. With the 19-token character vocabulary:

    embeddings      19 * 128                                   =   2,432
    per layer  q    128*128 + 128,  k/v 2 * (128*64 + 64),  o  128*128  =  49,408
               mlp  3 * 128 * 512                               = 196,608
               2 RMSNorms 2 * 128                               =     256
    4 layers   (49,408 + 196,608 + 256) * 4                     = 985,088
    final norm                                                   =     128
    total                                                        = 987,648 (tied head)

It is a plain `transformers.Qwen2ForCausalLM`, so ``save_pretrained`` writes safetensors and
``AutoModelForCausalLM.from_pretrained`` loads it like any hub model.
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

__all__ = ["build_tiny_model", "count_parameters"]


def build_tiny_model(
    vocab_size: int,
    *,
    layers: int = 4,
    hidden: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    mlp: int = 512,
    max_positions: int = 64,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2ForCausalLM (float32, tied embeddings).

    Args:
        vocab_size: number of token ids (19 for `build_char_tokenizer`).
        layers, hidden, heads, kv_heads, mlp: transformer shape; `hidden` must be divisible
            by `heads` and `heads` by `kv_heads`.
        max_positions: longest sequence (prompt + completion) the model will see.
        pad_token_id, bos_token_id, eos_token_id: written to the config and generation config.
        seed: initialisation seed; the global torch RNG is left untouched.

    Raises:
        ValueError: non-positive sizes or indivisible head counts.
    """
    for key, value in {
        "vocab_size": vocab_size,
        "layers": layers,
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv_heads,
        "mlp": mlp,
        "max_positions": max_positions,
    }.items():
        if value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value}")
    if hidden % heads != 0:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    if heads % kv_heads != 0:
        raise ValueError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.bos_token_id = bos_token_id
    model.generation_config.eos_token_id = eos_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied tensors counted once)."""
    return sum(p.numel() for p in model.parameters())
