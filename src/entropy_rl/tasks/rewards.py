"""Reward functions and the loader that resolves a reward spec string.

User-facing signature of every reward function::

    fn(prompt: str, completion: str, **fields) -> float

where `fields` are the example's answer and meta (`base.example_fields`): ``answer=...`` for
single-answer tasks, ``target=...`` for digitsum, plus anything a user dataset carries.
Functions ignore fields they do not use.

Built-ins for real completions (sentences, not bare answers): `last_number` (the last number in
the text), `gsm8k` (GSM8K's ``#### N`` line), `boxed` (the last ``\\boxed{...}``),
`math_verify` (symbolic equality, needs the ``math`` extra) and the format reward `answer_tags`;
for the built-in tasks' bare answers: `exact_match`, `numeric_match`, `digit_sum_valid`.

A reward must return a bool, int or float (any `numbers.Real`, e.g. a numpy scalar), finite:
`check_reward_value` enforces it and names the function, the value and its type otherwise.

`load_reward` accepts a built-in name (`available_rewards()`) or ``package.module:function``
(or ``path/to/file.py:function``) for a user function.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import math
import numbers
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entropy_rl.errors import ConfigError, UserError
from entropy_rl.tasks.base import clean_completion

__all__ = [
    "RewardFn",
    "RewardTypeError",
    "answer_tags",
    "available_rewards",
    "boxed",
    "boxed_content",
    "check_reward_value",
    "digit_sum_valid",
    "exact_match",
    "gsm8k",
    "gsm8k_answer",
    "last_number",
    "load_reward",
    "math_verify",
    "numeric_match",
    "overlong_penalty",
    "parse_number",
    "text_numbers",
]

RewardFn = Callable[..., float]

# Optional sign, digits with an optional fraction (or a bare fraction), optional exponent.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _require(fields: dict[str, Any], key: str, fn_name: str) -> Any:
    if fields.get(key) is None:
        raise ValueError(
            f"{fn_name} needs a {key!r} field (got fields: {sorted(fields)}); "
            f"pass {key}=... or use a dataset/task that provides it"
        )
    return fields[key]


def exact_match(prompt: str, completion: str, **fields: Any) -> float:
    """1.0 if the completion (cut at <eos>, whitespace stripped) equals ``answer.strip()``."""
    answer = str(_require(fields, "answer", "exact_match"))
    return 1.0 if clean_completion(completion) == answer.strip() else 0.0


def parse_number(text: str) -> float | None:
    """The number that `text` consists of, or None.

    The whole text (after `clean_completion`) must be one number: surrounding whitespace and
    leading zeros are fine (``" 007 "`` -> 7.0), trailing junk is not (``"7+"`` -> None).
    """
    text = clean_completion(text)
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def numeric_match(
    prompt: str,
    completion: str,
    *,
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-9,
    **fields: Any,
) -> float:
    """1.0 if the completion parses to the same number as `answer` (math.isclose), else 0.0.

    ``"045"`` matches ``"45"``; ``"45.0"`` matches ``"45"``; ``"45x"`` and ``""`` score 0.0.

    Raises:
        ValueError: no `answer` field, or an `answer` that is not a number.
    """
    raw = _require(fields, "answer", "numeric_match")
    target = parse_number(str(raw))
    if target is None:
        raise ValueError(f"numeric_match: answer {raw!r} is not a number")
    return _same_number(parse_number(completion), target, rel_tol, abs_tol)


def digit_sum_valid(prompt: str, completion: str, *, width: int = 3, **fields: Any) -> float:
    """1.0 if the completion is exactly `width` digits whose sum is `target`, else 0.0.

    `target` comes from the fields, or is parsed from a prompt of the form ``"N="``.
    Example: target 5, ``"302"`` -> 1.0 (3+0+2 = 5); ``"32"`` -> 0.0 (two digits).
    """
    target = fields.get("target")
    if target is None:
        match = re.fullmatch(r"\s*(\d+)=\s*", prompt)
        if match is None:
            raise ValueError(
                f"digit_sum_valid needs a 'target' field or a prompt like '14=', got {prompt!r}"
            )
        target = int(match.group(1))
    text = clean_completion(completion)
    if len(text) != width or not text.isdigit() or not text.isascii():
        return 0.0
    return 1.0 if sum(int(c) for c in text) == int(target) else 0.0


def overlong_penalty(length: int, *, max_len: int, cache_len: int) -> float:
    """DAPO soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13).

        R_len(L) = 0                                 if L <= max_len - cache_len
                 = ((max_len - cache_len) - L) / cache_len   if in between
                 = -1                                if L > max_len

    Example: max_len 20, cache_len 4 -> L = 16: 0; L = 18: (16 - 18) / 4 = -0.5; L = 21: -1.

    Raises:
        ValueError: negative length, max_len < 1, or cache_len outside [0, max_len].
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if not 0 <= cache_len <= max_len:
        raise ValueError(f"cache_len must be in [0, max_len={max_len}], got {cache_len}")
    soft_start = max_len - cache_len
    if length <= soft_start:
        return 0.0
    if length > max_len:
        return -1.0
    return (soft_start - length) / cache_len  # cache_len > 0 here: soft_start < length <= max


