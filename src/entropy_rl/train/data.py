"""Where prompts and rewards come from: a built-in task, a JSONL file, or a ``datasets`` data set."""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from entropy_rl.tasks.base import Example, Task, get_task
from entropy_rl.train.config import ConfigError, DataConfig

RewardFn = Callable[[Example, str], float]


class PromptSource(Protocol):
    def sample(self, n: int, rng: random.Random) -> list[Example]: ...

    def eval_set(self) -> list[Example]: ...


class TaskSource:
    """Prompts and held-out set of a built-in task."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def sample(self, n: int, rng: random.Random) -> list[Example]:
        return self.task.sample_train(n, rng)

    def eval_set(self) -> list[Example]:
        return self.task.eval_set()


class RecordsSource:
    """Prompts drawn without replacement from a list, reshuffled every epoch by the caller's rng."""

    def __init__(self, train: list[Example], eval_examples: list[Example]) -> None:
        if not train:
            raise ConfigError("the prompt data set is empty")
        self.train = train
        self._eval = eval_examples
        self._order: list[int] = []

    def sample(self, n: int, rng: random.Random) -> list[Example]:
        out: list[Example] = []
        while len(out) < n:
            if not self._order:
                self._order = list(range(len(self.train)))
                rng.shuffle(self._order)
            out.append(self.train[self._order.pop()])
        return out

    def eval_set(self) -> list[Example]:
        return self._eval

    def state_dict(self) -> dict[str, Any]:
        return {"order": list(self._order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._order = list(state["order"])


def _record_to_example(
    rec: dict[str, Any], where: str, prompt_col: str, answer_col: str
) -> Example:
    if prompt_col not in rec:
        raise ConfigError(
            f"{where} has no {prompt_col!r} column (columns: {sorted(rec)}); set data.prompt_column"
        )
    prompt = rec[prompt_col]
    if not isinstance(prompt, (str, int, float)) or isinstance(prompt, bool):
        raise ConfigError(
            f"{where}: the prompt column {prompt_col!r} holds {json.dumps(prompt)[:60]}; every "
            "record needs a prompt text (a string)"
        )
    # every column under its own name (the prompt column too, unless it is `prompt`), and the
    # answer column also as `answer`: names the reward's positional arguments take are left out
    meta = {k: v for k, v in rec.items() if k not in ("prompt", "completion", "answer")}
    answer = rec.get(answer_col)
    return Example(prompt=str(prompt), answer=None if answer is None else str(answer), meta=meta)


def load_jsonl(
    path: str | Path, *, prompt_column: str = "prompt", answer_column: str = "answer"
) -> list[Example]:
    """One JSON object per line -> Examples; the other columns become reward fields."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompt file {p} does not exist")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{p}:{at} is not UTF-8 text (byte {data[e.start]:#04x}); save the file as UTF-8"
        ) from e
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}:{i} is not valid JSON: {e}") from e
        if not isinstance(rec, dict):
            raise ConfigError(f"{p}:{i} must be a JSON object with a prompt column")
        out.append(_record_to_example(rec, f"{p}:{i}", prompt_column, answer_column))
    return out


def load_hf_dataset(cfg: DataConfig) -> list[Example]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "data.dataset needs the datasets extra: pip install 'entropy-rl[datasets]'"
        ) from e
    assert cfg.dataset is not None
    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.dataset_split)
    except (FileNotFoundError, ConnectionError) as e:  # no such data set, or the hub unreachable
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"data.dataset={cfg.dataset!r} could not be loaded ({why}); check the name, that the "
            "hub is reachable, or give a local path (or data.prompts=FILE.jsonl)"
        ) from e
    return [
        _record_to_example(dict(rec), f"{cfg.dataset}[{i}]", cfg.prompt_column, cfg.answer_column)
        for i, rec in enumerate(ds)
    ]


def build_prompt_source(cfg: DataConfig, task: Task | None, seed: int) -> PromptSource:
    """The task's prompts, or records from JSONL / datasets with a held-out split."""
    if cfg.prompts is None and cfg.dataset is None:
        if task is None:
            raise ConfigError("no prompts: set data.task, data.prompts or data.dataset")
        return TaskSource(task)
    kw = {"prompt_column": cfg.prompt_column, "answer_column": cfg.answer_column}
    records = load_jsonl(cfg.prompts, **kw) if cfg.prompts is not None else load_hf_dataset(cfg)
    if cfg.eval_prompts is not None:
        return RecordsSource(records, load_jsonl(cfg.eval_prompts, **kw))
    shuffled = records[:]
    random.Random(seed).shuffle(shuffled)
    n_eval = max(1, len(shuffled) // 20) if len(shuffled) >= 20 else 0
    return RecordsSource(shuffled[n_eval:] or shuffled, shuffled[:n_eval])


def check_prompts(
    source: PromptSource,
    encode: Callable[[Example], list[int]],
    *,
    context: int | None,
    max_new_tokens: int,
    unk_id: int | None,
) -> None:
    """Records the model cannot read as written: a prompt that leaves no room in the model's
    context for rollout.max_new_tokens is refused (ConfigError); a prompt with characters the
    tokenizer lacks (they become its unknown token) is a warning. Built-in tasks are not
    checked (their prompts are the tokenizer's own)."""
    if not isinstance(source, RecordsSource):
        return
    longest, unknown = 0, []
    for ex in [*source.train, *source.eval_set()]:
        ids = encode(ex)
        longest = max(longest, len(ids))
        if unk_id is not None and unk_id in ids:
            unknown.append(ex.prompt)
    if context is not None and longest + max_new_tokens > context:
        room = context - longest
        fix = f", or lower rollout.max_new_tokens to at most {room}" if room > 0 else ""
        raise ConfigError(
            f"the longest prompt is {longest} tokens, and with rollout.max_new_tokens="
            f"{max_new_tokens} that exceeds the model's context of {context} tokens; shorten or "
            f"drop long prompts{fix}"
        )
    if unknown:
        warnings.warn(
            f"{len(unknown)} prompt(s) hold characters the tokenizer does not know (they become "
            f"its unknown token), e.g. {unknown[0][:60]!r}; the model never sees them",
            UserWarning, stacklevel=3,
        )  # fmt: skip


def build_reward(cfg: DataConfig, task: Task | None) -> RewardFn:
    """A reward over (example, completion text): the task's own, or data.reward's function(s)
    weighted by data.reward_weights (a `CombinedReward`, whose terms rollout logs by name)."""
    if cfg.reward is None:
        if task is None:
            raise ConfigError("no reward: set data.reward or use a built-in data.task")
        return task.reward
    from entropy_rl.tasks.combine import combined_reward, parse_reward_specs

    specs = parse_reward_specs(cfg.reward)
    return combined_reward(specs, cfg.reward_weights, correct=cfg.correct_reward)


def build_task(cfg: DataConfig) -> Task | None:
    """The built-in task named by data.task (None when it is empty)."""
    if not cfg.task:
        return None
    import entropy_rl.tasks  # noqa: F401  (registers the built-in tasks)

    try:
        task = get_task(cfg.task, **cfg.task_kwargs)
    except TypeError as e:
        raise ConfigError(f"data.task_kwargs does not fit task {cfg.task!r}: {e}") from e
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if task.needs_chat_template and not cfg.chat_template:
        raise ConfigError(
            f"task {cfg.task!r} asks a chat model: set data.chat_template=true (and model.path "
            "to an instruct model, e.g. from `entropy-rl get-model smollm2`)"
        )
    return task
