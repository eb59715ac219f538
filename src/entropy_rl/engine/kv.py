"""Rollout engine: a lean KV-cached sampling loop over the policy's own weights.

Same interface and outputs as engine.hf.HFGenerateEngine, without transformers' per-token
overhead (cache objects, mask rebuilding, logits processors). Per decoding step and layer:

    x -> RMSNorm -> [q;k;v] = x W_qkv^T + b        (one matmul; W_qkv = cat(W_q, W_k, W_v))
      -> (Qwen3: RMSNorm of each q, k head) -> RoPE at each row's own position
      -> k, v written in place into a preallocated cache (L, B, H_kv, S_max, d)
      -> attention as two matmuls, GQA as a reshape of q: (B, H_kv, g*T, d) @ (B, H_kv, d, S)
      -> o_proj, residual -> RMSNorm -> [gate;up] (one matmul) -> silu(gate) * up -> down

and a draw from softmax(logits / T) of the last position by a two-level inverse CDF
(``inverse_cdf_sample``: exact, and ~100x cheaper than ``torch.multinomial`` at V = 32k on CPU).
With top_p = 1 it also reports, per sampled token, log pi(token), the entropy and the top-1
probability of the full softmax(z / T): with fp32 weights these are the trainer's pi_old
statistics (``exact_logprobs``), so the trainer can skip its no-grad forward.
benchmarks/README.md sections 4-6 measure the effect (generation x1.5 at V = 19, x2.6 at 32k).

Mixed precision (``compute_dtype``, e.g. bfloat16 with float32 master weights): each
``generate`` samples from one bfloat16 copy of the weights (cache and activations in bfloat16,
the attention softmax and RMSNorm in float32, as transformers computes them), like a bfloat16
inference engine. Its statistics are then close to the update's pi_old, not equal
(``exact_logprobs`` is False): the trainer measures the mismatch against pi_old, from its own
pi_old forward, or at one epoch of one mini-batch from the update's forward
(``train.update.pi_old_from_update``).

Supported: Qwen2/Qwen3/Llama/Mistral decoders (``supports_kv_engine``) with SiLU MLPs, static
RoPE (default, linear, llama3), full attention (no sliding window), plain tensors (no FSDP
shards or quantized weights). Anything else: rollout.engine=hf works for any model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from entropy_rl.engine.base import Generation

__all__ = ["KVCacheEngine", "inverse_cdf_sample", "resolve_engine", "supports_kv_engine"]

_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")
_ROPE_TYPES = ("default", "linear", "llama3")  # inv_freq fixed at init: no per-length update


def _unsupported(model: Any) -> list[str]:
    """What keeps ``model`` from the KV engine (empty when supported)."""
    if "FullyShardedDataParallel" in type(model).__name__:
        return ["an FSDP-wrapped model"]
    cfg: Any = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in _MODEL_TYPES:
        return [f"model_type={kind!r} (supported: {', '.join(_MODEL_TYPES)})"]
    why = []
    if getattr(cfg, "hidden_act", "silu") != "silu":
        why.append(f"hidden_act={cfg.hidden_act!r} (only silu)")
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in _ROPE_TYPES:
        why.append(f"rope_type={rope!r} (supported: {', '.join(_ROPE_TYPES)})")
    layer_types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if getattr(cfg, "sliding_window", None) is not None or layer_types != {"full_attention"}:
        why.append(f"sliding-window attention (sliding_window={cfg.sliding_window})")
    try:
        base = model.model
        _ = base.rotary_emb.inv_freq, base.embed_tokens.weight, base.norm.weight
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            _ = a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj
        _ = model.get_output_embeddings().weight
    except AttributeError as e:
        why.append(f"a module layout other than model.layers[i].self_attn/mlp ({e})")
    if any(type(p) not in (torch.Tensor, torch.nn.Parameter) for p in model.parameters()):
        why.append("parameters that are not plain tensors (sharded or quantized)")
    return why


def supports_kv_engine(model: Any) -> bool:
    """True when KVCacheEngine reproduces ``model``'s forward (see the module docstring)."""
    return not _unsupported(model)


def resolve_engine(name: str, model: Any) -> str:
    """The engine ``rollout.engine=name`` selects for ``model``: ``auto`` -> ``kv`` where
    ``supports_kv_engine(model)`` and every weight is float32 (the trainer's master weights;
    with float32 compute its sampler statistics are pi_old's), else ``hf``; ``hf``, ``kv`` and
    ``vllm`` unchanged."""
    if name != "auto":
        return name
    fp32 = all(p.dtype == torch.float32 for p in model.parameters())
    return "kv" if fp32 and supports_kv_engine(model) else "hf"


