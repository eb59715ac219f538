"""Tests for entropy_rl.ops.token_stats: hand-worked values, reference checks, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_rl.ops.token_stats import fused_logprobs_entropy, token_entropy, token_logprobs

INF = float("inf")
ALL_DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]


def ref_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Categorical entropy in float64 of the (already rounded) input values."""
    return torch.distributions.Categorical(logits=logits.double() / temperature).entropy()


def ref_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0):
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def tol(dtype: torch.dtype) -> dict[str, float]:
    # float32 compute for every dtype but float64; inputs are compared after their own rounding
    if dtype == torch.float64:
        return {"atol": 1e-12, "rtol": 1e-12}
    return {"atol": 2e-6, "rtol": 1e-6}


# ---------------------------------------------------------------------------------------------
# token_entropy
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [None, 1])
def test_entropy_hand_worked(chunk_size):
    # uniform over 4: H = log 4 = 1.386294
    h = token_entropy(torch.zeros(4), chunk_size=chunk_size)
    assert h.item() == pytest.approx(math.log(4), abs=1e-6)
    assert abs(h.item() - 1.3863) < 5e-5
    # [0, log 3]: p = (1, 3) / 4 = (0.25, 0.75);
    # H = 0.25 * log 4 + 0.75 * log(4/3) = 0.346574 + 0.215762 = 0.562335
    h2 = token_entropy(torch.tensor([0.0, math.log(3)]), chunk_size=chunk_size)
    assert h2.item() == pytest.approx(0.562335, abs=1e-6)
    # temperature: [0, 2 log 3] at T = 2 is [0, log 3] again -> 0.562335
    h3 = token_entropy(torch.tensor([0.0, 2 * math.log(3)]), temperature=2.0, chunk_size=chunk_size)
    assert h3.item() == pytest.approx(0.562335, abs=1e-6)
    # a masked third entry changes nothing: -inf has p = 0 and 0 * log 0 = 0
    h4 = token_entropy(torch.tensor([0.0, math.log(3), -INF]), chunk_size=chunk_size)
    assert h4.item() == pytest.approx(0.562335, abs=1e-6)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(11,), (6, 11), (2, 3, 11)])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_entropy_matches_categorical(dtype, shape, temperature, chunk_size):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(shape, generator=gen)).to(dtype)
    h = token_entropy(logits, temperature=temperature, chunk_size=chunk_size)
    assert h.shape == shape[:-1]
    assert h.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(h.double(), ref_entropy(logits, temperature), **tol(dtype))


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_entropy_extreme_logits(chunk_size):
    gen = torch.Generator().manual_seed(1)
    logits = 1e4 * torch.randn(5, 9, generator=gen)  # nearly one-hot rows
    logits[0] = torch.tensor([1e4, 1e4 - 1.0, 1e4 - 2.0, -1e4, 0.0, 0.0, 0.0, 0.0, 1e4])
    logits[1, 3:] = -INF  # masked vocabulary
    logits[2] = 3e38  # finite, huge, all equal: uniform over 9 -> log 9
    h = token_entropy(logits, chunk_size=chunk_size)
    assert torch.isfinite(h).all()
    keep = [0, 1, 3, 4]  # Categorical itself fails on row 2 (3e38 + log 9 rounds to 3e38)
    torch.testing.assert_close(h[keep].double(), ref_entropy(logits[keep]), atol=2e-6, rtol=1e-6)
    assert h[2].item() == pytest.approx(math.log(9), abs=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_entropy_masked_vocab_grad(chunk_size):
    gen = torch.Generator().manual_seed(2)
    full = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    full[:, 4:] = -INF
    x = full.clone().requires_grad_()
    token_entropy(x, temperature=0.8, chunk_size=chunk_size).sum().backward()
    # reference: the entropy of the 4 unmasked entries only
    sub = full[:, :4].clone().requires_grad_()
    ref_entropy(sub, 0.8).sum().backward()
    assert x.grad is not None and sub.grad is not None
    assert torch.isfinite(x.grad).all()
    assert (x.grad[:, 4:] == 0).all()
    torch.testing.assert_close(x.grad[:, :4], sub.grad, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("bad_row", [[-INF, -INF, -INF], [0.0, float("nan"), 1.0], [0.0, INF, 1.0]])
def test_entropy_rows_without_a_distribution_raise(chunk_size, bad_row):
    logits = torch.zeros(4, 3)
    logits[2] = torch.tensor(bad_row)
    with pytest.raises(ValueError, match="no finite entry"):
        token_entropy(logits, chunk_size=chunk_size)


def test_entropy_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(torch.zeros(3), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(torch.zeros(3), temperature=float("nan"))
    with pytest.raises(ValueError, match="chunk_size"):
        token_entropy(torch.zeros(3), chunk_size=0)
    with pytest.raises(ValueError, match="floating"):
        token_entropy(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 1 dim"):
        token_entropy(torch.tensor(1.0))
    with pytest.raises(ValueError, match="non-empty"):
        token_entropy(torch.zeros(3, 0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
def test_entropy_chunked_equals_unchunked(dtype, chunk_size):
    gen = torch.Generator().manual_seed(3)
    base = (2 * torch.randn(2, 5, 13, generator=gen)).to(dtype)
    base[0, 1, :5] = -INF
    weights = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    grads, values = [], []
    for cs in (None, chunk_size):
        x = base.clone().requires_grad_()
        h = token_entropy(x, temperature=0.9, chunk_size=cs)
        (h.double() * weights).sum().backward()
        assert x.grad is not None and x.grad.dtype == dtype
        values.append(h)
        grads.append(x.grad)
    t = tol(dtype)
    torch.testing.assert_close(values[1], values[0], **t)
    if dtype == torch.bfloat16:  # both grads are float32 results rounded to bf16
        torch.testing.assert_close(grads[1], grads[0], atol=1e-2, rtol=1e-2)
    else:
        torch.testing.assert_close(grads[1], grads[0], atol=10 * t["atol"], rtol=10 * t["rtol"])


def test_entropy_gradcheck_chunked():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    x[1, 2] = -INF
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: token_entropy(t, temperature=0.7, chunk_size=2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: token_entropy(t, temperature=0.7), (x,))


# ---------------------------------------------------------------------------------------------
# token_logprobs
# ---------------------------------------------------------------------------------------------
def test_logprobs_hand_worked():
    # [0, log 3]: p = (0.25, 0.75) -> log p = (log 0.25, log 0.75) = (-1.386294, -0.287682)
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    lp = token_logprobs(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(lp, torch.tensor([-1.386294, -0.287682]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("temperature", [0.6, 1.0, 2.0])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_logprobs_match_log_softmax_gather(dtype, temperature, chunk_size):
    gen = torch.Generator().manual_seed(5)
    base = (3 * torch.randn(3, 4, 17, generator=gen)).to(dtype)
    base[1, 2, 10:] = -INF
    ids = torch.randint(0, 10, (3, 4), generator=gen)
    x = base.clone().requires_grad_()
    lp = token_logprobs(x, ids, temperature=temperature, chunk_size=chunk_size)
    assert lp.shape == (3, 4)
    torch.testing.assert_close(lp.double(), ref_logprobs(base, ids, temperature), **tol(dtype))
    weights = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    (lp.double() * weights).sum().backward()
    xr = base.double().requires_grad_()
    (ref_logprobs(xr, ids, temperature) * weights).sum().backward()
    assert x.grad is not None and xr.grad is not None and x.grad.dtype == dtype
    assert torch.isfinite(x.grad).all()
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(x.grad.double(), xr.grad, **tol(dtype))
    else:
        torch.testing.assert_close(x.grad.double(), xr.grad, atol=1e-2, rtol=1e-2)


def test_logprobs_masked_taken_token_and_extremes():
    logits = torch.tensor([[0.0, -INF, 1.0], [1e4, -1e4, 1e4 - 1.0]])
    lp = token_logprobs(logits, torch.tensor([1, 2]))
    assert lp[0].item() == -INF  # a masked token has probability 0
    # row 2: p(2) = e^-1 / (1 + e^-1) -> log p = -1 - log(1 + e^-1) = -1.313262
    assert lp[1].item() == pytest.approx(-1.0 - math.log1p(math.exp(-1.0)), abs=1e-6)


def test_logprobs_gradcheck():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    x[0, 5] = -INF
    ids = torch.tensor([0, 5, 1, 2, 3])
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: token_logprobs(t, ids, temperature=1.3, chunk_size=2), (x,)
    )


def test_logprobs_validation():
    logits = torch.zeros(2, 3, 5)
    with pytest.raises(ValueError, match="shape"):
        token_logprobs(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 5\).*min -100"):
        token_logprobs(logits, torch.full((2, 3), -100))
    with pytest.raises(ValueError, match=r"max 5"):
        token_logprobs(logits, torch.full((2, 3), 5))
    with pytest.raises(ValueError, match="integer"):
        token_logprobs(logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no finite entry"):
        token_logprobs(torch.full((1, 3), -INF), torch.zeros(1, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# fused_logprobs_entropy
# ---------------------------------------------------------------------------------------------
def naive_stats(hidden, weight, ids, bias=None, temperature=1.0):
    """Full-logits reference in float64: (log p_y, H, max p)."""
    z = hidden.double() @ weight.double().t()
    if bias is not None:
        z = z + bias.double()
    logp = torch.log_softmax(z / temperature, dim=-1)
    p = logp.exp()
    entropy = -(p * logp.clamp(min=-1e4)).sum(-1)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), entropy, p.amax(-1).detach()


def make_inputs(lead, d=6, v=19, dtype=torch.float64, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, d, generator=gen, dtype=torch.float64).to(dtype)
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(v, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    ids = torch.randint(0, v, lead, generator=gen)
    return hidden, weight, b, ids


def values_and_grads(fn, hidden, weight, bias, ids, temperature):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    b = None if bias is None else bias.clone().requires_grad_()
    logp, entropy = fn(h, w, ids, bias=b, temperature=temperature)[:2]
    gen = torch.Generator().manual_seed(99)
    g1 = torch.randn(logp.shape, generator=gen, dtype=torch.float64)
    g2 = torch.randn(logp.shape, generator=gen, dtype=torch.float64)
    ((logp.double() * g1).sum() + (entropy.double() * g2).sum()).backward()
    grads = [h.grad, w.grad] + ([] if b is None else [b.grad])
    return [logp.detach(), entropy.detach()], grads


@pytest.mark.parametrize("lead", [(7,), (2, 5)])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_matches_naive(lead, chunk_size, temperature, bias):
    hidden, weight, b, ids = make_inputs(lead, bias=bias, seed=chunk_size)

    def fused(h, w, i, *, bias, temperature):
        return fused_logprobs_entropy(
            h, w, i, bias=bias, temperature=temperature, chunk_size=chunk_size
        )

    vals, grads = values_and_grads(fused, hidden, weight, b, ids, temperature)
    ref_vals, ref_grads = values_and_grads(naive_stats, hidden, weight, b, ids, temperature)
    for got, want in zip(vals + grads, ref_vals + ref_grads, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_fused_top1_and_float32():
    hidden, weight, b, ids = make_inputs((3, 4), dtype=torch.float32, seed=7)
    logp, entropy, top1 = fused_logprobs_entropy(
        hidden, weight, ids, bias=b, chunk_size=5, return_top1=True
    )
    ref = naive_stats(hidden, weight, ids, b)
    assert logp.dtype == entropy.dtype == top1.dtype == torch.float32
    assert not top1.requires_grad
    for got, want in zip((logp, entropy, top1), ref, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_fused_gradcheck_float64():
    hidden, weight, b, ids = make_inputs((5,), d=3, v=7, seed=8)
    inputs = tuple(t.clone().requires_grad_() for t in (hidden, weight, b))
    assert b is not None

    def fn(h, w, bb):
        return fused_logprobs_entropy(h, w, ids, bias=bb, temperature=0.7, chunk_size=2)

    assert torch.autograd.gradcheck(fn, inputs)
    # each output alone (the other's upstream gradient is zero)
    assert torch.autograd.gradcheck(lambda h, w, bb: fn(h, w, bb)[0], inputs)
    assert torch.autograd.gradcheck(lambda h, w, bb: fn(h, w, bb)[1], inputs)


def test_fused_masked_bias():
    hidden, weight, b, ids = make_inputs((6,), seed=9)
    assert b is not None
    b[12:] = -INF  # masked vocabulary
    ids = ids % 12
    vals, grads = values_and_grads(
        lambda *a, **k: fused_logprobs_entropy(*a, **k, chunk_size=4), hidden, weight, b, ids, 1.0
    )
    ref_vals, ref_grads = values_and_grads(naive_stats, hidden, weight, b, ids, 1.0)
    for got, want in zip(vals + grads, ref_vals + ref_grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_fused_bf16_inputs():
    hidden, weight, b, ids = make_inputs((2, 3), d=8, v=33, dtype=torch.bfloat16, seed=10)
    vals, grads = values_and_grads(
        lambda *a, **k: fused_logprobs_entropy(*a, **k, chunk_size=4), hidden, weight, b, ids, 0.8
    )
    ref_vals, ref_grads = values_and_grads(naive_stats, hidden, weight, b, ids, 0.8)
    for got in vals:
        assert got.dtype == torch.float32  # float32 compute
    for got, inp in zip(grads, (hidden, weight, b), strict=True):
        assert inp is not None and got.dtype == inp.dtype == torch.bfloat16
    for got, want in zip(vals, ref_vals, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):  # float32 grads rounded to bf16
        torch.testing.assert_close(got.double(), want.double(), atol=1e-3, rtol=8e-3)


def test_fused_partial_requires_grad():
    hidden, weight, _, ids = make_inputs((4,), seed=11, bias=False)
    h = hidden.clone().requires_grad_()
    logp, entropy = fused_logprobs_entropy(h, weight, ids, chunk_size=3)
    (logp.sum() + entropy.sum()).backward()
    assert h.grad is not None and weight.grad is None
    w = weight.clone().requires_grad_()
    logp, entropy = fused_logprobs_entropy(hidden, w, ids, chunk_size=3)
    entropy.sum().backward()
    wr = w.detach().clone().requires_grad_()
    naive_stats(hidden, wr, ids)[1].sum().backward()
    torch.testing.assert_close(w.grad, wr.grad, atol=1e-12, rtol=1e-10)


def test_empty_inputs():
    assert token_entropy(torch.zeros(0, 5), chunk_size=2).shape == (0,)
    assert token_logprobs(torch.zeros(2, 0, 5), torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0)
    hidden, weight, b, _ = make_inputs((0,), seed=13)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    logp, entropy = fused_logprobs_entropy(h, w, torch.zeros(0, dtype=torch.long), bias=b)
    assert logp.shape == entropy.shape == (0,)
    (logp.sum() + entropy.sum()).backward()
    assert w.grad is not None and (w.grad == 0).all() and h.grad is not None


def test_fused_validation():
    hidden, weight, _, ids = make_inputs((3,), seed=12)
    with pytest.raises(ValueError, match=r"weight must be \(V, D\)"):
        fused_logprobs_entropy(hidden, weight[:, :4], ids)
    with pytest.raises(ValueError, match="bias must have shape"):
        fused_logprobs_entropy(hidden, weight, ids, bias=torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="chunk_size"):
        fused_logprobs_entropy(hidden, weight, ids, chunk_size=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token_ids must lie"):
        fused_logprobs_entropy(hidden, weight, ids + 19)
    with pytest.raises(ValueError, match="temperature"):
        fused_logprobs_entropy(hidden, weight, ids, temperature=-1.0)


# ---------------------------------------------------------------------------------------------
# property test
# ---------------------------------------------------------------------------------------------
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)  # up to +-3.4e38


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(finite32, min_size=5, max_size=5), min_size=1, max_size=4),
    temperature=st.floats(0.05, 20.0),
    chunk_size=st.sampled_from([None, 1, 3]),
)
def test_finite_for_finite_inputs(rows, temperature, chunk_size):
    logits = torch.tensor(rows, dtype=torch.float32)
    h = token_entropy(logits, temperature=temperature, chunk_size=chunk_size)
    assert torch.isfinite(h).all()
    assert (h >= 0).all() and (h <= math.log(5) + 1e-5).all()
    # log-probs are finite wherever the true value is representable (|z| <= 1e4 here)
    small = logits.clamp(-1e4, 1e4)
    lp = token_logprobs(small, torch.zeros(len(rows), dtype=torch.long), temperature=temperature)
    assert torch.isfinite(lp).all() and (lp <= 0).all()
