"""Rewards for real completions, their combination with weights, and value checking."""

from __future__ import annotations

import math
import os
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from entropy_rl.errors import ConfigError, UserError
from entropy_rl.tasks.base import Example
from entropy_rl.tasks.combine import CombinedReward, combined_reward, parse_reward_specs
from entropy_rl.tasks.rewards import (
    RewardTypeError,
    answer_tags,
    boxed,
    boxed_content,
    check_reward_value,
    gsm8k,
    gsm8k_answer,
    last_number,
    load_reward,
    text_numbers,
)
from entropy_rl.train.config import build_config
from entropy_rl.train.rollout import RewardError, score

# ---------------------------------------------------------------- numbers in text


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("16 + 11 = 27. That's it", [16, 11, 27]),
        ("It costs $1,234.", [1234]),  # thousands comma, currency, sentence period
        ("$18.", [18]),
        ("1,234,567 and 3.50", [1234567, 3.5]),
        ("10-3=7", [10, 3, 7]),  # a minus after a digit is the operator
        ("-5 and \u22123", [-5, -3]),  # ASCII minus and U+2212
        ("1,2345", [1, 2345]),  # not a thousands group: two numbers
        ("1,23", [1, 23]),
        ("v1.2.3", [1.2]),  # "3" follows a dot: part of the version, not a number
        ("no digits", []),
        ("x2 3y", [2, 3]),
        ("50%", [50]),
    ],
)
def test_text_numbers(text, numbers):
    assert text_numbers(text) == [float(x) for x in numbers]


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("16 + 11 = 27. That's 27 apples.", "27", 1.0),
        ("16 + 11 = 27. That's all.", "27", 1.0),  # the last number is 27
        ("27 apples, minus 11 gives 16", "27", 0.0),  # the last number is 16
        ("The total is $1,234.", "1234", 1.0),
        ("The total is 1234", "$1,234", 1.0),  # the reference parses the same way
        ("She has $18.", "18", 1.0),
        ("The answer is 18.0", "18", 1.0),
        ("The answer is 18.5", "18", 0.0),
        ("It drops to -4", "-4", 1.0),
        ("I don't know", "5", 0.0),
        ("", "5", 0.0),
        ("72<eos>100", "72", 1.0),  # after a literal <eos> is ignored
        ("so 72", "48/2 = 24 clips in May.\n#### 72", 1.0),  # reference: a GSM8K solution
    ],
)
def test_last_number_hand_cases(completion, answer, expected):
    assert last_number("p", completion, answer=answer) == expected


def test_last_number_errors_and_tolerance():
    with pytest.raises(ValueError, match="needs a 'answer' field"):
        last_number("p", "5")
    with pytest.raises(ValueError, match="holds no number"):
        last_number("p", "5", answer="five")
    # 0.1 + 0.2 = 0.30000000000000004: the default isclose tolerance (1e-9) accepts it
    assert last_number("p", "0.30000000000000004", answer="0.3") == 1.0
    assert last_number("p", "0.31", answer="0.3") == 0.0
    assert last_number("p", "0.31", answer="0.3", abs_tol=0.02) == 1.0


# ---------------------------------------------------------------- gsm8k


GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


def test_gsm8k_answer_line():
    assert gsm8k_answer(GSM8K_SOLUTION) == 72.0
    assert gsm8k_answer("#### $1,080") == 1080.0
    assert gsm8k_answer("#### 3\nthen #### 4") == 4.0  # the last #### line
    assert gsm8k_answer("#### -7") == -7.0
    assert gsm8k_answer("The answer is 72") is None  # no #### line
    assert gsm8k_answer("#### seventy two") is None


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("48 + 24 = 72\n#### 72", GSM8K_SOLUTION, 1.0),  # reference reduced to its #### 72
        ("#### 72", "72", 1.0),  # a bare reference
        ("#### 71", GSM8K_SOLUTION, 0.0),
        ("The answer is 72.", GSM8K_SOLUTION, 0.0),  # strict: no #### line
        ("#### 1,080 dollars", "1080", 1.0),
        ("####72", "72", 1.0),
    ],
)
def test_gsm8k_hand_cases(completion, answer, expected):
    assert gsm8k("p", completion, answer=answer) == expected