@dataclass
class _Layer:
    ln1: Tensor
    ln2: Tensor
    w_qkv: Tensor
    b_qkv: Tensor | None
    q_norm: Tensor | None  # Qwen3: RMSNorm weight over each head's d
    k_norm: Tensor | None
    w_o: Tensor
    b_o: Tensor | None
    w_gu: Tensor
    b_gu: Tensor | None
    w_down: Tensor
    b_down: Tensor | None


@dataclass
class _Weights:
    layers: list[_Layer]
    embed: Tensor  # (V, D)
    norm: Tensor  # (D,)
    head_w: Tensor  # (V, D)
    head_b: Tensor | None
    eps: float
    heads: int
    kv_heads: int
    d: int
    inv_freq: Tensor  # (d/2,)
    rope_scale: float


def _cat(*xs: Tensor | None) -> Tensor | None:
    return (
        None if any(x is None for x in xs) else torch.cat([x.detach() for x in xs if x is not None])
    )


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    """RMSNorm as transformers computes it: w * (x / sqrt(mean(x^2) + eps)) in fp32, then cast."""
    return w * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, T, d), cos/sin (B, 1, T, d): x cos + rotate_half(x) sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class KVCacheEngine:
    """Samples with a hand-written KV-cached decoder over the policy's own weights.

    Prompts are left-padded into batches of at most ``batch_size`` sequences (prompts x n);
    generation stops at any of ``eos_token_id`` (one id or several: EOS and a chat template's
    end-of-turn token) or at ``max_new_tokens``. Randomness: one
    ``torch.rand`` pair per row and step from the global generator (reproducible under the
    trainer's seeding and checkpointed RNG state).

    Raises:
        ValueError: a model the engine does not reproduce, naming what is unsupported.
    """

    def __init__(
        self, model: Any, *, pad_token_id: int, eos_token_id: int | list[int], batch_size: int = 256,
        compute_dtype: torch.dtype | None = None, share_prefill: bool = True,
        compact_finished: bool = True,
    ) -> None:  # fmt: skip
        why = _unsupported(model)
        if why:
            raise ValueError(
                f"KVCacheEngine does not support this model: {'; '.join(why)}. It runs "
                f"Qwen2/Qwen3/Llama/Mistral-style decoders; rollout.engine=hf works for any model"
            )
        self.model = model
        self.pad_token_id = pad_token_id
        self.eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self.batch_size = batch_size
        self.compute_dtype = compute_dtype
        """dtype of the sampling computation; None: the parameters' own."""
        self.share_prefill = share_prefill
        """Run each prompt's forward once and copy its cache to its n samples (the G samples of
        a group share the prompt): prefill costs P tokens per prompt instead of n x P. False:
        the prompt is repeated n times first (the path before; benchmarks/kv_prefill.py)."""
        self.compact_finished = compact_finished
        """Drop rows that have stopped (EOS) from the decoding batch once they are a quarter of
        it: their cache rows are copied out once, and the remaining steps run on fewer rows.
        Every row samples from the same distribution; fewer uniforms are drawn per step once
        rows leave, so a seeded run draws other tokens than with False (benchmarks/decode.py
        measures the effect)."""

    @property
    def exact_logprobs(self) -> bool:
        """True when the reported sampler statistics are the trainer's pi_old ones: the same
        weights in float32, float32 compute, full softmax(z / T). They are reported only for
        top_p = 1."""
        fp32 = self.compute_dtype in (None, torch.float32)
        return fp32 and all(p.dtype == torch.float32 for p in self.model.parameters())

    def sync_weights(self, model: Any) -> None:
        self.model = model

    def _fuse(self) -> _Weights:
        """The policy's current weights, q/k/v and gate/up concatenated (re-read every call:
        the policy changes after each update; ~1M parameters take well under a millisecond),
        in ``compute_dtype`` when it is set."""
        w = self._fuse_raw()
        dt = self.compute_dtype
        if dt is None or w.embed.dtype == dt:
            return w

        def cast(x: Any) -> Any:  # Tensor or None
            return None if x is None else x.to(dt)

        layers = [dataclasses.replace(ly, **{k: cast(v) for k, v in vars(ly).items()})
                  for ly in w.layers]  # fmt: skip
        head_w = w.head_w.to(dt)
        tied = w.embed.data_ptr() == w.head_w.data_ptr() and w.embed.shape == w.head_w.shape
        embed = head_w if tied else w.embed.to(dt)  # tied embeddings: one copy
        return _Weights(
            layers=layers, embed=embed, norm=w.norm.to(dt), head_w=head_w,
            head_b=cast(w.head_b), eps=w.eps, heads=w.heads, kv_heads=w.kv_heads, d=w.d,
            inv_freq=w.inv_freq, rope_scale=w.rope_scale,
        )  # fmt: skip

    def _fuse_raw(self) -> _Weights:
        m, cfg = self.model, self.model.config
        layers = []
        for layer in m.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
            layers.append(
                _Layer(
                    ln1=layer.input_layernorm.weight.detach(),
                    ln2=layer.post_attention_layernorm.weight.detach(),
                    w_qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach(),
                    b_qkv=_cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias),
                    q_norm=None if qn is None else qn.weight.detach(),
                    k_norm=None if kn is None else kn.weight.detach(),
                    w_o=a.o_proj.weight.detach(),
                    b_o=_cat(a.o_proj.bias),
                    w_gu=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                    b_gu=_cat(mlp.gate_proj.bias, mlp.up_proj.bias),
                    w_down=mlp.down_proj.weight.detach(),
                    b_down=_cat(mlp.down_proj.bias),
                )
            )
        head, rotary = m.get_output_embeddings(), m.model.rotary_emb
        heads = cfg.num_attention_heads
        return _Weights(
            layers=layers,
            embed=m.model.embed_tokens.weight.detach(),
            norm=m.model.norm.weight.detach(),
            head_w=head.weight.detach(),
            head_b=_cat(getattr(head, "bias", None)),
            eps=cfg.rms_norm_eps,
            heads=heads,
            kv_heads=cfg.num_key_value_heads,
            d=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            inv_freq=rotary.inv_freq.float(),
            rope_scale=float(rotary.attention_scaling),
        )

    def _forward(
        self, ids: Tensor, pos: Tensor, start: int, kv: tuple[Tensor, Tensor], bias: Tensor,
        w: _Weights,
    ) -> Tensor:  # fmt: skip
        """Final hidden state (B, D) of the last position of ``ids`` (B, T), whose keys/values
        go to cache slots ``start .. start+T-1``. ``pos`` (B, T): RoPE positions; ``bias``
        (B, 1, T, S): additive attention mask over the first S = start + T slots."""
        b, t = ids.shape
        h, hk, d = w.heads, w.kv_heads, w.d
        g, s = h // hk, start + t
        freqs = pos[..., None].float() * w.inv_freq  # (B, T, d/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, d)
        dtype = w.embed.dtype
        cos, sin = (emb.cos() * w.rope_scale).to(dtype), (emb.sin() * w.rope_scale).to(dtype)
        x = F.embedding(ids, w.embed)  # (B, T, D)
        k_cache, v_cache = kv
        for i, ly in enumerate(w.layers):
            qkv = F.linear(_rms(x, ly.ln1, w.eps), ly.w_qkv, ly.b_qkv)  # (B, T, (h + 2hk) d)
            q, k, v = qkv.split([h * d, hk * d, hk * d], dim=-1)
            q, k = q.view(b, t, h, d), k.view(b, t, hk, d)
            if ly.q_norm is not None and ly.k_norm is not None:
                q, k = _rms(q, ly.q_norm, w.eps), _rms(k, ly.k_norm, w.eps)
            q = _rope(q.transpose(1, 2), cos, sin)  # (B, h, T, d)
            k_cache[i, :, :, start:s] = _rope(k.transpose(1, 2), cos, sin)  # (B, hk, T, d)
            v_cache[i, :, :, start:s] = v.view(b, t, hk, d).transpose(1, 2)
            keys, values = k_cache[i, :, :, :s], v_cache[i, :, :, :s]  # (B, hk, S, d)
            # GQA: the g query heads sharing a KV head become g*T query rows of that head
            att = torch.matmul(q.reshape(b, hk, g * t, d), keys.transpose(-1, -2)) * d**-0.5
            att = att.view(b, hk, g, t, s) + bias[:, :, None]  # (B, hk, g, T, S)
            att = att.softmax(-1, dtype=torch.float32).to(dtype)  # float32 softmax, as HF
            o = torch.matmul(att.view(b, hk, g * t, s), values)  # (B, hk, g*T, d)
            o = o.view(b, h, t, d).transpose(1, 2).reshape(b, t, h * d)
            x = x + F.linear(o, ly.w_o, ly.b_o)
            gate, up = F.linear(_rms(x, ly.ln2, w.eps), ly.w_gu, ly.b_gu).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, ly.w_down, ly.b_down)
        return _rms(x[:, -1], w.norm, w.eps)

    def _new_cache(self, b: int, s_max: int, w: _Weights) -> tuple[Tensor, Tensor]:
        shape = (len(w.layers), b, w.kv_heads, s_max, w.d)
        kw: dict[str, Any] = {"dtype": w.embed.dtype, "device": w.embed.device}
        return torch.zeros(shape, **kw), torch.zeros(shape, **kw)

    @staticmethod
    def _prefill_mask(att: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """RoPE positions (B, P) (left padding keeps real tokens at 0..) and the causal +
        padding additive mask (B, 1, P, P) of a left-padded attention mask ``att`` (B, P)."""
        p = att.shape[1]
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(p, p, dtype=torch.bool, device=att.device).tril()
        ok = causal[None] & att.bool()[:, None, :]  # (B, P, P): query i sees real keys j <= i
        ok = ok | torch.eye(p, dtype=torch.bool, device=att.device)[None]  # pad rows: no NaN
        bias = torch.zeros(ok.shape, dtype=dtype, device=att.device)
        return pos, bias.masked_fill(~ok, float("-inf"))[:, None]

    def _left_pad(self, prompts: list[list[int]], n: int, device: Any) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask (len(prompts) * n, P), prompt-major, left-padded."""
        if any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token; got an empty prompt")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        att = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            att[i, width - len(p) :] = 1
        return ids.repeat_interleave(n, 0).to(device), att.repeat_interleave(n, 0).to(device)

    @torch.no_grad()
    def logits_last(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Next-token logits (B, V) after left-padded ``ids`` (B, P) (for tests)."""
        w = self._fuse()
        kv = self._new_cache(ids.shape[0], ids.shape[1], w)
        pos, bias = self._prefill_mask(attention_mask, w.embed.dtype)
        return F.linear(self._forward(ids, pos, 0, kv, bias, w), w.head_w, w.head_b)

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
        """``n`` completions per prompt, prompt-major (row i*n + j: sample j of prompt i), or
        one greedy completion each. With top_p = 1 and sampling, ``sampler_logprobs``,
        ``sampler_entropy`` and ``sampler_top1`` hold each token's statistics of the full
        softmax(logits / temperature); otherwise they are None."""
        if greedy:
            n = 1
        with_stats = not greedy and top_p >= 1.0
        w = self._fuse()
        per_call = max(1, self.batch_size // n)
        out = Generation(prompt_ids=[], completion_ids=[], truncated=[])
        stats: dict[str, list[list[float]]] = {"logprobs": [], "entropy": [], "top1": []}
        eos = set(self.eos_ids)
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start : start + per_call]
            toks, st = self._sample_chunk(
                chunk, n, temperature, top_p, max_new_tokens, greedy, with_stats, w
            )
            for row, seq in enumerate(toks):
                comp: list[int] = []
                for tkn in seq:  # rows that finished early hold pad tokens: cut at EOS
                    comp.append(tkn)
                    if tkn in eos:
                        break
                out.prompt_ids.append(chunk[row // n])
                out.completion_ids.append(comp)
                out.truncated.append(not comp or comp[-1] not in eos)
                for k, v in st.items():
                    stats[k].append(v[row][: len(comp)])
        if with_stats:
            out.sampler_logprobs = stats["logprobs"]
            out.sampler_entropy = stats["entropy"]
            out.sampler_top1 = stats["top1"]
        return out

    def _sample_chunk(
        self, chunk: list[list[int]], n: int, temperature: float, top_p: float, max_new: int,
        greedy: bool, with_stats: bool, w: _Weights,
    ) -> tuple[list[list[int]], dict[str, list[list[float]]]]:  # fmt: skip
        """Token ids (B, <= max_new) of ``n`` samples per prompt (pad after EOS), and with
        ``with_stats`` each drawn token's log-prob, entropy and top-1 probability under
        softmax(z), z = logits / T (B, <= max_new) each."""
        device, dtype = w.embed.device, w.embed.dtype
        compact = self.compact_finished
        rep = n if self.share_prefill else 1  # copies made after the prompt's forward
        ids, att = self._left_pad(chunk, n // rep, device)  # (B / rep, P)
        width = ids.shape[1]
        kv = self._new_cache(ids.shape[0], width + max_new, w)
        pos, bias = self._prefill_mask(att, dtype)
        hid = self._forward(ids, pos, 0, kv, bias, w)  # (B / rep, D)
        if rep > 1:  # row i*n + j: sample j of prompt i, as the repeated prompts gave
            kv = (kv[0].repeat_interleave(rep, 1), kv[1].repeat_interleave(rep, 1))
            hid, pos, bias = (x.repeat_interleave(rep, 0) for x in (hid, pos, bias))
        b = hid.shape[0]
        # decode mask over all slots: the prompt's padding masked, every generated slot visible
        dec_bias = torch.zeros(b, 1, 1, width + max_new, dtype=dtype, device=device)
        dec_bias[:, 0, 0, :width] = bias[:, 0, -1, :]
        next_pos = pos[:, -1:] + 1  # (B, 1)
        eos = torch.tensor(self.eos_ids, device=device)
        # rows still sampling (indices into the B rows); finished rows are dropped from the
        # batch once they are a quarter of it (``compact``), so they stop costing matmuls
        active = torch.arange(b, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)  # over the active rows
        tokens = torch.full((b, max_new), self.pad_token_id, dtype=torch.long, device=device)
        names = ("logprobs", "entropy", "top1") if with_stats else ()
        stats = {k: torch.zeros((b, max_new), device=device) for k in names}
        steps = 0
        for step in range(max_new):
            logits = F.linear(hid, w.head_w, w.head_b).float()  # (b_active, V)
            if greedy:
                tok = logits.argmax(-1)
            else:
                z = logits if temperature == 1.0 else logits / temperature
                probs = torch.softmax(z, dim=-1)  # (b_active, V)
                tok = inverse_cdf_sample(_nucleus(probs, top_p) if top_p < 1.0 else probs)
                if with_stats:
                    lse = torch.logsumexp(z, dim=-1)  # (b_active,)
                    stats["logprobs"][active, step] = z.gather(1, tok[:, None]).squeeze(1) - lse
                    stats["entropy"][active, step] = lse - (probs * z).sum(-1)  # lse - E_p[z]
                    stats["top1"][active, step] = probs.amax(-1)
            tok = tok.masked_fill(done, self.pad_token_id)
            tokens[active, step] = tok
            steps = step + 1
            done = done | torch.isin(tok, eos)
            if step == max_new - 1 or bool(done.all()):
                break
            if compact and 4 * int(done.sum()) >= len(done):
                keep = ~done
                active, done, tok, hid = active[keep], done[keep], tok[keep], hid[keep]
                next_pos, dec_bias = next_pos[keep], dec_bias[keep]
                kv = (kv[0][:, keep], kv[1][:, keep])
            s = width + step
            hid = self._forward(tok[:, None], next_pos, s, kv, dec_bias[..., : s + 1], w)
            next_pos = next_pos + 1
        out = {k: v[:, :steps].tolist() for k, v in stats.items()}
        return tokens[:, :steps].tolist(), out


def _nucleus(probs: Tensor, top_p: float) -> Tensor:
    """``probs`` (B, V) with everything outside the top-p nucleus (the smallest set of most
    likely tokens with mass >= top_p) set to 0, unnormalised."""
    sorted_p, order = probs.sort(-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p  # mass before this token already >= p
    return probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))


def _draw(weights: Tensor) -> Tensor:
    """Index i of each row with probability weights[i] / sum(weights), one uniform per row.
    weights (B, K) >= 0 -> (B, 1); zero-weight entries are never drawn."""
    cdf = weights.double().cumsum(-1)  # float64: exact enough for p ~ 1e-12
    u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)


def inverse_cdf_sample(probs: Tensor, *, block: int = 256) -> Tensor:
    """One draw per row of ``probs`` (B, V) (non-negative, need not sum to 1) -> (B,) ids.

    Two-level inverse CDF: a block of ``block`` entries with probability m_b / M (block mass
    over total), then an entry with probability p_i / m_b within it, so
    P(i) = m_b / M * p_i / m_b = p_i / M: exact, like torch.multinomial. On CPU at V = 32768
    multinomial costs ~110 ms per 64-row step (one exponential per entry) and one float64
    cumsum over V ~20 ms; this is a row sum plus cumsums over V / block and block entries.
    Uses two ``torch.rand`` draws per row from the global generator.
    """
    if probs.dim() != 2 or block < 1:
        raise ValueError(f"probs must be (B, V) and block >= 1; got {tuple(probs.shape)}, {block}")
    b, v = probs.shape
    nb = -(-v // block)
    padded = F.pad(probs, (0, nb * block - v)).view(b, nb, block)  # zero mass beyond V
    blk = _draw(padded.sum(-1))  # (B, 1)
    inner = padded.gather(1, blk[..., None].expand(-1, -1, block)).squeeze(1)  # (B, block)
    return (blk * block + _draw(inner)).squeeze(-1).clamp(max=v - 1)
