"""e-prop (Bellec et al. 2020) for LIF layers: an online estimate of the loss gradient, local in
time and space, from an eligibility trace and a learning signal.

For a synapse i -> j into a LIF neuron (SPEC §2.1: i = alpha i + I_in, v = beta v (1 - s) + i + b,
s = H(v - theta)), with the layer's input current I_in,j = g_j sum_i w_ji z_i (g_j: the norm's
gain, folded in by the driver):

    zhat_i = alpha zhat_i + z_i           pre spikes filtered like the synaptic current
    zbar_i = beta  zbar_i + zhat_i        ... and like the membrane
    e_ji   = psi_j zbar_i                 psi_j = dH/dv at v_j - theta: the surrogate's pseudo-derivative
    dw_ji  = -eta sum_t L_j[t] e_ji[t]    L_j: the learning signal dLoss/ds_j (random or symmetric feedback)

The trace leaves out the reset. Bellec et al.'s LIF resets by subtraction, which does not touch
the eligibility; spikeformer's reset to zero multiplies v by (1 - s_j), which would need one
trace per synapse instead of one per presynaptic neuron. Within a step (or before the first
spike) the estimate is exactly BPTT's gradient (tested). Where the feedback is random, L comes
from the output error through fixed random weights (Lillicrap et al. 2016, Nokland 2016); the
driver computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from spikeformer.neurons import surrogate_derivative

from .base import RuleError, check_positive, weight_outer

FEEDBACK = ("random", "symmetric")


@dataclass(frozen=True)
class EpropParameters:
    """lr: eta; alpha, beta: the layer's current and membrane decays (from its LIF); feedback:
    how the driver makes the learning signal."""

    lr: float = 1e-3
    alpha: float = 0.0
    beta: float = 0.5
    feedback: str = "random"

    def __post_init__(self) -> None:
        check_positive("eprop", lr=self.lr)
        for key in ("alpha", "beta"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise RuleError(f"eprop: {key} must lie in [0, 1] (a per-step decay), got {value!r}")
        if self.feedback not in FEEDBACK:
            raise RuleError(f"eprop: feedback must be one of {', '.join(FEEDBACK)}, got {self.feedback!r}")


class EpropTraces(NamedTuple):
    current: Tensor  # zhat [..., I]
    membrane: Tensor  # zbar [..., I]


def pseudo_derivative(membrane: Tensor, threshold: Tensor | float,
                      spike_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``psi = dH/dv`` at ``membrane - threshold``, the surrogate derivative the model's spike
    function uses in its backward pass (snnTorch's), evaluated without building a graph."""
    return surrogate_derivative(membrane - threshold, spike_fn)


def update(pre: Tensor, post: Tensor, traces: Optional[EpropTraces], params: EpropParameters,
           modulator: Optional[Tensor] = None) -> tuple[Tensor, EpropTraces]:
    """One step: pre spikes ``pre [..., I]``, the post neurons' pseudo-derivative ``post [..., J]``
    (``pseudo_derivative``) and the learning signal ``modulator`` (broadcastable to ``post``;
    None = 0) at step t -> ``dw [J, I]`` (summed over the leading axes) and the traces after t."""
    if traces is None:
        zero = pre.new_zeros(pre.shape)
        traces = EpropTraces(zero, zero)
    current = params.alpha * traces.current + pre
    membrane = params.beta * traces.membrane + current
    if modulator is None:
        dw = pre.new_zeros(post.shape[-1], pre.shape[-1])
    else:
        try:
            signal = torch.broadcast_to(modulator, post.shape)
        except RuntimeError:
            raise RuleError(f"eprop: learning signal {tuple(modulator.shape)} does not broadcast to the post "
                            f"neurons {tuple(post.shape)}") from None
        dw = -params.lr * weight_outer(membrane, post * signal)
    return dw, EpropTraces(current, membrane)
