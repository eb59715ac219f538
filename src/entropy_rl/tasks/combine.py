"""Several reward functions combined with weights, as TRL's ``reward_funcs`` + ``reward_weights``.

    total = sum_i w_i * r_i(prompt, completion, **fields)        (w_i default 1.0)

The trainer's advantage sees ``total`` (plus DAPO overlong shaping when enabled); each r_i's
mean over a step's samples is logged as ``reward/<name>``. Accuracy (``acc/train``,
``acc/eval``, pass@k) counts a sample correct when one designated reward, the *correctness
reward* (the first, or ``data.correct_reward``), is > 0.5: a weighted sum of a 0/1 correctness
reward and a format bonus has no threshold that means "correct" for every choice of weights.

Config forms of ``data.reward`` (`parse_reward_specs`): a string (``last_number``,
``my_rewards:score``, ``./rewards.py:score``), a mapping ``{fn: ..., name: ..., kwargs: {...}}``
(kwargs are bound to the function, e.g. ``{fn: answer_tags, kwargs: {answer_tag: final}}``),
or a list of those. A reward's name is ``name`` if given, else the built-in name or the
function's name after the colon.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from entropy_rl.errors import ConfigError
from entropy_rl.tasks.base import Example, example_fields
from entropy_rl.tasks.rewards import check_reward_value, load_reward

__all__ = ["CombinedReward", "RewardSpec", "combined_reward", "parse_reward_specs"]

# reward/<name> must not shadow the metrics rollout already logs under reward/
RESERVED_NAMES = ("mean", "std", "errors")
_SPEC_KEYS = ("fn", "name", "kwargs")


@dataclass(frozen=True)
class RewardSpec:
    """One entry of ``data.reward``."""

    fn: str
    """A built-in reward name or ``module:function``."""
    name: str
    """Metric name: the mean is logged as ``reward/<name>``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments bound to the function (a data field of the same name overrides)."""


def _spec_name(fn: str) -> str:
    """``"last_number"`` -> ``"last_number"``; ``"pkg.mod:score"``, ``"./r.py:score"`` -> ``"score"``."""
    return fn.rpartition(":")[2]


def _one_spec(item: Any, where: str) -> RewardSpec:
    if isinstance(item, str):
        if not item.strip():
            raise ConfigError(f"{where} is an empty string; name a reward function")
        return RewardSpec(item, _spec_name(item))
    if not isinstance(item, dict):
        raise ConfigError(
            f"{where} must be a reward name, 'module:function' or a mapping {{fn: ..., "
            f"name: ..., kwargs: {{...}}}}, got {type(item).__name__} {item!r}"
        )
    unknown = sorted(set(item) - set(_SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown key {unknown[0]!r}; allowed: {list(_SPEC_KEYS)}")
    fn, name, kwargs = item.get("fn"), item.get("name"), item.get("kwargs") or {}
    if not isinstance(fn, str) or not fn.strip():
        raise ConfigError(f"{where} needs fn: a reward name or 'module:function', got {fn!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"{where}.name must be a non-empty string, got {name!r}")
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}.kwargs must be a mapping, got {kwargs!r}")
    return RewardSpec(fn, name or _spec_name(fn), dict(kwargs))


def parse_reward_specs(value: str | dict[str, Any] | list[Any]) -> list[RewardSpec]:
    """The reward specs of a ``data.reward`` value (string, mapping, or a list of them).

    ``["last_number", {fn: answer_tags, name: format}]`` -> specs named ``last_number`` and
    ``format``.

    Raises:
        ConfigError: an empty list, a malformed entry, or two rewards with the same name (give
            one a ``name``), or a name that would shadow reward/mean, reward/std, reward/errors.
    """
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError("data.reward is an empty list; name at least one reward function")
    specs = [
        _one_spec(item, "data.reward" if len(items) == 1 else f"data.reward[{i}]")
        for i, item in enumerate(items)
    ]
    seen: set[str] = set()
    for s in specs:
        if s.name in RESERVED_NAMES:
            raise ConfigError(
                f"data.reward: the name {s.name!r} would shadow reward/{s.name}; rename it "
                f"with {{fn: {s.fn}, name: ...}}"
            )
        if s.name in seen:
            raise ConfigError(
                f"data.reward: two rewards are named {s.name!r}; give one a different name "
                f"with {{fn: {s.fn}, name: ...}}"
            )
        seen.add(s.name)
    return specs


class CombinedReward:
    """``total = sum_i w_i * r_i``, with each r_i checked (`check_reward_value`) and named.

    Called as the trainer's reward, ``reward(example, completion)``, it returns the total;
    `values` gives every r_i. Example: last_number (weight 1) and answer_tags (weight 0.2) on
    ``"<answer>27</answer>"`` with answer 27: values [1.0, 1.0], total 1 * 1 + 0.2 * 1 = 1.2.

    Args:
        terms: (name, fn, weight) per reward; fn has the user signature
            ``fn(prompt, completion, **fields)``.
        correct: name of the correctness reward (what accuracy counts as > 0.5); default the
            first.
    """

    def __init__(
        self, terms: Sequence[tuple[str, Callable[..., Any], float]], *, correct: str | None = None
    ) -> None:
        if not terms:
            raise ValueError("a combined reward needs at least one reward function")
        self.names = tuple(name for name, _, _ in terms)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"reward names must be unique, got {list(self.names)}")
        self.fns = tuple(fn for _, fn, _ in terms)
        self.weights = tuple(float(w) for _, _, w in terms)
        if not all(math.isfinite(w) for w in self.weights):
            raise ValueError(f"reward weights must be finite, got {list(self.weights)}")
        correct = self.names[0] if correct is None else correct
        if correct not in self.names:
            raise ValueError(f"correct reward {correct!r} is not one of {list(self.names)}")
        self.correct_index = self.names.index(correct)

    def values(self, example: Example, completion: str) -> list[float]:
        """Each reward function's value on (example, completion), in order."""
        fields = example_fields(example)
        return [
            check_reward_value(fn(example.prompt, completion, **fields), name)
            for name, fn in zip(self.names, self.fns, strict=True)
        ]

    def total(self, values: Sequence[float]) -> float:
        """sum_i w_i * values_i."""
        return sum(w * v for w, v in zip(self.weights, values, strict=True))

    def __call__(self, example: Example, completion: str) -> float:
        return self.total(self.values(example, completion))


