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

import torch
from torch import Tensor

from spikeformer.plasticity import Traces, eligibility_step, stdp_step

from .base import RuleError, check_non_negative, check_positive, decay, modulate, sample_outer, weight_outer


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


def _no_outer(pre: Tensor, post: Tensor) -> float:
    return 0.0


def update_at_end(pre: Tensor, post: Tensor, modulator: Tensor, params: ThreeFactorParameters) -> Tensor:
    """The whole sample at once, when the modulator arrives only at its last step (an output
    error): ``pre [T, B, ..., I]``, ``post [T, B, ..., J]``, ``modulator [B]`` or ``[B, J]`` ->
    ``dw [J, I]``, equal to stepping ``update`` through it (tested). The eligibility at the last
    step is ``sum_t d_e^(T-1-t) c[t]``; weighting each step's post side by ``d_e^(T-1-t) m``
    instead contracts the batch inside two matmuls and never forms the per-sample ``[B, J, I]``."""
    steps, b, j = pre.shape[0], pre.shape[1], post.shape[-1]
    if modulator.shape not in ((b,), (b, j)):
        raise RuleError(f"three_factor: modulator must be [B] = [{b}] or [B, J] = [{b}, {j}], "
                        f"got {tuple(modulator.shape)}")
    m = modulator.reshape(b, *[1] * (post.dim() - 3), -1).to(post.dtype)  # [B, 1.., J or 1]
    d_pre, d_post, d_e = decay(params.tau_pre), decay(params.tau_post), decay(params.tau_eligibility)
    traces, xs, ys = initial_traces(pre[0], post[0]).spikes, [], []
    for t in range(steps):  # the traces stdp_step reads at each step (its dw left out: 0 amplitudes)
        ys.append(d_post * traces.post)
        _, traces = stdp_step(pre[t], post[t], traces, 0.0, 0.0, d_pre, d_post, _no_outer)
        xs.append(traces.pre)
    weights = torch.tensor([d_e ** (steps - 1 - t) for t in range(steps)], dtype=post.dtype, device=post.device)
    weights = weights.reshape(steps, *[1] * (post.dim() - 1))
    potentiation = weight_outer(torch.stack(xs), post * weights * m)
    depression = weight_outer(pre, torch.stack(ys) * weights * m)
    return params.lr * (params.a_plus * potentiation - params.a_minus * depression)
