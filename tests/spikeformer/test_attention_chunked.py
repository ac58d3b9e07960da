"""Chunked spiking attention (spikeformer/attention_chunked.py) equals the naive reference exactly:
outputs, every final-state field and every gradient, for every variant, mode and chunk size."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from spikeformer.attention import VARIANTS, AttentionState, spiking_attention
from spikeformer.attention_chunked import chunked_attention
from test_attention import PLASTICITY_VALUES, random_state, weighted_loss  # same dir, on sys.path under pytest

TOL = dict(rtol=1e-10, atol=1e-10)
B, H, D = 2, 2, 4
MODES = {"global": (7, 3), "causal": (37, 1)}  # (T, N)
CHUNKS = (1, 4, 64)  # 64 > T: a single chunk
SCALE = 0.25


def make_inputs(variant: str, mode: str, binary: bool = True, seed: int = 0):
    """float64 q, k, v (spikes from rand < 0.3, or uniform values), decay, the per-head plasticity
    of test_attention, a modulator, and a random non-zero initial state; all require grad."""
    steps, tokens = MODES[mode]
    g = torch.Generator().manual_seed(seed)
    shape = (steps, B, tokens, H, D)
    draw = (lambda: (torch.rand(shape, generator=g, dtype=torch.float64) < 0.3).double()) if binary \
        else (lambda: torch.rand(shape, generator=g, dtype=torch.float64))
    q, k, v = (draw().requires_grad_(True) for _ in range(3))
    decay = torch.tensor([0.8, 0.55], dtype=torch.float64, requires_grad=True)
    plasticity = {name: torch.tensor(val, dtype=torch.float64, requires_grad=True)
                  for name, val in PLASTICITY_VALUES[variant].items()}
    modulator = None
    if variant == "three_factor":
        modulator = (torch.rand(steps, B, H, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    state = AttentionState(*(f.requires_grad_(f.numel() > 0) for f in random_state(q, variant, seed=seed + 5)))
    return q, k, v, decay, plasticity, modulator, state


def leaves(q, k, v, decay, plasticity, modulator, state):
    """Every differentiable input, by name."""
    named = {"q": q, "k": k, "v": v, "decay": decay, **{f"plasticity.{n}": t for n, t in plasticity.items()}}
    if modulator is not None:
        named["modulator"] = modulator
    named.update({f"state.{n}": t for n, t in zip(AttentionState._fields, state) if t.requires_grad})
    return named


def run(impl: str, variant: str, inputs, chunk_size: int = 64):
    q, k, v, decay, plasticity, modulator, state = inputs
    if impl == "chunked":
        o, final = chunked_attention(q, k, v, decay, SCALE, variant, state, plasticity, modulator, chunk_size)
    else:
        o, final = spiking_attention(q, k, v, decay, SCALE, variant, "naive", state, plasticity, modulator)
    named = leaves(*inputs)
    grads = torch.autograd.grad(weighted_loss(o, final), list(named.values()), allow_unused=True)
    return o.detach(), final, dict(zip(named, grads))


def assert_agree(variant, inputs, chunk_size):
    o_n, s_n, g_n = run("naive", variant, inputs)
    o_c, s_c, g_c = run("chunked", variant, inputs, chunk_size)
    assert o_n.abs().sum() > 0
    torch.testing.assert_close(o_c, o_n, **TOL)
    assert type(s_c) is AttentionState
    for name, a, b in zip(AttentionState._fields, s_c, s_n):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL, msg=lambda m: f"state.{name}: {m}")
    assert g_c.keys() == g_n.keys()
    for name in g_n:
        a, b = g_c[name], g_n[name]
        assert a is not None and b is not None, name
        assert b.abs().sum() > 0, name  # the reference really depends on it
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_equals_naive(variant, mode, chunk_size):
    assert_agree(variant, make_inputs(variant, mode, seed=1), chunk_size)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_equals_naive_for_non_binary_inputs(variant, mode):
    assert_agree(variant, make_inputs(variant, mode, binary=False, seed=2), 4)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("lam", [1.0, 1e-3])
def test_extreme_decays_stay_finite_and_exact(variant, lam):
    """Decay exactly 1 and tiny decays (for lambda and every trace/eligibility decay) give finite
    outputs and gradients, equal to the reference."""
    q, k, v, decay, plasticity, modulator, state = make_inputs(variant, "causal", seed=3)
    decay = torch.full((H,), lam, dtype=torch.float64, requires_grad=True)
    plasticity = {n: (torch.full((H,), lam, dtype=torch.float64) if n.endswith("decay") else t.detach())
                  .requires_grad_(True) for n, t in plasticity.items()}
    inputs = (q, k, v, decay, plasticity, modulator, state)
    _, _, grads = run("chunked", variant, inputs, 4)
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    o_n, s_n, _ = run("naive", variant, inputs)
    o_c, s_c, _ = run("chunked", variant, inputs, 4)
    torch.testing.assert_close(o_c, o_n, **TOL)
    torch.testing.assert_close(s_c.memory.detach(), s_n.memory.detach(), **TOL)


@pytest.mark.parametrize("chunk_size", [0, -3])
def test_chunk_size_below_one_is_a_one_line_value_error(chunk_size):
    q, k, v, decay, plasticity, modulator, state = make_inputs("hebbian", "global")
    with pytest.raises(ValueError, match="chunk_size") as info:
        chunked_attention(q, k, v, decay, SCALE, "hebbian", state, plasticity, modulator, chunk_size)
    assert "\n" not in str(info.value)


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_tensor_grows_with_t_squared(variant):
    """T = 512, N = 1, chunk 64: every tensor built in the forward pass fits in one chunk's
    [C, N, C, M] score tensor (M = 2N keys for stdp) plus one [T, B, N, H, d] output; a [T, T]
    matrix (262144 elements) would not."""
    steps, chunk, tokens, dim = 512, 64, 1, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = ((torch.rand(steps, 1, tokens, 1, dim, generator=g) < 0.3).double() for _ in range(3))
    decay = torch.tensor([0.9], dtype=torch.float64)
    plasticity = {n: torch.tensor(val[:1], dtype=torch.float64) for n, val in PLASTICITY_VALUES[variant].items()}
    modulator = torch.rand(steps, 1, 1, generator=g, dtype=torch.float64) if variant == "three_factor" else None
    state = random_state(q, variant)
    with _LargestTensor() as probe:
        chunked_attention(q, k, v, decay, SCALE, variant, state, plasticity, modulator, chunk)
    keys = 2 * tokens if variant == "stdp" else tokens
    assert probe.largest <= chunk * chunk * tokens * keys + steps * tokens * dim
