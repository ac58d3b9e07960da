"""LIF neuron (SPEC §2.1) and one-step delay (SPEC §2.2): exact golden values, streaming, gradients."""

from __future__ import annotations

import pytest
import torch

from spikeformer.errors import ConfigError
from spikeformer.neurons import (
    LIF,
    SURROGATES,
    LIFParameters,
    LIFState,
    delay_one_step,
    lif_initial_state,
    lif_step,
    spike_function,
)

# Dyadic inputs: every intermediate value below is exact in binary floating point,
# so the comparisons are exact (==), not approximate.
INPUTS = [0.5, 0.75, 1.0, 0.25, 0.5, 1.5, 0.0, 0.75]

# beta = 0.5, alpha = 0 (no current state), threshold = 1:
#   i[t] = I_in[t];  v[t] = 0.5 * v[t-1] * (1 - s[t-1]) + i[t];  s[t] = v[t] > 1
# t1: i=0.5   v = 0                  + 0.5  = 0.5     s=0
# t2: i=0.75  v = 0.5*0.5            + 0.75 = 1.0     s=0   (v == threshold: strict >, no spike)
# t3: i=1.0   v = 0.5*1.0            + 1.0  = 1.5     s=1
# t4: i=0.25  v = 0.5*1.5*(1-1)      + 0.25 = 0.25    s=0   (reset to zero after the spike)
# t5: i=0.5   v = 0.5*0.25           + 0.5  = 0.625   s=0
# t6: i=1.5   v = 0.5*0.625          + 1.5  = 1.8125  s=1
# t7: i=0.0   v = 0.5*1.8125*(1-1)   + 0.0  = 0.0     s=0   (reset)
# t8: i=0.75  v = 0.5*0.0            + 0.75 = 0.75    s=0
GOLDEN_ALPHA0 = {
    "i": [0.5, 0.75, 1.0, 0.25, 0.5, 1.5, 0.0, 0.75],
    "v": [0.5, 1.0, 1.5, 0.25, 0.625, 1.8125, 0.0, 0.75],
    "s": [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
}

# beta = 0.5, alpha = 0.5, threshold = 1:
#   i[t] = 0.5 * i[t-1] + I_in[t];  v[t] = 0.5 * v[t-1] * (1 - s[t-1]) + i[t]
# t1: i = 0           + 0.5  = 0.5    v = 0             + 0.5  = 0.5   s=0
# t2: i = 0.5*0.5     + 0.75 = 1.0    v = 0.5*0.5       + 1.0  = 1.25  s=1
# t3: i = 0.5*1.0     + 1.0  = 1.5    v = 0 (reset)     + 1.5  = 1.5   s=1   (current keeps it firing)
# t4: i = 0.5*1.5     + 0.25 = 1.0    v = 0 (reset)     + 1.0  = 1.0   s=0   (v == threshold)
# t5: i = 0.5*1.0     + 0.5  = 1.0    v = 0.5*1.0       + 1.0  = 1.5   s=1
# t6: i = 0.5*1.0     + 1.5  = 2.0    v = 0 (reset)     + 2.0  = 2.0   s=1
# t7: i = 0.5*2.0     + 0.0  = 1.0    v = 0 (reset)     + 1.0  = 1.0   s=0   (v == threshold)
# t8: i = 0.5*1.0     + 0.75 = 1.25   v = 0.5*1.0       + 1.25 = 1.75  s=1
GOLDEN_ALPHA05 = {
    "i": [0.5, 1.0, 1.5, 1.0, 1.0, 2.0, 1.0, 1.25],
    "v": [0.5, 1.25, 1.5, 1.0, 1.5, 2.0, 1.0, 1.75],
    "s": [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0],
}

GOLDEN = [(0.0, GOLDEN_ALPHA0), (0.5, GOLDEN_ALPHA05)]


@pytest.mark.parametrize("alpha,golden", GOLDEN, ids=["alpha0", "alpha0.5"])
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_lif_module_golden_trajectory(alpha, golden, surrogate):
    params = LIFParameters(beta=0.5, alpha=alpha, threshold=1.0, surrogate=surrogate)
    lif = LIF(params)
    x = torch.tensor(INPUTS, dtype=torch.float64).view(-1, 1)  # [T, 1]
    membranes: list = []
    spikes, state = lif(x, record_membrane=membranes)
    assert spikes.shape == x.shape
    assert spikes.view(-1).tolist() == golden["s"]
    assert [m.item() for m in membranes] == golden["v"]
    assert state.current.item() == golden["i"][-1]
    assert state.membrane.item() == golden["v"][-1]
    assert state.spikes.item() == golden["s"][-1]


@pytest.mark.parametrize("alpha,golden", GOLDEN, ids=["alpha0", "alpha0.5"])
def test_lif_step_golden_trajectory(alpha, golden):
    fn = spike_function("fast_sigmoid", 25.0)
    state = lif_initial_state(torch.zeros((), dtype=torch.float64))
    got = {"i": [], "v": [], "s": []}
    for x in INPUTS:
        s, state = lif_step(torch.tensor(x, dtype=torch.float64), state, 0.5, alpha, 1.0, fn)
        assert isinstance(state, LIFState)
        assert s.item() == state.spikes.item()
        got["i"].append(state.current.item())
        got["v"].append(state.membrane.item())
        got["s"].append(s.item())
    assert got == golden


def test_lif_step_tensor_parameters_per_neuron():
    # two neurons with different beta/threshold, broadcasting over the last dim
    fn = spike_function()
    beta = torch.tensor([0.5, 1.0], dtype=torch.float64)
    theta = torch.tensor([1.0, 2.0], dtype=torch.float64)
    state = lif_initial_state(torch.zeros(2, dtype=torch.float64))
    # neuron 0: v = 0.75, then 0.375 + 0.75 = 1.125 > 1 -> spike at step 2
    # neuron 1 (perfect integrator, theta 2): v = 0.75, 1.5, 2.25 -> spike at step 3
    expected_v = [[0.75, 0.75], [1.125, 1.5], [0.75, 2.25]]
    expected_s = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    for t in range(3):
        s, state = lif_step(torch.full((2,), 0.75, dtype=torch.float64), state, beta, 0.0, theta, fn)
        assert state.membrane.tolist() == expected_v[t]
        assert s.tolist() == expected_s[t]


def _random_current(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 1.6


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_lif_module_equals_loop_of_lif_step(alpha):
    params = LIFParameters(beta=0.8, alpha=alpha, threshold=1.0)
    lif = LIF(params)
    x = _random_current((10, 3, 5))
    spikes, state = lif(x)
    ref = lif_initial_state(x[0])
    out = []
    for t in range(x.shape[0]):
        s, ref = lif_step(x[t], ref, 0.8, alpha, 1.0, lif.spike_fn)
        out.append(s)
    assert torch.equal(spikes, torch.stack(out))
    for a, b in zip(state, ref):
        assert torch.equal(a, b)
    assert 0 < spikes.sum() < spikes.numel()  # the case is not trivial


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_lif_streaming_two_halves_equals_one_run(alpha):
    lif = LIF(LIFParameters(beta=0.9, alpha=alpha, threshold=1.0))
    x = _random_current((12, 2, 4), seed=1)
    whole, final = lif(x)
    first, mid = lif(x[:5])
    second, end = lif(x[5:], mid)
    assert torch.equal(torch.cat([first, second]), whole)
    for a, b in zip(end, final):
        assert torch.equal(a, b)


def test_lif_streaming_carries_reset_across_chunk_boundary():
    # a spike at the last step of chunk 1 must reset the membrane at the first step of chunk 2
    lif = LIF(LIFParameters(beta=0.5, alpha=0.0, threshold=1.0))
    x = torch.tensor([[0.5], [2.0], [0.5]], dtype=torch.float64)
    s1, st = lif(x[:2])
    assert s1.view(-1).tolist() == [0.0, 1.0]
    s2, st = lif(x[2:], st)
    assert s2.view(-1).tolist() == [0.0]
    assert st.membrane.item() == 0.5  # 0.5*2.5*(1-1) + 0.5


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_surrogate_gradient_flows_and_forward_is_binary(surrogate):
    lif = LIF(LIFParameters(beta=0.9, alpha=0.0, threshold=1.0, surrogate=surrogate, slope=5.0))
    x = _random_current((6, 3, 4), seed=2).requires_grad_(True)
    spikes, _ = lif(x)
    assert set(spikes.detach().unique().tolist()) <= {0.0, 1.0}
    assert 0 < spikes.sum().item() < spikes.numel()
    # binary forward equals the strict Heaviside of the recorded membrane
    membranes: list = []
    lif(x.detach(), record_membrane=membranes)
    assert torch.equal(spikes.detach(), (torch.stack(membranes) > 1.0).to(spikes.dtype))
    (grad,) = torch.autograd.grad(spikes.sum(), x)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_surrogate_gradient_reaches_learnable_beta_and_threshold():
    lif = LIF(LIFParameters(beta=0.8, threshold=1.0), features=4, learn_beta=True, learn_threshold=True)
    x = _random_current((6, 3, 4), seed=3).float()
    spikes, _ = lif(x)
    spikes.sum().backward()
    assert lif.beta_logit.grad is not None and lif.beta_logit.grad.abs().sum() > 0
    assert lif.threshold_param.grad is not None and lif.threshold_param.grad.abs().sum() > 0
    assert torch.allclose(lif.beta, torch.full((4,), 0.8))
    # learnt threshold starts at the configured one (the module adds a 1e-3 floor)
    assert torch.allclose(lif.threshold, torch.full((4,), 1.0), atol=1.5e-3, rtol=0)


def test_reset_is_detached():
    # The reset factor (1 - s[t-1]) is detached: no gradient flows from v[t] into s[t-1].
    fn = spike_function()
    s_prev = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    v_prev = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    state = LIFState(torch.tensor(0.0, dtype=torch.float64), v_prev, s_prev)
    _, new = lif_step(torch.tensor(0.25, dtype=torch.float64), state, 0.5, 0.0, 1.0, fn)
    assert new.membrane.item() == 0.25  # reset to zero, then + i
    g_s, g_v = torch.autograd.grad(new.membrane, (s_prev, v_prev), allow_unused=True)
    assert g_s is None or g_s.item() == 0.0
    assert g_v.item() == 0.0  # beta * (1 - s) = 0


def test_delay_one_step_shifts_by_one():
    x = torch.arange(1.0, 7.0, dtype=torch.float64).view(6, 1)
    y, carry = delay_one_step(x)
    assert y.view(-1).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert carry.tolist() == [6.0]
    y2, _ = delay_one_step(x, previous=torch.tensor([9.0], dtype=torch.float64))
    assert y2.view(-1).tolist() == [9.0, 1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("cut", [1, 3, 6])
def test_delay_one_step_streaming_equals_whole(cut):
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(7, 2, 3, generator=g) > 0.5).double()
    whole, last = delay_one_step(x)
    a, carry = delay_one_step(x[:cut])
    b, last2 = delay_one_step(x[cut:], carry)
    assert torch.equal(torch.cat([a, b]), whole)
    assert torch.equal(last, last2)
    assert torch.equal(last, x[-1])


def test_delay_one_step_passes_gradient():
    x = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    y, _ = delay_one_step(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.tolist() == [[1.0] * 3] * 3 + [[0.0] * 3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta": 1.5},
        {"beta": -0.1},
        {"alpha": 1.5},
        {"threshold": 0.0},
        {"threshold": -1.0},
        {"surrogate": "no_such_surrogate"},
    ],
)
def test_bad_parameters_raise_config_error(kwargs):
    with pytest.raises(ConfigError) as info:
        LIFParameters(**kwargs)
    assert isinstance(info.value, ValueError)
    assert str(next(iter(kwargs.values()))) in str(info.value)


def test_unknown_surrogate_in_spike_function():
    with pytest.raises(ConfigError, match="no_such"):
        spike_function("no_such")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_spikes_keep_input_dtype(dtype):
    spikes, state = LIF()(torch.full((3, 2), 1.5, dtype=dtype))
    assert spikes.dtype == dtype
    assert state.membrane.dtype == dtype
