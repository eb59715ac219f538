"""Built-in tasks, their rewards, the tiny model and its shipped starting checkpoints.

Light imports only here; the transformers-based pieces load on first use:
`build_char_tokenizer` (tokenizer), `build_tiny_model` (model), `evaluate_start`,
`builtin_checkpoint`, `load_builtin` (pretrain). The `pretrain` function is not re-exported
(its name is also its submodule's): ``from entropy_rl.tasks.pretrain import pretrain``.
"""

from __future__ import annotations

import importlib
from typing import Any

from entropy_rl.tasks.arithmetic import AdditionTask
from entropy_rl.tasks.base import (
    Example,
    Task,
    available_tasks,
    clean_completion,
    example_fields,
    get_task,
    register_task,
)
from entropy_rl.tasks.digitsum import DigitSumTask, valid_answers
from entropy_rl.tasks.rewards import (
    available_rewards,
    digit_sum_valid,
    exact_match,
    load_reward,
    numeric_match,
    overlong_penalty,
)
from entropy_rl.tasks.trap import TrapTask
from entropy_rl.tasks.trapchat import TrapChatTask
from entropy_rl.tasks.wordpick import WordPickTask
from entropy_rl.tasks.wordproblems import WordProblemsTask

_LAZY = {
    "build_char_tokenizer": "entropy_rl.tasks.tokenizer",
    "build_tiny_model": "entropy_rl.tasks.model",
    "evaluate_start": "entropy_rl.tasks.pretrain",
    "builtin_checkpoint": "entropy_rl.tasks.pretrain",
    "load_builtin": "entropy_rl.tasks.pretrain",
}

__all__ = [
    "AdditionTask",
    "DigitSumTask",
    "Example",
    "Task",
    "TrapChatTask",
    "TrapTask",
    "WordPickTask",
    "WordProblemsTask",
    "available_rewards",
    "available_tasks",
    "build_char_tokenizer",
    "build_tiny_model",
    "builtin_checkpoint",
    "clean_completion",
    "digit_sum_valid",
    "evaluate_start",
    "exact_match",
    "example_fields",
    "get_task",
    "load_builtin",
    "load_reward",
    "numeric_match",
    "overlong_penalty",
    "register_task",
    "valid_answers",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'entropy_rl.tasks' has no attribute {name!r}")
