"""Fused multi-step LIF: the whole ``[T, ...]`` sequence in one forward and one backward pass.

It computes exactly what a loop of ``spikeformer.neurons.lif_step`` computes (SPEC §2.1), values
and gradients, but autograd sees one node instead of about ten per step. For training it keeps
the spikes and its input; the backward pass recomputes the membranes. On CPU, for float32 and
float64, it runs the compiled kernel ``spikeformer/kernels/lif.c``. Elsewhere (CUDA, or no
compiler) it runs the same recurrences as torch ops under one autograd node.

The surrogate derivative is applied inside the kernel for snnTorch's ``fast_sigmoid``, ``atan``
and ``triangular``, written as torch evaluates them so the results are bit-identical. Others
(``sigmoid``: torch's vectorised exp differs from libm's in the last bit) are taken from
snnTorch in one vectorised call before the kernel's recurrence.
"""

from __future__ import annotations

import ctypes
import math
from typing import Callable, Optional

import torch
from torch import Tensor

from . import kernels
from .kernels import pointer as _ptr

# kernel surrogate codes (spikeformer/kernels/lif.c); absent names use SURROGATE_GIVEN
SURROGATE_GIVEN = 0
_KERNEL_SURROGATES = {"fast_sigmoid": 1, "atan": 2, "triangular": 3}


def _surrogate_constants(name: str, slope: float) -> tuple[int, float, float]:
    """Kernel code and the two constants snnTorch's backward multiplies by (before torch casts
    them to the tensor's dtype)."""
    kind = _KERNEL_SURROGATES.get(name, SURROGATE_GIVEN)
    if name == "fast_sigmoid":
        return kind, float(slope), 0.0
    if name == "atan":  # snnTorch: alpha / 2 / (1 + (pi / 2 * alpha * x)^2)
        return kind, math.pi / 2 * slope, slope / 2
    if name == "triangular":  # snnTorch's triangular() has threshold 1 (slope unused)
        return kind, 1.0, 0.0
    return kind, 0.0, 0.0


def _use_kernel(x: Tensor) -> Optional[ctypes.CDLL]:
    return kernels.for_tensor("lif", x)


