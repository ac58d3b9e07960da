"""rules.three_factor: eligibility from STDP pairs, turned into dw by a modulator."""

from __future__ import annotations

import math

import pytest
import torch

from rules import three_factor
from rules.base import RuleError
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
