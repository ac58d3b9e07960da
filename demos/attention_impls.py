"""Hebbian spiking attention, fwd+bwd: the chunked form against the fused CPU kernel over shapes
(docs/benchmarks.md, "Kernels"): where ``attention_impl = "auto"`` trains with which.

Usage: python demos/attention_impls.py [--repeats 7]
Each row: q, k, v spikes at rate 0.2 [T, B, N, H, d], a learnable decay, a random linear loss;
the median of ``repeats`` timed calls after two warm-ups.
"""

from __future__ import annotations

import argparse
import time

import torch

from spikeformer.attention import choose_implementation, initial_attention_state, spiking_attention

SHAPES = [(4, 64, 4, 8, 16), (14, 64, 4, 8, 16), (8, 64, 16, 8, 16), (20, 32, 32, 8, 16),
          (256, 16, 1, 8, 16), (256, 16, 1, 8, 32), (64, 8, 4, 4, 64), (512, 8, 1, 4, 64), (16, 64, 2, 8, 64)]


def seconds(impl: str, shape: tuple, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    q, k, v = ((torch.rand(shape, generator=gen) < 0.2).float().requires_grad_(True) for _ in range(3))
    logit = torch.zeros(shape[3], requires_grad=True)
    weight = torch.randn(shape, generator=gen)

    def step() -> None:
        o, _ = spiking_attention(q, k, v, torch.sigmoid(logit), 0.25, "hebbian", impl)
        (o * weight).sum().backward()

    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print("| T, B, N, H, d | chunked | fused | chunked / fused | auto picks |")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        chunked, fused = (seconds(impl, shape, args.repeats) for impl in ("chunked", "fused"))
        probe = torch.zeros(shape, requires_grad=True)
        picked = choose_implementation(probe, probe, probe, torch.ones(shape[3]), "hebbian", {}, None,
                                       initial_attention_state(probe, "hebbian"))
        print(f"| {', '.join(map(str, shape))} | {chunked * 1e3:.2f} ms | {fused * 1e3:.2f} ms | "
              f"{chunked / fused:.2f} | {picked} |")


if __name__ == "__main__":
    main()
