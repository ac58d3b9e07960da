"""Pair-based trace STDP for a weight matrix (SPEC §2.5), additive or multiplicative.

    x_pre  = d_pre x_pre + s_pre;   dw = eta (A+ x_pre s_post - A- s_pre y_post);   y_post = d_post y_post + s_post

with d = exp(-1/tau) per step (spikeformer.plasticity.stdp_step, shared with the attention).
Multiplicative (soft bounds, van Rossum et al. 2000): A+ becomes A+ (w_max - w) and A- becomes
A- (w - w_min), so weights stay in [w_min, w_max] without clipping. The homeostasis that
unsupervised feature learning needs (adaptive thresholds, winner-take-all, weight
normalisation; Diehl & Cook 2015) acts on the neurons and weights around this update and is
applied by the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
