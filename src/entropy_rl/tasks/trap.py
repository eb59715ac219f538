"""`trap`: the digit-sum task with a rare best answer, where entropy collapse has a price.

Prompt ``"N="`` with N in 6..21, as `digitsum`, and the same start: ``digitsum``'s shipped
checkpoint (`TrapTask.checkpoint`). The reward ranks the valid answers:

    r = 1.0   a valid answer (3 digits summing to N) with the rare property P
        0.5   any other valid answer
        0.0   anything else

P (``rare``, a task argument):
    ``valley_palindrome`` (default)  a = c and b < a, a palindrome whose middle digit is below
                                     the outer ones: 1-3 answers per prompt (N = 6: only 303)
    ``palindrome``                   a = c: 4-5 answers per prompt

Valid answers are easy (the start policy is valid ~30% of the time at T = 1) and P is rare
(~1% of the start policy's mass), so a policy that sharpens on the first answers that pay 0.5
can stop sampling P before it has learned that P pays twice as much: the exploration trap that
entropy collapse predicts (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning
for Reasoning Language Models": the policy locks into what paid first).

The answer space is small (1,000 three-digit strings), so the probability of P needs no
sampling: `completion_logprobs` scores every answer under the policy in one batched forward,
log pi(abc <eos> | <bos> N=) = sum of the four tokens' log-probabilities. That gives the exact
prior of P at the start (`start_metrics`) and the exact P mass at every evaluation. It counts
the canonical completion (three digits, then <eos>); completions that `extract_answer` also
accepts after cleaning (a space before the digits, digits then spaces up to the length limit)
are left out, and hold almost no mass under a policy pretrained on canonical answers.

The evaluation set is the 16 training prompts, each once; the hard prompts of digitsum are left
out (N = 1, 3 and 27 have no valley-palindrome answer at all). The trainer's generic accuracy
metrics count a sample as correct when its reward is > 0.5, so here ``acc/train``,
``acc/eval``, ``eval/pass@k`` and ``eval/distinct_answers`` are about P answers; validity is
in ``trap/valid_frac``. Exact masses use softmax(logits / T) without top-p truncation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from entropy_rl.tasks.base import Example, register_task
from entropy_rl.tasks.digitsum import DigitSumTask

__all__ = [
    "RARE_PROPERTIES",
    "RareAnswerMetrics",
    "TrapTask",
    "completion_logprobs",
    "trap_sample_stats",
]

RARE_PROPERTIES: dict[str, Callable[[str], bool]] = {
    "valley_palindrome": lambda s: s[0] == s[2] and s[1] < s[0],
    "palindrome": lambda s: s[0] == s[2],
}

# "trapped": the policy has settled on valid answers (>= 80% of its samples) and all but
# stopped sampling P (< 5%): it earns 0.5 reliably and no longer sees what pays 1.0.
TRAPPED_VALID = 0.8
TRAPPED_P = 0.05


def completion_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    temperature: float = 1.0,
    chunk: int = 2048,
) -> Any:
    """log pi(c_r <eos> | p_r) for each pair r of ``zip(prompts, completions)``, an (R,) tensor.

        log pi(c <eos> | p) = sum_{t=0}^{L} log softmax(logits_t / T)[y_t],
        y = (tokens of c, <eos>), L = len(tokens of c)

    Row r of the batch is ``pad.. <bos> p_r c_r <eos> pad..``: prompts left-padded to a common
    length L_p (positions restart at 0 on the first real token, as in generation), completions
    right-padded (a causal model never sees them); the logits at position L_p - 1 + t predict
    y_t. One forward per `chunk` rows, no gradient.

    Args:
        prompts: R prompt texts (the tokenizer adds <bos>).
        completions: R completion texts, without <eos> (it is appended here).
        temperature: T of the sampling policy, softmax(logits / T).
    """
    import torch

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(
            f"need R >= 1 (prompt, completion) pairs, got {len(prompts)} prompts and "
            f"{len(completions)} completions"
        )
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    p_ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
    c_ids = [[*tokenizer(c, add_special_tokens=False)["input_ids"], eos] for c in completions]
    lp, lc = max(map(len, p_ids)), max(map(len, c_ids))
    ids = torch.full((len(p_ids), lp + lc), pad, dtype=torch.long)  # (R, L_p + L_c)
    mask = torch.zeros_like(ids)
    for r, (p, c) in enumerate(zip(p_ids, c_ids, strict=True)):
        ids[r, lp - len(p) : lp + len(c)] = torch.tensor(p + c)
        mask[r, lp - len(p) : lp + len(c)] = 1
    target, keep = ids[:, lp:], mask[:, lp:].bool()  # (R, L_c)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = next(model.parameters()).device
    out = torch.empty(len(p_ids))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(p_ids), chunk):
            rows = slice(s, s + chunk)
            logits = model(
                input_ids=ids[rows].to(device),
                attention_mask=mask[rows].to(device),
                position_ids=positions[rows].to(device),
            ).logits[:, lp - 1 : lp + lc - 1]  # (R', L_c, V)
            logp = torch.log_softmax(logits.float() / temperature, dim=-1)
            tok = logp.gather(-1, target[rows].to(device)[..., None]).squeeze(-1)  # (R', L_c)
            tok = torch.where(keep[rows].to(device), tok, torch.zeros_like(tok))
            out[rows] = tok.sum(-1).cpu()
    model.train(was_training)
    return out


def trap_sample_stats(
    valid: Sequence[Sequence[bool]],
    rare: Sequence[Sequence[bool]],
    answers: Sequence[Sequence[str | None]],
) -> dict[str, float]:
    """Sampled trap metrics from n samples for each of P prompts (all ``[P][n]``).

    With v_i, r_i the valid and P samples of prompt i (P implies valid):
        p_frac      sum_i r_i / (P n), the fraction of samples with P
        valid_frac  sum_i v_i / (P n)
        trapped     #{i : v_i / n >= 0.8 and r_i / n < 0.05}, prompts settled on the 0.5 answers
        never_p     #{i : r_i = 0}, prompts where no sample had P
        distinct_p  mean_i |{answers[i][j] : rare[i][j]}|, distinct P answers per prompt
        reward      mean task reward, 1.0 per P sample and 0.5 per other valid one:
                    (p_frac + valid_frac) / 2
    """
    p = len(valid)
    if p == 0 or len(rare) != p or len(answers) != p:
        raise ValueError(
            f"valid, rare and answers must list the same P >= 1 prompts, got lengths {p}, "
            f"{len(rare)}, {len(answers)}"
        )
    n = len(valid[0])
    if n == 0 or any(len(x) != n for rows in (valid, rare, answers) for x in rows):
        raise ValueError(f"every prompt needs the same n >= 1 samples (prompt 0 has {n})")
    v_counts = [sum(map(bool, row)) for row in valid]
    r_counts = [sum(map(bool, row)) for row in rare]
    trapped = sum(
        v / n >= TRAPPED_VALID and r / n < TRAPPED_P
        for v, r in zip(v_counts, r_counts, strict=True)
    )
    distinct = [
        len({a for a, hit in zip(ans, row, strict=True) if hit})
        for ans, row in zip(answers, rare, strict=True)
    ]
    return {
        "p_frac": sum(r_counts) / (p * n),
        "valid_frac": sum(v_counts) / (p * n),
        "trapped": float(trapped),
        "never_p": float(sum(r == 0 for r in r_counts)),
        "distinct_p": sum(distinct) / p,
        "reward": (sum(r_counts) + sum(v_counts)) / (2 * p * n),
    }


class RareAnswerMetrics:
    """The metrics of a task with a finite answer set, a partial reward for any valid answer
    and a rare best property P (`trap`, `trap-chat`). A subclass provides ``classify(example,
    completion) -> (valid, has P, answer)``, ``exact_masses(model, tokenizer, examples, *,
    temperature, encoder)`` (per prompt, the exact probability of a P answer and of any valid
    answer) and ``eval_set()`` (the prompts whose exact masses are the start prior)."""

    summary_metrics: ClassVar[tuple[str, ...]] = (
        "trap/p_prob_eval", "trap/p_frac_eval", "trap/reward_eval", "trap/trapped_eval",
        "trap/never_p_eval",
    )  # fmt: skip
    summary_curves: ClassVar[tuple[tuple[str, str], ...]] = (
        ("trap/p_frac", "share of samples with P"),
    )

    if TYPE_CHECKING:  # provided by the task class (defined here, they would shadow its bases')

        def classify(self, example: Example, completion: str) -> tuple[bool, bool, str | None]: ...

        def exact_masses(
            self, model: Any, tokenizer: Any, examples: Sequence[Example], *,
            temperature: float = 1.0, encoder: Any = None,
        ) -> tuple[list[float], list[float]]: ...  # fmt: skip

    def reward(self, example: Example, completion: str) -> float:
        """1.0 for a valid answer with P, 0.5 for another valid answer, else 0.0."""
        valid, has_p, _ = self.classify(example, completion)
        return 1.0 if has_p else 0.5 if valid else 0.0

    def _sample_stats(
        self, examples: Sequence[Example], groups: Sequence[Sequence[str]]
    ) -> dict[str, float]:
        rows = [
            [self.classify(e, t) for t in texts] for e, texts in zip(examples, groups, strict=True)
        ]
        return trap_sample_stats(
            [[v for v, _, _ in r] for r in rows],
            [[p for _, p, _ in r] for r in rows],
            [[a for _, _, a in r] for r in rows],
        )

    def rollout_metrics(
        self, examples: Sequence[Example], texts: Sequence[str], rewards: Sequence[float]
    ) -> dict[str, float]:
        """``trap/p_frac`` and ``trap/valid_frac`` of the step's samples."""
        g = len(texts) // max(len(examples), 1)
        if not examples or g == 0:
            return {}
        stats = self._sample_stats(
            examples, [texts[i * g : (i + 1) * g] for i in range(len(examples))]
        )
        return {"trap/p_frac": stats["p_frac"], "trap/valid_frac": stats["valid_frac"]}

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
        """The sampled stats (`trap_sample_stats`) of the held-out samples as
        ``trap/{p_frac,valid_frac,trapped,never_p,distinct_p,reward}_eval``, and the exact masses
        ``trap/p_prob_eval`` / ``trap/valid_prob_eval`` (means over the prompts)."""
        if not examples:
            return {}
        out = {f"trap/{k}_eval": v for k, v in self._sample_stats(examples, completions).items()}
        p_mass, v_mass = self.exact_masses(
            model, tokenizer, examples, temperature=temperature, encoder=encoder
        )
        out["trap/p_prob_eval"] = sum(p_mass) / len(p_mass)
        out["trap/valid_prob_eval"] = sum(v_mass) / len(v_mass)
        return out

    def start_metrics(
        self, model: Any, tokenizer: Any, *, temperature: float = 1.0, encoder: Any = None
    ) -> dict[str, float]:
        """The exact prior of P on the training prompts (each N once): ``trap/prior_p`` (mean
        over prompts), ``trap/prior_p_min`` / ``_max``, and ``trap/prior_valid``."""
        p_mass, v_mass = self.exact_masses(
            model, tokenizer, cast(Any, self).eval_set(), temperature=temperature, encoder=encoder
        )
        return {
            "trap/prior_p": sum(p_mass) / len(p_mass),
            "trap/prior_p_min": min(p_mass),
            "trap/prior_p_max": max(p_mass),
            "trap/prior_valid": sum(v_mass) / len(v_mass),
        }


