"""The rollout-engine interface: prompts in, sampled completions out.

The trainer talks to generation only through this interface, so a transformers ``generate``
engine (engine.hf) and a vLLM engine can serve the same loop. Token ids in, token ids out: the
engine does not know about tasks or rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class Generation:
    """``n`` completions per prompt, prompt-major: row ``i * n + j`` is sample ``j`` of prompt ``i``."""

    prompt_ids: list[list[int]]
    """Prompt token ids of each row (repeated for each sample)."""
    completion_ids: list[list[int]]
    """Sampled token ids, without padding; ends with a stop token (EOS or the chat template's
    end-of-turn token) unless truncated, and that token is trained on like any other."""
    truncated: list[bool]
    """True where the completion hit max_new_tokens without a stop token."""
    sampler_logprobs: list[list[float]] | None = None
    """Log-probs the sampler assigned to each completion token (engines that report them, e.g.
    vLLM; used for train/inference mismatch correction). None when not reported."""
    sampler_entropy: list[list[float]] | None = None
    """Entropy (nats) of the sampling distribution softmax(logits / T) at each completion token
    (engines that report it: engine.kv with top_p = 1). None when not reported."""
    sampler_top1: list[list[float]] | None = None
    """Top-1 probability of softmax(logits / T) at each completion token, like sampler_entropy."""

    def __len__(self) -> int:
        return len(self.completion_ids)


class RolloutEngine(Protocol):
    """Engines may also set ``exact_logprobs: bool`` (read with getattr, default False): True
    only when the reported sampler statistics *are* the trainer's pi_old ones (its own fp32
    weights, full softmax(logits / T)); the trainer then skips its pi_old forward."""

    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        greedy: bool = False,
    ) -> Generation:
        """Sample ``n`` completions for each prompt (or one greedy completion when ``greedy``)."""
        ...

    def sync_weights(self, model: Any) -> None:
        """Make the engine sample from ``model``'s current weights (no-op when shared)."""
        ...
