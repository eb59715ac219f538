"""KL estimators k1, k2, k3 (ops.kl): hand values, exact and sampled expectations, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from entropy_rl.ops.kl import KL_KINDS, kl_estimate, kl_ref_metrics

LN2 = math.log(2.0)


def test_hand_values_positive_and_negative_d() -> None:
    # p = 0.5, q = 0.25: d = log 2 = 0.693147
    #   k1 = 0.693147; k2 = 0.693147^2 / 2 = 0.240227; k3 = 0.5 - 1 + 0.693147 = 0.193147
    # p = 0.25, q = 0.5: d = -0.693147
    #   k1 = -0.693147; k2 = 0.240227; k3 = 2 - 1 - 0.693147 = 0.306853
    p = torch.tensor([0.5, 0.25], dtype=torch.float64).log()
    q = torch.tensor([0.25, 0.5], dtype=torch.float64).log()
    torch.testing.assert_close(kl_estimate(p, q, kind="k1"), torch.tensor([LN2, -LN2]).double())
    k2 = LN2**2 / 2
    torch.testing.assert_close(kl_estimate(p, q, kind="k2"), torch.tensor([k2, k2]).double())
    k3 = torch.tensor([0.5 - 1 + LN2, 2 - 1 - LN2], dtype=torch.float64)
    torch.testing.assert_close(kl_estimate(p, q, kind="k3"), k3)
    torch.testing.assert_close(kl_estimate(p, q), k3)  # k3 is the default


def test_aliases_match_verl_names() -> None:
    a, b = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    for alias, kind in (("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3")):
        assert torch.equal(kl_estimate(a, b, kind=alias), kl_estimate(a, b, kind=kind))


def test_k3_tiny_d_is_accurate_and_nonnegative() -> None:
    # exp(-d) - 1 + d = d^2/2 - d^3/6 + ...; at d = 1e-6 that is 5e-13 - 1.7e-19. The naive
    # float32 form exp(-d) - 1 + d gives 0 or garbage; expm1 keeps it.
    d = torch.tensor([1e-6, -1e-6], dtype=torch.float64)
    k3 = kl_estimate(d, torch.zeros_like(d), kind="k3")
    torch.testing.assert_close(k3, d**2 / 2 - d**3 / 6, rtol=1e-6, atol=0)
    x = torch.randn(1000, dtype=torch.float32) * 3
    assert bool((kl_estimate(x, torch.zeros_like(x), kind="k3") >= 0).all())


def _pair(seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(p.log() + scale * torch.randn(6, generator=g, dtype=torch.float64), 0)
    return p, q


@pytest.mark.parametrize("scale", [0.1, 1.0])
def test_k1_k3_exact_expectation_equals_exact_kl(scale: float) -> None:
    # E_{x~p}[k(x)] = sum_x p(x) k(log p(x) - log q(x)): for k1 and k3 this is KL(p || q).
    p, q = _pair(0, scale)
    exact = kl_divergence(Categorical(probs=p), Categorical(probs=q))
    for kind in ("k1", "k3"):
        expectation = (p * kl_estimate(p.log(), q.log(), kind=kind)).sum()
        torch.testing.assert_close(expectation, exact, rtol=1e-12, atol=1e-14)


def test_k2_is_biased_but_second_order_close() -> None:
    # Close distributions: E[k2] - KL = O(d^3) -> within 5%. Far apart: clearly off.
    p, q = _pair(1, 0.1)
    exact = kl_divergence(Categorical(probs=p), Categorical(probs=q))
    e_k2 = (p * kl_estimate(p.log(), q.log(), kind="k2")).sum()
    assert abs(float(e_k2 / exact) - 1) < 0.05
    p, q = _pair(1, 2.0)
    exact = kl_divergence(Categorical(probs=p), Categorical(probs=q))
    e_k2 = (p * kl_estimate(p.log(), q.log(), kind="k2")).sum()
    assert abs(float(e_k2 / exact) - 1) > 0.1


def test_k3_sampled_mean_unbiased_and_lower_variance_than_k1() -> None:
    p, q = _pair(2, 0.3)
    exact = float(kl_divergence(Categorical(probs=p), Categorical(probs=q)))
    g = torch.Generator().manual_seed(123)
    n = 200_000
    x = torch.multinomial(p, n, replacement=True, generator=g)
    lp, lq = p.log()[x], q.log()[x]
    k1, k3 = kl_estimate(lp, lq, kind="k1"), kl_estimate(lp, lq, kind="k3")
    for est in (k1, k3):
        stderr = float(est.std()) / math.sqrt(n)
        assert abs(float(est.mean()) - exact) < 4 * stderr
    assert float(k3.std()) < 0.5 * float(k1.std())


def test_gradients_in_expectation() -> None:
    # Samples from pi = softmax(theta) held fixed (weights pi.detach()):
    #   E[grad k1] = 0, E[grad k2] = grad KL(pi || ref), E[grad k3] = grad KL(ref || pi).
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    log_ref = torch.log_softmax(torch.randn(5, generator=g, dtype=torch.float64), 0)

    def expected_grad(kind: str) -> torch.Tensor:
        log_pi = torch.log_softmax(theta, 0)
        (grad,) = torch.autograd.grad(
            (log_pi.exp().detach() * kl_estimate(log_pi, log_ref, kind=kind)).sum(), theta
        )
        return grad

    def exact_grad(forward: bool) -> torch.Tensor:
        log_pi = torch.log_softmax(theta, 0)
        if forward:
            kl = (log_ref.exp() * (log_ref - log_pi)).sum()
        else:
            kl = (log_pi.exp() * (log_pi - log_ref)).sum()
        (grad,) = torch.autograd.grad(kl, theta)
        return grad

    torch.testing.assert_close(expected_grad("k1"), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(expected_grad("k2"), exact_grad(forward=False))
    torch.testing.assert_close(expected_grad("k3"), exact_grad(forward=True))
    assert not torch.allclose(exact_grad(forward=False), exact_grad(forward=True))


def test_kl_ref_metrics_masked_mean_ignores_padding() -> None:
    # tokens: (p .5, q .25) -> k3 0.193147 ; (p .25, q .5) -> k3 0.306853 ; padding (nan)
    # mean = (0.193147 + 0.306853) / 2 = 0.25 exactly
    lp = torch.tensor([[math.log(0.5), math.log(0.25), math.nan]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5), math.inf]])
    mask = torch.tensor([[1, 1, 0]])
    assert kl_ref_metrics(lp, ref, mask) == {"kl/ref": pytest.approx(0.25, abs=1e-6)}
    # k1 = (0.693147 - 0.693147) / 2 = 0
    assert kl_ref_metrics(lp, ref, mask, kind="k1")["kl/ref"] == pytest.approx(0.0, abs=1e-6)
    assert kl_ref_metrics(lp, ref, torch.zeros_like(mask)) == {"kl/ref": 0.0}


def test_errors() -> None:
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"unknown KL estimator kind 'k4'.*k1, k2, k3"):
        kl_estimate(a, a, kind="k4")
    with pytest.raises(ValueError, match="same shape"):
        kl_estimate(a, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="mask"):
        kl_ref_metrics(a, a, torch.ones(3, 2))
    assert KL_KINDS == ("k1", "k2", "k3")
