"""Rollout engine on transformers' ``generate`` (KV-cached sampling), sharing the policy's weights."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from entropy_rl.engine.base import Generation


class HFGenerateEngine:
    """Samples with ``model.generate`` on the policy model itself (no weight copy to sync).

    Prompts are left-padded into batches of at most ``batch_size`` sequences (prompts x n);
    generation stops at any of ``eos_token_id`` (one id or several: EOS and a chat template's
    end-of-turn token, see train.encoding.stop_token_ids) or at ``max_new_tokens``. Reports no
    sampler statistics.
    ``compute_dtype`` (mixed precision, train.precision): ``generate`` runs under
    ``torch.autocast(compute_dtype)``, the forwards of the update do the same.
    """

    exact_logprobs = False

    def __init__(
        self, model: Any, *, pad_token_id: int, eos_token_id: int | list[int], batch_size: int = 256,
        compute_dtype: torch.dtype | None = None,
    ) -> None:  # fmt: skip
        self.model = model
        self.compute_dtype = compute_dtype
        self.pad_token_id = pad_token_id
        self.eos_ids = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
        self.batch_size = batch_size

    def sync_weights(self, model: Any) -> None:
        self.model = model

    def _autocast(self, device: torch.device) -> Any:
        dt = self.compute_dtype
        if dt is None or dt == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dt)

    @torch.no_grad()
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
        if greedy:
            n = 1
        per_call = max(1, self.batch_size // n)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out_prompts: list[list[int]] = []
        out_completions: list[list[int]] = []
        truncated: list[bool] = []
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start : start + per_call]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
            att = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, p in enumerate(chunk):
                ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                att[i, width - len(p) :] = 1
            sampling: dict[str, Any] = (
                {"do_sample": False}
                if greedy
                else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            )
            with self._autocast(device):
                seqs = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=att.to(device),
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=n,
                    pad_token_id=self.pad_token_id,
                    eos_token_id=sorted(self.eos_ids),
                    **sampling,
                )
            new = seqs[:, width:].tolist()  # (len(chunk) * n, <= max_new_tokens)
            for row, toks in enumerate(new):
                comp: list[int] = []
                for t in toks:  # generate pads rows after their EOS: cut there
                    comp.append(t)
                    if t in self.eos_ids:
                        break
                out_prompts.append(chunk[row // n])
                out_completions.append(comp)
                truncated.append(not comp or comp[-1] not in self.eos_ids)
        if was_training:
            self.model.train()
        return Generation(
            prompt_ids=out_prompts, completion_ids=out_completions, truncated=truncated
        )
