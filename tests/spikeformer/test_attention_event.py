"""Event-driven spiking attention (spikeformer/attention_event.py) equals the naive reference:
outputs and every final-state field, for every variant, dtype, token mode and decay, through the
compiled kernel and through the torch fallback; it refuses to run when a gradient is wanted."""

from __future__ import annotations

import pytest
import torch

from spikeformer import attention_event, kernels
from spikeformer.attention import VARIANTS, AttentionState, initial_attention_state, spiking_attention
from spikeformer.errors import ConfigError

torch.set_num_threads(1)

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-5)}
B, H, D = 2, 2, 8
MODES = {"global": (6, 3), "causal": (50, 1)}  # (T, N)
SCALE = 0.3
PLASTICITY = {
    "hebbian": {},
    "stdp": {"a_plus": [0.9, 0.6], "a_minus": [0.4, 0.7], "pre_decay": [0.5, 0.3], "post_decay": [0.6, 0.2]},
    "three_factor": {"eligibility_decay": [0.7, 0.4]},
    "delta": {"delta_rate": [0.5, 0.8]},
}

@pytest.fixture
def kernel_built():
    """The kernel must build here (make setup builds it): a silent fallback would test nothing."""
    assert kernels.load("attention_event") is not None, "the compiled attention_event kernel did not build"


needs_kernel = pytest.mark.usefixtures("kernel_built")


def make_inputs(variant: str, steps: int, tokens: int, dtype: torch.dtype, decay=(0.9, 0.55),
                binary: bool = True, rate: float = 0.2, seed: int = 0, dim: int = D):
    """q, k, v (spikes at ``rate``, or uniform values in [-1, 1)), decay [H], plasticity [H],
    a modulator [T, B, H] with some exact zeros, and a random non-zero initial state."""
    g = torch.Generator().manual_seed(seed)
    shape = (steps, B, tokens, H, dim)
    if binary:
        q, k, v = ((torch.rand(shape, generator=g, dtype=torch.float64) < rate).to(dtype) for _ in range(3))
    else:
        q, k, v = ((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype) for _ in range(3))
    plasticity = {name: torch.tensor(val, dtype=dtype) for name, val in PLASTICITY[variant].items()}
    modulator = None
    if variant == "three_factor":
        modulator = torch.rand(steps, B, H, generator=g, dtype=torch.float64) * 2 - 1
        modulator = torch.where(modulator.abs() < 0.4, torch.zeros_like(modulator), modulator).to(dtype)
    zero = initial_attention_state(q, variant)
    state = AttentionState(*(torch.rand(f.shape, generator=g, dtype=torch.float64).to(dtype) for f in zero))
    return q, k, v, torch.tensor(decay, dtype=dtype), plasticity, modulator, state


def assert_matches_naive(variant: str, inputs, dtype: torch.dtype) -> None:
    q, k, v, decay, plasticity, modulator, state = inputs
    with torch.no_grad():
        expected, expected_state = spiking_attention(q, k, v, decay, SCALE, variant, "naive", state, plasticity,
                                                     modulator)
    o, final = spiking_attention(q, k, v, decay, SCALE, variant, "event", state, plasticity, modulator)
    assert o.dtype == dtype and o.shape == q.shape
    torch.testing.assert_close(o, expected, **TOL[dtype])
    for name, got, want in zip(AttentionState._fields, final, expected_state):
        torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m, name=name: f"state.{name}: {m}")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_naive(variant, mode, dtype):
    steps, tokens = MODES[mode]
    assert_matches_naive(variant, make_inputs(variant, steps, tokens, dtype), dtype)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", VARIANTS)
def test_non_binary_inputs(variant, dtype):
    """Values other than 0/1 (negative too) are multiplied in, not assumed to be 1."""
    assert_matches_naive(variant, make_inputs(variant, 6, 3, dtype, binary=False, seed=3), dtype)


@needs_kernel
@pytest.mark.parametrize("dim", [5, 70])
@pytest.mark.parametrize("variant", VARIANTS)
def test_odd_and_wide_heads(variant, dim):
    """Head sizes that are not a multiple of the kernel's vector width, and wider than its 64-bit
    spike masks."""
    for dtype in (torch.float64, torch.float32):
        assert_matches_naive(variant, make_inputs(variant, 12, 2, dtype, dim=dim, seed=6), dtype)


