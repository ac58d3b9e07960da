"""Chunked form of the spiking attention (SPEC §2.3), as flash-linear-attention's ``fla/ops/*/chunk.py``.

Same mathematics as ``spiking_attention(..., impl="naive")`` (see ``spikeformer/attention.py`` for
the equations of the four variants), computed chunk by chunk: the time axis is split into chunks
of ``C`` steps (the last may be shorter). Inside a chunk the steps interact through [C*N, C*N]
matmuls with a causal mask that includes the current step (a write at step t is read at step t;
the N tokens of one step all write before any of them reads); between chunks only the d x d
state (and the stdp traces) is carried. Nothing of size [T, T] or [T, N, T, N] is ever built.

Notation per chunk: local steps i, j = 0..c-1; ``S0`` is the memory entering the chunk, so the
memory after local step i holds ``lambda^(i+1) S0``. Decay powers come from ``_decay_matrix``,
``L[h, i, j] = base_h^(i-j)`` for j <= i, as ``pow`` of clamped non-negative lags: no
``lambda^(-t)``, so decays of 1, 1e-3 (and 0) give finite outputs and gradients.

Internal layout is ``[B, H, T, N, d]`` (heads next to batch, so per-head [H] parameters broadcast
on dim 1 and every chunk's matmul is batched over B and H).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from .errors import ConfigError


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, decay: Tensor, scale: float, variant: str, state: Any,
                      plasticity: dict[str, Tensor], modulator: Optional[Tensor],
                      chunk_size: int = 64) -> tuple[Tensor, Any]:
    """Spiking attention in chunks of ``chunk_size`` steps: ``[T, B, N, H, d]`` -> ``[T, B, N, H, d]``.

    ``decay`` lambda ``[H]``; ``plasticity`` the variant's per-head ``[H]`` parameters;
    ``modulator`` ``[T, B, H]`` (three_factor, else ignored); ``state`` any object with fields
    ``memory`` / ``eligibility`` ``[B, H, d, d]`` and ``pre_trace`` / ``post_trace`` ``[B, N, H, d]``
    (empty tensors where the variant has none; those pass through untouched). Returns the output
    currents and ``type(state)(memory, pre_trace, post_trace, eligibility)`` after the last step.
    Inputs are not validated beyond ``chunk_size`` and ``variant`` (``spiking_attention`` does that).
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive number of steps, got {chunk_size}")
    if variant not in _CHUNKS:
        raise ConfigError(f"unknown attention variant {variant!r}; choose one of {tuple(_CHUNKS)}")
    # [T, B, N, H, d] -> [B, H, T, N, d], contiguous so that chunks flatten to [B, H, c*N, d] views
    q, k, v = (x.permute(1, 3, 0, 2, 4).contiguous() for x in (q, k, v))
    mods = modulator.permute(1, 2, 0) if modulator is not None else None  # [T, B, H] -> [B, H, T]
    memory, pre, post, elig = state.memory, state.pre_trace, state.post_trace, state.eligibility
    if variant == "stdp":
        pre, post = pre.permute(0, 2, 1, 3), post.permute(0, 2, 1, 3)  # [B, N, H, d] -> [B, H, N, d]
    carry = (memory, pre, post, elig)
    outs = []
    for start in range(0, q.shape[2], chunk_size):
        part = slice(start, start + chunk_size)
        m = mods[:, :, part] if mods is not None else None  # [B, H, c]
        o, carry = _CHUNKS[variant](q[:, :, part], k[:, :, part], v[:, :, part], m, carry, decay, scale,
                                    plasticity)
        outs.append(o)  # [B, H, c, N, d]
    memory, pre, post, elig = carry
    if variant == "stdp":
        pre, post = pre.permute(0, 2, 1, 3), post.permute(0, 2, 1, 3)  # [B, H, N, d] -> [B, N, H, d]
    o = torch.cat(outs, 2) if outs else torch.zeros_like(q)  # [B, H, T, N, d]
    return o.permute(2, 0, 3, 1, 4), type(state)(memory, pre, post, elig)  # -> [T, B, N, H, d]


# ---- building blocks (shapes per chunk: q, k, v [B, H, c, N, d], memory [B, H, d, d]) ----


def _powers(base: Tensor, lag: Tensor) -> Tensor:
    """``base_h ** lag`` for a per-head ``base [H]`` and lags ``[...]`` >= 0: ``[H, ...]``.

    ``pow`` rather than ``exp(lag * log(base))``: a base of 0 then gives 0^0 = 1 (no log(0)), and
    torch's pow backward is exactly 0 where the exponent is 0."""
    return base.view(-1, *([1] * lag.dim())) ** lag


def _steps(c: int, like: Tensor) -> Tensor:
    """Local step numbers 0..c-1 as ``like``'s float dtype: ``[c]``."""
    return torch.arange(c, device=like.device, dtype=like.dtype)


