"""Character-level tokenizer of the built-in tasks.

Vocabulary (ids fixed, 19 tokens)::

    0 <pad>   1 <bos>   2 <eos>   3 <unk>   4..13 '0'..'9'
    14 '+'   15 '-'   16 '*'   17 '='   18 ' '

Conventions, shared by pretraining, the trainer and the shipped checkpoints:

- Every character is one token (a `tokenizers` WordLevel model behind a one-character
  `Split` pre-tokenizer); characters outside the vocabulary map to <unk>.
- Encoding a prompt adds <bos> in front (post-processor ``<bos> $A``): ``"12+7="`` ->
  ``[<bos>, 1, 2, +, 7, =]``. Pass ``add_special_tokens=False`` to get the bare characters.
- A completion is the answer's characters followed by <eos>: ``"19" -> [1, 9, <eos>]``.
  Generation stops at <eos>; decode with ``skip_special_tokens=True`` to get ``"19"``.
- Decoding concatenates characters (``Fuse`` decoder), so spaces round-trip exactly.
- ``padding_side="left"`` so batched prompts end at the same position for generation; the
  model uses RoPE, so the shift does not change attention scores between real tokens.

The object is a `transformers.PreTrainedTokenizerFast`; ``save_pretrained`` writes
``tokenizer.json`` + ``tokenizer_config.json`` and ``AutoTokenizer.from_pretrained`` reads them
back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

__all__ = ["CHARS", "SPECIAL_TOKENS", "build_char_tokenizer"]

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARS: str = "0123456789+-*= "


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Build the 19-token character tokenizer described in the module docstring.

    Returns:
        A fast tokenizer with pad/bos/eos/unk ids 0/1/2/3 and left padding.
    """
    from tokenizers import Regex, decoders, pre_tokenizers

    # One token per character; "isolated" keeps every match (spaces included) as its own piece;
    # Fuse joins pieces with no separator.
    return word_level_tokenizer(
        (*SPECIAL_TOKENS, *CHARS),
        pre_tokenizer=pre_tokenizers.Split(Regex("."), behavior="isolated"),
        decoder=decoders.Fuse(),
    )


def word_level_tokenizer(
    tokens: tuple[str, ...], *, pre_tokenizer: Any, decoder: Any
) -> PreTrainedTokenizerFast:
    """A fixed-vocabulary fast tokenizer: ``tokens`` get ids 0.. in order (the four
    SPECIAL_TOKENS first), <bos> is prepended, padding is on the left."""
    from tokenizers import Tokenizer, models, processors

    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoder
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A $B",
        special_tokens=[("<bos>", vocab["<bos>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


def load_tokenizer(path: str, **kw: Any) -> Any:
    """AutoTokenizer, except for a plain `tokenizers` tokenizer saved by save_pretrained (the
    built-in char and word tokenizers): transformers 5 maps a qwen2 checkpoint to Qwen2Tokenizer
    whatever tokenizer.json holds, which re-splits the text (spaces dropped, words -> <unk>)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg_file = Path(path) / "tokenizer_config.json"
    if cfg_file.is_file():
        cls = json.loads(cfg_file.read_text()).get("tokenizer_class")
        if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path, **kw)
