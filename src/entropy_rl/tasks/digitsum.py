"""`digitsum`: a task with many valid answers (docs/experiments.md, "Digit sum").

Prompt ``"N="``; a valid answer is any `width`-digit string (leading zeros allowed) whose
digits sum to N, followed by <eos>. For width 3 the number of valid answers is the
coefficient of x^N in (1 + x + ... + x^9)^3: 28 for N = 6, 75 for N = 13 and 14, and only
3 / 6 / 10 for N = 1 / 2 / 3 and 10 / 6 / 3 / 1 for N = 24 / 25 / 26 / 27.

RL training prompts use N in `train_targets` (default 6..21, 28-75 valid answers each). The
evaluation set holds those same 16 prompts (the space is too small to hold any out) plus
"hard" prompts with few valid answers (N in 1..3 and 25..27), marked ``meta["hard"] = True``;
pass@k saturates on the normal prompts and only says something on the hard ones.

Supervised pretraining (`sample_pretrain`) mixes uniformly drawn valid answers with random
invalid strings (`invalid_frac`, 0.4), so the start policy is spread over many answers and
valid only part of the time: room for RL to sharpen and to collapse. It covers N in 1..27,
the hard prompts included; RL never trains on those. Measured here: pretrained on 6..21 only
(the first recipe's range), the model is valid on 0.5% of hard-prompt samples and pass@32 is
nonzero on one of the six, so pass@k there could not move; with 1..27 it starts at ~49% valid
on hard prompts while the normal prompts keep that start point (~30% valid at T = 1).
"""

from __future__ import annotations

import itertools
import random
from typing import ClassVar

from entropy_rl.tasks.base import Example, Task, clean_completion, register_task
from entropy_rl.tasks.rewards import digit_sum_valid

__all__ = ["DigitSumTask", "valid_answers"]


def valid_answers(target: int, *, width: int = 3) -> list[str]:
    """All `width`-digit strings whose digits sum to `target`, in increasing order."""
    return [
        "".join(map(str, digits))
        for digits in itertools.product(range(10), repeat=width)
        if sum(digits) == target
    ]


@register_task
class DigitSumTask(Task):
    """Write `width` digits summing to N.

    Args:
        train_targets: inclusive (low, high) range of N for training prompts.
        hard_targets: N values of the hard evaluation prompts (few valid answers).
        pretrain_targets: inclusive range of N for supervised pretraining (default: the
            smallest range holding `train_targets` and `hard_targets`, 1..27).
        invalid_frac: fraction of random invalid answers in the pretraining data.
        width: number of digits in an answer.
    """

    name: ClassVar[str] = "digitsum"

    def __init__(
        self,
        *,
        train_targets: tuple[int, int] = (6, 21),
        hard_targets: tuple[int, ...] = (1, 2, 3, 25, 26, 27),
        pretrain_targets: tuple[int, int] | None = None,
        invalid_frac: float = 0.4,
        width: int = 3,
    ) -> None:
        if not 1 <= width <= 5:
            raise ValueError(f"width must be in 1..5, got {width}")
        top = 9 * width
        low, high = train_targets
        if not 0 <= low <= high <= top:
            raise ValueError(
                f"train_targets must satisfy 0 <= low <= high <= {top}, got {train_targets}"
            )
        if any(not 0 <= n <= top for n in hard_targets):
            raise ValueError(f"hard_targets must lie in 0..{top}, got {hard_targets}")
        if pretrain_targets is None:
            pretrain_targets = (min(low, *hard_targets), max(high, *hard_targets))
        p_low, p_high = pretrain_targets
        if not 0 <= p_low <= p_high <= top:
            raise ValueError(
                f"pretrain_targets must satisfy 0 <= low <= high <= {top}, got {pretrain_targets}"
            )
        if not 0.0 <= invalid_frac < 1.0:
            raise ValueError(f"invalid_frac must be in [0, 1), got {invalid_frac}")
        self.width = width
        self.train_targets = (low, high)
        self.hard_targets = tuple(hard_targets)
        self.pretrain_targets = (p_low, p_high)
        self.invalid_frac = invalid_frac
        self._valid = {n: valid_answers(n, width=width) for n in range(top + 1)}
        self.default_max_new_tokens = width + 1 + 2  # answer, <eos>, slack for overlong shaping

    def _example(self, target: int, *, hard: bool) -> Example:
        return Example(prompt=f"{target}=", answer=None, meta={"target": target, "hard": hard})

    def num_valid(self, target: int) -> int:
        """Number of valid answers for prompt ``"{target}="``."""
        return len(self._valid[target])

    def sample_train(self, n: int, rng: random.Random) -> list[Example]:
        """`n` prompts with N uniform in `train_targets`."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        low, high = self.train_targets
        return [self._example(rng.randint(low, high), hard=False) for _ in range(n)]

    def eval_set(self, hard: bool | None = None) -> list[Example]:
        """Every training N once (``hard=False``), the hard N (``hard=True``), or both (None)."""
        low, high = self.train_targets
        normal = [self._example(n, hard=False) for n in range(low, high + 1)]
        hard_set = [self._example(n, hard=True) for n in self.hard_targets]
        if hard is None:
            return normal + hard_set
        return hard_set if hard else normal

    def sample_pretrain(self, n: int, rng: random.Random) -> list[Example]:
        """Pretraining pairs: a valid answer drawn uniformly with prob. 1 - `invalid_frac`,
        else a uniformly random `width`-digit string that is *not* valid."""
        low, high = self.pretrain_targets
        out: list[Example] = []
        for _ in range(n):
            target = rng.randint(low, high)
            if rng.random() >= self.invalid_frac:
                answer = rng.choice(self._valid[target])
            else:
                while True:
                    answer = "".join(str(rng.randrange(10)) for _ in range(self.width))
                    if sum(map(int, answer)) != target:
                        break
            out.append(Example(prompt=f"{target}=", answer=answer, meta={"target": target}))
        return out

    def extract_answer(self, completion: str) -> str | None:
        """The completion if it is exactly `width` ASCII digits, else None."""
        text = clean_completion(completion)
        if len(text) == self.width and text.isascii() and text.isdigit():
            return text
        return None

    def is_correct(self, example: Example, completion: str) -> bool:
        """Whether the completion is `width` digits summing to ``meta["target"]``."""
        fields = {**example.meta, "width": self.width}
        return digit_sum_valid(example.prompt, completion, **fields) == 1.0
