"""rules.stdp: exact values on hand-made spike pairs, soft bounds, Brian2's event-driven STDP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuromorphic.brian2_learning import stdp_synapses
from rules import stdp
from rules.base import RuleError

TAU = 2.0
D = math.exp(-1 / TAU)


def run(pre_steps, post_steps, params, weight=None):
    """Feed spike trains ``[T, I]``, ``[T, J]`` step by step; returns the summed dw [J, I]."""
    traces, total = None, 0.0
    for pre, post in zip(torch.tensor(pre_steps, dtype=torch.float64), torch.tensor(post_steps, dtype=torch.float64)):
        dw, traces = stdp.update(pre, post, traces, params, weight=weight)
        total = total + dw
    return total


def test_pre_before_post_potentiates_by_the_pre_trace():
    p = stdp.STDPParameters(lr=0.1, a_plus=1.0, a_minus=0.5, tau_pre=TAU, tau_post=TAU)
    # pre at t=0, post at t=2: x = d^2 when the post spike arrives -> dw = lr A+ d^2
    dw = run([[1], [0], [0]], [[0], [0], [1]], p)
    assert dw.item() == pytest.approx(0.1 * D ** 2, abs=1e-15)


def test_post_before_pre_depresses_by_the_decayed_post_trace():
    p = stdp.STDPParameters(lr=0.1, a_plus=1.0, a_minus=0.5, tau_pre=TAU, tau_post=TAU)
    # post at t=0, pre at t=3: y = d^3 when the pre spike arrives -> dw = -lr A- d^3
    dw = run([[0], [0], [0], [1]], [[1], [0], [0], [0]], p)
    assert dw.item() == pytest.approx(-0.1 * 0.5 * D ** 3, abs=1e-15)


def test_a_simultaneous_pair_potentiates_only():
    p = stdp.STDPParameters(lr=1.0, a_plus=1.0, a_minus=0.5, tau_pre=TAU, tau_post=TAU)
    assert run([[1]], [[1]], p).item() == 1.0
    # two pairs: t=0 both, t=1 both: t=1 adds A+ (d + 1) - A- (d * 1)
    assert run([[1], [1]], [[1], [1]], p).item() == pytest.approx(1 + (D + 1) - 0.5 * D, abs=1e-15)


def test_dw_has_the_linear_layout_and_sums_over_samples():
    p = stdp.STDPParameters(lr=1.0, a_plus=1.0, a_minus=0.0)
    pre = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])  # [B=2, I=3]
    post = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # [B=2, J=2]
    dw, _ = stdp.update(pre, post, None, p)
    assert dw.tolist() == [[2.0, 1.0, 1.0], [1.0, 1.0, 0.0]]  # [J, I] = sum_b post_b^T pre_b


def test_multiplicative_soft_bounds_scale_by_the_distance_to_the_bound():
    p = stdp.STDPParameters(lr=1.0, a_plus=1.0, a_minus=1.0, multiplicative=True, w_min=0.0, w_max=1.0)
    weight = torch.tensor([[0.25]], dtype=torch.float64)
    assert run([[1]], [[1]], p, weight).item() == 0.75  # A+ (w_max - w)
    dw = run([[0], [1]], [[1], [0]], p, weight)  # post then pre: -A- (w - w_min) d
    assert dw.item() == pytest.approx(-0.25 * D, abs=1e-15)
    with pytest.raises(RuleError, match="needs the current weight"):
        run([[1]], [[1]], p)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1e-3), "lr must be a finite number > 0"),
    (dict(tau_pre=0.0), "tau_pre must be a finite number > 0"),
    (dict(tau_post=float("nan")), "tau_post"),
    (dict(a_minus=-1.0), "a_minus must be a finite number >= 0"),
    (dict(w_min=1.0, w_max=0.0), "w_min must be below w_max"),
])
def test_bad_parameters_are_one_line_errors(kwargs, match):
    with pytest.raises(RuleError, match=match) as info:
        stdp.STDPParameters(**kwargs)
    assert "\n" not in str(info.value)


def test_stdp_refuses_a_modulator():
    with pytest.raises(RuleError, match="three_factor"):
        stdp.update(torch.ones(2), torch.ones(3), None, stdp.STDPParameters(), modulator=torch.ones(1))


@pytest.mark.backend
def test_stdp_equals_brian2_event_driven_stdp_on_random_spike_trains():
    b2 = pytest.importorskip("brian2")
    b2.prefs.codegen.target = "numpy"
    rng = np.random.default_rng(3)
    steps, n_pre, n_post = 60, 5, 4
    pre = (rng.random((steps, n_pre)) < 0.2).astype(np.float64)
    post = (rng.random((steps, n_post)) < 0.2).astype(np.float64)
    params = stdp.STDPParameters(lr=0.01, a_plus=0.8, a_minus=0.6, tau_pre=3.0, tau_post=5.0)
    w0 = rng.uniform(-0.5, 0.5, (n_post, n_pre))

    dt = 1 * b2.ms
    net = b2.Network()
    times = lambda spikes: np.nonzero(spikes)  # noqa: E731 - (steps, neurons) of every spike
    t_pre, i_pre = times(pre)
    t_post, i_post = times(post)
    source = b2.SpikeGeneratorGroup(n_pre, i_pre, t_pre * dt, dt=dt)
    target = b2.SpikeGeneratorGroup(n_post, i_post, t_post * dt, dt=dt)
    synapses = stdp_synapses(source, target, params, dt)  # neuromorphic/brian2_learning.py
    synapses.connect()
    synapses.w = w0[synapses.j[:], synapses.i[:]]
    net.add(source, target, synapses)
    net.run(steps * dt)
    brian = np.zeros_like(w0)
    brian[synapses.j[:], synapses.i[:]] = synapses.w[:]

    ours = torch.tensor(w0) + run(pre.tolist(), post.tolist(), params)
    assert np.abs(brian - w0).max() > 1e-3  # the spike trains did change the weights
    np.testing.assert_allclose(ours.numpy(), brian, rtol=0, atol=1e-9)


def test_winner_take_all_keeps_the_most_active_neurons_of_each_sample():
    post = torch.tensor([[[1.0, 1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0, 0.0]]])  # [T=3, B=1, J=4]
    kept = stdp.winner_take_all(post, 2)  # counts 1, 3, 0, 2 -> neurons 1 and 3 learn
    assert kept[:, 0].tolist() == [[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]]
    tie = stdp.winner_take_all(torch.tensor([[[1.0, 1.0, 1.0]]]), 1)  # a tie goes to the lower index
    assert tie.tolist() == [[[1.0, 0.0, 0.0]]]
    silent = stdp.winner_take_all(torch.tensor([[[0.0, 1.0, 0.0]]]), 2)  # a silent neuron never wins
    assert silent.tolist() == [[[0.0, 1.0, 0.0]]]
    assert stdp.winner_take_all(post, 0) is post


def test_keep_row_norms_removes_the_component_along_each_weight_row():
    weight = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    dw = torch.tensor([[3.0, 4.0], [2.0, 5.0]], dtype=torch.float64)
    kept = stdp.keep_row_norms(dw, weight)
    assert kept.tolist() == [[0.0, 0.0], [0.0, 5.0]]  # row 0 was all along w, row 1 keeps its orthogonal part
    assert (kept * weight).sum(1).abs().max() < 1e-12
