"""`trap-chat`: the exploration trap for a pretrained chat model (``model.path``).

Why not the built-in `trap` asked in words: a chat model has to produce an exact three-digit
answer whose digits add up to N, and SmolLM2-135M-Instruct at T = 1 almost never does (64
samples per N = 6 / 14 / 20: a valid answer in 1.6% / 0 / 0, most samples are prose), so it
never earns the partial reward that the trap needs to lock into. This task keeps the trap's
shape with a question the model already answers:

    user:       "Pick a number between {low} and {high}. Reply with the number only."
    assistant:  "My number is" + the completion, e.g. " 14." <end of turn>

The prompts are 16 windows of 9 numbers, one after the other (`first`, `prompts`, `width`):
12..20, 21..29, ..., 147..155. The assistant turn starts with the *response prefix* "My number
is" (``Example.meta["response_prefix"]``, which the trainer's encoder appends after the chat
template's generation prompt), so the model answers in a few tokens. The reward ranks the
valid answers, as `trap` does:

    r = 1.0   a valid answer that is a multiple of `divisor` (the rare property P; 9 by default:
              exactly one number of each window, 18, 27, ..., 153)
        0.5   any other valid answer: the whole completion is one integer in low..high,
              optionally followed by a period ("14", " 14.")
        0.0   anything else (prose, out of the window, a number followed by more text)

Each window has its own P answer, so no single answer pays 1.0 everywhere: with windows that
all held 18 (numbers 1..high), PPO learned to say "18" to every prompt within 10 steps and no
trap was left to measure (docs/experiments.md#trap-chat).

Measured on SmolLM2-135M-Instruct (``entropy-rl get-model smollm2``) at T = 1: the exact mass
of the valid answers is ~0.1-0.25 per prompt and of P ~0.3-1% (the start prior is logged at
step 0 as ``trap/prior_*``), the regime of the built-in trap (valid ~0.3, P ~1.25%): the
partial reward comes often, the best answer is rare, and a policy that sharpens on what paid
first (the window's bounds are the model's favourite answers) can stop sampling P.

Exact masses: the answer set is finite, so `exact_masses` scores every canonical valid answer
(" n" and " n." then the end-of-turn token, n = low..high) under the policy with the trainer's
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

QUESTION = "Pick a number between {low} and {high}. Reply with the number only."
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

    Rows go through the trainer's forward (`train.batch.response_inputs`, the model's own
    logits, then `ops.token_logprobs`; no entropy) ``chunk`` at a time; rows that share a
    prompt and sit next to each other share one pass over its tokens where the model supports
    it (`train.shared_prompt`), so scoring the whole answer set of a prompt costs about one
    prompt plus the answers' tokens.

    Args:
        prompt_ids: R prompts as token ids (each non-empty).
        completion_ids: R completions as token ids (each non-empty, stop token included when
            it is part of the event being scored).
    """
    import torch

    from entropy_rl.ops.token_stats import token_logprobs
    from entropy_rl.train.batch import build_batch, response_inputs
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
                logits = response_inputs(model, batch, logits=True, shared_prompt=shared)
                targets = batch.targets.clamp(min=0).to(logits.device)  # pad -> 0, masked below
                logp = token_logprobs(logits, targets, temperature=temperature)  # (B', T)
                out[s : s + len(ps)] = (logp.cpu() * batch.mask).sum(-1)
    finally:
        model.train(was_training)
    return out


@register_task
class TrapChatTask(RareAnswerMetrics, Task):
    """The exploration trap as a chat question with a finite answer set (module docstring).

    Args:
        first: the lowest number of the first window.
        prompts: the number of windows (prompts), each `width` numbers, one after the other.
        width: the numbers per window.
        divisor: P is "a multiple of `divisor`" (2..width: every window holds one).
        response_prefix: the text the assistant's turn starts with ("" for none).
    """

    name: ClassVar[str] = "trap-chat"
    needs_model_path: ClassVar[bool] = True
    needs_chat_template: ClassVar[bool] = True
    default_max_new_tokens: int = 8

    def __init__(
        self,
        *,
        first: int = 12,
        prompts: int = 16,
        width: int = 9,
        divisor: int = 9,
        response_prefix: str = RESPONSE_PREFIX,
    ) -> None:
        if first < 1 or prompts < 1 or width < 2:
            raise ValueError(
                f"need first >= 1, prompts >= 1 and width >= 2; got first={first}, "
                f"prompts={prompts}, width={width}"
            )
        if not 2 <= divisor <= width:
            raise ValueError(
                f"divisor must be in 2..{width} (the width) so every window holds a multiple of "
                f"it, got {divisor}"
            )
        self.windows = [(first + k * width, first + (k + 1) * width - 1) for k in range(prompts)]
        self.divisor = divisor
        self.response_prefix = response_prefix

    def _example(self, low: int, high: int) -> Example:
        meta: dict[str, Any] = {"low": low, "high": high}
        if self.response_prefix:
            meta["response_prefix"] = self.response_prefix
        return Example(prompt=QUESTION.format(low=low, high=high), meta=meta)

    def sample_train(self, n: int, rng: random.Random) -> list[Example]:
        """`n` prompts, each window uniformly."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return [self._example(*rng.choice(self.windows)) for _ in range(n)]

    def eval_set(self) -> list[Example]:
        """Every window once (the training prompts: the study is about the policy on them)."""
        return [self._example(low, high) for low, high in self.windows]

    def extract_answer(self, completion: str) -> str | None:
        """The integer when the whole completion is one (no leading zero), optionally followed
        by a period: " 12." -> "12"; else None."""
        m = _ANSWER.fullmatch(clean_completion(completion))
        return m.group(1) if m else None

    def is_correct(self, example: Example, completion: str) -> bool:
        """Whether the completion is one integer in ``meta["low"]..meta["high"]``."""
        return self.classify(example, completion)[0]

    def classify(self, example: Example, completion: str) -> tuple[bool, bool, str | None]:
        """(valid, has P, extracted answer) of one completion."""
        answer = self.extract_answer(completion)
        n = -1 if answer is None else int(answer)
        valid = int(example.meta["low"]) <= n <= int(example.meta["high"])
        return valid, valid and n % self.divisor == 0, answer

    def canonical_answers(self, low: int, high: int) -> list[tuple[int, str]]:
        """(n, text) of the completions `exact_masses` scores: " n" and " n." for n = low..high
        (no space when there is no response prefix)."""
        space = " " if self.response_prefix else ""
        return [(n, f"{space}{n}{end}") for n in range(low, high + 1) for end in ("", ".")]

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
            for n, text in self.canonical_answers(int(e.meta["low"]), int(e.meta["high"])):
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