# ---------------------------------------------------------------- boxed


def test_boxed_content_nested_and_last():
    assert boxed_content(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert boxed_content(r"\boxed{3} or maybe \boxed{4}") == "4"
    assert boxed_content(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"  # escaped braces still balance
    assert boxed_content(r"\boxed{{a}{b}}") == "{a}{b}"
    assert boxed_content(r"\boxed{12") is None  # never closed
    assert boxed_content("42") is None


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        (r"Thus the answer is $\boxed{42}$.", "42", 1.0),
        (r"\boxed{41}", "42", 0.0),
        ("42", "42", 0.0),  # nothing boxed
        (r"\boxed{1,000}", "1000.0", 1.0),  # both single numbers: compared as numbers
        (r"\boxed{ \frac{1}{2} }", r"\frac{1}{2}", 1.0),  # whitespace removed
        (r"\boxed{\frac{1}{2}}", "0.5", 0.0),  # not symbolic: that is math_verify
        (r"\boxed{3\,000}", "3000", 1.0),  # LaTeX thin space
        (r"\boxed{7}", r"so the answer is \boxed{7}", 1.0),  # a MATH-style solution reference
        (r"\boxed{x+1}", "x + 1", 1.0),
    ],
)
def test_boxed_hand_cases(completion, answer, expected):
    assert boxed("p", completion, answer=answer) == expected


def test_boxed_rejects_empty_reference():
    with pytest.raises(ValueError, match="is empty"):
        boxed("p", r"\boxed{1}", answer=" ")


# ---------------------------------------------------------------- format reward


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("I think <answer> 42 </answer>", 1.0),
        ("<answer>\n12\n</answer> done", 1.0),
        ("<answer></answer>", 0.0),  # empty
        ("<answer>   </answer>", 0.0),  # whitespace only
        ("<answer>42", 0.0),  # not closed
        ("42", 0.0),
        ("</answer>42<answer>", 0.0),  # wrong order
    ],
)
def test_answer_tags_hand_cases(completion, expected):
    assert answer_tags("p", completion, answer="42") == expected


def test_answer_tags_configurable_tag():
    assert answer_tags("p", "<final>7</final>", answer_tag="final") == 1.0
    assert answer_tags("p", "<answer>7</answer>", answer_tag="final") == 0.0
    with pytest.raises(ValueError, match="answer_tag must be a tag name"):
        answer_tags("p", "x", answer_tag="a>b")


# ---------------------------------------------------------------- value checks


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, 1.0), (False, 0.0), (3, 3.0), (0.5, 0.5), (Fraction(1, 4), 0.25)],
)
def test_check_reward_value_accepts_real_numbers(value, expected):
    out = check_reward_value(value, "f")
    assert out == expected and type(out) is float


def test_check_reward_value_accepts_numpy_scalars():
    np = pytest.importorskip("numpy")
    assert check_reward_value(np.float32(0.5), "f") == 0.5
    assert check_reward_value(np.int64(2), "f") == 2.0


@pytest.mark.parametrize(
    ("value", "type_name"),
    [("1.0", "str"), (None, "NoneType"), (torch.tensor(1.0), "Tensor"), ([1.0], "list")],
)
def test_check_reward_value_refuses_non_numbers(value, type_name):
    with pytest.raises(RewardTypeError) as info:
        check_reward_value(value, "my_rewards:score")
    msg = str(info.value)
    assert "'my_rewards:score'" in msg and f"of type {type_name}" in msg and repr(value) in msg
    assert "\n" not in msg and isinstance(info.value, UserError)


def test_check_reward_value_non_finite_is_a_value_error():
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="not a finite number") as info:
            check_reward_value(bad, "f")
        assert not isinstance(info.value, RewardTypeError)


