"""Event-driven spiking attention for inference (SPEC §2.3): work that grows with the spike count.

Same mathematics as ``spiking_attention(..., impl="naive")`` (the equations of the four variants
are in ``spikeformer/attention.py``), without gradients. On CPU, for float32 and float64, the
compiled kernel ``spikeformer/kernels/attention_event.c`` walks the time steps per batch and
head and touches only the rows and columns of the d x d state that the step's spikes name (as
``attention_event_counts`` counts them); the per-step decay of the state is a scalar kept aside
and folded in rarely. Elsewhere (CUDA, other dtypes, no compiler) it runs the ``recurrent``
torch form under ``torch.no_grad()``, which computes the same values.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional

import torch
from torch import Tensor

from . import kernels
from .kernels import pointer as _ptr
from .errors import ConfigError, ShapeError

# variant codes and the order of the per-head parameters p0..p3 in the kernel
_KERNEL_VARIANTS = {
    "hebbian": (0, ()),
    "stdp": (1, ("a_plus", "a_minus", "pre_decay", "post_decay")),
    "three_factor": (2, ("eligibility_decay",)),
    "delta": (3, ("delta_rate",)),
}
_REFUSAL = "attention impl 'event' is for inference (no gradients); use 'chunked' or 'recurrent' to train"


def _library(q: Tensor) -> Optional[ctypes.CDLL]:
    """The compiled kernel for ``q``'s device and dtype, or None (use the torch form)."""
    return kernels.for_tensor("attention_event", q)


def event_attention(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, scale: float, variant: str,
                    state: Any, plasticity: dict[str, Tensor],
                    modulator: Optional[Tensor]) -> Optional[tuple[Tensor, Any]]:
    """Spiking attention for inference: ``[T, B, N, H, d]`` spikes -> ``[T, B, N, H, d]`` currents.

    ``decay`` lambda ``[H]``; ``plasticity`` the variant's per-head ``[H]`` parameters;
    ``modulator`` ``[T, B, H]`` (three_factor); ``state`` the initial AttentionState (memory,
    eligibility ``[B, H, d, d]``, traces ``[B, N, H, d]``, empty where unused). Returns the outputs
    and the final state in the same layout (``type(state)``), or None where the kernel cannot run
    (CUDA, other dtypes, no compiler): ``spiking_attention`` then runs its recurrent form without
    gradients. Raises ConfigError when a gradient is wanted.
    """
    tensors = [q, k, v, decay, *plasticity.values(), *state, *([modulator] if modulator is not None else [])]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise ConfigError(_REFUSAL)
    code, names = _KERNEL_VARIANTS[variant]
    lib = _library(q)
    if lib is None:
        return None
    steps, batch, tokens, heads, dim = q.shape
    _check_state(state, variant, batch, tokens, heads, dim)
    dtype = q.dtype

    def owned(x: Tensor) -> Tensor:
        """A fresh contiguous copy in ``dtype``: the kernel updates state in place, and every
        buffer handed to C must stay referenced here until the call returns."""
        return torch.empty(x.shape, dtype=dtype).copy_(x.detach())

    def read(x: Tensor) -> Tensor:  # read-only input: no copy when it is already fine
        return x.detach().to(dtype).contiguous()

    q_, k_, v_, decay_ = read(q), read(k), read(v), read(decay)
    # per-head [H] (the reference also broadcasts a single value to every head)
    params = [read(torch.broadcast_to(plasticity[name].detach(), (heads,))) for name in names]
    params += [None] * (4 - len(params))
    mod = read(modulator) if variant == "three_factor" else None
    memory = owned(state.memory)
    stdp = variant == "stdp"
    pre = owned(state.pre_trace) if stdp else state.pre_trace
    post = owned(state.post_trace) if stdp else state.post_trace
    elig = owned(state.eligibility) if variant == "three_factor" else state.eligibility
    o = torch.empty_like(q_)
    status = kernels.function(lib, "event_attention", q_)(
        _ptr(q_), _ptr(k_), _ptr(v_), _ptr(o), _ptr(memory), _ptr(pre if stdp else None),
        _ptr(post if stdp else None), _ptr(elig if variant == "three_factor" else None), _ptr(decay_),
        *(_ptr(p) for p in params), _ptr(mod), ctypes.c_double(scale), ctypes.c_int(code),
        *(ctypes.c_long(n) for n in (steps, batch, tokens, heads, dim)), ctypes.c_int(torch.get_num_threads()))
    if status != 0:
        raise MemoryError("attention impl 'event': the kernel could not allocate its scratch buffers")
    return o, type(state)(memory, pre, post, elig)


def _check_state(state: Any, variant: str, batch: int, tokens: int, heads: int, dim: int) -> None:
    """The kernel indexes the state buffers directly: a wrong shape would read out of bounds."""
    wanted = {"memory": (batch, heads, dim, dim)}
    if variant == "stdp":
        wanted.update(pre_trace=(batch, tokens, heads, dim), post_trace=(batch, tokens, heads, dim))
    if variant == "three_factor":
        wanted["eligibility"] = (batch, heads, dim, dim)
    for name, shape in wanted.items():
        got = tuple(getattr(state, name).shape)
        if got != shape:
            raise ShapeError(f"initial_state.{name} must be {list(shape)} for q of shape "
                             f"[T, {batch}, {tokens}, {heads}, {dim}], got {list(got)}")
