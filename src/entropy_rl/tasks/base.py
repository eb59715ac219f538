"""Task interface and registry.

A task supplies prompts, a held-out evaluation set and a verifiable reward. The trainer only
sees this interface: it samples training prompts with `sample_train`, generates completions,
scores them with `reward` (1.0 correct, 0.0 otherwise) and evaluates on `eval_set`.

Completions are the *decoded text* of the generated tokens with special tokens removed
(`tokenizer.decode(ids, skip_special_tokens=True)`); a literal ``<eos>`` left in the text is
also accepted and everything after it is ignored (see `clean_completion`).

Three optional hooks add a task's own metrics without task-specific code in the trainer:
`rollout_metrics` (each step's samples), `eval_metrics` (held-out samples plus the current
policy, for exact computations) and `start_metrics` (once, on the start policy). Each returns a
flat dict of namespaced floats; the default returns none.

Tasks are registered by name with `@register_task` so a config string selects them:

    task = get_task("addition", digits=2)
    batch = task.sample_train(32, random.Random(0))
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from entropy_rl.errors import ConfigError

__all__ = [
    "Example",
    "Task",
    "available_tasks",
    "checkpoint_name",
    "clean_completion",
    "example_fields",
    "get_task",
    "register_task",
    "task_class",
]

EOS_TEXT = "<eos>"


@dataclass(frozen=True)
class Example:
    """One prompt of a task.

    Attributes:
        prompt: text given to the model (without the <bos> token, which the tokenizer adds).
        answer: the reference answer when there is exactly one; None for tasks with many
            valid answers (those keep what the checker needs in `meta`).
        meta: extra fields passed to reward functions as keyword arguments
            (e.g. ``{"target": 14, "hard": False}`` for digitsum).
    """

    prompt: str
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def example_fields(example: Example) -> dict[str, Any]:
    """Keyword fields for a user-facing reward ``fn(prompt, completion, **fields)``.

    Returns ``{"answer": example.answer, **example.meta}``.
    """
    return {"answer": example.answer, **example.meta}


def clean_completion(completion: str) -> str:
    """Text of a completion up to the first literal ``<eos>``, surrounding whitespace removed."""
    return completion.split(EOS_TEXT, 1)[0].strip()


class Task(abc.ABC):
    """Base class of built-in tasks.

    Subclasses set `name` (registry key) and `default_max_new_tokens` (enough for the longest
    valid answer plus <eos> and a little slack, so overlong shaping has room to act), and
    implement `sample_train`, `eval_set` and `extract_answer` / `is_correct`. A task that starts
    from another task's shipped checkpoint names that task in `checkpoint`.
    """

    name: ClassVar[str] = ""
    checkpoint: ClassVar[str] = ""
    """Task whose shipped checkpoint this one starts from (default: its own `name`)."""
    summary_metrics: ClassVar[tuple[str, ...]] = ()
    """Metrics of the last evaluation that ``entropy-rl compare`` adds to its table by default."""
    summary_curves: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(training metric, axis label) pairs that ``entropy-rl compare`` draws per setting over
    the steps, beside entropy and reward (`report.settings`)."""
    default_max_new_tokens: int = 8
    needs_chat_template: ClassVar[bool] = False
    """True for tasks whose prompts are chat turns (data.chat_template=true is required)."""
    needs_model_path: ClassVar[bool] = False
    """True for tasks meant for a pretrained model (model.path): no built-in checkpoint, and
    evaluation counts distinct-2 over words; False: the built-in tiny character-level models
    (distinct-2 over characters)."""

    @abc.abstractmethod
    def sample_train(self, n: int, rng: random.Random) -> list[Example]:
        """`n` training prompts drawn with `rng` (never from the held-out set)."""

    @abc.abstractmethod
    def eval_set(self) -> list[Example]:
        """The held-out evaluation prompts; the same list on every call (fixed by seed)."""

    @abc.abstractmethod
    def extract_answer(self, completion: str) -> str | None:
        """The answer in `completion` in canonical form, or None if it is malformed."""

    @abc.abstractmethod
    def is_correct(self, example: Example, completion: str) -> bool:
        """Whether `completion` is a valid answer to `example`."""

    def reward(self, example: Example, completion: str) -> float:
        """1.0 if `completion` is correct for `example`, else 0.0."""
        return 1.0 if self.is_correct(example, completion) else 0.0

    def rollout_metrics(
        self, examples: Sequence[Example], texts: Sequence[str], rewards: Sequence[float]
    ) -> dict[str, float]:
        """Task metrics of one step's samples: ``texts`` and ``rewards`` hold G = len(texts) //
        len(examples) completions per example, prompt-major. Default: none."""
        return {}

    def eval_metrics(
        self,
        model: Any,
        tokenizer: Any,
        examples: Sequence[Example],
        completions: Sequence[Sequence[str]],
        *,
        temperature: float = 1.0,
        encoder: Any = None,
    ) -> dict[str, float]:
        """Task metrics of a held-out evaluation: ``completions[i]`` are the samples of
        ``examples[i]`` at `temperature`; `model` / `tokenizer` are the current policy, for
        metrics computed exactly rather than sampled; ``encoder`` (train.encoding.Encoder) the
        prompt encoding the trainer samples with (chat template, response prefix). Default:
        none."""
        return {}

    def start_metrics(
        self, model: Any, tokenizer: Any, *, temperature: float = 1.0, encoder: Any = None
    ) -> dict[str, float]:
        """Measured once on the start policy, before the first step (logged at step 0 and
        printed as one line); arguments as `eval_metrics`. Default: none."""
        return {}

    def build_tokenizer(self) -> Any:
        """Tokenizer that pretraining builds for this task (default: the character tokenizer)."""
        from entropy_rl.tasks.tokenizer import build_char_tokenizer

        return build_char_tokenizer()

    def sample_pretrain(self, n: int, rng: random.Random) -> list[Example]:
        """Supervised pretraining pairs: `answer` is the target text (default: `sample_train`)."""
        return self.sample_train(n, rng)


TaskT = TypeVar("TaskT", bound=type[Task])
_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(cls: TaskT) -> TaskT:
    """Class decorator: register a `Task` subclass under its `name`."""
    if not cls.name:
        raise ValueError(f"task class {cls.__name__} has an empty `name`; set a registry key")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available_tasks() -> list[str]:
    """Sorted names of the registered tasks."""
    return sorted(_REGISTRY)


def checkpoint_name(name: str) -> str:
    """Name of the shipped checkpoint that task `name` starts from: its class's `checkpoint`, or
    `name` itself (also for a name that is not registered)."""
    cls = _REGISTRY.get(name)
    return getattr(cls, "checkpoint", "") or name


def task_class(name: str) -> type[Task] | None:
    """The class registered as `name`, or None."""
    cls = _REGISTRY.get(name)
    return cls if isinstance(cls, type) else None


def get_task(name: str, **kwargs: Any) -> Task:
    """Instantiate the task registered as `name` with `kwargs`.

    Raises:
        ValueError: unknown name (the message lists the available ones).
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; available tasks: {', '.join(available_tasks())}")
    return _REGISTRY[name](**kwargs)