# ---------------------------------------------------------------- loading


def test_builtin_names_and_cwd_import(tmp_path, monkeypatch):
    for name in ("last_number", "gsm8k", "boxed", "answer_tags", "math_verify"):
        assert callable(load_reward(name))
    (tmp_path / "rw_in_cwd_xyz.py").write_text(
        "def score(prompt, completion, **f):\n    return 1.0\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    path_before = list(sys.path)
    assert load_reward("rw_in_cwd_xyz:score")("p", "c") == 1.0  # found without PYTHONPATH=.
    assert sys.path == path_before  # the directory was on sys.path for that import only
    sys.modules.pop("rw_in_cwd_xyz")
    with pytest.raises(ConfigError, match=f"module 'rw_absent_xyz' not found in {tmp_path} or"):
        load_reward("rw_absent_xyz:score")


# ---------------------------------------------------------------- specs and combination


def test_parse_reward_specs_forms_and_names():
    specs = parse_reward_specs(
        ["last_number", "my_pkg.rw:score", {"fn": "answer_tags", "name": "format",
                                            "kwargs": {"answer_tag": "final"}}]
    )  # fmt: skip
    assert [(s.fn, s.name, s.kwargs) for s in specs] == [
        ("last_number", "last_number", {}),
        ("my_pkg.rw:score", "score", {}),
        ("answer_tags", "format", {"answer_tag": "final"}),
    ]
    assert parse_reward_specs("./r.py:fn")[0].name == "fn"
    with pytest.raises(ConfigError, match="two rewards are named 'score'"):
        parse_reward_specs(["a:score", "b:score"])
    with pytest.raises(ConfigError, match="would shadow reward/mean"):
        parse_reward_specs("pkg:mean")
    with pytest.raises(ConfigError, match="empty list"):
        parse_reward_specs([])
    with pytest.raises(ConfigError, match=r"data.reward\[1\] has unknown key 'weight'"):
        parse_reward_specs(["last_number", {"fn": "boxed", "weight": 2}])
    with pytest.raises(ConfigError, match="needs fn"):
        parse_reward_specs({"name": "x"})


def test_combined_reward_weighted_sum_and_terms():
    specs = parse_reward_specs(["last_number", "answer_tags"])
    reward = combined_reward(specs, [1.0, 0.2])
    ex = Example("p", "27")
    # right and tagged: 1 * 1 + 0.2 * 1 = 1.2; right, untagged: 1.0; wrong, tagged: 0.2
    assert reward.values(ex, "<answer>27</answer>") == [1.0, 1.0]
    assert reward(ex, "<answer>27</answer>") == pytest.approx(1.2, abs=1e-12)
    assert reward(ex, "27") == 1.0
    assert reward(ex, "<answer>26</answer>") == pytest.approx(0.2, abs=1e-12)
    assert reward.names == ("last_number", "answer_tags") and reward.correct_index == 0
    assert combined_reward(specs, correct="answer_tags").correct_index == 1
    with pytest.raises(ConfigError, match="2 weights for 1 rewards"):
        combined_reward(specs[:1], [1.0, 2.0])
    with pytest.raises(ConfigError, match="'nope' is not one of"):
        combined_reward(specs, correct="nope")


def test_combined_reward_kwargs_are_defaults_that_fields_override():
    (spec,) = parse_reward_specs({"fn": "answer_tags", "kwargs": {"answer_tag": "final"}})
    reward = combined_reward([spec])
    assert reward(Example("p", "1"), "<final>1</final>") == 1.0
    assert reward(Example("p", "1", {"answer_tag": "ans"}), "<final>1</final>") == 0.0
    assert reward(Example("p", "1", {"answer_tag": "ans"}), "<ans>1</ans>") == 1.0


def test_config_reward_keys_validated():
    c = build_config(
        overrides=["data.reward=[last_number,answer_tags]", "data.reward_weights=[1,0.5]"]
    )
    assert c.data.reward == ["last_number", "answer_tags"] and c.data.reward_weights == [1.0, 0.5]
    for bad, match in [
        (["data.reward=[last_number]", "data.reward_weights=[1,2]"], "2 weights for 1 rewards"),
        (["data.reward_weights=[1]"], "data.reward_weights needs data.reward"),
        (["data.reward=last_number", "data.correct_reward=boxed"], "not one of the rewards"),
        (["data.reward=[a:s,b:s]"], "two rewards are named 's'"),
        (
            ["data.reward=last_number", "data.reward_weights=[.nan]"],
            "data.reward_weights must be a finite number, got nan",
        ),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_config(overrides=bad)


# ---------------------------------------------------------------- scoring


def _str_reward(prompt, completion, **fields):
    return "1.0"


def _plain_str(example, text):
    return "1.0"


def test_score_combined_terms_correct_and_type_errors():
    reward = CombinedReward(
        [("acc", lambda p, c, **f: float(c == f["answer"]), 1.0),
         ("fmt", lambda p, c, **f: len(c) < 3, 0.5)],
    )  # fmt: skip
    exs = [Example("a", "7"), Example("b", "9")]
    s = score(reward, exs, ["7", "long", "9", "x"], 2, on_error="raise", errors=[0])
    # "7": 1 + 0.5 * 1 = 1.5; "long": 0 + 0 = 0; "9": 1.5; "x": 0 + 0.5 = 0.5
    assert s.total == [1.5, 0.0, 1.5, 0.5]
    assert s.correct == [1.0, 0.0, 1.0, 0.0]
    assert s.terms[3] == {"acc": 0.0, "fmt": 1.0}
    bad = CombinedReward([("acc", lambda p, c, **f: 1.0, 1.0), ("s", _str_reward, 1.0)])
    for on_error in ("raise", "zero"):  # a non-number stops the run whatever on_error says
        with pytest.raises(RewardTypeError, match=r"reward 's' returned '1.0' of type str"):
            score(bad, exs, ["7", "8"], 1, on_error=on_error, errors=[0])
    with pytest.raises(RewardTypeError, match=r"reward '_plain_str' returned '1.0' of type str"):
        score(_plain_str, exs, ["7"], 2, on_error="zero", errors=[0])


def test_score_plain_reward_and_on_error():
    exs = [Example("a", "7")]
    with pytest.raises(RewardTypeError, match="returned None of type NoneType"):
        score(lambda e, t: None, exs, ["7"], 1, on_error="zero", errors=[0])
    s = score(lambda e, t: True, exs, ["7"], 1, on_error="raise", errors=[0])
    assert (s.total, s.correct, s.terms) == ([1.0], [1.0], [{}])
    errors = [0]
    nan = CombinedReward(
        [("a", lambda p, c, **f: 1.0, 1.0), ("b", lambda p, c, **f: math.nan, 1.0)]
    )
    s = score(nan, exs * 2, ["7", "8"], 1, on_error="zero", errors=errors)
    assert errors == [2] and s.total == [0.0, 0.0] and s.terms == [{"a": 0.0, "b": 0.0}] * 2
    with pytest.raises(RewardError, match="not a finite number"):
        score(nan, exs, ["7"], 1, on_error="raise", errors=[0])


def test_build_reward_from_config(tmp_path: Path):
    from entropy_rl.train.data import build_reward

    c = build_config(overrides=["data.reward=[gsm8k,{fn: answer_tags, name: fmt}]",
                                "data.reward_weights=[2,1]", "data.correct_reward=gsm8k"])  # fmt: skip
    reward = build_reward(c.data, None)
    assert isinstance(reward, CombinedReward) and reward.names == ("gsm8k", "fmt")
    # 2 * 1 (#### 5 matches) + 1 * 1 (tagged) = 3
    assert reward(Example("p", "5"), "<answer>x</answer>\n#### 5") == 3.0
