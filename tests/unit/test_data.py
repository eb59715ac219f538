"""Prompt records -> Examples: what a reward receives, and records that cannot be prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from entropy_rl.errors import ConfigError
from entropy_rl.tasks.base import Example, example_fields
from entropy_rl.train.data import RecordsSource, check_prompts, load_jsonl


def _jsonl(tmp_path: Path, *records: object) -> Path:
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    return p


def test_a_reward_gets_every_column_under_its_own_name_and_the_answer(tmp_path: Path) -> None:
    p = _jsonl(tmp_path, {"question": "2+5?", "target": 7, "level": 1})
    (ex,) = load_jsonl(p, prompt_column="question", answer_column="target")
    assert ex.prompt == "2+5?" and ex.answer == "7"
    assert example_fields(ex) == {"answer": "7", "question": "2+5?", "target": 7, "level": 1}


def test_the_default_columns_are_passed_once(tmp_path: Path) -> None:
    p = _jsonl(tmp_path, {"prompt": "p", "answer": 3, "completion": "x", "system": "s"})
    (ex,) = load_jsonl(p)
    assert example_fields(ex) == {"answer": "3", "system": "s"}  # prompt, completion: positional


@pytest.mark.parametrize("value", [None, ["a"], {"role": "user"}, True])
def test_a_record_without_a_prompt_text_is_refused(tmp_path: Path, value: object) -> None:
    p = _jsonl(tmp_path, {"prompt": "ok", "answer": "1"}, {"prompt": value, "answer": "2"})
    with pytest.raises(ConfigError, match=rf"data.jsonl:2: the prompt column 'prompt' holds "
                       rf"{re.escape(json.dumps(value))}; every record needs a prompt text"):  # fmt: skip
        load_jsonl(p)


class _CharEncoder:
    """One id per character; '?' is the unknown token (id 0)."""

    def __call__(self, ex: Example) -> list[int]:
        return [0 if ch == "?" else ord(ch) for ch in ex.prompt]


def _source(*prompts: str) -> RecordsSource:
    return RecordsSource([Example(prompt=p, answer="1") for p in prompts], [])


def test_a_prompt_that_leaves_no_room_for_the_completion_is_refused() -> None:
    kw = {"unk_id": None, "context": 16}
    check_prompts(_source("a" * 4, "b" * 12), _CharEncoder(), max_new_tokens=4, **kw)  # 12 + 4
    with pytest.raises(ConfigError, match=r"^the longest prompt is 12 tokens, and with "
                       r"rollout.max_new_tokens=5 that exceeds the model's context of 16 tokens; "
                       r"shorten or drop long prompts, or lower rollout.max_new_tokens to at "
                       r"most 4$"):  # fmt: skip
        check_prompts(_source("a" * 4, "b" * 12), _CharEncoder(), max_new_tokens=5, **kw)
    with pytest.raises(ConfigError, match=r"drop long prompts$"):  # no room at all: no lower value
        check_prompts(_source("c" * 16), _CharEncoder(), max_new_tokens=1, **kw)


def test_characters_the_tokenizer_lacks_are_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"^1 prompt\(s\) hold characters the tokenizer does not "
                      r"know .* e.g. 'x\?y'"):  # fmt: skip
        check_prompts(_source("ab", "x?y"), _CharEncoder(), max_new_tokens=1, context=None,
                      unk_id=0)  # fmt: skip
    check_prompts(_source("ab", "x?y"), _CharEncoder(), max_new_tokens=1, context=None,
                  unk_id=None)  # no unknown token: nothing to say  # fmt: skip