@needs_kernel
@pytest.mark.parametrize("decay", [(0.0, 1.0), (1.0, 0.9), (0.9, 0.0)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_edge_decays(variant, decay):
    """lambda = 0 (the state resets every step) and lambda = 1 (no decay) next to 0.9."""
    for dtype in (torch.float64, torch.float32):
        assert_matches_naive(variant, make_inputs(variant, 50, 1, dtype, decay=decay, seed=1), dtype)
        assert_matches_naive(variant, make_inputs(variant, 6, 3, dtype, decay=decay, seed=2), dtype)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", VARIANTS)
def test_long_run_rescales(variant, dtype):
    """T = 3000 at decay 0.5: 0.5^3000 underflows, so the lazy scale must be folded many times."""
    assert_matches_naive(variant, make_inputs(variant, 3000, 1, dtype, decay=(0.5, 0.5), seed=4), dtype)


@needs_kernel
def test_streaming_equals_one_call():
    """The returned state continues the sequence: two halves give the outputs of one call."""
    q, k, v, decay, plasticity, modulator, state = make_inputs("stdp", 40, 2, torch.float64)
    whole, final = spiking_attention(q, k, v, decay, SCALE, "stdp", "event", state, plasticity)
    first, mid = spiking_attention(q[:17], k[:17], v[:17], decay, SCALE, "stdp", "event", state, plasticity)
    second, end = spiking_attention(q[17:], k[17:], v[17:], decay, SCALE, "stdp", "event", mid, plasticity)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-12, atol=1e-12)
    for got, want in zip(end, final):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@needs_kernel
def test_inputs_are_not_modified():
    q, k, v, decay, plasticity, modulator, state = make_inputs("three_factor", 6, 3, torch.float64)
    before = [t.clone() for t in (q, k, v, *state)]
    spiking_attention(q, k, v, decay, SCALE, "three_factor", "event", state, plasticity, modulator)
    for old, new in zip(before, (q, k, v, *state)):
        assert torch.equal(old, new)


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_fallback_matches_naive(variant, monkeypatch):
    """Without the compiled kernel (no compiler, CUDA) the recurrent torch form gives the same values."""
    monkeypatch.setattr(kernels, "load", lambda name: None)
    for dtype in (torch.float64, torch.float32):
        assert_matches_naive(variant, make_inputs(variant, 6, 3, dtype), dtype)


@pytest.mark.parametrize("leaf", ["q", "decay", "state"])
def test_refuses_gradients(leaf):
    q, k, v, decay, plasticity, modulator, state = make_inputs("hebbian", 4, 1, torch.float64)
    if leaf == "q":
        q.requires_grad_(True)
    elif leaf == "decay":
        decay.requires_grad_(True)
    else:
        state = state._replace(memory=state.memory.requires_grad_(True))
    message = "attention impl 'event' is for inference (no gradients); use 'chunked' or 'recurrent' to train"
    with pytest.raises(ConfigError) as info:
        spiking_attention(q, k, v, decay, SCALE, "hebbian", "event", state, plasticity)
    assert str(info.value) == message
    with torch.no_grad():  # the same tensors are fine without gradient tracking
        o, _ = spiking_attention(q, k, v, decay, SCALE, "hebbian", "event", state, plasticity)
    assert not o.requires_grad


def test_modulator_gradient_refused():
    q, k, v, decay, plasticity, modulator, state = make_inputs("three_factor", 4, 1, torch.float64)
    with pytest.raises(ConfigError, match="for inference"):
        spiking_attention(q, k, v, decay, SCALE, "three_factor", "event", state, plasticity,
                          modulator.requires_grad_(True))


def test_auto_picks_event_for_cpu_inference(count_calls):
    calls = count_calls(attention_event, "event_attention")
    q, k, v, decay, plasticity, modulator, state = make_inputs("hebbian", 4, 1, torch.float64)
    with torch.no_grad():
        spiking_attention(q, k, v, decay, SCALE, "hebbian", "auto", state, plasticity)
    assert calls == [1]
