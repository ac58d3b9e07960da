"""Three-factor rule: STDP coincidences kept in an eligibility trace, turned into a weight change
by a modulator (SPEC §2.5):

    e  = d_e e + (A+ x_pre s_post - A- s_pre y_post)       (per sample: e [B, J, I])
    dw = eta sum_b m[b] e[b]                                 m: [B] reward/error, or [B, J] per neuron

A per-neuron modulator is how a layer receives an output error through fixed random feedback
weights (the driver computes m = B err); a [B] modulator is a broadcast reward. With m = 0 the
eligibility still evolves, so a late reward credits earlier coincidences (d_e = exp(-1/tau_e)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

from torch import Tensor

from spikeformer.plasticity import Traces, eligibility_step, stdp_step

from .base import check_non_negative, check_positive, decay, modulate, sample_outer


@dataclass(frozen=True)
class ThreeFactorParameters:
    """lr: eta; a_plus, a_minus: STDP amplitudes; tau_pre, tau_post, tau_eligibility: time
    constants in steps."""

    lr: float = 1e-3
    a_plus: float = 1.0
    a_minus: float = 0.0
    tau_pre: float = 2.0
    tau_post: float = 2.0
    tau_eligibility: float = 10.0

    def __post_init__(self) -> None:
        check_positive("three_factor", lr=self.lr, tau_pre=self.tau_pre, tau_post=self.tau_post,
                       tau_eligibility=self.tau_eligibility)
        check_non_negative("three_factor", a_plus=self.a_plus, a_minus=self.a_minus)


class ThreeFactorTraces(NamedTuple):
    spikes: Traces  # x_pre [B, ..., I], y_post [B, ..., J]
    eligibility: Tensor  # e [B, J, I]


def initial_traces(pre: Tensor, post: Tensor) -> ThreeFactorTraces:
    """Zero traces for one step of ``pre [B, ..., I]`` and ``post [B, ..., J]``."""
    b = pre.shape[0]
    return ThreeFactorTraces(Traces(pre.new_zeros(pre.shape), post.new_zeros(post.shape)),
                             pre.new_zeros(b, post.shape[-1], pre.shape[-1]))


def update(pre: Tensor, post: Tensor, traces: Optional[ThreeFactorTraces], params: ThreeFactorParameters,
           modulator: Optional[Tensor] = None) -> tuple[Tensor, ThreeFactorTraces]:
    """One step: spikes ``pre [B, ..., I]``, ``post [B, ..., J]`` and the modulator at step t
    (``[B]`` or ``[B, J]``; None = 0) -> ``dw [J, I]`` and the traces after step t."""
    traces = traces if traces is not None else initial_traces(pre, post)
    coincidence, spikes = stdp_step(pre, post, traces.spikes, params.a_plus, params.a_minus,
                                    decay(params.tau_pre), decay(params.tau_post), sample_outer)
    elig = eligibility_step(traces.eligibility, coincidence, decay(params.tau_eligibility))
    if modulator is None:
        dw = elig.new_zeros(elig.shape[1:])
    else:
        dw = params.lr * modulate(elig, modulator, "three_factor")
    return dw, ThreeFactorTraces(spikes, elig)
