"""rules.eprop: where e-prop must equal BPTT, it does."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import cross_entropy

from rules import eprop
from rules.base import RuleError
from spikeformer.neurons import LIF, LIFParameters


def bptt_and_eprop(steps: int, threshold: float, alpha: float, seed: int = 0):
    """One LIF layer ``x [T, B, I] -> W -> LIF -> s [T, B, J]``, a linear readout of the spike
    mean and a cross-entropy loss: the autograd gradient of W and e-prop's estimate with
    symmetric feedback (the learning signal is dLoss/ds, taken from the readout)."""
    torch.manual_seed(seed)
    b, i, j, c = 6, 5, 4, 3
    x = (torch.rand(steps, b, i, dtype=torch.float64) < 0.5).to(torch.float64)
    weight = torch.randn(j, i, dtype=torch.float64, requires_grad=True)
    readout = torch.randn(c, j, dtype=torch.float64)
    labels = torch.randint(0, c, (b,))
    lif = LIF(LIFParameters(beta=0.7, alpha=alpha, threshold=threshold, surrogate="fast_sigmoid", slope=5.0))
    membranes: list = []
    spikes, _ = lif(x @ weight.T, record_membrane=membranes)
    loss = cross_entropy(spikes.mean(0) @ readout.T, labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, weight)

    with torch.no_grad():
        probs = torch.softmax(spikes.mean(0) @ readout.T, -1)
        error = probs - torch.nn.functional.one_hot(labels, c).to(torch.float64)  # dLoss/dlogits [B, C]
        signal = error @ readout / steps  # dLoss/ds[t], the same at every step [B, J]
        params = eprop.EpropParameters(lr=1.0, alpha=alpha, beta=0.7, feedback="symmetric")
        traces, estimate = None, torch.zeros(j, i, dtype=torch.float64)
        for t in range(steps):
            psi = eprop.pseudo_derivative(membranes[t], threshold, lif.spike_fn)
            dw, traces = eprop.update(x[t], psi, traces, params, signal)
            estimate -= dw  # dw = -lr * gradient estimate
    return grad, estimate, spikes


def test_single_step_eprop_is_bptt():
    grad, estimate, spikes = bptt_and_eprop(steps=1, threshold=0.5, alpha=0.0)
    assert 0 < spikes.mean() < 1
    torch.testing.assert_close(estimate, grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_eprop_is_bptt_before_the_first_spike(alpha):
    # no neuron reaches threshold: the reset e-prop leaves out never acts, the surrogate still does
    grad, estimate, spikes = bptt_and_eprop(steps=6, threshold=50.0, alpha=alpha)
    assert spikes.sum() == 0 and grad.abs().max() > 0
    torch.testing.assert_close(estimate, grad, rtol=1e-12, atol=1e-15)


def test_after_spikes_eprop_is_an_approximation():
    grad, estimate, spikes = bptt_and_eprop(steps=6, threshold=0.5, alpha=0.0)
    assert spikes.sum() > 0
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(), estimate.flatten(), 0)
    assert not torch.allclose(estimate, grad) and cosine > 0.5


def test_learning_signal_of_the_wrong_shape_is_a_one_line_error():
    with pytest.raises(RuleError, match=r"learning signal \(3,\) does not broadcast"):
        eprop.update(torch.ones(2, 4), torch.ones(2, 5), None, eprop.EpropParameters(), torch.ones(3))


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0), "lr must be a finite number > 0"), (dict(beta=1.5), "beta must lie in"),
    (dict(feedback="mirror"), "feedback must be one of random, symmetric"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(RuleError, match=match):
        eprop.EpropParameters(**kwargs)
