"""The fused multi-step LIF (spikeformer/lif_fused.py, spikeformer/kernels/lif.c) against the
reference loop of ``lif_step`` (SPEC §2.1): spikes, membranes, final state and the input
gradient bit for bit; parameter gradients (sums over batch and time, in another order) to
rounding. Both the compiled kernel and the torch fallback, every surrogate, learnable beta and
threshold, alpha > 0, a bias, a carried initial state, and whole models with Loihi delays."""

from __future__ import annotations

import pytest
import torch

from spikeformer import kernels, lif_fused
from spikeformer.config import Config
from spikeformer.errors import ConfigError
from spikeformer.model import build_model
from spikeformer.neurons import LIF, SURROGATES, LIFParameters, LIFState

DTYPES = (torch.float32, torch.float64)
TOLERANCE = {torch.float32: dict(rtol=2e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def _run(impl, x, params, learn, bias, state, record=True):
    torch.manual_seed(1)  # the same learnable initial values for both implementations
    lif = LIF(params, x.shape[-1], learn_beta=learn, learn_threshold=learn, impl=impl).to(x.dtype)
    x = x.clone().requires_grad_(True)
    leaves = [x]
    if state is not None:
        state = LIFState(*(s.clone().requires_grad_(i < 2) for i, s in enumerate(state)))
        leaves += [state.current, state.membrane]
    if bias is not None:
        bias = bias.clone().requires_grad_(True)
        leaves.append(bias)
    leaves += list(lif.parameters())
    membranes: list = []
    spikes, last = lif(x, state, membranes if record else None, bias)
    weights = torch.randn(spikes.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    loss = (spikes * weights).sum() + 1.3 * last.membrane.sum() + 0.7 * last.current.sum() + 0.3 * last.spikes.sum()
    return spikes, last, torch.stack(membranes) if record else None, torch.autograd.grad(loss, leaves)


def _compare(x, params, learn=False, bias=None, state=None):
    ref = _run("loop", x, params, learn, bias, state)
    got = _run("fused", x, params, learn, bias, state)
    # without recording, the kernel keeps no membranes and recomputes them in the backward pass
    unrecorded = _run("fused", x, params, learn, bias, state, record=False)
    assert torch.equal(unrecorded[0], ref[0])
    for a, b in zip(unrecorded[1], ref[1]):
        assert torch.equal(a, b)
    assert torch.equal(unrecorded[3][0], ref[3][0])
    for a, b in zip(unrecorded[3][1:], ref[3][1:]):
        torch.testing.assert_close(a, b, **TOLERANCE[x.dtype])
    assert torch.equal(got[0], ref[0])  # spikes
    for a, b in zip(got[1], ref[1]):  # final current, membrane, spikes
        assert torch.equal(a, b)
    assert torch.equal(got[2], ref[2])  # every recorded membrane
    assert torch.equal(got[3][0], ref[3][0])  # dL/dx, bit for bit
    for a, b in zip(got[3][1:], ref[3][1:]):  # initial state, bias, beta, threshold
        torch.testing.assert_close(a, b, **TOLERANCE[x.dtype])
    assert 0 < ref[0].sum() < ref[0].numel()  # the case is not trivial
    assert ref[3][0].abs().sum() > 0


def _inputs(dtype, steps=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, 3, 5, 7, generator=g, dtype=dtype) * 0.8
    bias = torch.randn(7, generator=g, dtype=dtype) * 0.1
    state = [torch.randn(3, 5, 7, generator=g, dtype=dtype), torch.randn(3, 5, 7, generator=g, dtype=dtype),
             (torch.rand(3, 5, 7, generator=g) < 0.3).to(dtype)]
    return x, bias, state


@pytest.fixture(params=["kernel", "torch"])
def backend(request, monkeypatch):
    """Run each test with the compiled kernel and with the torch fallback."""
    if request.param == "torch":
        monkeypatch.setattr(lif_fused, "_use_kernel", lambda x: None)
    else:
        assert kernels.load("lif") is not None, "the compiled LIF kernel must build here (gcc)"
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_fused_equals_loop_plain(backend, dtype, surrogate, alpha):
    x, _, _ = _inputs(dtype)
    _compare(x, LIFParameters(beta=0.9, alpha=alpha, threshold=1.0, surrogate=surrogate, slope=5.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_fused_equals_loop_learnable_bias_and_state(backend, dtype, surrogate):
    x, bias, state = _inputs(dtype, seed=3)
    _compare(x, LIFParameters(beta=0.8, alpha=0.3, threshold=0.7, surrogate=surrogate, slope=3.0),
             learn=True, bias=bias, state=state)


def test_fused_streaming_halves_equal_one_run(backend):
    lif = LIF(LIFParameters(beta=0.9, alpha=0.4))
    x, _, _ = _inputs(torch.float32, steps=12, seed=4)
    whole, final = lif(x * 2)
    first, mid = lif(x[:5] * 2)
    second, end = lif(x[5:] * 2, mid)
    assert torch.equal(torch.cat([first, second]), whole)
    for a, b in zip(end, final):
        assert torch.equal(a, b)


def test_other_dtypes_use_the_loop():
    lif = LIF(LIFParameters(beta=0.5))
    x = torch.rand(6, 4, dtype=torch.bfloat16) * 2
    spikes, _ = lif(x)
    ref, _ = LIF(LIFParameters(beta=0.5), impl="loop")(x)
    assert spikes.dtype == torch.bfloat16 and torch.equal(spikes, ref)


def test_unknown_implementation_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown LIF implementation 'cuda'"):
        LIF(impl="cuda")


def _set_impl(model, impl):
    for module in model.modules():
        if isinstance(module, LIF):
            module.impl = impl


@pytest.mark.parametrize("case", [dict(delays="loihi"), dict(delays="loihi", variant="three_factor"),
                                  dict(learn_beta=True, learn_threshold=True, alpha=0.5, surrogate="atan"),
                                  dict(task="mnist1d", stem="conv1d", delays="loihi")],
                         ids=["loihi", "loihi_three_factor", "learnable_alpha_atan", "conv1d_loihi"])
def test_model_fused_equals_loop(case):
    cfg = Config(**{"dim": 16, "heads": 2, "head_dim": 8, "depth": 1, "conv_channels": 4, "task": "digits", **case})
    tokens, features = (40, 1) if cfg.task == "mnist1d" else (16, 4)
    x = torch.rand(4, tokens, features, generator=torch.Generator().manual_seed(0))
    grads, logits = {}, {}
    for impl in ("loop", "fused"):
        torch.manual_seed(0)
        model = build_model(cfg, tokens, features, 10)
        _set_impl(model, impl)
        out, _ = model(x)
        out.square().sum().backward()
        logits[impl] = out.detach()
        grads[impl] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert torch.equal(logits["fused"], logits["loop"])
    assert grads["fused"].keys() == grads["loop"].keys()
    for name in grads["loop"]:
        torch.testing.assert_close(grads["fused"][name], grads["loop"][name], rtol=2e-5, atol=1e-6, msg=name)
