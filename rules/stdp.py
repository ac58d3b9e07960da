"""Pair-based trace STDP for a weight matrix (SPEC §2.5), additive or multiplicative.

    x_pre  = d_pre x_pre + s_pre;   dw = eta (A+ x_pre s_post - A- s_pre y_post);   y_post = d_post y_post + s_post

with d = exp(-1/tau) per step (spikeformer.plasticity.stdp_step, shared with the attention).
Multiplicative (soft bounds, van Rossum et al. 2000): A+ becomes A+ (w_max - w) and A- becomes
A- (w - w_min), so weights stay in [w_min, w_max] without clipping. The homeostasis that
unsupervised feature learning needs (adaptive thresholds, winner-take-all, weight
normalisation; Diehl & Cook 2015) acts around this update; its pure parts are here:

    winner_take_all   only the k most active post neurons of a sample (and token) learn from it:
                      lateral inhibition of plasticity, so neurons specialise on different inputs
    keep_row_norms    removes from dw each post neuron's component along its own weight vector,
                      so the norm of every neuron's incoming weights stays (to first order):
                      weight normalisation without a separate rescaling step

The adaptive threshold is the model's BatchNorm before each LIF: recalibrated every epoch, its
shift moves each neuron's effective threshold so that no neuron stays silent or saturates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from spikeformer.plasticity import Traces, stdp_step

from .base import RuleError, check_non_negative, check_positive, decay, weight_outer


@dataclass(frozen=True)
class STDPParameters:
    """lr: eta; a_plus, a_minus: amplitudes A+, A- (>= 0); tau_pre, tau_post: trace time constants
    (steps, > 0); multiplicative: soft bounds in [w_min, w_max]."""

    lr: float = 1e-3
    a_plus: float = 1.0
    a_minus: float = 1.0
    tau_pre: float = 2.0
    tau_post: float = 2.0
    multiplicative: bool = False
    w_min: float = -1.0
    w_max: float = 1.0

    def __post_init__(self) -> None:
        check_positive("stdp", lr=self.lr, tau_pre=self.tau_pre, tau_post=self.tau_post)
        check_non_negative("stdp", a_plus=self.a_plus, a_minus=self.a_minus)
        if not self.w_min < self.w_max:
            raise RuleError(f"stdp: w_min must be below w_max, got {self.w_min} and {self.w_max}")


def winner_take_all(post: Tensor, k: int) -> Tensor:
    """Keep the spikes of the ``k`` post neurons that fired most over the sample: ``post
    [T, ..., J]`` -> the same with every other neuron's spikes zeroed (silent neurons never
    win; ``k = 0`` keeps all). Ties go to the lower index (``torch.topk`` on counts plus a tiny
    index-ordered offset)."""
    j = post.shape[-1]
    if k <= 0 or k >= j:
        return post
    counts = post.sum(0)  # [..., J]
    order = torch.arange(j, 0, -1, dtype=counts.dtype, device=counts.device) / (2 * j)  # < 0.5: breaks ties only
    top = torch.topk(counts + order, k, dim=-1).indices
    mask = torch.zeros_like(counts).scatter_(-1, top, 1.0) * (counts > 0)
    return post * mask


def keep_row_norms(dw: Tensor, weight: Tensor) -> Tensor:
    """``dw [J, I]`` minus each row's projection on the weight row: ``dw_j - (dw_j . w_j / |w_j|^2) w_j``."""
    along = (dw * weight).sum(1, keepdim=True) / (weight * weight).sum(1, keepdim=True).clamp(min=1e-12)
    return dw - along * weight


def initial_traces(pre: Tensor, post: Tensor) -> Traces:
    """Zero traces shaped like one step of the pre ``[..., I]`` and post ``[..., J]`` spikes."""
    return Traces(pre.new_zeros(pre.shape), post.new_zeros(post.shape))


def update(pre: Tensor, post: Tensor, traces: Optional[Traces], params: STDPParameters,
           modulator: Optional[Tensor] = None, weight: Optional[Tensor] = None) -> tuple[Tensor, Traces]:
    """One step: spikes ``pre [..., I]`` and ``post [..., J]`` at step t -> ``dw [J, I]`` (summed
    over the leading axes) and the traces after step t. ``weight [J, I]`` is needed only by the
    multiplicative form. STDP takes no modulator (three_factor does)."""
    if modulator is not None:
        raise RuleError("stdp takes no modulator; use the three_factor rule for a reward or error signal")
    traces = traces if traces is not None else initial_traces(pre, post)
    a_plus, a_minus = params.a_plus, params.a_minus
    if params.multiplicative:
        if weight is None:
            raise RuleError("multiplicative stdp needs the current weight [J, I]")
        a_plus, a_minus = a_plus * (params.w_max - weight), a_minus * (weight - params.w_min)
    dw, traces = stdp_step(pre, post, traces, a_plus, a_minus, decay(params.tau_pre), decay(params.tau_post),
                           weight_outer)
    return params.lr * dw, traces
