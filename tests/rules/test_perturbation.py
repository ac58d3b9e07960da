"""rules.perturbation: the estimates are unbiased on a quadratic loss."""

from __future__ import annotations

import pytest
import torch

from rules import perturbation
from rules.base import RuleError, over_steps

SAMPLES = 20_000


def quadratic(seed: int = 0):
    """L(w) = 0.5 (w - w*)^T A (w - w*) over a [3, 4] weight; returns L, its gradient at w, w."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    a = m @ m.T / 12 + torch.eye(12, dtype=torch.float64)
    target = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64)

    def loss(weight):  # weight [..., 3, 4] -> L [...]
        d = (weight - target).reshape(*weight.shape[:-2], 12)
        return 0.5 * torch.einsum("...i,ij,...j->...", d, a, d)

    return loss, (a @ (w - target).reshape(-1)).reshape(3, 4), w


def within_three_standard_errors(estimates: torch.Tensor, truth: torch.Tensor) -> None:
    mean = estimates.mean(0)
    se = estimates.std(0) / len(estimates) ** 0.5
    assert ((mean - truth).abs() <= 3 * se + 1e-12).float().mean() >= 0.95, (mean, truth, se)
    assert (mean - truth).abs().max() < 6 * se.max()


@pytest.mark.parametrize("estimator", ["antithetic", "one_sided"])
def test_weight_perturbation_is_unbiased_on_a_quadratic(estimator):
    loss, grad, w = quadratic()
    p = perturbation.PerturbationParameters(sigma=0.3)
    gen = torch.Generator().manual_seed(1)
    eps = perturbation.weight_noise(w.expand(SAMPLES, 3, 4), p, gen)  # one draw per row [S, 3, 4]
    plus = loss(w + eps).view(-1, 1, 1)
    if estimator == "antithetic":
        estimates = perturbation.weight_gradient(plus, loss(w - eps).view(-1, 1, 1), eps, p)
    else:
        estimates = perturbation.one_sided_gradient(plus, loss(w), eps, p)
    within_three_standard_errors(estimates, grad)


def test_node_perturbation_is_unbiased_on_a_quadratic_in_the_node_currents():
    # nodes I[t] = W x[t] + xi[t] over T steps, L = 0.5 sum_t |I[t] - r[t]|^2: dL/dW = sum_t (I - r) x^T;
    # every sample of the batch is one draw of the noise, its eligibility one estimate
    gen = torch.Generator().manual_seed(2)
    steps, i, j = 4, 3, 2
    x = torch.rand(steps, 1, i, generator=gen, dtype=torch.float64)
    r = torch.randn(steps, 1, j, generator=gen, dtype=torch.float64)
    w = torch.randn(j, i, generator=gen, dtype=torch.float64)
    grad = torch.einsum("tbj,tbi->ji", x @ w.T - r, x)
    p = perturbation.PerturbationParameters(lr=1.0, sigma=0.2)
    xi = p.sigma * torch.randn(steps, SAMPLES, j, generator=gen, dtype=torch.float64)  # [T, B, J]
    loss = lambda noise: 0.5 * ((x @ w.T + noise - r) ** 2).sum((0, 2))  # noqa: E731 - per sample [B]
    difference = loss(xi) - loss(-xi)  # L+ - L- [B]
    elig = None
    for t in range(steps):  # +xi on the plus pass: the eligibility sums xi x^T per sample
        dw, elig = perturbation.update(x[t].expand(SAMPLES, i), xi[t], elig, p, difference if t == steps - 1 else None)
    estimates = difference.view(-1, 1, 1) / (2 * p.sigma ** 2) * elig  # one per sample [B, J, I]
    torch.testing.assert_close(-dw, estimates.sum(0), rtol=1e-12, atol=1e-9)  # dw = -lr sum_b g_b
    within_three_standard_errors(estimates, grad)


def test_bad_sigma():
    with pytest.raises(RuleError, match="sigma must be a finite number > 0"):
        perturbation.PerturbationParameters(sigma=-0.1)


def test_update_at_end_equals_stepping_through_the_sample():
    gen = torch.Generator().manual_seed(5)
    t, b, n, i, j = 5, 4, 3, 6, 2
    pre = (torch.rand(t, b, n, i, generator=gen) < 0.5).double()
    noise = torch.randn(t, b, n, j, generator=gen, dtype=torch.float64)
    losses = torch.randn(b, generator=gen, dtype=torch.float64)
    params = perturbation.PerturbationParameters(lr=0.3, sigma=0.2)
    total = over_steps(perturbation.update, pre, noise, params, lambda step: losses if step == t - 1 else None)
    torch.testing.assert_close(perturbation.update_at_end(pre, noise, losses, params), total, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuleError, match=r"loss difference per sample \[B\]"):
        perturbation.update_at_end(pre, noise, torch.zeros(b, j, dtype=torch.float64), params)
