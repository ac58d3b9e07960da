"""Spiking linear attention as an event-driven state update (SPEC §2.3).

Per head, binary spikes ``q, k, v`` in {0,1}^d drive a d x d fast-weight memory S:

    S[t]   = lambda * S[t-1] + dS[t]           # dS depends on the plasticity variant
    o_n[t] = scale * q_n[t] S[t]               # graded current into an output LIF

Variants of dS (sums run over the tokens n that arrive at step t; the stdp and eligibility steps
are the shared kernels of ``spikeformer/plasticity.py``, which the weight rules use too):

    hebbian       dS = sum_n k_n^T v_n
    stdp          x_n = d_pre x_n + k_n ; y_n = d_post y_n ; dS = A+ sum_n x_n^T v_n - A- sum_n k_n^T y_n ;
                  y_n = y_n + v_n
                  (the pre trace includes this step's key, so coincidences potentiate; the
                  post trace used for depression, decayed to this step, holds only earlier
                  value spikes: Brian2's event-driven STDP timing)
    three_factor  e = d_elig e + sum_n k_n^T v_n ; dS = m[t] * e    (m: modulator per head)
    delta         dS = beta * sum_n k_n^T (v_n - k_n (lambda S[t-1])) / max(1, |k_n|)
                  (Widrow-Hoff, step normalised by the number of active keys; the read
                  k_n S touches only rows of active keys, so it stays event-driven)

Every implementation shares one signature (flash-linear-attention style)::

    spiking_attention(q, k, v, decay, scale, variant, impl, initial_state, plasticity, modulator)
        -> (o, final_state)

Shapes: ``q, k, v, o``: ``[T, B, N, H, d]``; ``decay``: ``[H]``; ``modulator``: ``[T, B, H]``;
state tensors: memory/eligibility ``[B, H, d, d]``, traces ``[B, N, H, d]``.

Implementations: ``naive`` (textbook per-step loop with explicit broadcasting, the reference),
``recurrent`` (per-step einsum), ``chunked`` (intra-chunk matmuls plus the carried state, as
flash-linear-attention: ``spikeformer/attention_chunked.py``; the fast form for training),
``event`` (inference only: a compiled kernel whose work grows with the spike count,
``spikeformer/attention_event.py``) and ``parallel`` (hebbian only: the closed form
``o_t = scale * sum_{tau<=t} lambda^(t-tau) (q_t . k_tau) v_tau``, quadratic in T).
``auto`` picks ``event`` for CPU inference without gradients, else ``chunked``.
Token modes are handled by the caller: ``global`` passes all N tokens at every step;
``causal`` passes N = 1 and puts the sequence on the time axis, so the state carries over tokens.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .errors import ConfigError, ShapeError
from .plasticity import Traces, eligibility_step, stdp_step
from .variants import VARIANTS as _TABLE

VARIANTS = tuple(_TABLE)  # the variant table: spikeformer/variants.py
IMPLEMENTATIONS = ("naive", "recurrent", "parallel", "chunked", "fused", "event", "auto")
CHUNK_SIZE = 64  # steps per chunk of the chunked form


class AttentionState(NamedTuple):
    """Explicit attention state; fields a variant does not use are empty tensors."""

    memory: Tensor  # S, [B, H, d, d]
    pre_trace: Tensor  # x (stdp), [B, N, H, d]
    post_trace: Tensor  # y (stdp), [B, N, H, d]
    eligibility: Tensor  # e (three_factor), [B, H, d, d]


def initial_attention_state(q: Tensor, variant: str) -> AttentionState:
    """Zero state for spikes shaped like ``q`` ``[T, B, N, H, d]``."""
    _, batch, tokens, heads, dim = q.shape
    empty = q.new_zeros(0)
    memory = q.new_zeros(batch, heads, dim, dim)
    traces = q.new_zeros(batch, tokens, heads, dim) if _TABLE[variant].traces else empty
    elig = q.new_zeros(batch, heads, dim, dim) if _TABLE[variant].eligibility else empty
    return AttentionState(memory, traces, traces, elig)


def _check(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, variant: str, impl: str,
           plasticity: dict, modulator: Optional[Tensor]) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown attention variant {variant!r}; choose one of {VARIANTS}")
    if impl not in IMPLEMENTATIONS:
        raise ConfigError(f"unknown attention implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    if impl == "parallel" and variant != "hebbian":
        raise ConfigError(f"impl 'parallel' exists only for the hebbian variant, not {variant!r}; use 'recurrent'")
    if q.dim() != 5 or q.shape != k.shape or q.shape != v.shape:
        raise ShapeError(
            f"q, k, v must share one shape [T, B, N, H, d]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if decay.shape != (q.shape[3],):
        raise ShapeError(f"decay must have shape [H] = [{q.shape[3]}], got {tuple(decay.shape)}")
    missing = [name for name in _TABLE[variant].parameter_names if name not in plasticity]
    if missing:
        raise ConfigError(f"variant {variant!r} needs plasticity parameters {missing}")
    if _TABLE[variant].modulated and modulator is None:
        raise ConfigError("variant 'three_factor' needs a modulator [T, B, H]")
    if modulator is not None:
        if modulator.shape != (q.shape[0], q.shape[1], q.shape[3]):
            raise ShapeError(f"modulator must be [T, B, H] = {tuple(q.shape[i] for i in (0, 1, 3))}, "
                             f"got {tuple(modulator.shape)}")


def spiking_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    decay: Tensor,
    scale: float,
    variant: str = "hebbian",
    impl: str = "recurrent",
    initial_state: Optional[AttentionState] = None,
    plasticity: Optional[dict[str, Tensor]] = None,
    modulator: Optional[Tensor] = None,
) -> tuple[Tensor, AttentionState]:
    """Event-driven spiking attention: ``[T, B, N, H, d]`` spikes -> ``[T, B, N, H, d]`` currents.

    ``decay`` is lambda per head ``[H]``; ``plasticity`` holds the per-head ``[H]`` parameters
    of the variant (``a_plus, a_minus, pre_decay, post_decay`` | ``eligibility_decay`` |
    ``delta_rate``); ``modulator`` ``[T, B, H]`` is the third factor. Returns the output
    currents and the final state, which can be passed back as ``initial_state`` (streaming).
    """
    plasticity = plasticity or {}
    _check(q, k, v, decay, variant, impl, plasticity, modulator)
    state = initial_state if initial_state is not None else initial_attention_state(q, variant)
    if impl == "auto":
        impl = choose_implementation(q, k, v, decay, variant, plasticity, modulator, state)
    if impl == "parallel":
        return _parallel_hebbian(q, k, v, decay, scale, state)
    if impl == "fused":
        from .attention_fused import fused_attention  # noqa: PLC0415

        done = fused_attention(q, k, v, decay, scale, variant, state)
        if done is not None:
            return done
        impl = "chunked"  # no kernel for this variant, device or dtype: the chunked form, same values
    if impl == "chunked":
        from .attention_chunked import chunked_attention  # noqa: PLC0415

        return chunked_attention(q, k, v, decay, scale, variant, state, plasticity, modulator, CHUNK_SIZE)
    if impl == "event":
        from .attention_event import event_attention  # noqa: PLC0415

        done = event_attention(q, k, v, decay, scale, variant, state, plasticity, modulator)
        if done is not None:
            return done
        with torch.no_grad():  # no kernel here (CUDA, other dtypes): the recurrent form, same values
            return spiking_attention(q, k, v, decay, scale, variant, "recurrent", state, plasticity, modulator)
    step = _naive_step if impl == "naive" else _recurrent_step
    mods = modulator.unbind(0) if modulator is not None else [None] * q.shape[0]
    out = []
    for q_t, k_t, v_t, m_t in zip(q.unbind(0), k.unbind(0), v.unbind(0), mods):
        o_t, state = step(q_t, k_t, v_t, m_t, state, decay, scale, variant, plasticity)
        out.append(o_t)
    return torch.stack(out, 0), state


def choose_implementation(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, variant: str, plasticity: dict,
                          modulator: Optional[Tensor], state: AttentionState) -> str:
    """``auto``: the event-driven kernel for CPU inference (no tensor needs a gradient). To train
    on CPU, hebbian attention runs the fused kernel where it is faster than the chunked form, as
    measured (docs/benchmarks.md): its work per token grows as d^2, the chunked form's as the
    chunk's tokens times d, so it wins for head sizes up to 32 and, at d = 64, from 4 tokens a
    step. Everything else (other variants, CUDA) trains with the chunked form."""
    tensors = [q, k, v, decay, *plasticity.values(), *state, *([modulator] if modulator is not None else [])]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if q.device.type != "cpu":
        return "chunked"
    if not needs_grad:
        return "event"
    tokens, dim = q.shape[2], q.shape[4]
    return "fused" if variant == "hebbian" and (dim <= 32 or tokens >= 4) else "chunked"


def _per_head(x: Tensor) -> Tensor:
    """[H] -> [1, H, 1, 1] for broadcasting against [B, H, d, d]."""
    return x.view(1, -1, 1, 1)


def _broadcast_outer(a: Tensor, b: Tensor) -> Tensor:
    """sum_n a_n^T b_n by explicit broadcasting: [B, N, H, d] x [B, N, H, d] -> [B, H, d, d]."""
    return (a.unsqueeze(-1) * b.unsqueeze(-2)).sum(1)


def _einsum_outer(a: Tensor, b: Tensor) -> Tensor:
    """sum_n a_n^T b_n with einsum: [B, N, H, d] x [B, N, H, d] -> [B, H, d, d]."""
    return torch.einsum("bnhi,bnhj->bhij", a, b)


def _stdp(k: Tensor, v: Tensor, traces: Traces, p: dict, outer) -> tuple[Tensor, Traces]:
    """The stdp variant's dS: the shared STDP step with keys as pre and values as post spikes,
    per-head amplitudes ``[1, H, 1, 1]`` and trace decays ``[1, 1, H, 1]``."""
    trace_decay = lambda name: p[name].view(1, 1, -1, 1)  # noqa: E731 - [H] against traces [B, N, H, d]
    return stdp_step(k, v, traces, _per_head(p["a_plus"]), _per_head(p["a_minus"]),
                     trace_decay("pre_decay"), trace_decay("post_decay"), outer)


def _naive_step(q, k, v, m, state: AttentionState, decay, scale, variant, p):
    """Reference step: explicit outer products by broadcasting; q, k, v are [B, N, H, d]."""
    lam = _per_head(decay)
    memory = state.memory
    outer = _broadcast_outer(k, v)  # sum_n k_n^T v_n: [B, H, d, d]
    pre, post, elig = state.pre_trace, state.post_trace, state.eligibility
    if variant == "hebbian":
        memory = lam * memory + outer
    elif variant == "stdp":
        update, (pre, post) = _stdp(k, v, Traces(pre, post), p, _broadcast_outer)
        memory = lam * memory + update
    elif variant == "three_factor":
        elig = eligibility_step(elig, outer, _per_head(p["eligibility_decay"]))
        memory = lam * memory + m.view(*m.shape, 1, 1) * elig
    else:  # delta
        decayed = lam * memory
        recall = (k.unsqueeze(-1) * decayed.unsqueeze(1)).sum(-2)  # k_n S: [B, N, H, d]
        norm = k.sum(-1, keepdim=True).clamp(min=1.0)
        error = (v - recall) / norm
        memory = decayed + _per_head(p["delta_rate"]) * (k.unsqueeze(-1) * error.unsqueeze(-2)).sum(1)
    o = scale * (q.unsqueeze(-1) * memory.unsqueeze(1)).sum(-2)  # q_n S: [B, N, H, d]
    return o, AttentionState(memory, pre, post, elig)


def _recurrent_step(q, k, v, m, state: AttentionState, decay, scale, variant, p):
    """Fast step with einsum; same maths as ``_naive_step``."""
    lam = _per_head(decay)
    memory, pre, post, elig = state
    if variant == "hebbian":
        memory = lam * memory + torch.einsum("bnhi,bnhj->bhij", k, v)
    elif variant == "stdp":
        update, (pre, post) = _stdp(k, v, Traces(pre, post), p, _einsum_outer)
        memory = lam * memory + update
    elif variant == "three_factor":
        elig = eligibility_step(elig, _einsum_outer(k, v), _per_head(p["eligibility_decay"]))
        memory = lam * memory + m[..., None, None] * elig
    else:  # delta
        decayed = lam * memory
        recall = torch.einsum("bnhi,bhij->bnhj", k, decayed)
        error = (v - recall) / k.sum(-1, keepdim=True).clamp(min=1.0)
        memory = decayed + _per_head(p["delta_rate"]) * torch.einsum("bnhi,bnhj->bhij", k, error)
    o = scale * torch.einsum("bnhi,bhij->bnhj", q, memory)
    return o, AttentionState(memory, pre, post, elig)


def _parallel_hebbian(q, k, v, decay, scale, state: AttentionState):
    """Closed form of the hebbian variant, quadratic in T (a second, independent reference)."""
    steps = q.shape[0]
    t = torch.arange(1, steps + 1, device=q.device, dtype=q.dtype)
    lag = t.view(-1, 1) - t.view(1, -1)  # t - tau: [T, T]
    lam = decay.view(-1, 1, 1)  # [H, 1, 1]
    # lambda^(t - tau) for tau <= t, else 0: [H, T, T]; clamp keeps pow finite above the diagonal
    mask = torch.where(lag >= 0, lam ** lag.clamp(min=0), torch.zeros_like(lam * lag))
    scores = torch.einsum("tbnhi,sbmhi->bhtnsm", q, k)  # q_{t,n} . k_{s,m}
    weighted = scores * mask.view(1, *mask.shape[:2], 1, mask.shape[2], 1)
    o = scale * torch.einsum("bhtnsm,sbmhj->tbnhj", weighted, v)
    # contribution of the initial state, decayed lambda^t
    lam_t = lam.view(1, -1) ** t.view(-1, 1)  # [T, H]
    o = o + scale * lam_t.view(steps, 1, 1, -1, 1) * torch.einsum("tbnhi,bhij->tbnhj", q, state.memory)
    final_w = lam.view(-1, 1) ** (steps - t).view(1, -1)  # [H, T]
    memory = lam_t[-1].view(1, -1, 1, 1) * state.memory + torch.einsum("hs,sbmhi,sbmhj->bhij", final_w, k, v)
    return o, AttentionState(memory, state.pre_trace, state.post_trace, state.eligibility)


def attention_event_counts(q: Tensor, k: Tensor, v: Tensor, variant: str,
                           modulator: Optional[Tensor] = None) -> dict[str, Tensor]:
    """Synaptic operations the event-driven implementation (the Lava ``SpikingAttention``
    process, whose ``synops`` counter is tested against this) issues, for energy estimates.

    Spikes ``[T, B, N, H, d]``; ``modulator [T, B, H]`` (three_factor). Per step and head:

        hebbian       |k_n| |v_n| per token: one add per coincidence
        stdp          (|v_n| + |k_n|) d per token: a trace column per value spike (potentiation),
                      a trace row per key spike (depression)
        three_factor  |k_n| |v_n| per token into e, then d^2 (S += m e) if the head's m > 0
        delta         2 |k_n| d per token: the recall k_n S and the write read and add a row per key
        read          |q_n| d per token: a row of S per active query

    Decays (of S, traces, e) are per-step state updates, counted by the caller as MACs.
    Returns totals over all axes as 0-d tensors.
    """
    kc, vc, qc = k.sum(-1), v.sum(-1), q.sum(-1)  # active counts per token and head
    dim = q.shape[-1]
    if variant in ("hebbian", "three_factor"):
        update = (kc * vc).sum()
    elif variant == "stdp":
        update = ((kc + vc) * dim).sum()
    elif variant == "delta":
        update = (2 * kc * dim).sum()
    else:
        raise ConfigError(f"unknown attention variant {variant!r}; choose one of {VARIANTS}")
    if variant == "three_factor":
        if modulator is None:
            raise ConfigError("attention_event_counts needs the modulator [T, B, H] for 'three_factor'")
        update = update + (modulator > 0).sum() * dim * dim
    read = (qc * dim).sum()
    return {"update": update, "read": read}
