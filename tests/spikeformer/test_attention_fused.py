"""The fused hebbian training kernel (spikeformer/attention_fused.py) equals the naive reference:
outputs, final memory and every gradient (q, k, v, lambda, initial memory), in float64 to
rounding and in float32 to float32 rounding, for the head sizes the kernel compiles specially and
for others; ``auto`` picks it to train hebbian attention on CPU where it measured faster."""

from __future__ import annotations

import pytest
import torch

from spikeformer import attention_fused, kernels
from spikeformer.attention import AttentionState, initial_attention_state, spiking_attention
from test_attention import weighted_loss  # same dir, on sys.path under pytest

SCALE = 0.3
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def make_inputs(steps: int, batch: int, tokens: int, heads: int, dim: int, dtype: torch.dtype,
                binary: bool = True, seed: int = 0, zero_state: bool = False):
    g = torch.Generator().manual_seed(seed)
    shape = (steps, batch, tokens, heads, dim)

    def draw():
        x = torch.rand(shape, generator=g, dtype=torch.float64)
        return ((x < 0.3) if binary else x).to(dtype).requires_grad_(True)

    q, k, v = draw(), draw(), draw()
    decay = (torch.rand(heads, generator=g, dtype=torch.float64) * 0.9 + 0.05).to(dtype).requires_grad_(True)
    memory = torch.zeros(batch, heads, dim, dim, dtype=dtype) if zero_state else \
        torch.rand(batch, heads, dim, dim, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    state = initial_attention_state(q, "hebbian")._replace(memory=memory)
    return q, k, v, decay, state


def run(impl: str, q, k, v, decay, state):
    o, final = spiking_attention(q, k, v, decay, SCALE, "hebbian", impl, state)
    named = {"q": q, "k": k, "v": v, "decay": decay}
    if state.memory.requires_grad:
        named["memory"] = state.memory
    grads = torch.autograd.grad(weighted_loss(o, final), list(named.values()))
    return o.detach(), final.memory.detach(), dict(zip(named, grads))


def assert_agree(inputs, dtype):
    o_n, s_n, g_n = run("naive", *inputs)
    o_f, s_f, g_f = run("fused", *inputs)
    assert o_n.abs().sum() > 0
    torch.testing.assert_close(o_f, o_n, **TOL[dtype])
    torch.testing.assert_close(s_f, s_n, **TOL[dtype])
    for name in g_n:
        assert g_n[name].abs().sum() > 0, name  # the reference really depends on it
        torch.testing.assert_close(g_f[name], g_n[name], **TOL[dtype], msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [16, 8, 5])  # 8, 16: compiled for that size; 5: the general loop
@pytest.mark.parametrize("tokens", [4, 1])
def test_matches_naive(dtype, dim, tokens):
    assert_agree(make_inputs(7, 3, tokens, 2, dim, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_binary_inputs_and_zero_state(dtype):
    assert_agree(make_inputs(6, 2, 3, 3, 16, dtype, binary=False, seed=1), dtype)
    inputs = make_inputs(6, 2, 3, 3, 16, dtype, seed=2, zero_state=True)
    assert_agree(inputs, dtype)


def test_the_kernel_runs_and_streams():
    """The fused form really runs its kernel, and two calls carrying the state equal one call."""
    assert kernels.load("attention_train") is not None, "the attention_train kernel did not build"
    q, k, v, decay, state = make_inputs(8, 2, 3, 2, 16, torch.float64, seed=3)
    o, final = spiking_attention(q, k, v, decay, SCALE, "hebbian", "fused", state)
    assert o.grad_fn is not None and "FusedHebbian" in type(o.grad_fn).__name__
    o1, mid = spiking_attention(q[:5], k[:5], v[:5], decay, SCALE, "hebbian", "fused", state)
    o2, end = spiking_attention(q[5:], k[5:], v[5:], decay, SCALE, "hebbian", "fused", mid)
    torch.testing.assert_close(torch.cat([o1, o2]), o, rtol=0, atol=1e-12)
    torch.testing.assert_close(end.memory, final.memory, rtol=0, atol=1e-12)


def test_other_variants_and_no_kernel_use_chunked(monkeypatch):
    """fused_attention declines what it cannot run; spiking_attention then computes the chunked form."""
    q, k, v, decay, state = make_inputs(5, 2, 3, 2, 4, torch.float64, seed=4)
    assert attention_fused.fused_attention(q, k, v, decay, SCALE, "delta", state) is None
    monkeypatch.setattr(kernels, "load", lambda name: None)
    assert attention_fused.fused_attention(q, k, v, decay, SCALE, "hebbian", state) is None
    assert_agree((q, k, v, decay, state), torch.float64)


def test_inputs_are_not_modified():
    q, k, v, decay, state = make_inputs(5, 2, 3, 2, 16, torch.float32, seed=5)
    before = [t.detach().clone() for t in (q, k, v, decay, *state)]
    run("fused", q, k, v, decay, state)
    for old, new in zip(before, (q, k, v, decay, *state)):
        assert torch.equal(old, new.detach())


@pytest.mark.parametrize("tokens, dim, expected", [(4, 8, 1), (1, 16, 1), (4, 64, 1), (2, 64, 0), (1, 64, 0)])
def test_auto_trains_hebbian_with_the_kernel_where_it_is_faster(count_calls, tokens, dim, expected):
    calls = count_calls(attention_fused, "fused_attention")
    q, k, v, decay, state = make_inputs(4, 2, tokens, 2, dim, torch.float64, seed=6)
    o, _ = spiking_attention(q, k, v, decay, SCALE, "hebbian", "auto", state)
    assert len(calls) == expected  # wide heads over few tokens train with the chunked form
    assert o.requires_grad
    assert isinstance(state, AttentionState)
