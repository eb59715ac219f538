"""`word_problems`: generated arithmetic word problems for pretrained instruct models, offline.

A problem is a template (a story with number slots), numbers drawn for its slots, and surface
words (names, objects, containers, units) that change the text but not the arithmetic. The
answer is always a non-negative integer. Four levels (``task_kwargs: {level: 0|1|2|3}``, or a
list such as ``[1, 2, 3]`` to mix them):

0. a bare question, addition or subtraction, numbers 1..20 ("What is 7 + 12?" -> 19): what a
   135M instruct model learns on a CPU in minutes (``--preset small-instruct``);
1. one step, addition or subtraction, numbers 2..20 ("Ava has 7 marbles. She buys 5
   more. How many marbles does Ava have now?" -> 12);
2. two steps of addition / subtraction, numbers 2..50;
3. multiplication and division (factors 2..12), alone or with one more step (2..50).

Held-out set, disjoint by construction: a problem's *key* is (level, template, numbers), and
a key is held out when a hash of it (blake2b, stable across processes and Python versions)
falls under `held_out_frac`. `sample_train` redraws held-out keys, so no training problem has
the numbers of a held-out problem in the same story, whatever names or objects either uses.
`eval_set` holds `eval_size` distinct held-out keys drawn with `seed`.

Reward: `rewards.last_number` (the last number of the completion equals the answer), which
fits how instruct models answer ("7 + 5 = 12, so Ava has 12 marbles."); the prompt asks for
the final number at the end. There is no built-in model for this task: set ``model.path`` to
a pretrained instruct model and ``data.chat_template=true``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from entropy_rl.tasks.base import Example, Task, clean_completion, register_task
from entropy_rl.tasks.rewards import last_number, text_numbers

__all__ = ["WordProblemsTask", "problem_key"]

Numbers = dict[str, int]


@dataclass(frozen=True)
class _Template:
    text: str
    """Story with slots: numbers {a} {b} {c} {p}, people {name} {name2} {name3} with pronouns
    {he} {He} {his} of {name}, and {obj} {container} {unit} {item}."""
    draw: Callable[[random.Random], Numbers]
    solve: Callable[[Numbers], int]


def _r(rng: random.Random, low: int, high: int) -> int:
    return rng.randint(low, high)


def _pair(low: int, high: int) -> Callable[[random.Random], Numbers]:
    return lambda rng: {"a": _r(rng, low, high), "b": _r(rng, low, high)}


def _minus_pair(low: int, high: int) -> Callable[[random.Random], Numbers]:
    """high >= a > b >= low, so a - b >= 1."""

    def draw(rng: random.Random) -> Numbers:
        a = _r(rng, low + 1, high)
        return {"a": a, "b": _r(rng, low, a - 1)}

    return draw


def _product(extra: int = 0, *, minus: bool = False) -> Callable[[random.Random], Numbers]:
    """a, b in 2..12 and p = a * b; c in 2..`extra` (below p when `minus`)."""

    def draw(rng: random.Random) -> Numbers:
        a, b = _r(rng, 2, 12), _r(rng, 2, 12)
        out = {"a": a, "b": b, "p": a * b}
        if extra:
            out["c"] = _r(rng, 2, min(extra, a * b - 1) if minus else extra)
        return out

    return draw


def _two_step(kind: str) -> Callable[[random.Random], Numbers]:
    """Level-2 numbers: ``+-`` a + b - c, ``-+`` a - b + c, ``--`` a - b - c, ``++`` a + b + c,
    every number >= 2, each intermediate and result >= 1."""

    def draw(rng: random.Random) -> Numbers:
        if kind == "+-":
            a, b = _r(rng, 5, 50), _r(rng, 2, 30)
            return {"a": a, "b": b, "c": _r(rng, 2, min(50, a + b - 1))}
        if kind == "-+":
            a = _r(rng, 5, 50)
            return {"a": a, "b": _r(rng, 2, a - 1), "c": _r(rng, 2, 30)}
        if kind == "--":
            a = _r(rng, 10, 50)
            b = _r(rng, 2, a - 3)
            return {"a": a, "b": b, "c": _r(rng, 2, a - b - 1)}
        return {"a": _r(rng, 5, 50), "b": _r(rng, 5, 50), "c": _r(rng, 5, 50)}

    return draw


_LEVELS: dict[int, tuple[_Template, ...]] = {
    0: (
        _Template("What is {a} + {b}?", _pair(1, 20), lambda n: n["a"] + n["b"]),
        _Template("What is {a} - {b}?", _minus_pair(1, 20), lambda n: n["a"] - n["b"]),
    ),
    1: (
        _Template("{name} has {a} {obj}. {He} buys {b} more. How many {obj} does {name} have now?",
                  _pair(2, 20), lambda n: n["a"] + n["b"]),
        _Template("{name} had {a} {obj} and gave {b} of them to {name2}. How many {obj} does "
                  "{name} have left?", _minus_pair(2, 20), lambda n: n["a"] - n["b"]),
        _Template("There are {a} {obj} in a {container}. {name} puts {b} more {obj} into it. "
                  "How many {obj} are in the {container} now?",
                  _pair(2, 20), lambda n: n["a"] + n["b"]),
        _Template("A {container} holds {a} {obj}. {name} takes {b} of them out. How many {obj} "
                  "are still in the {container}?", _minus_pair(2, 20), lambda n: n["a"] - n["b"]),
        _Template("{name} is {a} years old. {name2} is {b} years older than {name}. How old is "
                  "{name2}?", _pair(2, 20), lambda n: n["a"] + n["b"]),
        _Template("{name} walked {a} {unit} on Monday and {b} {unit} on Tuesday. How many {unit} "
                  "did {he} walk in total?", _pair(2, 20), lambda n: n["a"] + n["b"]),
        _Template("{name} has {a} {obj}. {name2} has {b} fewer {obj} than {name}. How many {obj} "
                  "does {name2} have?", _minus_pair(2, 20), lambda n: n["a"] - n["b"]),
        _Template("{name} scored {a} points in the first game and {b} points in the second game. "
                  "How many points did {he} score in the two games together?",
                  _pair(2, 20), lambda n: n["a"] + n["b"]),
        _Template("{name} needs {a} {obj} for a project and already has {b}. How many more {obj} "
                  "does {he} need?", _minus_pair(2, 20), lambda n: n["a"] - n["b"]),
    ),
    2: (
        _Template("{name} has {a} {obj}. {He} buys {b} more and then gives {c} to {name2}. How "
                  "many {obj} does {name} have now?",
                  _two_step("+-"), lambda n: n["a"] + n["b"] - n["c"]),
        _Template("{name} had {a} {obj}. {He} lost {b} of them and then found {c} more. How many "
                  "{obj} does {he} have now?", _two_step("-+"), lambda n: n["a"] - n["b"] + n["c"]),
        _Template("A bus has {a} passengers. At the first stop {b} people get off and {c} people "
                  "get on. How many passengers are on the bus now?",
                  _two_step("-+"), lambda n: n["a"] - n["b"] + n["c"]),
        _Template("{name} has {a} {obj}. {name2} has {b} more {obj} than {name}. How many {obj} "
                  "do {name} and {name2} have together?",
                  _pair(2, 50), lambda n: 2 * n["a"] + n["b"]),
        _Template("{name} read {a} pages on Monday, {b} pages on Tuesday and {c} pages on "
                  "Wednesday. How many pages did {he} read in the three days?",
                  _two_step("++"), lambda n: n["a"] + n["b"] + n["c"]),
        _Template("A shop had {a} {obj}. It sold {b} in the morning and {c} in the afternoon. How "
                  "many {obj} does the shop have left?",
                  _two_step("--"), lambda n: n["a"] - n["b"] - n["c"]),
        _Template("{name} is {a} years old. {name2} is {b} years younger than {name}, and {name3} "
                  "is {c} years older than {name2}. How old is {name3}?",
                  _two_step("-+"), lambda n: n["a"] - n["b"] + n["c"]),
        _Template("{name} saved {a} dollars. {He} spent {b} dollars on a book and {c} dollars on "
                  "lunch. How many dollars does {he} have left?",
                  _two_step("--"), lambda n: n["a"] - n["b"] - n["c"]),
    ),
    3: (
        _Template("{name} buys {a} packs of {obj}. Each pack has {b} {obj}. How many {obj} does "
                  "{he} buy?", _product(), lambda n: n["a"] * n["b"]),
        _Template("{name} has {p} {obj} and shares them equally among {b} friends. How many {obj} "
                  "does each friend get?", _product(), lambda n: n["a"]),
        _Template("One {item} costs {a} dollars. How many dollars do {b} {item}s cost?",
                  _product(), lambda n: n["a"] * n["b"]),
        _Template("{name} earns {a} dollars per hour and works {b} hours. Then {he} spends {c} "
                  "dollars. How many dollars does {he} have left?",
                  _product(50, minus=True), lambda n: n["a"] * n["b"] - n["c"]),
        _Template("There are {a} rows of chairs with {b} chairs in each row. {c} chairs are "
                  "taken. How many chairs are free?",
                  _product(50, minus=True), lambda n: n["a"] * n["b"] - n["c"]),
        _Template("{p} students are split into groups of {b}. How many groups are there?",
                  _product(), lambda n: n["a"]),
        _Template("{name} runs {a} {unit} every day for {b} days. How many {unit} does {he} run "
                  "in total?", _product(), lambda n: n["a"] * n["b"]),
        _Template("{name} has {a} boxes with {b} {obj} in each box and {c} more {obj} outside the "
                  "boxes. How many {obj} does {he} have in all?",
                  _product(50), lambda n: n["a"] * n["b"] + n["c"]),
        _Template("{name} bakes {p} cookies and puts them into bags of {b}. How many bags does "
                  "{he} fill?", _product(), lambda n: n["a"]),
    ),
}  # fmt: skip

_PEOPLE = (
    ("Ava", "she"), ("Liam", "he"), ("Maya", "she"), ("Noah", "he"), ("Sofia", "she"),
    ("Omar", "he"), ("Lena", "she"), ("Ken", "he"), ("Priya", "she"), ("Lucas", "he"),
    ("Zoe", "she"), ("Mateo", "he"), ("Hana", "she"), ("Ivan", "he"), ("Amara", "she"),
    ("Tom", "he"), ("Chloe", "she"), ("Ravi", "he"), ("Elena", "she"), ("Sam", "he"),
)  # fmt: skip
_PRONOUNS = {"she": ("she", "She", "her"), "he": ("he", "He", "his")}
_OBJECTS = ("apples", "marbles", "stickers", "pencils", "cookies", "cards", "stamps", "shells",
            "balloons", "crayons", "oranges", "coins")  # fmt: skip
_CONTAINERS = ("basket", "box", "jar", "bag", "bowl")
_UNITS = ("kilometres", "miles", "laps")
_ITEMS = ("notebook", "ticket", "bagel", "pen", "cupcake", "kite")

DEFAULT_INSTRUCTION = "Give the final answer as a single number at the end."


def problem_key(level: int, template: int, numbers: Numbers) -> tuple[int, int, tuple[int, ...]]:
    """What makes two problems the same: (level, template index, the numbers in slot order a,
    b, c, p); names and objects are left out."""
    return level, template, tuple(numbers[k] for k in sorted(numbers))


def _unit_hash(key: tuple[int, int, tuple[int, ...]]) -> float:
    """A stable hash of `key` mapped to [0, 1)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@register_task