def math_verify(prompt: str, completion: str, **fields: Any) -> float:
    """1.0 if the completion's final answer is mathematically equal to ``answer`` (HF Math-Verify:
    LaTeX, boxed answers, fractions vs decimals, sets...), else 0.0. Needs the ``math`` extra.

    ``math_verify("", "so it is \\boxed{1/2}", answer="0.5") == 1.0``.
    """
    try:
        from math_verify import parse, verify
    except ImportError as err:
        raise ImportError("the math_verify reward needs: pip install 'entropy-rl[math]'") from err
    gold = _require(fields, "answer", "math_verify")
    gold_parsed = parse(str(gold))
    if not gold_parsed:
        raise ValueError(f"math_verify: cannot parse the reference answer {gold!r}")
    return 1.0 if verify(gold_parsed, parse(completion)) else 0.0


# A number in running text: an optional minus sign (ASCII or U+2212) and dollar sign, an integer
# part with optional thousands commas ("1,234,567"), an optional decimal fraction. Not inside
# another number or after a dot (so "3.14.15" and "v1.2" do not yield "14" / "2"); the minus
# counts only where no digit precedes it ("10-3" is 10 and 3). A trailing sentence period is
# not a fraction ("$18." -> 18). Fractions ("1/2") and exponents are out of scope: math_verify.
_TEXT_NUMBER = re.compile(
    r"(?<![\d.])([-\u2212])?\$?(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?(?!\d)",
)


def text_numbers(text: str) -> list[float]:
    """Every number in `text`, in order of appearance (see `_TEXT_NUMBER` for what counts).

    ``text_numbers("I had $1,234.50, spent 10-3 = 7.")`` -> ``[1234.5, 10.0, 3.0, 7.0]``.
    """
    out = []
    for match in _TEXT_NUMBER.finditer(text):
        sign, whole, frac = match.groups()
        value = float(whole.replace(",", "") + (frac or ""))
        out.append(-value if sign else value)
    return out


def _reference_number(raw: Any, fn_name: str) -> float:
    """The last number in a reference answer (``"72"``, ``"$1,234"``, a worked solution)."""
    numbers = text_numbers(str(raw))
    if not numbers:
        raise ValueError(f"{fn_name}: the reference answer {raw!r} holds no number")
    return numbers[-1]


def _same_number(value: float | None, target: float, rel_tol: float, abs_tol: float) -> float:
    """1.0 if ``value`` is ``target`` up to math.isclose, 0.0 when it differs or is None."""
    if value is None:
        return 0.0
    return 1.0 if math.isclose(value, target, rel_tol=rel_tol, abs_tol=abs_tol) else 0.0


def last_number(
    prompt: str,
    completion: str,
    *,
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-9,
    **fields: Any,
) -> float:
    """1.0 if the last number in the completion equals `answer` (math.isclose), else 0.0.

    What real instruct models write: ``"16 + 11 = 27. So she has 27 apples."`` -> 27 (answer
    "27": 1.0); ``"It costs $1,234."`` -> 1234; ``"$18."`` -> 18; ``"-5"`` -> -5;
    ``"no idea"`` -> 0.0. The reference is the last number in `answer`, so ``"$1,234"`` and a
    full GSM8K solution ending in ``#### 1234`` both work.

    Raises:
        ValueError: no `answer` field, or an answer without a number.
    """
    target = _reference_number(_require(fields, "answer", "last_number"), "last_number")
    numbers = text_numbers(clean_completion(completion))
    return _same_number(numbers[-1] if numbers else None, target, rel_tol, abs_tol)


_GSM8K_LINE = re.compile(r"####\s*(.*)")


def gsm8k_answer(text: str) -> float | None:
    """The number after the last ``####`` in `text` (GSM8K's final-answer line), or None.

    ``"... so 48 + 24 = 72.\\n#### 72"`` -> 72.0; ``"#### $1,080"`` -> 1080.0; no ``####``, or
    no number right after it (``"#### seventy"``) -> None.
    """
    lines = _GSM8K_LINE.findall(text)
    if not lines:
        return None
    numbers = text_numbers(lines[-1].strip())
    return numbers[0] if numbers else None


