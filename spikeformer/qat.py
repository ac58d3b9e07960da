"""Quantisation-aware fine-tuning (``qat = true``): train with the weights Lava will run.

The fixed-point export (``neuromorphic.quantize``) rounds every synaptic weight *after*
folding the BatchNorms into it, per connection: the weight from layer j into LIF population
c is ``g_c g_j W_j`` (``g``: BatchNorm gains at their running statistics) in a_in units
(``vth / theta`` per unit current), stored as an even 8-bit mantissa times ``2^weight_exp``.
The residual stream has several readers (each block's ``in`` and ``mid`` LIFs, the final
LIF), each with its own gain, so one torch weight becomes several differently rounded copies.

With ``qat`` the forward pass computes exactly that network: every Dense that writes the
residual stream returns a ``Term`` (its weight and delayed input) instead of a current, the
stream ``u`` is the list of terms, and each reader sums the terms with its own rounded copy
(``read``). The rounding uses a straight-through estimator, the BatchNorms use their running
statistics (frozen: fine-tuning starts from a trained run, ``init_from``), and attention
decays and rates are rounded to the 12-bit fractions Lava uses. Biases, the attention state
and its read are not rounded here: their fixed-point steps are below 2^-14 of a threshold.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from .fixed_point import fraction12, grid_weights


def round_to_grid(weight: Tensor) -> Tensor:
    """``weight`` on the fixed-point weight grid (``fixed_point.grid_weights``: even 8-bit
    mantissas times ``2^weight_exp``), the grid ``neuromorphic.quantize`` exports."""
    mantissa, exp = grid_weights(weight.detach())
    return mantissa * 2.0 ** exp


def fake_quantize(weight: Tensor) -> Tensor:
    """``round_to_grid`` forward, identity backward (straight-through estimator)."""
    return weight + (round_to_grid(weight) - weight).detach()


def fake_quantize_fraction(value: Tensor) -> Tensor:
    """A decay or rate rounded to 1/4096 (Lava's 12-bit fractions), straight through."""
    return value + (fraction12(value.detach()) - value.detach())


def norm_affine(norm: Optional[nn.Module], features: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``FeatureNorm.affine()`` (running statistics) as ``(gain, shift)``; identity for None."""
    if norm is None:
        return like.new_ones(features), like.new_zeros(features)
    return norm.affine()


class Term:
    """A Dense current not yet read: ``dense`` applied to its delayed input ``x [T, B, N, F_in]``."""

    def __init__(self, dense: nn.Module, x: Tensor, position: Optional[Tensor]) -> None:
        self.dense, self.x, self.position = dense, x, position

    def current(self, gain: Tensor, unit: float) -> Tensor:
        """What a reader with BatchNorm gain ``gain [F_out]`` receives (its shift excluded),
        the folded weight rounded in a_in units (``unit`` per unit current)."""
        linear = self.dense.linear
        g, h = norm_affine(self.dense.norm, linear.out_features, linear.weight)
        folded = (gain * g)[:, None] * linear.weight * unit
        weight = fake_quantize(folded) / unit
        pre = linear.bias if linear.bias is not None else torch.zeros_like(g)
        if self.position is not None:
            pre = pre + self.position  # [N, F_out]
        return self.x @ weight.T + gain * (g * pre + h)


def read(norm: nn.Module, stream: list[Term], unit: float) -> Tensor:
    """``norm(u)`` for ``u = sum of the terms``, each with its own rounded weight copy."""
    like = stream[0].dense.linear.weight
    gain, shift = norm_affine(norm, like.shape[0], like)
    return sum(term.current(gain, unit) for term in stream) + shift


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    """Switch the rounded forward pass on or off in every layer of ``model`` that has one."""
    for module in model.modules():
        if hasattr(module, "fake_quant"):
            module.fake_quant = enabled


@contextmanager
def float_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Run a qat model with its float weights (the float reference the IR is lowered from)."""
    states = {m: m.fake_quant for m in model.modules() if hasattr(m, "fake_quant")}
    set_fake_quant(model, False)
    try:
        yield model
    finally:
        for module, state in states.items():
            module.fake_quant = state
