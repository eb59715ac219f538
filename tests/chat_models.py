"""Tiny instruct models for tests: a random Llama or Qwen2 with a real byte-level BPE tokenizer
and a chat template, saved as an ordinary Hugging Face directory (nothing downloaded).

``make_chat_model("qwen2", dir)``: ChatML template (``<|im_start|>role\\n...<|im_end|>\\n``) with
a default system prompt, as Qwen2.5-Instruct's. The tokenizer's eos is ``<|endoftext|>`` and the
generation config names only that id, so the end-of-turn ``<|im_end|>`` can be found only by
reading the template.

``make_chat_model("llama", dir)``: Llama-3-style template (``<|begin_of_text|>`` written by the
template, ``<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>``), and a tokenizer
that also prepends ``<|begin_of_text|>`` when called with special tokens, so encoding the
rendered template with them would double the BOS. The generation config lists
``[<|end_of_text|>, <|eot_id|>]``, as Llama-3-Instruct's does.

The tokenizer is trained here on ~400 generated lines (arithmetic questions and answers) to a
~600-token vocabulary.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
_SPEC: dict[str, dict[str, Any]] = {
    "qwen2": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None, "eos": "<|endoftext|>", "pad": "<|endoftext|>", "eot": "<|im_end|>",
        "template": CHATML, "gen_eos": ["<|endoftext|>"],
    },
    "llama": {
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                     "<|end_header_id|>", "<|eot_id|>", "<|pad|>"],
        "bos": "<|begin_of_text|>", "eos": "<|end_of_text|>", "pad": "<|pad|>", "eot": "<|eot_id|>",
        "template": LLAMA3, "gen_eos": ["<|end_of_text|>", "<|eot_id|>"],
    },
}  # fmt: skip
ARCHS = tuple(_SPEC)


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """``n`` lines of arithmetic questions and answers in words and digits."""
    rng = random.Random(seed)
    names = ["Ann", "Bob", "Carla", "Dev", "Emma", "Farid"]
    things = ["apples", "books", "coins", "pencils", "stamps", "marbles"]
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        who, what = rng.choice(names), rng.choice(things)
        out.append(
            rng.choice(
                [
                    f"What is {a} + {b}? The answer is {a + b}.",
                    f"{who} has {a} {what} and buys {b} more. Now {who} has {a + b} {what}.",
                    f"Compute {a} minus {b}. That gives {a - b}, so the result is {a - b}.",
                    f"If {who} gives away {b} of {a + b} {what}, {a} {what} are left.",
                ]
            )
        )
    return out


def build_tokenizer(arch: str, *, vocab_size: int = 600) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus()``, with ``arch``'s
    special tokens (added as special: skipped by ``decode(skip_special_tokens=True)``) and chat
    template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = _SPEC[arch]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    if spec["bos"] is not None:  # Llama-3: plain encoding prepends BOS (the template writes it too)
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=spec["bos"], eos_token=spec["eos"], pad_token=spec["pad"]
    )
    fast.chat_template = spec["template"]
    return fast


def build_model(arch: str, vocab_size: int, tok: Any, *, seed: int = 0) -> Any:
    """A 2-layer random ``arch`` decoder (hidden 32, GQA 2:1) whose configs name ``tok``'s ids."""
    import torch
    import transformers

    spec = _SPEC[arch]
    gen_eos = [tok.convert_tokens_to_ids(t) for t in spec["gen_eos"]]
    common: dict[str, Any] = {
        "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 256, "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id, "eos_token_id": gen_eos if len(gen_eos) > 1 else gen_eos[0],
    }  # fmt: skip
    if arch == "qwen2":
        cfg: Any = transformers.Qwen2Config(tie_word_embeddings=True, **common)
        cls: Any = transformers.Qwen2ForCausalLM
    else:
        cfg = transformers.LlamaConfig(tie_word_embeddings=False, **common)
        cls = transformers.LlamaForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(cfg)
    model.generation_config.eos_token_id = common["eos_token_id"]
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval()


def make_chat_model(arch: str, directory: Path, *, seed: int = 0) -> Path:
    """Save a tiny ``arch`` ("qwen2" or "llama") instruct model with its tokenizer in
    ``directory``; returns it. Loads back with ``AutoModelForCausalLM`` / ``AutoTokenizer``."""
    if arch not in _SPEC:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    tok = build_tokenizer(arch)
    model = build_model(arch, len(tok), tok, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def end_of_turn(arch: str) -> str:
    """The end-of-turn token of ``arch``'s template."""
    return str(_SPEC[arch]["eot"])
