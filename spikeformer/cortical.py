"""Multi-scale cortical projections for spiking attention (``attention = "cortical"``).

The learned attention computes q, k, v = LIF(norm(W s)) with one learned ``[H d, D]`` matrix
each, and writes back through a learned ``[D, H d]`` matrix: 4 D^2 weights per block. The
cortical form keeps the fast-weight memory (SPEC §2.3) and replaces those matrices by fixed
connectivity at several spatial scales plus one small kernel that every head shares:

    q^h_n = sum_m K_h[n, m] W_q s_m        k^h_n = sum_m K_h[n, m] W_k s_m
    v^h_n = sum_m K_h[n, m] s_m[h d : (h+1) d]        out = norm(I a)

- micro: ``window`` heads pool the token and its grid neighbours (Chebyshev radius 1);
- meso: ``gauss1`` / ``gauss2`` heads pool with a Gaussian of the grid distance (sigma 1 and 2
  tokens); W_q and W_k (``[d, D]``) are shared by all heads, a kernel used at every scale;
- macro: ``global`` heads pool every token equally.

Head h takes scale ``SCALES[h % 4]``. Each K_h has rows summing to 1, so every scale delivers
currents of the same size (the BatchNorm after it sets the gain). Tokens sit on a square grid
for image tasks whose token count is a square, else on a line. The values and the output keep
no weights at all (v: each head reads its own slice of the input, so heads * head_dim = dim).
Learnable: W_q, W_k and the norms: about 2 d D against 4 D^2.

Every projection is linear, so it lowers to one ``full`` Dense (``neuromorphic/lower.py``
unrolls it): the cortical model runs on Lava and Brian2 like any other.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

SCALES = ("window", "gauss1", "gauss2", "global")  # micro, meso, meso, macro


def token_positions(tokens: int, grid: bool) -> Tensor:
    """``[N, 2]`` token coordinates: a square grid (row-major, as patches are numbered) or a line."""
    side = math.isqrt(tokens)
    if grid and side * side == tokens:
        index = torch.arange(tokens)
        return torch.stack([index // side, index % side], 1).double()
    return torch.stack([torch.arange(tokens), torch.zeros(tokens, dtype=torch.long)], 1).double()


def mixing_kernel(scale: str, positions: Tensor) -> Tensor:
    """``[N, N]`` token pooling at ``scale`` (rows sum to 1): ``K[n, m]`` is token m's share in token n."""
    distance = torch.cdist(positions, positions)  # Euclidean, in tokens
    if scale == "window":
        weight = ((positions[:, None] - positions[None]).abs().amax(-1) <= 1).double()
    elif scale in ("gauss1", "gauss2"):
        sigma = 1.0 if scale == "gauss1" else 2.0
        weight = torch.exp(-distance ** 2 / (2 * sigma ** 2))
    elif scale == "global":
        weight = torch.ones_like(distance)
    else:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
    return weight / weight.sum(1, keepdim=True)


def head_kernels(heads: int, tokens: int, grid: bool) -> Tensor:
    """``[H, N, N]``: head h pools at ``SCALES[h % 4]``."""
    positions = token_positions(tokens, grid)
    return torch.stack([mixing_kernel(SCALES[h % len(SCALES)], positions) for h in range(heads)])


class CorticalProjection(nn.Module):
    """``[T, B, N, D] -> [T, B, N, H*d]``: each head pools tokens at its scale (``head_kernels``)
    and maps features by one ``[d, D]`` kernel shared by all heads (``shared``), or reads its own
    slice ``[h d, (h+1) d)`` of the features (``shared = False``: no weights).

    It stands where a ``Dense`` holds its ``nn.Linear`` (``weight``, ``bias``, ``in_features``,
    ``out_features``), so the Dense's delay, norm and lowering apply unchanged; ``mixes_tokens``
    tells the lowering to unroll it into a full matrix."""

    mixes_tokens = True

    def __init__(self, dim: int, heads: int, head_dim: int, tokens: int, grid: bool, shared: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = dim, heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.register_buffer("kernels", head_kernels(heads, tokens, grid).float())
        self.bias = None
        if shared:
            self.weight: Optional[nn.Parameter] = nn.Parameter(torch.empty(head_dim, dim))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear initialises
        else:
            if heads * head_dim != dim:
                raise ValueError(f"cortical values read a slice per head: heads * head_dim = {heads * head_dim} "
                                 f"must equal dim = {dim}")
            self.weight = None

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., N, D]`` -> ``[..., N, H*d]``."""
        if self.weight is not None:
            z = x @ self.weight.t()  # [..., N, d], one kernel for every head
            y = torch.einsum("hnm,...md->...nhd", self.kernels.to(x.dtype), z)
        else:
            z = x.unflatten(-1, (self.heads, self.head_dim))  # [..., N, H, d]: head h's own slice
            y = torch.einsum("hnm,...mhd->...nhd", self.kernels.to(x.dtype), z)
        return y.flatten(-2)

    def synaptic_events(self, x: Tensor) -> float:
        """Synapses reached by the input ``x [..., N, D]``: each nonzero input (m, i) reaches
        every output (n, h, j) whose kernel entry K_h[n, m] is nonzero (and, unshared, only j = i)."""
        reach = (self.kernels != 0).sum(1).to(x.dtype)  # [H, M]: outputs n reached from token m
        active = (x != 0).to(x.dtype)  # [..., M, D]
        if self.weight is not None:  # every head, every output feature j
            per_token = active.sum(-1)  # [..., M]
            return float((per_token @ reach.t()).sum()) * self.head_dim
        per_head = active.unflatten(-1, (self.heads, self.head_dim)).sum(-1)  # [..., M, H]
        return float((per_head * reach.t()).sum())

    def extra_repr(self) -> str:
        shared = "shared [d, D]" if self.weight is not None else "own slice"
        return f"{self.in_features} -> {self.out_features}, scales {SCALES}, {shared}"