def combined_reward(
    specs: Sequence[RewardSpec],
    weights: Sequence[float] | None = None,
    *,
    correct: str | None = None,
) -> CombinedReward:
    """Load each spec's function (`load_reward`), bind its kwargs, and combine.

    Raises:
        ConfigError: a reward that does not load, a weight count that differs from the number
            of rewards, or a `correct` name that is not among them.
    """
    weights = [1.0] * len(specs) if weights is None else list(weights)
    if len(weights) != len(specs):
        raise ConfigError(
            f"data.reward_weights has {len(weights)} weights for {len(specs)} rewards "
            f"({[s.name for s in specs]}); give one weight per reward"
        )
    terms = []
    for s, w in zip(specs, weights, strict=True):
        fn = load_reward(s.fn)
        if s.kwargs:
            fn = functools.partial(_with_defaults, fn, s.kwargs)
        terms.append((s.name, fn, w))
    try:
        return CombinedReward(terms, correct=correct)
    except ValueError as e:
        raise ConfigError(f"data.reward: {e}") from e


def _with_defaults(
    fn: Callable[..., Any], defaults: dict[str, Any], prompt: str, completion: str, **fields: Any
) -> Any:
    """fn with `defaults` as keyword arguments that the example's fields may override."""
    return fn(prompt, completion, **{**defaults, **fields})
