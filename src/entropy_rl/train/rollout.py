"""Rollout -> reward -> advantage -> filter: everything that produces one step's training batch.

DAPO dynamic sampling: groups whose rewards are all equal carry no advantage signal (every
A = 0), so they are dropped and more prompts are sampled, up to ``max_sample_rounds`` generation
rounds; if the cap is hit the step trains on the groups it has (``groups/kept`` says how many).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from entropy_rl.control.repetition import repetition_metrics
from entropy_rl.engine.base import RolloutEngine
from entropy_rl.ops.advantages import compute_advantages
from entropy_rl.tasks.base import Example
from entropy_rl.tasks.combine import CombinedReward
from entropy_rl.tasks.rewards import RewardTypeError, check_reward_value, overlong_penalty
from entropy_rl.train.batch import RolloutBatch, build_batch
from entropy_rl.train.config import Config
from entropy_rl.train.data import PromptSource, RewardFn
from entropy_rl.train.encoding import Encoder


class RewardError(RuntimeError):
    """A reward function raised: the message carries the prompt and the completion."""


@dataclass
class Samples:
    """One or more generation rounds, G samples per prompt, prompt-major."""

    examples: list[Example]  # one per group
    prompt_ids: list[list[int]]  # one per row
    completion_ids: list[list[int]]
    texts: list[str]
    truncated: list[bool]
    sampler_logprobs: list[list[float]]  # per row; [] when the engine does not report them
    sampler_entropy: list[list[float]]  # per row, like sampler_logprobs
    sampler_top1: list[list[float]]  # per row, like sampler_logprobs
    correct: list[float]  # the correctness reward's value (Scores.correct)
    rewards: list[float]  # total reward after overlong shaping (what the advantage sees)
    reward_terms: list[dict[str, float]]  # per row, each named reward's value (Scores.terms)

    def group(self, g: int, size: int) -> slice:
        return slice(g * size, (g + 1) * size)


@dataclass
class Scores:
    """The rewards of a list of completions, one entry per completion."""

    total: list[float]
    """The reward: a combined reward's weighted sum, else the reward function's value."""
    correct: list[float]
    """The correctness reward (data.correct_reward, default the first of a combined reward;
    the reward itself otherwise): accuracy counts a sample correct when it is > 0.5."""
    terms: list[dict[str, float]]
    """Each reward function's value by name for a combined reward; {} rows otherwise."""


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or fn)