def gsm8k(
    prompt: str,
    completion: str,
    *,
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-9,
    **fields: Any,
) -> float:
    """1.0 if the completion's ``#### N`` line gives the reference number, else 0.0 (strict
    format, as models fine-tuned on GSM8K answer; `last_number` is the lenient one).

    The reference `answer` may be a bare number or a full GSM8K solution (the data set's
    ``answer`` column) ending in ``#### N``: its N is used. Example: answer
    ``"Natalia sold 48/2 = 24 clips in May.\\n#### 72"``: completion ``"... #### 72"`` -> 1.0,
    ``"The answer is 72."`` -> 0.0 (no ``####`` line), ``"#### 71"`` -> 0.0.

    Raises:
        ValueError: no `answer` field, or an answer without a number.
    """
    raw = _require(fields, "answer", "gsm8k")
    target = gsm8k_answer(str(raw))
    if target is None:
        target = _reference_number(raw, "gsm8k")
    return _same_number(gsm8k_answer(clean_completion(completion)), target, rel_tol, abs_tol)


_BOXED = "\\boxed{"


def boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in `text`, nested braces matched, or None when
    there is none or its braces do not close.

    ``"so \\boxed{\\frac{1}{2}}."`` -> ``"\\frac{1}{2}"``; ``"\\boxed{3} or \\boxed{4}"`` ->
    ``"4"``; ``"\\boxed{12"`` -> None.
    """
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return None


def _normalise_latex(text: str) -> str:
    """Whitespace, LaTeX spacing (``\\,`` ``\\!`` ``\\;``) and surrounding ``$`` removed."""
    for space in ("\\,", "\\!", "\\;", "\\ "):
        text = text.replace(space, "")
    return "".join(text.split()).strip("$")


def boxed(
    prompt: str,
    completion: str,
    *,
    rel_tol: float = 1e-9,
    abs_tol: float = 1e-9,
    **fields: Any,
) -> float:
    """1.0 if the last ``\\boxed{...}`` of the completion holds the reference answer, else 0.0.

    Both sides are normalised (whitespace, ``\\,``-style spacing and ``$`` removed); when both
    are a single number they compare as numbers (``"1,000"`` == ``"1000.0"``), otherwise as
    strings (``"\\frac{1}{2}"`` == ``"\\frac{1}{2}"`` but not ``"0.5"``: use `math_verify` for
    symbolic equality). A reference that itself holds a ``\\boxed{}`` (a MATH solution) is
    reduced to its content. Example: answer ``"42"``: ``"so \\boxed{42}."`` -> 1.0,
    ``"\\boxed{41}"`` -> 0.0, ``"42"`` -> 0.0 (nothing boxed).

    Raises:
        ValueError: no `answer` field, or an empty one.
    """
    raw = str(_require(fields, "answer", "boxed"))
    gold = _normalise_latex(boxed_content(raw) or raw)
    if not gold:
        raise ValueError(f"boxed: the reference answer {raw!r} is empty")
    content = boxed_content(clean_completion(completion))
    if content is None:
        return 0.0
    got = _normalise_latex(content)
    if got == gold:
        return 1.0
    gold_num, got_num = parse_number(gold.replace(",", "")), parse_number(got.replace(",", ""))
    if gold_num is None or got_num is None:
        return 0.0
    return _same_number(got_num, gold_num, rel_tol, abs_tol)


_TAG_NAME = re.compile(r"[A-Za-z][\w-]*")


def answer_tags(
    prompt: str, completion: str, *, answer_tag: str = "answer", **fields: Any
) -> float:
    """Format reward: 1.0 if the completion holds ``<answer>...</answer>`` with something other
    than whitespace inside, else 0.0; the answer itself is not checked (combine with a
    correctness reward, `data.reward_weights`).

    The tag name is `answer_tag`: pass it in a reward spec's kwargs
    (``{fn: answer_tags, kwargs: {answer_tag: final}}``) or as a data field. Example:
    ``"I think <answer> 42 </answer>"`` -> 1.0; ``"<answer></answer>"``, ``"<answer>42"`` and
    ``"42"`` -> 0.0.

    Raises:
        ValueError: a tag name that is not a word (letters, digits, ``_``, ``-``).
    """
    if not isinstance(answer_tag, str) or not _TAG_NAME.fullmatch(answer_tag):
        raise ValueError(
            f"answer_tags: answer_tag must be a tag name like 'answer', got {answer_tag!r}"
        )
    tag = re.escape(answer_tag)
    match = re.search(rf"<{tag}>(.*?)</{tag}>", clean_completion(completion), flags=re.DOTALL)
    return 1.0 if match is not None and match.group(1).strip() else 0.0


class RewardTypeError(UserError, TypeError):
    """A reward function returned something other than a finite real number."""


def check_reward_value(value: Any, name: str) -> float:
    """`value` as a float if it is a reward: bool, int or float (any `numbers.Real`, so numpy
    scalars too) and finite.

    ``True`` -> 1.0, ``3`` -> 3.0. A string (even ``"1.0"``), None or a tensor is refused,
    not converted: a reward that must be parsed is a bug in the reward function.

    Raises:
        RewardTypeError: not a real number (a UserError: one line naming `name`, the value and
            its type; it stops the run whatever data.reward_on_error says, since it is the
            function's contract and not one completion that failed).
        ValueError: a real number that is NaN or infinite (data.reward_on_error applies).
    """
    if not isinstance(value, numbers.Real):
        hint = " (a tensor: return .item())" if hasattr(value, "item") else ""
        raise RewardTypeError(
            f"reward {name!r} returned {value!r} of type {type(value).__name__}; a reward must "
            f"be a bool, int or float{hint}"
        )
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"reward {name!r} returned {result}, not a finite number")
    return result


_BUILTIN: dict[str, RewardFn] = {
    "last_number": last_number,
    "gsm8k": gsm8k,
    "boxed": boxed,
    "answer_tags": answer_tags,
    "math_verify": math_verify,
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "digit_sum_valid": digit_sum_valid,
}


def available_rewards() -> list[str]:
    """Names `load_reward` resolves without an import path."""
    return sorted(_BUILTIN)


def _import_module(module_name: str, spec: str) -> Any:
    """The module of a reward spec: a ``.py`` path, or a dotted name looked up on sys.path with
    the current directory first (as ``python -m`` does), so ``my_rewards:score`` finds
    ./my_rewards.py without PYTHONPATH=. (the directory is on sys.path for this import only)."""
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"reward {spec!r}: file {module_name!r} not found")
        mod_spec = importlib.util.spec_from_file_location(f"_entropy_rl_reward_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise ConfigError(f"reward {spec!r}: cannot import {module_name!r} as a module")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module
        mod_spec.loader.exec_module(module)
        return module
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or module_name
        raise ConfigError(
            f"reward {spec!r}: module {missing!r} not found in {cwd} or on sys.path "
            f"(is it installed, or on PYTHONPATH? expected 'package.module:function')"
        ) from err
    finally:
        if added:
            sys.path.remove(cwd)


def reward_source(spec: str) -> Path | None:
    """The file that defines the reward ``spec``, found the way :func:`load_reward` would import
    it but without running anything (None: a built-in reward, or a module that is not a file).
    For a package that is its ``__init__.py``; files the module itself imports are not included.
    """
    if spec in _BUILTIN or ":" not in spec:
        return None
    module_name = spec.rpartition(":")[0]
    if module_name.endswith(".py"):
        return Path(module_name).resolve()
    paths: list[str] | None = [os.getcwd(), *sys.path]
    found = None
    for part in module_name.split("."):  # PathFinder only looks: no package __init__ runs
        found = importlib.machinery.PathFinder.find_spec(part, paths)
        if found is None:
            return None
        paths = list(found.submodule_search_locations or [])
    origin = found.origin if found is not None else None
    return Path(origin).resolve() if origin and Path(origin).is_file() else None


def load_reward(spec: str) -> RewardFn:
    """Resolve a reward spec: a built-in name or ``module:function``.

    Examples: ``"last_number"``, ``"my_pkg.rewards:score"``, ``"./rewards.py:score"``. A
    module is looked up in the current directory first, then on sys.path: ``my_rewards:score``
    run from the directory holding my_rewards.py needs no PYTHONPATH.

    Raises:
        ConfigError: unknown name, module not found, attribute missing, or not callable.
    """
    if spec in _BUILTIN:
        return _BUILTIN[spec]
    if ":" not in spec:
        raise ConfigError(
            f"unknown reward {spec!r}; use one of {available_rewards()} "
            f"or 'package.module:function' for your own"
        )
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward {spec!r}: expected 'package.module:function'")
    module = _import_module(module_name, spec)
    if not hasattr(module, attr):
        raise ConfigError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise ConfigError(
            f"reward {spec!r}: {attr!r} is a {type(fn).__name__}, not callable; it must be "
            "fn(prompt, completion, **fields) -> float"
        )
    return fn