def _decay_matrix(base: Tensor, c: int, strict: bool = False) -> Tensor:
    """``L[h, i, j] = base_h^(i-j)`` for j <= i (j < i if ``strict``), else 0: ``[H, c, c]``."""
    i = _steps(c, base)
    lag = i.view(-1, 1) - i.view(1, -1)  # i - j: [c, c]
    mask = (lag > 0) if strict else (lag >= 0)
    # clamp: above the diagonal base^(negative lag) overflows for tiny bases, and inf * 0 is nan
    return _powers(base, lag.clamp(min=0)) * mask


# Products are written as batched matmuls over [B, H] with (step, token) flattened into one
# axis: einsum over the 5-d layouts permutes and copies its operands on every call.


def _flat(x: Tensor) -> Tensor:
    """``[B, H, c, N, d]`` -> ``[B, H, c*N, d]`` (a view of contiguous input)."""
    return x.reshape(*x.shape[:2], -1, x.shape[-1])


def _read(q: Tensor, matrix: Tensor, coef: Tensor) -> Tensor:
    """``coef_i q_{i,n} matrix`` with ``matrix [B, H, d, d]``, ``coef [B or 1, H, c]``: ``[B, H, c, N, d]``."""
    return (_flat(q) @ matrix).view(q.shape) * coef[..., None, None]


def _intra(q: Tensor, k: Tensor, v: Tensor, w: Tensor) -> Tensor:
    """``sum_{j, m} w[i, j] (q_{i,n} . k_{j,m}) v_{j,m}``, the in-chunk part of the read.

    ``q [B, H, c, N, d]``, ``k, v [B, H, c, M, d]`` (M may differ from N: stdp doubles the keys),
    ``w [B or 1, H, c, c]`` (causal, zero above the diagonal) -> ``[B, H, c, N, d]``."""
    scores = _flat(q) @ _flat(k).transpose(-1, -2)  # [B, H, cN, cM]: the only [C*N, C*M] term
    weighted = scores * _per_token(w, q.shape[3], k.shape[3])  # [B, H, cN, cM]
    return (weighted @ _flat(v)).view(q.shape[:-1] + v.shape[-1:])


def _per_token(w: Tensor, tokens: int, keys: int) -> Tensor:
    """A per-step weight ``w [B or 1, H, c, c]`` repeated over the tokens of each step:
    ``[B or 1, H, c*N, c*M]``. Materialising it (it is small) keeps the product with the scores
    a plain 4-d broadcast; a 6-d broadcast is several times slower on CPU, forward and backward."""
    *lead, c, _ = w.shape
    return w[..., :, None, :, None].expand(*lead, c, tokens, c, keys).reshape(*lead, c * tokens, c * keys)


def _write(k: Tensor, v: Tensor, w: Tensor) -> Tensor:
    """``sum_{j, m} w[j] k_{j,m}^T v_{j,m}`` with ``w [B or 1, H, c]``: ``[B, H, d, d]``."""
    return _flat(k * w[..., None, None]).transpose(-1, -2) @ _flat(v)


