"""Leaky integrate-and-fire neurons (SPEC §2.1) and the Loihi one-step delay (SPEC §2.2).

The neuron is one pure step function with explicit state, under a thin module:

    i[t] = alpha * i[t-1] + I_in[t]                 # synaptic current (alpha = 0: no current state)
    v[t] = beta  * v[t-1] * (1 - s[t-1]) + i[t] + b  # membrane, reset to zero after a spike
    s[t] = H(v[t] - theta)                           # H(x) = 1 if x > 0 (strict)

This is Lava's stock ``LIF`` with ``du = 1 - alpha``, ``dv = 1 - beta``, ``vth = theta``.
Time is in steps (dt = 1); every quantity is dimensionless. The bias ``b`` enters the membrane,
not the current (as Lava's ``bias_mant``). With ``alpha = 0`` the current keeps nothing
(``i = I_in``), so callers may pass ``I_in + b`` as one input and no separate bias.

In the backward pass H is replaced by a surrogate derivative from ``snntorch.surrogate``.
The reset factor ``(1 - s[t-1])`` is detached (as snnTorch does by default): the gradient
does not flow through the reset, which trains more stably and leaves the forward pass exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from snntorch import surrogate as _snn_surrogate
from torch import Tensor, nn

from .errors import ConfigError

# Surrogates come from snnTorch: each name maps to a factory taking one shape parameter.
SURROGATES: dict[str, Callable[[float], Callable[[Tensor], Tensor]]] = {
    "fast_sigmoid": lambda slope: _snn_surrogate.fast_sigmoid(slope=slope),
    "atan": lambda slope: _snn_surrogate.atan(alpha=slope),
    "sigmoid": lambda slope: _snn_surrogate.sigmoid(slope=slope),
    "triangular": lambda slope: _snn_surrogate.triangular(),
}


def spike_function(name: str = "fast_sigmoid", slope: float = 25.0) -> Callable[[Tensor], Tensor]:
    """Heaviside forward (strict ``x > 0``), surrogate backward; ``name`` from ``SURROGATES``."""
    if name not in SURROGATES:
        raise ConfigError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}")
    surrogate = SURROGATES[name](slope)

    def spike(x: Tensor) -> Tensor:
        if x.dtype == torch.float64:  # keep float64 gradients exact (references, rules/eprop tests)
            return _Float64Spike.apply(x, surrogate)
        # snnTorch returns float32 spikes whatever the input; keep the input dtype (bf16)
        return surrogate(x).to(x.dtype)

    return spike


def surrogate_derivative(x: Tensor, spike_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``dH/dx`` of a spike function (an snnTorch surrogate) at ``x = v - theta``, taken with a unit
    gradient, without building a graph: the derivative its backward pass applies (e-prop's
    pseudo-derivative)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (derivative,) = torch.autograd.grad(spike_fn(leaf).sum(), leaf)
    return derivative


class _Float64Spike(torch.autograd.Function):
    """H(x) in float64 whose backward multiplies the float64 gradient by snnTorch's surrogate
    derivative. snnTorch's spikes are float32, so autograd would round the incoming gradient to
    float32 before the surrogate's backward; here the derivative is taken with a unit gradient
    (exact in float32) and applied in float64."""

    @staticmethod
    def forward(ctx, x: Tensor, surrogate: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Optional[Tensor], None]:
        (x,) = ctx.saved_tensors
        return grad * surrogate_derivative(x, ctx.surrogate), None


@dataclass(frozen=True)
class LIFParameters:
    """Parameters of a LIF population (dimensionless, dt = 1 step).

    beta:      membrane decay per step, 1 - dv in Lava terms (0 <= beta <= 1)
    alpha:     synaptic current decay per step, 1 - du in Lava terms (0 = no current state)
    threshold: firing threshold theta (> 0); a spike needs v > theta
    surrogate: name of the snnTorch surrogate used in the backward pass
    slope:     its shape parameter
    """

    beta: float = 0.5
    alpha: float = 0.0
    threshold: float = 1.0
    surrogate: str = "fast_sigmoid"
    slope: float = 25.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"LIF beta must lie in [0, 1], got {self.beta}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"LIF alpha must lie in [0, 1], got {self.alpha}")
        if not self.threshold > 0:
            raise ConfigError(f"LIF threshold must be > 0, got {self.threshold}")
        if self.surrogate not in SURROGATES:
            raise ConfigError(f"unknown surrogate {self.surrogate!r}; choose one of {sorted(SURROGATES)}")


class LIFState(NamedTuple):
    """State of a LIF population after step t; each tensor has the population's shape."""

    current: Tensor  # i[t]
    membrane: Tensor  # v[t]
    spikes: Tensor  # s[t]


def lif_initial_state(like: Tensor) -> LIFState:
    """All-zero state shaped like one time step of the input."""
    zero = torch.zeros_like(like)
    return LIFState(zero, zero, zero)