def score(
    reward_fn: RewardFn,
    examples: list[Example],
    texts: list[str],
    group_size: int,
    *,
    on_error: str,
    errors: list[int],
) -> Scores:
    """reward_fn on every (example, completion), each value checked (`check_reward_value`).

    ``on_error='zero'``: a reward that raises or is not finite scores 0 (every term of a
    combined reward 0) and is counted in errors[0]; ``'raise'``: RewardError. A value that is
    not a number (RewardTypeError) always propagates: it names the function and the value.
    """
    combined = reward_fn if isinstance(reward_fn, CombinedReward) else None
    out = Scores([], [], [])
    for i, text in enumerate(texts):
        ex = examples[i // group_size]
        terms: dict[str, float] = {}
        try:
            if combined is not None:
                values = combined.values(ex, text)
                total, correct = combined.total(values), values[combined.correct_index]
                terms = dict(zip(combined.names, values, strict=True))
            else:
                total = correct = check_reward_value(reward_fn(ex, text), _name(reward_fn))
        except RewardTypeError:
            raise
        except Exception as e:
            if on_error == "raise":
                raise RewardError(
                    f"the reward function raised {type(e).__name__}: {e}\n  prompt: {ex.prompt!r}\n"
                    f"  completion: {text!r}\n(set data.reward_on_error=zero to score such "
                    "samples 0 and count them instead)"
                ) from e
            errors[0] += 1
            total = correct = 0.0
            terms = dict.fromkeys(combined.names, 0.0) if combined is not None else {}
        out.total.append(total)
        out.correct.append(correct)
        out.terms.append(terms)
    return out


def sample_round(
    cfg: Config,
    n_prompts: int,
    *,
    source: PromptSource,
    engine: RolloutEngine,
    encoder: Encoder,
    reward_fn: RewardFn,
    rng: random.Random,
    max_new_tokens: int,
    errors: list[int],
) -> Samples:
    """Sample ``n_prompts`` prompts, G completions each, and score them."""
    ro = cfg.rollout
    examples = source.sample(n_prompts, rng)
    prompt_ids = [encoder.encode(e) for e in examples]
    gen = engine.generate(
        prompt_ids,
        n=ro.group_size,
        temperature=ro.temperature,
        top_p=ro.top_p,
        max_new_tokens=max_new_tokens,
    )
    texts = encoder.decode(gen.completion_ids)
    scores = score(
        reward_fn, examples, texts, ro.group_size, on_error=cfg.data.reward_on_error, errors=errors
    )
    rewards = list(scores.total)
    if ro.overlong_shaping:
        cache = ro.overlong_cache or max(1, max_new_tokens // 5)
        for i, ids in enumerate(gen.completion_ids):
            rewards[i] += overlong_penalty(len(ids), max_len=max_new_tokens, cache_len=cache)
    return Samples(
        examples,
        gen.prompt_ids,
        gen.completion_ids,
        texts,
        gen.truncated,
        gen.sampler_logprobs or [[] for _ in texts],
        gen.sampler_entropy or [[] for _ in texts],
        gen.sampler_top1 or [[] for _ in texts],
        scores.correct,
        rewards,
        scores.terms,
    )


def entropy_totals(per_row: list[list[float]]) -> tuple[float, int] | None:
    """(sum of H_t, N) over the N completion tokens of every row: the sampler's per-token
    entropies, in nats, whose token mean sum / N is ``entropy/rollout`` (the trainer divides
    after summing both over processes). None when some row carries no statistics (an engine
    that does not report them) or there are no tokens.
    Example: rows [[1.0, 2.0], [3.0]] -> (6.0, 3): a token mean of 2.0, not the row mean 1.75."""
    if not per_row or not all(per_row):
        return None
    return float(sum(map(sum, per_row))), sum(map(len, per_row))


def _concat(parts: list[Samples]) -> Samples:
    return Samples(
        *[[x for p in parts for x in getattr(p, f)] for f in Samples.__dataclass_fields__]
    )


def _select_groups(s: Samples, groups: list[int], size: int) -> Samples:
    rows = [i for g in groups for i in range(g * size, (g + 1) * size)]
    picked = {
        f: [getattr(s, f)[i] for i in rows] for f in Samples.__dataclass_fields__ if f != "examples"
    }
    return Samples(examples=[s.examples[g] for g in groups], **picked)


def collect(
    cfg: Config,
    *,
    source: PromptSource,
    engine: RolloutEngine,
    encoder: Encoder,
    reward_fn: RewardFn,
    rng: random.Random,
    max_new_tokens: int,
    pad_token_id: int,
    advantage_fn: Callable[..., torch.Tensor] | None = None,
    prompts_per_step: int | None = None,
) -> tuple[RolloutBatch | None, Samples, dict[str, float]]:
    """One step's batch: returns (batch or None if no group has signal, first-round samples,
    metrics). Training accuracy, reward/<name> and repetition (``gen/repetition``,
    ``gen/longest_repeat``: control.repetition) are measured on the first round, before any
    filtering.
    ``prompts_per_step`` overrides rollout.prompts_per_step (a rank's share under data parallelism)."""
    ro = cfg.rollout
    per_step = prompts_per_step or ro.prompts_per_step
    g_size = ro.group_size
    errors = [0]

    def draw(n_prompts: int) -> Samples:
        return sample_round(
            cfg, n_prompts, source=source, engine=engine, encoder=encoder, reward_fn=reward_fn,
            rng=rng, max_new_tokens=max_new_tokens, errors=errors,
        )  # fmt: skip

    first = draw(per_step)
    rounds, parts, n_groups_seen, n_zero_var = 1, [], 0, 0
    current = first
    while True:
        n = len(current.examples)
        keep = []
        for g in range(n):
            rs = current.rewards[current.group(g, g_size)]
            if max(rs) - min(rs) > 1e-9 or not ro.dynamic_sampling:
                keep.append(g)
            if max(rs) - min(rs) <= 1e-9:
                n_zero_var += 1
        n_groups_seen += n
        parts.append(_select_groups(current, keep, g_size))
        have = sum(len(p.examples) for p in parts)
        if not ro.dynamic_sampling or have >= per_step or rounds >= ro.max_sample_rounds:
            break
        rounds += 1
        # ask for a little more than the gap, scaled by the observed keep rate
        keep_rate = max(have / n_groups_seen, 0.1)
        want = min(per_step * 4, math.ceil((per_step - have) / keep_rate))
        current = draw(want)
    kept = _concat(parts)
    if len(kept.examples) > per_step:
        kept = _select_groups(kept, list(range(per_step)), g_size)
    n_rows = len(first.texts)
    lengths = [len(c) for c in first.completion_ids]
    metrics = {
        "reward/mean": sum(first.rewards) / n_rows,
        "reward/std": float(torch.tensor(first.rewards).std()) if n_rows > 1 else 0.0,
        "acc/train": sum(1.0 for c in first.correct if c > 0.5) / n_rows,
        "length/mean": sum(lengths) / n_rows,
        "length/truncated_frac": sum(first.truncated) / n_rows,
        "groups/zero_var_frac": n_zero_var / max(n_groups_seen, 1),
        "groups/sample_rounds": float(rounds),
        "groups/kept": float(len(kept.examples)),
        # the update's groups without signal: dynamic sampling keeps only groups with one, so 1
        # when it kept none; without it the update's groups are the one round sampled
        "groups/no_signal_frac": (
            (0.0 if ro.dynamic_sampling else n_zero_var / len(kept.examples))
            if kept.examples
            else 1.0
        ),
        "reward/errors": float(errors[0]),
    }
    for name in first.reward_terms[0] if first.reward_terms else ():  # reward/<name>: r_i's mean
        metrics[f"reward/{name}"] = sum(t[name] for t in first.reward_terms) / n_rows
    metrics |= repetition_metrics(first.completion_ids)
    # every first-round sample, before dynamic sampling keeps the groups that differ: present
    # when the update is skipped too (DAPO once every group agrees), and not biased to them
    if (totals := entropy_totals(first.sampler_entropy)) is not None:
        metrics["_entropy_sum"], metrics["_entropy_tokens"] = totals[0], float(totals[1])
    if not kept.examples:
        return None, first, metrics
    rewards = torch.tensor(kept.rewards)
    if advantage_fn is not None:
        adv = advantage_fn(rewards, group_size=g_size)
    else:
        adv = compute_advantages(
            cfg.algo.advantage, rewards, group_size=g_size, **cfg.algo.advantage_kwargs
        )
    loss_rows = [not t for t in kept.truncated] if ro.mask_truncated else None
    reported = lambda rows: rows if all(rows) else None  # noqa: E731  (every row, or none)
    batch = build_batch(
        kept.prompt_ids, kept.completion_ids, rewards=rewards, advantages=adv,
        pad_token_id=pad_token_id, loss_mask=loss_rows,
        sampler_logprobs=reported(kept.sampler_logprobs),
        sampler_entropy=reported(kept.sampler_entropy), sampler_top1=reported(kept.sampler_top1),
    )  # fmt: skip
    return batch, first, metrics
