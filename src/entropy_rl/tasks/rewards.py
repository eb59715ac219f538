"""Reward functions and the loader that resolves a reward spec string.

User-facing signature of every reward function::

    fn(prompt: str, completion: str, **fields) -> float

where `fields` are the example's answer and meta (`base.example_fields`): ``answer=...`` for
single-answer tasks, ``target=...`` for digitsum, plus anything a user dataset carries.
Functions ignore fields they do not use.

`load_reward` accepts a built-in name (`available_rewards()`) or ``package.module:function``
(or ``path/to/file.py:function``) for a user function.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entropy_rl.tasks.base import clean_completion

__all__ = [
    "RewardFn",
    "available_rewards",
    "digit_sum_valid",
    "exact_match",
    "load_reward",
    "numeric_match",
    "overlong_penalty",
    "parse_number",
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
    value = parse_number(completion)
    if value is None:
        return 0.0
    return 1.0 if math.isclose(value, target, rel_tol=rel_tol, abs_tol=abs_tol) else 0.0


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


_BUILTIN: dict[str, RewardFn] = {
    "math_verify": math_verify,
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "digit_sum_valid": digit_sum_valid,
}


def available_rewards() -> list[str]:
    """Names `load_reward` resolves without an import path."""
    return sorted(_BUILTIN)


def _import_module(module_name: str, spec: str) -> Any:
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"reward {spec!r}: file {module_name!r} not found")
        mod_spec = importlib.util.spec_from_file_location(f"_entropy_rl_reward_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise ValueError(f"reward {spec!r}: cannot import {module_name!r} as a module")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module
        mod_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or module_name
        raise ValueError(
            f"reward {spec!r}: module {missing!r} not found "
            f"(is it installed or on PYTHONPATH? expected 'package.module:function')"
        ) from err


def load_reward(spec: str) -> RewardFn:
    """Resolve a reward spec: a built-in name or ``module:function``.

    Examples: ``"numeric_match"``, ``"my_pkg.rewards:score"``, ``"./rewards.py:score"``.

    Raises:
        ValueError: unknown name, module not found, attribute missing, or not callable.
    """
    if spec in _BUILTIN:
        return _BUILTIN[spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown reward {spec!r}; use one of {available_rewards()} "
            f"or 'package.module:function' for your own"
        )
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"reward {spec!r}: expected 'package.module:function'")
    module = _import_module(module_name, spec)
    if not hasattr(module, attr):
        raise ValueError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise ValueError(
            f"reward {spec!r}: {attr!r} is a {type(fn).__name__}, not callable; it must be "
            "fn(prompt, completion, **fields) -> float"
        )
    return fn