def lif_step(
    input_current: Tensor,
    state: LIFState,
    beta: Tensor | float,
    alpha: Tensor | float,
    threshold: Tensor | float,
    spike_fn: Callable[[Tensor], Tensor],
    bias: Optional[Tensor] = None,
) -> tuple[Tensor, LIFState]:
    """One LIF step (SPEC §2.1): ``(I_in[t], state[t-1]) -> (s[t], state[t])``.

    ``beta``, ``alpha`` and ``threshold`` are floats or tensors broadcastable to the input
    (per-neuron learnable values); ``bias`` (broadcastable, None = 0) is added to the membrane.
    Shapes: input ``[...]``, every state tensor ``[...]``.
    """
    current = alpha * state.current + input_current
    keep = 1.0 - state.spikes.detach()  # reset to zero in the step after a spike
    membrane = beta * state.membrane * keep + current
    if bias is not None:
        membrane = membrane + bias
    spikes = spike_fn(membrane - threshold)
    return spikes, LIFState(current, membrane, spikes)


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


LIF_IMPLEMENTATIONS = ("fused", "loop")


class LIF(nn.Module):
    """A LIF population over time: ``[T, ...] -> [T, ...]`` spikes, state explicit.

    With ``learn_beta`` the decay is a per-feature parameter squashed by a sigmoid into (0, 1);
    with ``learn_threshold`` the threshold is a per-feature parameter kept positive by abs.
    ``features`` is the size of the last input dimension (needed only when learning).
    ``impl``: ``fused`` (one autograd node over all steps, ``spikeformer/lif_fused.py``; float32
    and float64, other dtypes use the loop) or ``loop`` (``lif_step`` per step, the reference).
    Both give the same spikes, states and gradients.
    """

    def __init__(
        self,
        params: LIFParameters = LIFParameters(),
        features: int = 1,
        learn_beta: bool = False,
        learn_threshold: bool = False,
        impl: str = "fused",
    ) -> None:
        super().__init__()
        if impl not in LIF_IMPLEMENTATIONS:
            raise ConfigError(f"unknown LIF implementation {impl!r}; choose one of {LIF_IMPLEMENTATIONS}")
        self.params = params
        self.impl = impl
        self.spike_fn = spike_function(params.surrogate, params.slope)
        if learn_beta:
            self.beta_logit = nn.Parameter(torch.full((features,), _logit(params.beta)))
        else:
            self.register_buffer("beta_logit", None)
        if learn_threshold:
            self.threshold_param = nn.Parameter(torch.full((features,), float(params.threshold)))
        else:
            self.register_buffer("threshold_param", None)

    @property
    def beta(self) -> Tensor | float:
        """Membrane decay per step, per feature when learnt."""
        return torch.sigmoid(self.beta_logit) if self.beta_logit is not None else self.params.beta

    @property
    def threshold(self) -> Tensor | float:
        """Firing threshold, per feature when learnt (kept positive)."""
        if self.threshold_param is None:
            return self.params.threshold
        return self.threshold_param.abs() + 1e-3

    def forward(
        self,
        input_current: Tensor,
        state: Optional[LIFState] = None,
        record_membrane: Optional[list] = None,
        bias: Optional[Tensor] = None,
    ) -> tuple[Tensor, LIFState]:
        """Run over time. ``input_current``: ``[T, ...]``; returns spikes ``[T, ...]`` and the last state.

        ``record_membrane``: when a list is given, the membrane ``[...]`` of every step is appended.
        ``bias``: the membrane bias b, broadcastable to one step ``[...]`` (None = 0).
        """
        beta, alpha, threshold = self.beta, self.params.alpha, self.threshold
        if self.impl == "fused" and input_current.dtype in (torch.float32, torch.float64):
            from .lif_fused import lif_sequence  # noqa: PLC0415 - keeps kernels out of plain imports

            spikes, membranes, last = lif_sequence(input_current, state, beta, alpha, threshold,
                                                   self.params.surrogate, self.params.slope,
                                                   self.spike_fn, bias, record=record_membrane is not None)
            if record_membrane is not None:
                record_membrane.extend(membranes.unbind(0))
            return spikes, LIFState(*last)
        if state is None:
            state = lif_initial_state(input_current[0])
        out = []
        # unbind, not x[t]: indexing inside the loop makes the backward pass O(T^2)
        for x_t in input_current.unbind(0):
            s_t, state = lif_step(x_t, state, beta, alpha, threshold, self.spike_fn, bias)
            out.append(s_t)
            if record_membrane is not None:
                record_membrane.append(state.membrane.detach())
        return torch.stack(out, 0), state


def delay_one_step(x: Tensor, previous: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Deliver ``x`` one step later (SPEC §2.2, Lava ``Dense``): ``y[t] = x[t-1]``.

    ``x``: ``[T, ...]``. ``previous`` is the last step of the previous call (zeros when None),
    so streaming over chunks is exact. Returns ``(y [T, ...], x[T-1] to carry)``.
    """
    if previous is None:
        previous = torch.zeros_like(x[0])
    y = torch.cat([previous.unsqueeze(0), x[:-1]], 0)
    return y, x[-1]
