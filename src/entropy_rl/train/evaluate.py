"""Held-out evaluation during training: greedy accuracy, avg@k / pass@k, distinct answers,
and the task's own metrics (`Task.eval_metrics`, `Task.start_metrics`).

Evaluation samples from its own random stream, seeded from (run.seed, step), and puts the
global python / numpy / torch (and CUDA) generators back as it found them: the training
trajectory does not depend on ``eval.every``, and a run stopped and extended equals an
unbroken one even when its first part ended with an evaluation.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from entropy_rl.control.evaluation import eval_summary
from entropy_rl.train.checkpoint import rng_state, set_rng_state
from entropy_rl.train.rollout import score


@contextmanager
def own_stream(seed: int, step: int) -> Iterator[int]:
    """Seed python, numpy and torch from (seed, step) for the block; restore them after.
    Yields the derived seed (string seeding of random.Random hashes it with SHA-512)."""
    saved = rng_state()
    derived = random.Random(f"entropy_rl.eval/{seed}/{step}").getrandbits(63)
    random.seed(derived)
    np.random.seed(derived % 2**32)
    torch.manual_seed(derived)  # also seeds every CUDA device
    try:
        yield derived
    finally:
        set_rng_state(saved)


def evaluate(trainer: Any) -> dict[str, float]:
    """Sample ``eval.samples`` completions at the training temperature (and one greedy) for the
    first ``eval.n_prompts`` held-out prompts. A sample is correct when its correctness reward
    is > 0.5 (verifiable rewards are 1 / 0; of combined rewards, data.correct_reward's).
    ``acc/eval`` is avg@k at the sampling temperature. Runs on its own random stream
    (:func:`own_stream`)."""
    with own_stream(trainer.cfg.run.seed, trainer.step):
        return _evaluate(trainer)


def _evaluate(trainer: Any) -> dict[str, float]:
    c = trainer.cfg
    examples = trainer.source.eval_set()[: c.eval.n_prompts]
    if not examples:
        return {}
    trainer.engine.sync_weights(trainer.model)
    prompts = [trainer.encoder.encode(e) for e in examples]
    k = c.eval.samples
    gen = trainer.engine.generate(
        prompts, n=k, temperature=c.rollout.temperature, top_p=c.rollout.top_p,
        max_new_tokens=trainer.max_new_tokens,
    )  # fmt: skip
    texts = trainer.encoder.decode(gen.completion_ids)
    errors = [0]
    on_error = c.data.reward_on_error
    scores = score(trainer.reward_fn, examples, texts, k, on_error=on_error, errors=errors).correct
    extract = (
        trainer.task.extract_answer if trainer.task is not None else (lambda t: t.strip() or None)
    )
    correct = [[r > 0.5 for r in scores[i * k : (i + 1) * k]] for i in range(len(examples))]
    answers = [[extract(t) for t in texts[i * k : (i + 1) * k]] for i in range(len(examples))]
    comps = [texts[i * k : (i + 1) * k] for i in range(len(examples))]
    greedy = None
    if c.eval.greedy:
        g = trainer.engine.generate(
            prompts,
            n=1,
            temperature=1.0,
            top_p=1.0,
            max_new_tokens=trainer.max_new_tokens,
            greedy=True,
        )
        g_texts = trainer.encoder.decode(g.completion_ids)
        greedy = [
            r > 0.5
            for r in score(
                trainer.reward_fn, examples, g_texts, 1, on_error=on_error, errors=errors
            ).correct
        ]
    ks = sorted({1, *(x for x in (2, 4, 8, 16, 32, 64) if x <= k), k})
    char_level = trainer.task is not None and not trainer.task.needs_model_path  # tiny models
    unit = list if char_level else str.split
    out = eval_summary(correct, answers, comps, ks=ks, greedy_correct=greedy, tokenize=unit)
    if trainer.task is not None:  # the task's own metrics (exact ones from the current weights)
        out |= trainer.task.eval_metrics(
            trainer.model, trainer.tokenizer, examples, comps, temperature=c.rollout.temperature,
            encoder=trainer.encoder,
        )  # fmt: skip
    h = trainer.last_entropy
    if h is not None:  # the entropy-performance law R = -a exp(H) + b, refit on every eval
        trainer.entropy_fit.add(h, out["acc/eval"])
        out |= trainer.entropy_fit.fit()
    return out


def start_metrics(trainer: Any) -> dict[str, float]:
    """The task's `Task.start_metrics` on the start policy (logged at step 0), also printed as
    one line on stderr by the main process with the time it took."""
    if trainer.task is None:
        return {}
    t0 = time.perf_counter()
    out = trainer.task.start_metrics(
        trainer.model, trainer.tokenizer, temperature=trainer.cfg.rollout.temperature,
        encoder=trainer.encoder,
    )  # fmt: skip
    if out and trainer.dist.is_main:
        line = ", ".join(f"{k} {v:.4g}" for k, v in out.items())
        print(f"start: {line} ({time.perf_counter() - t0:.2f} s)", file=sys.stderr)
    return out
