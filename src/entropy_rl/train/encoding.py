"""Text <-> token ids for rollouts: prompts (plain or as chat messages), stop tokens, decoding.

Chat path (``data.chat_template=true``): a prompt becomes ``[system?, user]`` messages, rendered
by the tokenizer's own chat template with the assistant's generation prompt, then tokenized
*without* adding special tokens (the template writes BOS itself where the model wants one;
adding it again would double it). This equals ``apply_chat_template(..., tokenize=True)``.

Generation stops at any of ``stop_token_ids``: the model's ``generation_config.eos_token_id``
(an id or a list), the tokenizer's eos, and on the chat path the template's end-of-turn token
(``<|im_end|>``, ``<|eot_id|>``, ...), read off the template by rendering an assistant turn.
The stop token is the completion's last token and is trained on like EOS; completions are
decoded without special tokens, so it never reaches the reward.
"""

from __future__ import annotations

from typing import Any

from entropy_rl.errors import ConfigError
from entropy_rl.tasks.base import Example

__all__ = ["Encoder", "end_of_turn_id", "stop_token_ids"]

_PROBE = "entropy-rl-probe-7351"  # assistant content whose end we look for in the rendering


class _NeverRaised(Exception):
    pass


def _template_error() -> type[Exception]:
    """jinja2's TemplateError (what a template's ``raise_exception`` raises)."""
    try:
        from jinja2.exceptions import TemplateError
    except ImportError:  # then transformers cannot render templates and says so itself
        return _NeverRaised
    return TemplateError


def _special_ids(tokenizer: Any) -> set[int]:
    """Ids of special tokens: the named ones and added tokens marked special (as ``<|eot_id|>``
    is in Llama-3's tokenizer without being a named one)."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return ids | {int(i) for i, t in added.items() if getattr(t, "special", False)}


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template writes right after an assistant message's content
    (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama-3, ``</s>`` for Mistral), or None when
    there is no template, it cannot render a user + assistant exchange, or what follows the
    content is not a special token (then only EOS stops generation)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "1"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except (ValueError, _template_error()):
        return None
    if not isinstance(text, str) or _PROBE not in text:
        return None
    after = text.split(_PROBE, 1)[1]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    return int(ids[0]) if ids and int(ids[0]) in _special_ids(tokenizer) else None


def stop_token_ids(tokenizer: Any, model: Any = None, *, chat_template: bool = False) -> list[int]:
    """Ids generation stops at, in order, without repeats: ``model.generation_config``'s
    ``eos_token_id`` (int or list), ``tokenizer.eos_token_id``, and with ``chat_template`` the
    template's end-of-turn token (``end_of_turn_id``).

    Raises:
        ConfigError: none of them defines a token.
    """
    found: list[Any] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found += gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]
    found.append(getattr(tokenizer, "eos_token_id", None))
    if chat_template:
        found.append(end_of_turn_id(tokenizer))
    ids = list(dict.fromkeys(int(i) for i in found if i is not None))
    if not ids:
        raise ConfigError(
            "no stop token: the tokenizer has no eos_token and the model's generation_config no "
            "eos_token_id; set tokenizer.eos_token (or use a chat template with an end-of-turn token)"
        )
    return ids


class Encoder:
    """Text <-> token ids with the model's tokenizer, optionally through its chat template.

    Args:
        tokenizer: a transformers tokenizer.
        chat_template: render each prompt as chat messages with the tokenizer's template.
        system_prompt: system message placed before every user turn (chat path only); an
            example's own ``meta["system"]`` (a ``system`` field of a JSONL record) wins.

    Raises:
        ConfigError: ``chat_template`` with a tokenizer that has no template, or a system
            prompt without ``chat_template``.
    """

    def __init__(
        self, tokenizer: Any, *, chat_template: bool = False, system_prompt: str | None = None
    ) -> None:
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "data.chat_template=true but the tokenizer has no chat template "
                "(chat_template.jinja or tokenizer_config.json's chat_template); use an instruct "
                "model's tokenizer or set data.chat_template=false"
            )
        if system_prompt is not None and not chat_template:
            raise ConfigError("data.system_prompt needs data.chat_template=true")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.system_prompt = system_prompt

    def messages(self, prompt: str, *, system: str | None = None) -> list[dict[str, str]]:
        """``[system?, user]`` chat messages of ``prompt`` (``system`` or the default)."""
        system = system if system is not None else self.system_prompt
        head = [] if system is None else [{"role": "system", "content": system}]
        return [*head, {"role": "user", "content": prompt}]

    def encode_prompt(self, prompt: str, *, system: str | None = None) -> list[int]:
        """Token ids of ``prompt``: plain (the tokenizer adds its special tokens, e.g. BOS), or on
        the chat path the rendered template with the assistant's generation prompt."""
        if not self.chat_template:
            if system is not None:
                raise ConfigError(
                    "a prompt record has a 'system' field but data.chat_template is false; set "
                    "data.chat_template=true (system prompts exist only in chat messages)"
                )
            return list(self.tokenizer(prompt)["input_ids"])
        try:
            text = self.tokenizer.apply_chat_template(
                self.messages(prompt, system=system), add_generation_prompt=True, tokenize=False
            )
        except _template_error() as e:  # e.g. "System role not supported" raised by a template
            raise ConfigError(f"the tokenizer's chat template rejected the prompt: {e}") from e
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, example: Example) -> list[int]:
        """``encode_prompt`` of an example, with its own ``meta["system"]`` if it has one, then
        the tokens of its ``meta["response_prefix"]`` if it has one: text the model's answer
        starts with (after the chat template's generation prompt), which the completion
        continues and which is not part of the completion."""
        system = example.meta.get("system")
        ids = self.encode_prompt(example.prompt, system=None if system is None else str(system))
        prefix = example.meta.get("response_prefix")
        if prefix:
            ids += list(self.tokenizer(str(prefix), add_special_tokens=False)["input_ids"])
        return ids

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Completion texts without special tokens (EOS and end-of-turn removed)."""
        return list(self.tokenizer.batch_decode(ids, skip_special_tokens=True))
