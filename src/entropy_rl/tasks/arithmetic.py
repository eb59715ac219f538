"""`addition`: integer arithmetic with one right answer, ``"a+b="`` -> ``"a+b"`` then <eos>.

Operands are uniform in [0, 10**digits). The default, 2-digit addition, is the regime where
RL visibly works on the tiny model (docs/experiments.md); 3-digit with carries could not be
fixed by RL. `ops` also allows ``-`` (answers may be negative, ``"3-7="`` -> ``"-4"``) and ``*``.

Held-out split: `eval_size` (op, a, b) triples are drawn once with `seed`; `sample_train` and
`sample_pretrain` never return them, so evaluation measures generalisation to unseen pairs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from entropy_rl.tasks.base import Example, Task, clean_completion, register_task
from entropy_rl.tasks.rewards import parse_number

__all__ = ["AdditionTask"]

_OPS = ("+", "-", "*")


@register_task
class AdditionTask(Task):
    """Arithmetic on two `digits`-digit operands (default ``a+b`` with a, b in [0, 100)).

    Args:
        digits: operand width; operands are uniform in [0, 10**digits).
        ops: operators to draw from, a string or sequence over ``"+-*"``.
        eval_size: held-out prompts; default min(256, a quarter of the prompt space).
        seed: seed of the held-out split.
    """

    name: ClassVar[str] = "addition"

    def __init__(
        self,
        *,
        digits: int = 2,
        ops: str | Sequence[str] = "+",
        eval_size: int | None = None,
        seed: int = 1234,
    ) -> None:
        if not 1 <= digits <= 6:
            raise ValueError(f"digits must be in 1..6, got {digits}")
        op_list = tuple(dict.fromkeys(ops))  # dedupe, keep order
        if not op_list or any(op not in _OPS for op in op_list):
            raise ValueError(f"ops must be a non-empty selection of {_OPS}, got {ops!r}")
        self.digits = digits
        self.ops = op_list
        self._base = 10**digits
        space = len(op_list) * self._base**2
        if eval_size is None:
            eval_size = min(256, space // 4)
        if not 1 <= eval_size <= space // 2:
            raise ValueError(
                f"eval_size must be in 1..{space // 2} (half of the {space} prompts), "
                f"got {eval_size}"
            )
        self.seed = seed
        rng = random.Random(seed)
        held: dict[tuple[str, int, int], None] = {}
        while len(held) < eval_size:
            held[self._draw(rng)] = None
        self._held_out = list(held)
        self._held_set = set(held)
        self._eval = [self._example(*t) for t in self._held_out]
        # Longest answer: digits + 1 for a sum, 2 * digits for a product, sign for a difference.
        longest = max(len(self._answer(op, self._base - 1, self._base - 1)) for op in op_list)
        if "-" in op_list:
            longest = max(longest, len(self._answer("-", 0, self._base - 1)))
        self.default_max_new_tokens = longest + 1 + 2  # answer, <eos>, slack for overlong shaping

    def _draw(self, rng: random.Random) -> tuple[str, int, int]:
        op = self.ops[rng.randrange(len(self.ops))]
        return op, rng.randrange(self._base), rng.randrange(self._base)

    @staticmethod
    def _answer(op: str, a: int, b: int) -> str:
        value = a + b if op == "+" else a - b if op == "-" else a * b
        return str(value)

    def _example(self, op: str, a: int, b: int) -> Example:
        return Example(prompt=f"{a}{op}{b}=", answer=self._answer(op, a, b), meta={})

    def sample_train(self, n: int, rng: random.Random) -> list[Example]:
        """`n` prompts uniform over the prompt space minus the held-out triples."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out: list[Example] = []
        while len(out) < n:
            triple = self._draw(rng)
            if triple not in self._held_set:
                out.append(self._example(*triple))
        return out

    def eval_set(self) -> list[Example]:
        """The `eval_size` held-out prompts, in a fixed order."""
        return list(self._eval)

    def extract_answer(self, completion: str) -> str | None:
        """Canonical integer text of a completion that is exactly one integer, else None.

        ``" 045"`` -> ``"45"``; ``"45 7"``, ``"4+5"``, ``""`` -> None.
        """
        text = clean_completion(completion)
        value = parse_number(text)
        if value is None or not value.is_integer() or "." in text or "e" in text.lower():
            return None
        return str(int(value))

    def is_correct(self, example: Example, completion: str) -> bool:
        """Whether the extracted integer equals the reference answer (``"045"`` == ``"45"``)."""
        if example.answer is None:
            raise ValueError(f"addition example {example.prompt!r} has no answer")
        return self.extract_answer(completion) == str(int(example.answer))
