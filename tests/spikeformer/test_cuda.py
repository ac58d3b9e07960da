"""CUDA checks (``make gpu-check``): the fused LIF and the chunked attention on the GPU against
their references, bf16 autocast against float32 within stated tolerances, and two epochs of
digits trained on ``cuda``. Every test here skips on a machine without CUDA; they are for the
GPU runs recorded in docs/benchmarks.md, not for CI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from spikeformer.attention import spiking_attention
from spikeformer.neurons import LIF, LIFParameters
from test_attention import PLASTICITY_VALUES  # same dir, on sys.path under pytest

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# bf16 keeps 8 bits of mantissa: a membrane within about 2^-8 of the threshold may cross it
# differently, so spikes are compared by agreement and currents by a relative tolerance.
BF16_SPIKE_AGREEMENT = 0.98
BF16_ATTENTION_RTOL = 3e-2


def _lif_run(impl, x, learn):
    torch.manual_seed(0)
    lif = LIF(LIFParameters(beta=0.9, alpha=0.3), x.shape[-1], learn, learn, impl=impl).to(x.device, x.dtype)
    x = x.clone().requires_grad_(True)
    spikes, last = lif(x)
    (spikes.sum() + last.membrane.sum()).backward()
    return spikes, last, x.grad, [p.grad for p in lif.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_lif_on_cuda_equals_the_loop(dtype):
    x = torch.randn(50, 8, 300, device="cuda", dtype=dtype)
    ref, got = _lif_run("loop", x, True), _lif_run("fused", x, True)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[2], ref[2])
    for a, b in zip(got[1], ref[1]):
        assert torch.equal(a, b)
    for a, b in zip(got[3], ref[3]):
        torch.testing.assert_close(a, b)


def test_fused_lif_cuda_equals_cpu_kernel():
    x = torch.randn(50, 8, 300, dtype=torch.float64)
    cpu, gpu = _lif_run("fused", x, False), _lif_run("fused", x.cuda(), False)
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[2].cpu(), cpu[2])


@pytest.mark.parametrize("variant", sorted(PLASTICITY_VALUES))
def test_chunked_attention_on_cuda_equals_naive(variant):
    g = torch.Generator().manual_seed(0)
    q, k, v = ((torch.rand(40, 2, 1, 2, 8, generator=g) < 0.2).double().cuda() for _ in range(3))
    decay = torch.tensor([0.8, 0.6], dtype=torch.float64, device="cuda")
    plasticity = {n: torch.tensor(val, dtype=torch.float64, device="cuda") for n, val in PLASTICITY_VALUES[variant].items()}
    mod = torch.rand(40, 2, 2, generator=g, dtype=torch.float64).cuda() if variant == "three_factor" else None
    for tensor in (q, k, v, decay):
        tensor.requires_grad_(True)
    outs = {}
    for impl in ("naive", "chunked"):
        o, state = spiking_attention(q, k, v, decay, 0.125, variant, impl, None, plasticity, mod)
        grads = torch.autograd.grad((o * o).sum() + state.memory.sum(), (q, k, v, decay))
        outs[impl] = (o, state.memory, grads)
    torch.testing.assert_close(outs["chunked"][0], outs["naive"][0])
    torch.testing.assert_close(outs["chunked"][1], outs["naive"][1])
    for a, b in zip(outs["chunked"][2], outs["naive"][2]):
        torch.testing.assert_close(a, b)


def test_bf16_autocast_lif_spikes_agree_with_float32():
    x = torch.randn(100, 16, 512, device="cuda") * 0.6 + 0.3
    lif = LIF(LIFParameters(beta=0.9)).cuda()
    ref, _ = lif(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low, _ = lif(x.bfloat16())
    agreement = (low.float() == ref).float().mean().item()
    assert agreement >= BF16_SPIKE_AGREEMENT, agreement


def test_bf16_autocast_chunked_attention_within_tolerance():
    g = torch.Generator().manual_seed(1)
    q, k, v = ((torch.rand(256, 2, 1, 4, 16, generator=g) < 0.1).float().cuda() for _ in range(3))
    decay = torch.full((4,), 0.9, device="cuda")
    ref, _ = spiking_attention(q, k, v, decay, 1 / 16, "hebbian", "chunked")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low, _ = spiking_attention(q, k, v, decay, 1 / 16, "hebbian", "chunked")
    torch.testing.assert_close(low.float(), ref, rtol=BF16_ATTENTION_RTOL, atol=BF16_ATTENTION_RTOL)


def test_two_epochs_of_digits_train_on_cuda(tmp_path):
    out = tmp_path / "digits-cuda"
    subprocess.run([sys.executable, "-m", "spikeformer", "train", "--config", "demos/digits.toml", "--epochs", "2",
                    "--device", "cuda", "--out", str(out), "--quiet"], check=True, timeout=240)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda")
    assert metrics["test_accuracy"] > 0.3
