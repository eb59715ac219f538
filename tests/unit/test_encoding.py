"""Prompts through chat templates, and the stop tokens read off them (train.encoding).

Fixture models (tests/chat_models.py): Qwen2 + ChatML, whose tokenizer eos is <|endoftext|> so
<|im_end|> can only come from the template; Llama + a Llama-3 template that writes BOS itself,
with a tokenizer that also prepends BOS when asked to add special tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from entropy_rl.errors import ConfigError
from entropy_rl.tasks.base import Example
from entropy_rl.train.config import DataConfig
from entropy_rl.train.encoding import Encoder, end_of_turn_id, stop_token_ids

transformers = pytest.importorskip("transformers")

PROMPT = "What is 3 + 4?"


def _load(d: Path) -> tuple[Any, Any]:
    tok = transformers.AutoTokenizer.from_pretrained(d)
    return tok, transformers.AutoModelForCausalLM.from_pretrained(d)


def _arch(d: Path) -> str:
    return "qwen2" if d.name.startswith("qwen2") else "llama"


def _template_ids(tok: Any, messages: list[dict[str, str]]) -> list[int]:
    out = tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


@pytest.mark.parametrize("system", [None, "Answer with a number."])
def test_encode_prompt_equals_the_templates_own_tokens(chat_model_dir: Path, system: str | None):
    tok, _ = _load(chat_model_dir)
    enc = Encoder(tok, chat_template=True)
    messages = [{"role": "user", "content": PROMPT}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    ids = enc.encode_prompt(PROMPT, system=system)
    assert ids == _template_ids(tok, messages)
    text = tok.decode(ids)
    assert text.count(PROMPT) == 1
    if _arch(chat_model_dir) == "llama":  # the template writes BOS; tokenizing must not add one
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
        assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    else:
        assert text.endswith("<|im_start|>assistant\n")
        default = "You are a helpful assistant."  # the template's own when no system is given
        assert (default in text) == (system is None)
    if system is not None:
        assert system in text and text.index(system) < text.index(PROMPT)


def test_system_prompt_default_and_per_example_override(chat_model_dir: Path):
    tok, _ = _load(chat_model_dir)
    enc = Encoder(tok, chat_template=True, system_prompt="Be brief.")
    with_default = enc.encode(Example(PROMPT))
    assert with_default == enc.encode_prompt(PROMPT, system="Be brief.")
    own = enc.encode(Example(PROMPT, meta={"system": "Show your work."}))
    assert own == _template_ids(
        tok, [{"role": "system", "content": "Show your work."}, {"role": "user", "content": PROMPT}]
    )
    assert own != with_default


def test_end_of_turn_and_stop_ids_come_from_config_tokenizer_and_template(chat_model_dir: Path):
    tok, model = _load(chat_model_dir)
    ids = tok.convert_tokens_to_ids
    if _arch(chat_model_dir) == "qwen2":
        eot, eos = ids("<|im_end|>"), ids("<|endoftext|>")
        assert model.generation_config.eos_token_id == eos == tok.eos_token_id
    else:  # generation_config already lists both, as Llama-3-Instruct's does: no repeats
        eot, eos = ids("<|eot_id|>"), ids("<|end_of_text|>")
        assert model.generation_config.eos_token_id == [eos, eot]
    assert end_of_turn_id(tok) == eot
    assert stop_token_ids(tok, model, chat_template=True) == [eos, eot]
    assert stop_token_ids(tok, model) == ([eos] if _arch(chat_model_dir) == "qwen2" else [eos, eot])
    assert stop_token_ids(tok, None) == [eos]


def test_end_of_turn_is_none_without_a_special_token_after_the_content(chat_model_dir: Path):
    tok, _ = _load(chat_model_dir)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_id(tok) is None  # "\n" follows the content: not a stop token
    tok.chat_template = None
    assert end_of_turn_id(tok) is None


def test_decode_drops_the_end_of_turn_token(chat_model_dir: Path):
    tok, _ = _load(chat_model_dir)
    eot = end_of_turn_id(tok)
    assert eot is not None
    body = tok("The answer is 7.", add_special_tokens=False)["input_ids"]
    assert Encoder(tok, chat_template=True).decode([[*body, eot]]) == ["The answer is 7."]


def test_plain_path_is_unchanged_and_rejects_system_prompts(chat_model_dir: Path):
    tok, _ = _load(chat_model_dir)
    enc = Encoder(tok)
    assert enc.encode(Example(PROMPT)) == tok(PROMPT)["input_ids"]  # BOS added as before
    with pytest.raises(ConfigError, match=r"'system' field but data\.chat_template is false"):
        enc.encode(Example(PROMPT, meta={"system": "x"}))
    with pytest.raises(ConfigError, match=r"data\.system_prompt needs data\.chat_template=true"):
        Encoder(tok, system_prompt="x")
    with pytest.raises(ConfigError, match=r"data\.system_prompt needs data\.chat_template=true"):
        DataConfig(system_prompt="x")


def test_chat_errors_are_one_line_config_errors(chat_model_dir: Path):
    tok, _ = _load(chat_model_dir)
    no_system = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
    )
    tok.chat_template = no_system + "{{ messages[-1]['content'] }}"
    with pytest.raises(ConfigError, match="chat template rejected the prompt: System role not"):
        Encoder(tok, chat_template=True).encode_prompt(PROMPT, system="x")
    tok.chat_template = None
    with pytest.raises(ConfigError, match="tokenizer has no chat template"):
        Encoder(tok, chat_template=True)


def test_no_stop_token_at_all_is_a_config_error():
    class Bare:
        eos_token_id = None

    with pytest.raises(ConfigError, match="no stop token"):
        stop_token_ids(Bare(), None)
