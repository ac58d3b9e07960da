"""rules.three_factor: eligibility from STDP pairs, turned into dw by a modulator."""

from __future__ import annotations

import math

import pytest
import torch

from rules import three_factor
from rules.base import RuleError, over_steps
from spikeformer.errors import ShapeError

D = math.exp(-1 / 2.0)
E = math.exp(-1 / 4.0)


def test_a_late_reward_credits_an_earlier_pair_through_the_eligibility():
    p = three_factor.ThreeFactorParameters(lr=0.5, a_plus=1.0, a_minus=0.0, tau_pre=2.0, tau_post=2.0,
                                           tau_eligibility=4.0)
    pre = torch.tensor([[[1.0]], [[0.0]], [[0.0]], [[0.0]]], dtype=torch.float64)  # [T, B=1, I=1]
    post = torch.tensor([[[0.0]], [[1.0]], [[0.0]], [[0.0]]], dtype=torch.float64)
    reward = [None, None, None, torch.tensor([2.0], dtype=torch.float64)]  # the reward arrives at t=3
    traces, dws = None, []
    for t in range(4):
        dw, traces = three_factor.update(pre[t], post[t], traces, p, reward[t])
        dws.append(dw.item())
    # t=1: e = A+ x = d; t=2: e = E d; t=3: e = E^2 d, dw = lr m e
    assert dws[:3] == [0.0, 0.0, 0.0]
    assert dws[3] == pytest.approx(0.5 * 2.0 * E ** 2 * D, abs=1e-15)
    assert traces.eligibility.item() == pytest.approx(E ** 2 * D, abs=1e-15)


def test_a_per_neuron_modulator_weights_each_row():
    p = three_factor.ThreeFactorParameters(lr=1.0, a_plus=1.0, a_minus=0.0)
    pre = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # [B=2, I=2]
    post = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # [B=2, J=2]
    m = torch.tensor([[1.0, -1.0], [2.0, 0.0]])  # [B, J]
    dw, _ = three_factor.update(pre, post, None, p, m)
    # e[b] = post_b^T pre_b; dw[j, i] = sum_b m[b, j] e[b, j, i]
    assert dw.tolist() == [[3.0, 1.0], [-1.0, -1.0]]


def test_a_modulator_of_the_wrong_shape_is_a_one_line_error():
    p = three_factor.ThreeFactorParameters()
    with pytest.raises(ShapeError, match=r"modulator must be \[B\] = \[2\] or \[B, J\] = \[2, 3\], got \(3,\)"):
        three_factor.update(torch.ones(2, 4), torch.ones(2, 3), None, p, torch.ones(3))


def test_negative_time_constant_is_refused():
    with pytest.raises(RuleError, match="tau_eligibility must be a finite number > 0"):
        three_factor.ThreeFactorParameters(tau_eligibility=-1.0)


@pytest.mark.parametrize("per_neuron", [False, True])
def test_update_at_end_equals_stepping_through_the_sample(per_neuron):
    """The contracted form (no [B, J, I] eligibility) equals the step-by-step rule with the
    modulator at the last step, in float64."""
    gen = torch.Generator().manual_seed(3)
    t, b, n, i, j = 6, 5, 3, 4, 7
    pre = (torch.rand(t, b, n, i, generator=gen) < 0.4).double()
    post = (torch.rand(t, b, n, j, generator=gen) < 0.3).double()
    modulator = torch.randn((b, j) if per_neuron else (b,), generator=gen, dtype=torch.float64)
    params = three_factor.ThreeFactorParameters(lr=0.1, a_plus=1.0, a_minus=0.7, tau_pre=2.0, tau_post=3.0, tau_eligibility=4.0)
    total = over_steps(three_factor.update, pre, post, params, lambda step: modulator if step == t - 1 else None)
    torch.testing.assert_close(three_factor.update_at_end(pre, post, modulator, params), total, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuleError, match=r"modulator must be \[B\]"):
        three_factor.update_at_end(pre, post, torch.zeros(b, j + 1, dtype=torch.float64), params)
