"""Hebbian spiking attention for training on CPU: one compiled forward and backward over all steps.

Same mathematics as ``spiking_attention(..., variant="hebbian", impl="naive")`` (SPEC §2.3):
``S[t] = lambda S[t-1] + sum_n k_n^T v_n``, ``o_n = scale q_n S[t]``, with gradients for q, k, v,
lambda and the initial memory. The kernel (``spikeformer/kernels/attention_train.c``) runs the
B*H independent (batch, head) recurrences in parallel. It keeps only its inputs for the
backward pass, which recomputes the memories of one (batch, head) at a time in cache. It is the fastest CPU form where the state is small
against the tokens a step reads it with, as in global mode over a few tokens per step
(digits: 3-12x the chunked form, fwd+bwd; ``spikeformer bench``). Where it cannot run (another
variant, CUDA, other dtypes, no compiler) ``fused_attention`` returns None and the caller uses
the chunked form.
"""

from __future__ import annotations

import ctypes
from typing import Any, Optional

import torch
from torch import Tensor

from . import kernels
from .kernels import pointer as _ptr


def _library(q: Tensor) -> Optional[ctypes.CDLL]:
    return kernels.for_tensor("attention_train", q)


class _FusedHebbian(torch.autograd.Function):
    """``(q, k, v [T, B, N, H, d], decay [H], memory0 [B, H, d, d] or None, scale)`` ->
    ``(o [T, B, N, H, d], final memory [B, H, d, d])``."""

    @staticmethod
    def forward(ctx, q, k, v, decay, memory0, scale):
        steps, batch, tokens, heads, dim = q.shape
        out = torch.empty_like(q)
        final = q.new_empty(batch, heads, dim, dim)
        kernels.function(_library(q), "hebbian_forward", q)(
            _ptr(q), _ptr(k), _ptr(v), _ptr(decay), ctypes.c_double(scale), _ptr(memory0), _ptr(out),
            _ptr(final), *_sizes(q), ctypes.c_int(torch.get_num_threads()))
        ctx.save_for_backward(q, k, v, decay, memory0)
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        return out, final

    @staticmethod
    def backward(ctx, grad_out, grad_final):
        q, k, v, decay, memory0 = ctx.saved_tensors
        _, batch, _, heads, dim = q.shape
        # keep every buffer handed to C referenced here (a temporary would be freed before the call)
        grad_out = grad_out.contiguous() if grad_out is not None else torch.zeros_like(q)
        grad_final = grad_final.contiguous() if grad_final is not None else None
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        grad_memory0 = q.new_empty(batch, heads, dim, dim)
        grad_decay = q.new_empty(batch, heads)
        status = kernels.function(_library(q), "hebbian_backward", q)(
            _ptr(q), _ptr(k), _ptr(v), _ptr(decay), ctypes.c_double(ctx.scale), _ptr(memory0),
            _ptr(grad_out), _ptr(grad_final), _ptr(grad_q), _ptr(grad_k), _ptr(grad_v),
            _ptr(grad_memory0), _ptr(grad_decay), *_sizes(q), ctypes.c_int(torch.get_num_threads()))
        if status != 0:
            raise MemoryError("the attention kernel could not allocate its scratch buffer")
        need_q, need_k, need_v, need_decay, need_memory0, _ = ctx.needs_input_grad
        return (grad_q if need_q else None, grad_k if need_k else None, grad_v if need_v else None,
                grad_decay.sum(0) if need_decay else None, grad_memory0 if need_memory0 else None, None)


def _sizes(q: Tensor) -> list[ctypes.c_long]:
    """T, B, N, H, d of ``q`` as the kernel's arguments."""
    return [ctypes.c_long(s) for s in q.shape]


def fused_attention(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, scale: float, variant: str,
                    state: Any) -> Optional[tuple[Tensor, Any]]:
    """Hebbian spiking attention, ``[T, B, N, H, d]`` spikes -> ``[T, B, N, H, d]`` currents, with
    gradients. ``decay`` lambda ``[H]``; ``state`` the initial AttentionState (its memory
    ``[B, H, d, d]``). Returns the outputs and the final state (``type(state)``), or None where the
    kernel cannot run (a variant other than hebbian, CUDA, other dtypes, no compiler)."""
    if variant != "hebbian" or _library(q) is None:
        return None
    dtype = q.dtype
    heads = q.shape[3]
    memory0 = state.memory.to(dtype)
    zero = not memory0.requires_grad and not bool(memory0.any())
    o, memory = _FusedHebbian.apply(
        q.contiguous(), k.to(dtype).contiguous(), v.to(dtype).contiguous(),
        torch.broadcast_to(decay.to(dtype), (heads,)).contiguous(),
        None if zero else memory0.contiguous(), float(scale))
    return o, state._replace(memory=memory)
