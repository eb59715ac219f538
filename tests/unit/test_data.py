"""Prompt records -> Examples: what a reward receives, and records that cannot be prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from entropy_rl.errors import ConfigError
from entropy_rl.tasks.base import example_fields
from entropy_rl.train.data import load_jsonl


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