def _linear(q: Tensor, k: Tensor, v: Tensor, memory: Tensor, decay: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Decayed linear attention over one chunk: ``S_i = lambda S_{i-1} + sum_m k_{i,m}^T v_{i,m}``,
    ``o_i = scale q_i S_i``. Keys/values ``[B, H, c, M, d]`` -> (``o [B, H, c, N, d]``, ``S_{c-1}``)."""
    c = q.shape[2]
    lam = _decay_matrix(decay, c)  # lambda^(i-j): [H, c, c]
    first = _powers(decay, _steps(c, decay) + 1)  # lambda^(i+1), weight of S0 at step i: [H, c]
    o = scale * (_read(q, memory, first[None]) + _intra(q, k, v, lam[None]))
    memory = first[:, -1].view(1, -1, 1, 1) * memory + _write(k, v, lam[None, :, -1])  # last row: lambda^(c-1-j)
    return o, memory


# ---- one chunk per variant: (q, k, v, m [B, H, c] | None, carry, decay, scale, p) -> (o, carry) ----


def _hebbian(q, k, v, m, carry, decay, scale, p):
    memory, pre, post, elig = carry
    o, memory = _linear(q, k, v, memory, decay, scale)
    return o, (memory, pre, post, elig)


def _stdp(q, k, v, m, carry, decay, scale, p):
    """The traces do not depend on S, so they are closed-form linear recurrences over the chunk;
    then dS_i = sum_n (A+ x_n)^T v_n + (-A- k_n)^T y_n is hebbian with 2N keys and values."""
    memory, pre, post, elig = carry  # traces [B, H, N, d]
    c = q.shape[2]
    d_pre, d_post = p["pre_decay"], p["post_decay"]
    steps = _steps(c, d_pre) + 1
    # x_i = d_pre^(i+1) x0 + sum_{j<=i} d_pre^(i-j) k_j (this step's key included): [B, H, c, N, d]
    x = torch.einsum("hij,bhjnd->bhind", _decay_matrix(d_pre, c), k) \
        + _powers(d_pre, steps).view(1, -1, c, 1, 1) * pre[:, :, None]
    # y used at step i, decayed to it, holding only earlier values: d_post^(i+1) y0 + sum_{j<i} d_post^(i-j) v_j
    y = torch.einsum("hij,bhjnd->bhind", _decay_matrix(d_post, c, strict=True), v) \
        + _powers(d_post, steps).view(1, -1, c, 1, 1) * post[:, :, None]
    a_plus, a_minus = p["a_plus"].view(1, -1, 1, 1, 1), p["a_minus"].view(1, -1, 1, 1, 1)  # [H] -> [1, H, 1, 1, 1]
    keys = torch.cat([a_plus * x, -a_minus * k], 3)  # [B, H, c, 2N, d]
    values = torch.cat([v, y], 3)  # [B, H, c, 2N, d]
    o, memory = _linear(q, keys, values, memory, decay, scale)
    return o, (memory, x[:, :, -1], y[:, :, -1] + v[:, :, -1], elig)


def _three_factor(q, k, v, m, carry, decay, scale, p):
    """Gated linear attention: the weight of step j's k^T v in S_i is
    ``w[i, j] = sum_{tau=j..i} lambda^(i-tau) m_tau d_e^(tau-j)``, i.e. ``w = L_lambda diag(m) L_e``."""
    memory, pre, post, elig = carry
    c = q.shape[2]
    d_e = p["eligibility_decay"]
    lam_m = _decay_matrix(decay, c)[None] * m[:, :, None, :]  # L_lambda diag(m): [B, H, c, c]
    l_e = _decay_matrix(d_e, c)  # d_e^(tau-j): [H, c, c]
    w = lam_m @ l_e[None]  # [B, H, c, c]
    e_first = _powers(d_e, _steps(c, d_e) + 1)  # d_e^(tau+1), weight of e0 in e_tau: [H, c]
    g = (lam_m @ e_first[None, :, :, None]).squeeze(-1)  # weight of e0 in S_i: [B, H, c]
    lam_first = _powers(decay, _steps(c, decay) + 1)  # lambda^(i+1): [H, c]
    o = scale * (_read(q, memory, lam_first[None]) + _read(q, elig, g) + _intra(q, k, v, w))
    memory = lam_first[:, -1].view(1, -1, 1, 1) * memory + g[..., -1, None, None] * elig + _write(k, v, w[:, :, -1])
    elig = e_first[:, -1].view(1, -1, 1, 1) * elig + _write(k, v, l_e[None, :, -1])
    return o, (memory, pre, post, elig)


def _delta(q, k, v, m, carry, decay, scale, p):
    """DeltaNet's chunk form. With the normalised errors E_i = D_i (V_i - K_i lambda S_{i-1}),
    S_i = lambda^(i+1) S0 + beta sum_{j<=i} lambda^(i-j) K_j^T E_j, so E solves the unit
    lower-triangular system (I + beta D L) E = D (V - lambda^(i+1) K S0) with
    L[(i,n), (j,m)] = lambda^(i-j) k_{i,n} . k_{j,m} for j < i (tokens of one step do not see
    each other's write). Then the output is hebbian with keys beta k and values E."""
    memory, pre, post, elig = carry
    batch, heads, c, tokens, dim = k.shape
    beta = p["delta_rate"].view(1, -1, 1, 1)  # [H] -> [1, H, 1, 1]
    norm = k.sum(-1, keepdim=True).clamp(min=1.0)  # max(1, |k_n|), exactly as the reference: [B, H, c, N, 1]
    strict = _decay_matrix(decay, c, strict=True)  # lambda^(i-j), j < i: [H, c, c]
    flat = _flat(k)  # [B, H, cN, d], rows (step, token)
    gram = (flat @ flat.transpose(-1, -2)) * _per_token(strict[None], tokens, tokens)  # [B, H, cN, cN]
    inv_norm = 1.0 / norm.reshape(batch, heads, c * tokens, 1)  # D as a row scale: [B, H, cN, 1]
    system = torch.eye(c * tokens, dtype=k.dtype, device=k.device) + beta * inv_norm * gram  # [B, H, cN, cN]
    first = _powers(decay, _steps(c, decay) + 1)  # lambda^(i+1): [H, c]
    rhs = (v - _read(k, memory, first[None])) / norm  # D (V - lambda^(i+1) K S0): [B, H, c, N, d]
    err = torch.linalg.solve_triangular(system, rhs.reshape(batch, heads, c * tokens, dim), upper=False,
                                        unitriangular=True)  # E: [B, H, cN, d]
    err = err.reshape(batch, heads, c, tokens, dim)  # [B, H, cN, d] -> [B, H, c, N, d]
    o, memory = _linear(q, beta[..., None] * k, err, memory, decay, scale)  # beta [1, H, 1, 1, 1]
    return o, (memory, pre, post, elig)


_CHUNKS = {"hebbian": _hebbian, "stdp": _stdp, "three_factor": _three_factor, "delta": _delta}