@register_task
class TrapTask(RareAnswerMetrics, DigitSumTask):
    """Digit sum with a rare best answer (module docstring), from digitsum's checkpoint.

    Args:
        rare: the rare property P, a key of `RARE_PROPERTIES`.
        train_targets: inclusive (low, high) range of N; every N in it needs a P answer.
    """

    name: ClassVar[str] = "trap"
    checkpoint: ClassVar[str] = "digitsum"

    def __init__(
        self, *, rare: str = "valley_palindrome", train_targets: tuple[int, int] = (6, 21)
    ) -> None:
        if rare not in RARE_PROPERTIES:
            raise ValueError(
                f"unknown rare property {rare!r}; choose one of {list(RARE_PROPERTIES)}"
            )
        # digitsum's pretraining range (1..27), so `pretrain trap` would rebuild its checkpoint
        super().__init__(train_targets=train_targets, hard_targets=(), pretrain_targets=(1, 27))
        self.rare = rare
        self._has_p = RARE_PROPERTIES[rare]
        low, high = self.train_targets
        missing = [n for n in range(low, high + 1) if not self.rare_answers(n)]
        if missing:
            raise ValueError(
                f"no {rare} answer sums to N = {missing}; choose train_targets without them"
            )

    def rare_answers(self, target: int) -> list[str]:
        """The valid answers of prompt ``"{target}="`` with property P, in increasing order."""
        return [a for a in self._valid[target] if self._has_p(a)]

    def classify(self, example: Example, completion: str) -> tuple[bool, bool, str | None]:
        """(valid, has P, extracted answer) of one completion."""
        answer = self.extract_answer(completion)
        valid = answer is not None and self.is_correct(example, completion)
        return valid, valid and self._has_p(answer or ""), answer

    def exact_masses(
        self, model: Any, tokenizer: Any, examples: Sequence[Example], *, temperature: float = 1.0,
        encoder: Any = None,
    ) -> tuple[list[float], list[float]]:  # fmt: skip
        """Per prompt, the exact probability that the policy answers with P, and with any valid
        answer: the sum over those answers a of pi(a <eos> | N=) (`completion_logprobs`). Only
        the valid answers are scored (28-75 of the 1,000 per prompt): the other answers add
        nothing to either sum."""
        pairs = [(i, a) for i, e in enumerate(examples) for a in self._valid[e.meta["target"]]]
        logp = completion_logprobs(
            model, tokenizer, [examples[i].prompt for i, _ in pairs], [a for _, a in pairs],
            temperature=temperature,
        )  # fmt: skip
        p_mass, v_mass = [0.0] * len(examples), [0.0] * len(examples)
        for (i, answer), prob in zip(pairs, logp.exp().tolist(), strict=True):
            v_mass[i] += prob
            p_mass[i] += prob if self._has_p(answer) else 0.0
        return p_mass, v_mass
