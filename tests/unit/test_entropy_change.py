"""ops.entropy_change: the first-order entropy change against hand-worked numbers and finite
differences on a tiny softmax policy, and the chunked / fused paths against the plain one."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_rl.ops.entropy_change import (
    entropy_change,
    first_order_entropy_change,
    fused_entropy_change,
)
from entropy_rl.ops.token_stats import token_entropy

F64 = torch.float64
LN2 = math.log(2.0)


def _h(z: torch.Tensor) -> torch.Tensor:
    """Reference entropy of softmax(z) per row (torch.distributions)."""
    return torch.distributions.Categorical(logits=z).entropy()


def test_first_order_hand_worked() -> None:
    # p = (1/2, 1/4, 1/4): log p = (-ln2, -2 ln2, -2 ln2), H = 1/2 ln2 + 2 * 1/4 * 2 ln2 = 1.5 ln2
    # log p + H = (0.5 ln2, -0.5 ln2, -0.5 ln2); d log p = (0.1, 0, -0.1)
    # sum_v p_v (l_v + H) dl_v = 1/2 * 0.5 ln2 * 0.1 + 0 + 1/4 * (-0.5 ln2) * (-0.1)
    #                          = 0.025 ln2 + 0.0125 ln2 = 0.0375 ln2
    logp = torch.tensor([0.5, 0.25, 0.25], dtype=F64).log()
    dlogp = torch.tensor([0.1, 0.0, -0.1], dtype=F64)
    got = first_order_entropy_change(logp, dlogp)
    assert got.item() == pytest.approx(-0.0375 * LN2, rel=1e-14, abs=0)  # -0.0259930...
    # a constant shift of d log p (the log-normaliser's change) drops out: sum_v p_v (l_v + H) = 0
    shifted = first_order_entropy_change(logp, dlogp + 0.3)
    assert shifted.item() == pytest.approx(-0.0375 * LN2, rel=1e-13, abs=0)


def test_first_order_is_zero_at_the_uniform_distribution() -> None:
    # uniform p: log p_v + H = -ln V + ln V = 0 for every v, so no first-order change at all
    logp = torch.full((2, 4), -math.log(4.0), dtype=F64)
    dlogp = torch.tensor([[0.3, -0.2, 0.5, 0.1], [1.0, 2.0, 3.0, 4.0]], dtype=F64)
    assert first_order_entropy_change(logp, dlogp).abs().max().item() < 1e-16


def test_first_order_matches_a_central_difference() -> None:
    # tiny softmax policy: 3 states x 5 actions, logits z, direction d. Along z + s d the
    # log-probabilities move by s * (d - E_p[d]) to first order, so dH_1 / s is the
    # derivative dH/ds, which a central difference gets to O(s^2).
    z = torch.tensor(
        [[1.0, 0.2, -0.5, 0.0, 2.0], [0.3, 0.3, -1.0, 1.5, 0.1], [-2.0, 0.5, 0.9, 0.0, -0.4]],
        dtype=F64,
    )
    d = torch.tensor(
        [[0.5, -1.0, 0.3, 0.8, -0.2], [1.0, 0.0, -0.7, 0.4, 0.6], [-0.3, 0.9, 0.2, -1.1, 0.5]],
        dtype=F64,
    )
    p = torch.softmax(z, -1)
    dlogp = d - (p * d).sum(-1, keepdim=True)  # d/ds log softmax(z + s d) at s = 0
    deriv = first_order_entropy_change(torch.log_softmax(z, -1), dlogp)
    errs = []
    for s in (1e-2, 1e-3):
        central = (_h(z + s * d) - _h(z - s * d)) / (2 * s)
        errs.append(((central - deriv) / deriv).abs().max().item())
    assert errs[1] < 1e-6  # relative agreement at step 1e-3
    assert errs[1] / errs[0] == pytest.approx(1e-2, rel=0.01)  # and the error is O(s^2)


def test_exact_change_and_first_order_against_a_finite_step() -> None:
    # one-sided step z -> z + s d: `after - before` is H(z + s d) - H(z) exactly; the first-order
    # part built from the actual d log p differs from it by O(s^2): halving s quarters the gap.
    torch.manual_seed(0)
    z = torch.randn(4, 6, dtype=F64)
    d = torch.randn(4, 6, dtype=F64)
    gaps = []
    for s in (2e-3, 1e-3):
        ch = entropy_change(z, z + s * d)
        torch.testing.assert_close(ch.before, _h(z), rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(ch.after, _h(z + s * d), rtol=1e-14, atol=1e-15)
        exact = ch.after - ch.before
        fo = first_order_entropy_change(
            torch.log_softmax(z, -1), torch.log_softmax(z + s * d, -1) - torch.log_softmax(z, -1)
        )
        torch.testing.assert_close(ch.first_order, fo, rtol=1e-12, atol=1e-17)
        assert ((exact - ch.first_order) / exact).abs().max().item() < 0.02  # O(s) relative
        gaps.append((exact - ch.first_order).abs())
    ratio = gaps[0] / gaps[1]
    assert ratio.min().item() > 3.9 and ratio.max().item() < 4.1


def test_temperature_and_chunking() -> None:
    torch.manual_seed(1)
    z0, z1 = torch.randn(2, 3, 11, dtype=F64), torch.randn(2, 3, 11, dtype=F64)
    ref = entropy_change(z0 / 0.7, z1 / 0.7)
    for chunk in (None, 1, 4, 100):
        got = entropy_change(z0, z1, temperature=0.7, chunk_size=chunk)
        assert got.before.shape == (2, 3)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(ref.before, token_entropy(z0 / 0.7), rtol=1e-13, atol=1e-15)


def test_fused_matches_explicit_logits() -> None:
    # z = (h W^T + b) / T built chunk by chunk equals the plain path on the full logits
    torch.manual_seed(2)
    h0, w0, b0 = (
        torch.randn(2, 5, 4, dtype=F64),
        torch.randn(9, 4, dtype=F64),
        torch.randn(9, dtype=F64),
    )
    h1, w1, b1 = h0 + 0.1 * torch.randn_like(h0), w0 + 0.1 * torch.randn_like(w0), b0 + 0.1
    ref = entropy_change(h0 @ w0.T + b0, h1 @ w1.T + b1, temperature=1.3)
    for chunk in (1, 3, 64):
        got = fused_entropy_change(
            h0, w0, h1, w1, bias_before=b0, bias_after=b1, temperature=1.3, chunk_size=chunk
        )
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_masked_vocabulary_counts_as_absent() -> None:
    # -inf logits (masked tokens) before and after: the same numbers as without those columns
    z0 = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=F64)
    z1 = torch.tensor([[0.4, -0.8, 2.1, 0.3]], dtype=F64)
    inf = torch.tensor([[-math.inf, -math.inf]], dtype=F64)
    got = entropy_change(torch.cat([z0, inf], -1), torch.cat([z1, inf], -1))
    ref = entropy_change(z0, z1)
    for a, b in zip(got, ref, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-16)


def test_float32_inputs_give_float32_and_agree_with_float64() -> None:
    torch.manual_seed(3)
    z0, z1 = torch.randn(8, 50, dtype=F64), torch.randn(8, 50, dtype=F64)
    z1 = z0 + 0.05 * z1
    got = entropy_change(z0.float(), z1.float())
    ref = entropy_change(z0, z1)
    assert all(x.dtype == torch.float32 for x in got)
    torch.testing.assert_close(
        got.after - got.before, (ref.after - ref.before).float(), atol=2e-6, rtol=0
    )
    torch.testing.assert_close(got.first_order, ref.first_order.float(), atol=2e-6, rtol=0)


def test_bad_arguments_raise() -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="one shape"):
        entropy_change(z, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        entropy_change(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="one shape"):
        first_order_entropy_change(z, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"weight_after must be \(V, 2\)"):
        fused_entropy_change(
            torch.zeros(3, 2), torch.zeros(5, 2), torch.zeros(3, 2), torch.zeros(4, 2)
        )