def _expand(value: Optional[Tensor], size: int) -> Optional[Tensor]:
    """A periodic per-neuron value ``[P]`` (P divides M) -> ``[M]``."""
    return None if value is None or value.numel() == size else value.repeat(size // value.numel())


def _forward_torch(x, i0, v0, s0, beta, threshold, bias, alpha):
    """The forward recurrence as torch ops (CUDA and the no-compiler fallback). It restates
    ``neurons.lif_step`` op for op (importing it would close an import cycle with neurons.py);
    tests/spikeformer/test_lif_fused.py holds the two equal bit for bit."""
    size = x.shape[1]
    beta, threshold, bias = _expand(beta, size), _expand(threshold, size), _expand(bias, size)
    zero = x.new_zeros(size)
    spikes, membrane = torch.empty_like(x), torch.empty_like(x)
    current = i0 if i0 is not None else zero
    mem = v0 if v0 is not None else zero
    keep = 1.0 - s0 if s0 is not None else 1.0 - zero
    for t in range(x.shape[0]):
        current = alpha * current + x[t]
        mem = beta * mem * keep + current
        if bias is not None:
            mem = mem + bias
        s = (mem - threshold > 0).to(x.dtype)
        keep = 1.0 - s
        spikes[t], membrane[t] = s, mem
    return spikes, membrane, current


def _backward_torch(G, spikes, beta, alpha, g_current, g_membrane, keep_grad_membrane: bool):
    """The backward recurrence as torch ops; ``G`` is the surrogate-weighted spike gradient."""
    steps, size = G.shape
    beta = _expand(beta, size)
    grad_input = torch.empty_like(G)
    grad_membrane = torch.empty_like(G) if keep_grad_membrane else None
    gv = G[-1] + g_membrane if g_membrane is not None else G[-1]
    gi = gv + g_current if g_current is not None else gv
    grad_input[-1] = gi
    if grad_membrane is not None:
        grad_membrane[-1] = gv
    for t in range(steps - 2, -1, -1):
        gv = G[t] + (gv * (1.0 - spikes[t])) * beta
        gi = gv + gi * alpha
        grad_input[t] = gi
        if grad_membrane is not None:
            grad_membrane[t] = gv
    return grad_input, grad_membrane, gv


def _periods(*values: Optional[Tensor]) -> list[ctypes.c_long]:
    """The kernel's period arguments of periodic values (1 for an absent bias)."""
    return [ctypes.c_long(v.numel() if v is not None else 1) for v in values]


def _fold(per_neuron: Tensor, period: int) -> Tensor:
    """Sum a per-neuron gradient ``[M]`` onto a periodic value ``[P]``."""
    return per_neuron.view(-1, period).sum(0)


class _FusedLIF(torch.autograd.Function):
    """``(x [T, M], i0, v0, s0 [M] or None (zero), beta [P], threshold [P'], bias [P''] or None)
    -> (spikes, membranes [T, M], last current, last membrane [M])``. beta, threshold and bias are
    periodic over the neurons (neuron j reads index j % P). ``alpha`` is a float; the surrogate
    is given by name, slope and function. The membranes are for recording (no gradient); the
    last ones carry the state's gradient.

    What the backward pass keeps: with the compiled kernel, a kernel surrogate and no gradient for
    beta or the threshold, only the input (which autograd holds anyway) and the initial state;
    the kernel recomputes the membranes block by block. Otherwise the membranes ``[T, M]``
    (``record``: the caller wants them too)."""

    @staticmethod
    def forward(ctx, x, i0, v0, s0, beta, threshold, bias, alpha, surrogate, slope, spike_fn, record):
        steps, size = x.shape
        lib = _use_kernel(x)
        kind, _, _ = _surrogate_constants(surrogate, slope)
        need_beta, need_th = ctx.needs_input_grad[4:6]
        ctx.recompute = lib is not None and kind != SURROGATE_GIVEN and not (need_beta or need_th or record)
        if lib is not None:
            spikes, current, last = torch.empty_like(x), x.new_empty(size), x.new_empty(size)
            membrane = x.new_empty(0) if ctx.recompute else torch.empty_like(x)
            kernels.function(lib, "lif_forward", x)(
                _ptr(x), _ptr(spikes), None if ctx.recompute else _ptr(membrane), _ptr(current), _ptr(last),
                _ptr(i0), _ptr(v0), _ptr(s0), _ptr(beta), _ptr(threshold), _ptr(bias),
                *_periods(beta, threshold, bias),
                ctypes.c_double(alpha), ctypes.c_long(steps), ctypes.c_long(size),
                ctypes.c_int(torch.get_num_threads()))
        else:
            spikes, membrane, current = _forward_torch(x, i0, v0, s0, beta, threshold, bias, alpha)
            last = membrane[-1].clone()
        if ctx.recompute:
            ctx.save_for_backward(spikes, x, i0, v0, s0, beta, threshold, bias)
        else:
            ctx.save_for_backward(spikes, membrane, i0, v0, s0, beta, threshold, bias)
        ctx.alpha, ctx.surrogate, ctx.slope, ctx.spike_fn = alpha, surrogate, slope, spike_fn
        ctx.mark_non_differentiable(membrane)
        ctx.set_materialize_grads(False)
        return spikes, membrane, current, last

    @staticmethod
    def backward(ctx, g_spikes, _g_membrane_all, g_current, g_membrane):
        spikes, saved, i0, v0, s0, beta, threshold, bias = ctx.saved_tensors
        x, membrane = (saved, None) if ctx.recompute else (None, saved)
        alpha = ctx.alpha
        need_x, need_i0, need_v0, _, need_beta, need_th, need_bias = ctx.needs_input_grad[:7]
        steps, size = spikes.shape
        # keep every buffer handed to C referenced here (a temporary would be freed before the call)
        g_spikes = g_spikes.contiguous() if g_spikes is not None else torch.zeros_like(spikes)
        g_membrane = g_membrane.contiguous() if g_membrane is not None else None
        g_current = g_current.contiguous() if g_current is not None else None
        keep_grad_membrane = need_beta or need_bias
        lib = _use_kernel(spikes)
        kind, c1, c2 = _surrogate_constants(ctx.surrogate, ctx.slope)
        G = None
        if lib is None or kind == SURROGATE_GIVEN or need_th:  # membranes were kept for these
            G = _surrogate_backward(membrane - _expand(threshold, size), g_spikes, ctx.spike_fn)
            kind, given = SURROGATE_GIVEN, G
        else:
            given = g_spikes
        if lib is not None:
            grad_input = torch.empty_like(spikes)
            grad_membrane = torch.empty_like(spikes) if keep_grad_membrane else None
            gv_first = spikes.new_empty(size)
            status = kernels.function(lib, "lif_backward", spikes)(
                _ptr(given), _ptr(membrane), _ptr(x), _ptr(i0), _ptr(v0), _ptr(s0), _ptr(beta),
                _ptr(threshold), _ptr(bias),
                *_periods(beta, threshold, bias),
                ctypes.c_double(alpha), _ptr(g_current), _ptr(g_membrane), _ptr(grad_input),
                _ptr(grad_membrane), _ptr(gv_first), ctypes.c_int(kind), ctypes.c_double(c1),
                ctypes.c_double(c2), ctypes.c_long(steps), ctypes.c_long(size),
                ctypes.c_int(torch.get_num_threads()))
            if status != 0:
                raise MemoryError("the LIF kernel could not allocate its scratch buffer")
        else:
            grad_input, grad_membrane, gv_first = _backward_torch(
                G, spikes, beta, alpha, g_current, g_membrane, keep_grad_membrane)
        keep_first = 1.0 - s0 if s0 is not None else torch.ones_like(gv_first)
        g_i0 = grad_input[0] * alpha if need_i0 else None
        g_v0 = (gv_first * keep_first) * _expand(beta, size) if need_v0 else None
        g_beta = None
        if need_beta:  # d/dbeta of (beta * v[t-1]) * keep[t-1], summed over time
            first = v0 if v0 is not None else torch.zeros_like(gv_first)
            previous = torch.cat([first.unsqueeze(0), membrane[:-1]], 0)
            keep = torch.cat([keep_first.unsqueeze(0), 1.0 - spikes[:-1]], 0)
            g_beta = _fold(((grad_membrane * keep) * previous).sum(0), beta.numel())
        g_threshold = _fold(-G.sum(0), threshold.numel()) if need_th else None
        g_bias = _fold(grad_membrane.sum(0), bias.numel()) if need_bias and bias is not None else None
        return (grad_input if need_x else None, g_i0, g_v0, None, g_beta, g_threshold, g_bias,
                None, None, None, None, None)


def _surrogate_backward(x: Tensor, grad: Tensor, spike_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """snnTorch's surrogate backward at ``x`` applied to ``grad``, as autograd would call it."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (out,) = torch.autograd.grad(spike_fn(leaf), leaf, grad_outputs=grad)
    return out


def _periodic(value: Tensor | float, step_shape: torch.Size, like: Tensor) -> Tensor:
    """A value broadcastable to one step ``[...]`` as the ``[P]`` vector the kernel repeats over
    the flattened neurons: P = 1 for a scalar, F for ``[F]``, N * F for ``[N, F]``; a value that
    varies over a leading dimension is expanded to all M neurons. Autograd-tracked."""
    if not isinstance(value, Tensor):
        value = torch.tensor(value, dtype=like.dtype, device=like.device)
    value = value.to(like.dtype)
    shape = tuple(value.shape)
    while shape and shape[0] == 1:  # leading ones broadcast anyway
        shape = shape[1:]
    if len(shape) <= len(step_shape) and tuple(step_shape[len(step_shape) - len(shape):]) == shape:
        return value.reshape(-1).contiguous()
    return torch.broadcast_to(value, step_shape).reshape(-1).contiguous()


def lif_sequence(
    x: Tensor,
    state: Optional[tuple[Tensor, Tensor, Tensor]],
    beta: Tensor | float,
    alpha: float,
    threshold: Tensor | float,
    surrogate: str,
    slope: float,
    spike_fn: Callable[[Tensor], Tensor],
    bias: Optional[Tensor] = None,
    record: bool = False,
) -> tuple[Tensor, Optional[Tensor], tuple[Tensor, Tensor, Tensor]]:
    """Run the LIF over all steps of ``x`` ``[T, ...]`` from ``state = (current, membrane,
    spikes)`` (each ``[...]``; None: all zero). ``beta``, ``threshold`` and ``bias`` broadcast to
    one step.

    Returns spikes ``[T, ...]``, membranes ``[T, ...]`` (detached; None unless ``record``) and the
    last state ``(current, membrane, spikes)``, with gradients as the ``lif_step`` loop has them.
    """
    step_shape = x.shape[1:]
    steps = x.shape[0]
    if state is None:
        current0 = membrane0 = spikes0 = None
    else:  # [...] -> [M]
        current0, membrane0, spikes0 = (torch.broadcast_to(s.to(x.dtype), step_shape).reshape(-1).contiguous()
                                        for s in state)
        spikes0 = spikes0.detach()
    spikes, membranes, current, membrane = _FusedLIF.apply(
        x.reshape(steps, -1).contiguous(), current0, membrane0, spikes0,
        _periodic(beta, step_shape, x), _periodic(threshold, step_shape, x),
        _periodic(bias, step_shape, x) if bias is not None else None,
        float(alpha), surrogate, float(slope), spike_fn, record)
    spikes = spikes.view(steps, *step_shape)  # [T, M] -> [T, ...]
    last = (current.view(step_shape), membrane.view(step_shape), spikes[-1])
    return spikes, membranes.view(steps, *step_shape) if record else None, last
