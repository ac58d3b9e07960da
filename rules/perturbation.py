"""Derivative-free learning by perturbation: the loss is measured twice, with +noise and -noise
(antithetic sampling), and the difference says which way to move.

Weight perturbation (Jabri & Flower 1992), noise eps ~ N(0, sigma^2) on the weights:

    g = (L(w + eps) - L(w - eps)) / (2 sigma^2) * eps             (antithetic)
    g = (L(w + eps) - b) / sigma^2 * eps                           (one-sided, baseline b, e.g. L(w))

Node perturbation (Williams 1992; Fiete & Seung 2006), noise xi_j[t] ~ N(0, sigma^2) added to
the input current of each post neuron at every step:

    e_ji = sum_t xi_j[t] z_i[t]                                    (per sample: an eligibility)
    g_ji = (L+ - L-) / (2 sigma^2) e_ji                            summed over samples

Both are unbiased for a loss quadratic in the weights (resp. the node currents): the even terms
cancel in L+ - L-, and E[eps eps^T] = sigma^2 I (tested). The baseline and antithetic pairs
reduce the variance; neither biases the mean. dw = -eta g.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from spikeformer.plasticity import eligibility_step

from .base import RuleError, check_positive, modulate, sample_outer, weight_outer


@dataclass(frozen=True)
class PerturbationParameters:
    """lr: eta; sigma: noise standard deviation (in the units of what is perturbed)."""

    lr: float = 1e-3
    sigma: float = 0.1

    def __post_init__(self) -> None:
        check_positive("perturbation", lr=self.lr, sigma=self.sigma)


def weight_noise(weight: Tensor, params: PerturbationParameters,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """eps ~ N(0, sigma^2), shaped like ``weight``."""
    noise = torch.randn(weight.shape, generator=generator, dtype=weight.dtype, device=weight.device)
    return params.sigma * noise


def weight_gradient(loss_plus: Tensor | float, loss_minus: Tensor | float, noise: Tensor,
                    params: PerturbationParameters) -> Tensor:
    """Antithetic estimate of dL/dw from ``L(w + noise)`` and ``L(w - noise)`` (``loss_minus``
    may be a baseline b instead, with ``one_sided_gradient``)."""
    return (loss_plus - loss_minus) / (2 * params.sigma ** 2) * noise


def one_sided_gradient(loss_plus: Tensor | float, baseline: Tensor | float, noise: Tensor,
                       params: PerturbationParameters) -> Tensor:
    """Estimate of dL/dw from ``L(w + noise)`` and a baseline (e.g. ``L(w)`` or a running mean)."""
    return (loss_plus - baseline) / params.sigma ** 2 * noise


def update(pre: Tensor, post: Tensor, traces: Optional[Tensor], params: PerturbationParameters,
           modulator: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Node perturbation, one step: pre activity ``pre [B, ..., I]`` and the node noise
    ``post [B, ..., J]`` added to the post currents at step t accumulate the per-sample
    eligibility ``[B, J, I]``; the modulator, the loss difference ``L+ - L-`` per sample ``[B]``
    (given once the sample is over; None = not yet), turns it into ``dw [J, I] = -eta g``."""
    increment = sample_outer(pre, post)
    elig = increment if traces is None else eligibility_step(traces, increment, 1.0)
    if modulator is None:
        return elig.new_zeros(elig.shape[1:]), elig
    return -params.lr / (2 * params.sigma ** 2) * modulate(elig, modulator, "perturbation"), elig


def update_at_end(pre: Tensor, noise: Tensor, modulator: Tensor, params: PerturbationParameters) -> Tensor:
    """Node perturbation over the whole sample at once: ``pre [T, B, ..., I]``, the node noise
    ``noise [T, B, ..., J]`` and ``L+ - L-`` per sample ``modulator [B]`` -> ``dw [J, I]``, equal to
    stepping ``update`` through it (tested), without the per-sample ``[B, J, I]`` eligibility."""
    b = pre.shape[1]
    if modulator.shape != (b,):
        raise RuleError(f"perturbation: modulator must be the loss difference per sample [B] = [{b}], "
                        f"got {tuple(modulator.shape)}")
    m = modulator.reshape(1, b, *[1] * (noise.dim() - 2)).to(noise.dtype)
    return -params.lr / (2 * params.sigma ** 2) * weight_outer(pre, noise * m)