class WordProblemsTask(Task):
    """Arithmetic word problems with an integer answer, for pretrained instruct models.

    Args:
        level: 0, 1, 2 or 3, or a list of them (each problem's level drawn uniformly).
        eval_size: number of held-out problems in `eval_set`; None: 128, or every held-out
            problem where there are fewer (level 0 alone holds about 60).
        held_out_frac: share of problem keys held out (never trained on), in (0, 0.5].
        seed: seed of the held-out set's draw (which keys, and their surface words).
        instruction: appended to every problem (empty string: none).
    """

    name: ClassVar[str] = "word_problems"
    needs_model_path: ClassVar[bool] = True
    default_max_new_tokens: int = 128

    def __init__(
        self,
        *,
        level: int | Sequence[int] = 1,
        eval_size: int | None = None,
        held_out_frac: float = 0.1,
        seed: int = 1234,
        instruction: str = DEFAULT_INSTRUCTION,
    ) -> None:
        levels = (level,) if isinstance(level, int) else tuple(level)
        if not levels or any(isinstance(x, bool) or x not in _LEVELS for x in levels):
            raise ValueError(f"level must be 0, 1, 2 or 3 or a list of them, got {level!r}")
        if not 0.0 < held_out_frac <= 0.5:
            raise ValueError(f"held_out_frac must be in (0, 0.5], got {held_out_frac}")
        if eval_size is not None and eval_size < 1:
            raise ValueError(f"eval_size must be >= 1, got {eval_size}")
        self.levels = levels
        self.held_out_frac = held_out_frac
        self.instruction = instruction
        rng = random.Random(seed)
        held: dict[tuple[int, int, tuple[int, ...]], Example] = {}
        want = 128 if eval_size is None else eval_size
        # ~eval_size / held_out_frac draws find eval_size keys in a large space; the bound
        # leaves 20x for coupon collecting in a small one (level 1 holds ~250 held-out keys)
        for _ in range(max(10_000, int(20 * want / held_out_frac))):
            level_, t, numbers = self._draw_key(rng)
            key = problem_key(level_, t, numbers)
            if self.is_held_out(key) and key not in held:
                held[key] = self._render(rng, level_, t, numbers)
                if len(held) == want:
                    break
        else:
            if eval_size is None and held:  # a small space: every held-out problem found
                want = len(held)
        if len(held) < want:
            raise ValueError(
                f"found only {len(held)} held-out problems for level {level!r}; lower eval_size "
                f"(asked {eval_size}) or raise held_out_frac ({held_out_frac})"
            )
        self._eval = list(held.values())

    def is_held_out(self, key: tuple[int, int, tuple[int, ...]]) -> bool:
        """Whether problems with this `problem_key` belong to the held-out set."""
        return _unit_hash(key) < self.held_out_frac

    def _draw_key(self, rng: random.Random) -> tuple[int, int, Numbers]:
        """(level, template index, numbers) of a random problem."""
        level = self.levels[rng.randrange(len(self.levels))]
        t = rng.randrange(len(_LEVELS[level]))
        return level, t, _LEVELS[level][t].draw(rng)

    def _render(self, rng: random.Random, level: int, t: int, numbers: Numbers) -> Example:
        """The problem's text with names and objects drawn from `rng`, and its answer."""
        template = _LEVELS[level][t]
        (name, pron), (name2, _), (name3, _) = rng.sample(_PEOPLE, 3)
        he, he_cap, his = _PRONOUNS[pron]
        text = template.text.format(
            **numbers, name=name, name2=name2, name3=name3, he=he, He=he_cap, his=his,
            obj=rng.choice(_OBJECTS), container=rng.choice(_CONTAINERS),
            unit=rng.choice(_UNITS), item=rng.choice(_ITEMS),
        )  # fmt: skip
        prompt = f"{text} {self.instruction}" if self.instruction else text
        answer = template.solve(numbers)
        return Example(prompt=prompt, answer=str(answer), meta={"level": level})

    def sample_train(self, n: int, rng: random.Random) -> list[Example]:
        """`n` problems drawn with `rng`, none with a held-out key."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out: list[Example] = []
        while len(out) < n:
            level, t, numbers = self._draw_key(rng)
            if not self.is_held_out(problem_key(level, t, numbers)):
                out.append(self._render(rng, level, t, numbers))
        return out

    def eval_set(self) -> list[Example]:
        """The `eval_size` held-out problems, in a fixed order."""
        return list(self._eval)

    def extract_answer(self, completion: str) -> str | None:
        """The last number of the completion in canonical form (``"12"``, ``"-3"``, ``"2.5"``),
        or None when it holds no number."""
        numbers = text_numbers(clean_completion(completion))
        if not numbers:
            return None
        value = numbers[-1]
        return str(int(value)) if value.is_integer() else str(value)

    def is_correct(self, example: Example, completion: str) -> bool:
        """Whether the last number of the completion is the answer (`rewards.last_number`)."""
        return last_number(example.prompt, completion, answer=example.answer) == 1.0
