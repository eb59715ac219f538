"""`trap-chat`: the exploration trap for a pretrained chat model (``model.path``).

Why not the built-in `trap` asked in words: a chat model has to produce an exact three-digit
answer whose digits add up to N, and SmolLM2-135M-Instruct at T = 1 almost never does (64
samples per N = 6 / 14 / 20: a valid answer in 1.6% / 0 / 0, most samples are prose), so it
never earns the partial reward that the trap needs to lock into. This task keeps the trap's
shape with a question the model already answers:

    user:       "Pick a number between 1 and {high}. Reply with the number only."
    assistant:  "My number is" + the completion, e.g. " 12." <end of turn>

``high`` in `highs` (default 20..35, 16 prompts). The assistant turn starts with the
*response prefix* "My number is" (``Example.meta["response_prefix"]``, which the trainer's
encoder appends after the chat template's generation prompt), so the model answers in a
few tokens. The reward ranks the valid answers, as `trap` does:

    r = 1.0   a valid answer that is a multiple of `divisor` (the rare property P; 9 by default:
              9, 18, 27 in range)
        0.5   any other valid answer: the whole completion is one integer 1..high, optionally
              followed by a period ("12", " 12.")
        0.0   anything else (prose, out of range, a number followed by more text)

Measured on SmolLM2-135M-Instruct (``entropy-rl get-model smollm2``), T = 1: the exact mass of
the valid answers is ~0.32-0.35 per prompt and of P ~0.02 (docs/experiments.md#trap-chat), the
regime of the built-in trap (valid ~0.3, P ~0.01): the partial reward comes often, the best
answer is rare, and a policy that sharpens on what paid first can stop sampling P.

Exact masses: the answer set is finite, so `exact_masses` scores every canonical valid answer
(" n" and " n." then the end-of-turn token, n = 1..high) under the policy with the trainer's
own prompt encoding, all of a prompt's answers against one pass over its tokens
(`sequence_logprobs`, the shared-prompt layout). Other spellings that `extract_answer` accepts
(no space after the prefix, a trailing space, another tokenization of the same text) are not
counted: their mass is a lower-order term for a model that writes " 12." as the canonical
tokens. The metrics (``trap/*``) and the "trapped" definition are `trap`'s.

Needs ``data.chat_template=true`` and a model whose tokenizer has a chat template.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from entropy_rl.errors import ConfigError
from entropy_rl.tasks.base import Example, Task, clean_completion, register_task
from entropy_rl.tasks.trap import RareAnswerMetrics

__all__ = ["QUESTION", "RESPONSE_PREFIX", "TrapChatTask", "sequence_logprobs"]

QUESTION = "Pick a number between 1 and {high}. Reply with the number only."
RESPONSE_PREFIX = "My number is"
_ANSWER = re.compile(r"([1-9][0-9]*)\.?")


def sequence_logprobs(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    temperature: float = 1.0,
    chunk: int = 512,
) -> Any:
    """log pi(c_r | p_r) = sum_t log softmax(logits_t / T)[c_r,t] for each row r, an (R,)
    float32 tensor, no gradient, the model in eval mode for the call.

    Rows go through the trainer's forward (`train.batch.policy_token_stats`, the model's own
    logits) ``chunk`` at a time; rows that share a prompt and sit next to each other share one
    pass over its tokens where the model supports it (`train.shared_prompt`), so scoring the
    whole answer set of a prompt costs about one prompt plus the answers' tokens.

    Args:
        prompt_ids: R prompts as token ids (each non-empty).
        completion_ids: R completions as token ids (each non-empty, stop token included when
            it is part of the event being scored).
    """
    import torch

    from entropy_rl.train.batch import build_batch, policy_token_stats
    from entropy_rl.train.shared_prompt import resolve_shared_prompt

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(prompt_ids) != len(completion_ids) or not prompt_ids:
        raise ValueError(
            f"need R >= 1 (prompt, completion) pairs, got {len(prompt_ids)} prompts and "
            f"{len(completion_ids)} completions"
        )
    if any(not p for p in prompt_ids) or any(not c for c in completion_ids):
        raise ValueError("every prompt and every completion needs at least one token")
    shared = resolve_shared_prompt(None, model)
    out = torch.empty(len(prompt_ids))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(prompt_ids), chunk):
                ps = [list(p) for p in prompt_ids[s : s + chunk]]
                cs = [list(c) for c in completion_ids[s : s + chunk]]
                zeros = torch.zeros(len(ps))
                batch = build_batch(
                    ps, cs, rewards=zeros, advantages=zeros, pad_token_id=pad_token_id
                )
                logp, _, _ = policy_token_stats(
                    model, batch, temperature=temperature, mode="full", shared_prompt=shared
                )
                out[s : s + len(ps)] = (logp.cpu() * batch.mask).sum(-1)
    finally:
        model.train(was_training)
    return out


@register_task
class TrapChatTask(RareAnswerMetrics, Task):
    """The exploration trap as a chat question with a finite answer set (module docstring).

    Args:
        highs: inclusive (low, high) range of the prompts' upper bounds; one prompt each.
        divisor: P is "a multiple of `divisor`"; every prompt's range needs one.
        response_prefix: the text the assistant's turn starts with ("" for none).
    """

    name: ClassVar[str] = "trap-chat"
    needs_model_path: ClassVar[bool] = True
    default_max_new_tokens: int = 8
    summary_metrics: ClassVar[tuple[str, ...]] = (
        "trap/p_prob_eval", "trap/p_frac_eval", "trap/reward_eval", "trap/trapped_eval",
        "trap/never_p_eval",
    )  # fmt: skip
    summary_curves: ClassVar[tuple[tuple[str, str], ...]] = (
        ("trap/p_frac", "share of samples with P"),
    )

    def __init__(
        self,
        *,
        highs: tuple[int, int] = (20, 35),
        divisor: int = 9,
        response_prefix: str = RESPONSE_PREFIX,
    ) -> None:
        low, high = highs
        if not 2 <= low <= high:
            raise ValueError(f"highs must be (low, high) with 2 <= low <= high, got {highs}")
        if not 2 <= divisor <= low:
            raise ValueError(
                f"divisor must be in 2..{low} so every prompt has a multiple in range, got "
                f"{divisor}"
            )
        self.highs = (low, high)
        self.divisor = divisor
        self.response_prefix = response_prefix

    def _example(self, high: int) -> Example:
        meta: dict[str, Any] = {"high": high}
        if self.response_prefix:
            meta["response_prefix"] = self.response_prefix
        return Example(prompt=QUESTION.format(high=high), meta=meta)

    def sample_train(self, n: int, rng: random.Random) -> list[Example]:
        """`n` prompts with ``high`` uniform in `highs`."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return [self._example(rng.randint(*self.highs)) for _ in range(n)]

    def eval_set(self) -> list[Example]:
        """Every prompt once (the training prompts: the study is about the policy on them)."""
        return [self._example(h) for h in range(self.highs[0], self.highs[1] + 1)]

    def extract_answer(self, completion: str) -> str | None:
        """The integer when the whole completion is one (no leading zero), optionally followed
        by a period: " 12." -> "12"; else None."""
        m = _ANSWER.fullmatch(clean_completion(completion))
        return m.group(1) if m else None

    def is_correct(self, example: Example, completion: str) -> bool:
        """Whether the completion is one integer in 1..``meta["high"]``."""
        answer = self.extract_answer(completion)
        return answer is not None and int(answer) <= int(example.meta["high"])

    def classify(self, example: Example, completion: str) -> tuple[bool, bool, str | None]:
        """(valid, has P, extracted answer) of one completion."""
        answer = self.extract_answer(completion)
        valid = answer is not None and int(answer) <= int(example.meta["high"])
        return valid, valid and int(answer or 0) % self.divisor == 0, answer

    def reward(self, example: Example, completion: str) -> float:
        """1.0 for a valid multiple of `divisor`, 0.5 for another valid answer, else 0.0."""
        valid, has_p, _ = self.classify(example, completion)
        return 1.0 if has_p else 0.5 if valid else 0.0

    def canonical_answers(self, high: int) -> list[tuple[int, str]]:
        """(n, text) of the completions `exact_masses` scores: " n" and " n." for n = 1..high
        (no space when there is no response prefix)."""
        space = " " if self.response_prefix else ""
        return [(n, f"{space}{n}{end}") for n in range(1, high + 1) for end in ("", ".")]

    def exact_masses(
        self, model: Any, tokenizer: Any, examples: Sequence[Example], *, temperature: float = 1.0,
        encoder: Any = None,
    ) -> tuple[list[float], list[float]]:  # fmt: skip
        """Per prompt, the exact probability of a canonical P answer and of any canonical valid
        answer, each answer's text followed by the end-of-turn token, under the prompt as the
        trainer encodes it (``encoder``; module docstring)."""
        from entropy_rl.train.encoding import end_of_turn_id

        if encoder is None or not getattr(encoder, "chat_template", False):
            raise ConfigError(
                "task trap-chat asks a chat model: set data.chat_template=true (and model.path "
                "to an instruct model, e.g. from `entropy-rl get-model smollm2`)"
            )
        stop = end_of_turn_id(tokenizer)
        stop = tokenizer.eos_token_id if stop is None else stop
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
        rows: list[tuple[int, int]] = []  # (example index, n)
        prompts: list[list[int]] = []
        completions: list[list[int]] = []
        for i, e in enumerate(examples):
            ids = encoder.encode(e)
            for n, text in self.canonical_answers(int(e.meta["high"])):
                rows.append((i, n))
                prompts.append(ids)
                completions.append([*tokenizer(text, add_special_tokens=False)["input_ids"], stop])
        logp = sequence_logprobs(
            model, prompts, completions, pad_token_id=pad, temperature=temperature
        )
        p_mass, v_mass = [0.0] * len(examples), [0.0] * len(examples)
        for (i, n), prob in zip(rows, logp.exp().tolist(), strict=True):
            v_mass[i] += prob
            p_mass[i] += prob if n % self.divisor == 0 else 0.0
        return p_mass, v_mass
