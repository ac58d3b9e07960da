"""``SpikingAttention``: the event-driven fast-weight memory of SPEC §2.3 as a Lava Process.

Per head h, binary spikes q, k, v in {0,1}^d (from LIF neurons) drive a d x d state S:

    S[t]   = lambda S[t-1] + dS[t]                  # dS: hebbian | stdp | three_factor | delta
    a_n[t] = out_scale * scale * q_n[t] S[t]        # graded current, sent in the SAME step

(the variants' dS and the integer version are in ``models.py`` and ``neuromorphic.fixed_ref``).

Ports (flattened token-major; neuron (n, h, i) has index ``n*(H*d) + h*d + i``):

    q_in, k_in, v_in   InPort  (tokens*H*d,)   query / key / value spikes (non-zero = spike)
    m_in               InPort  (tokens*H,)     three_factor gate spikes, index ``n*H + h``; the
                                               modulator of head h is their mean over tokens
    a_out              OutPort (tokens*H*d,)   output current (float, or int32 a_in in fixed point)

Vars (the state; every variant has all of them, the ones it does not use stay zero, because
a Lava ProcessModel must declare a type for every Var and port of its Process):

    memory       (H, d, d)        S
    pre_trace    (tokens, H, d)   stdp key trace x
    post_trace   (tokens, H, d)   stdp value trace y
    eligibility  (H, d, d)        three_factor eligibility e
    synops       (1,)             synaptic operations issued so far (cumulative): what
                                  ``spikeformer.attention.attention_event_counts`` counts
    saturation   (1,)             fixed point: state cells clipped so far (cumulative; also
                                  output values clipped to the 32-bit wire). Float: stays 0.

``m_in`` always exists. Lava's dense InPort sums over its connected OutPorts, so an
unconnected port receives zeros every step without blocking: hebbian, stdp and delta leave
``m_in`` unconnected. For ``three_factor`` zeros mean a modulator of 0 and S never grows, so
the models print a warning to stderr at step 1 (not an exception: an exception in ``run_spk``
makes lava-nc 0.10.0 raise a bare RuntimeError and hang in ``stop()``). Connect the gate
population, or a ``RingBuffer`` of ones for a constant modulator of 1.

``layout`` lets the ports sit on wider vectors (several populations in one Lava process,
``neuromorphic.lava.run``): ``{port: (size, offset)}`` gives a port the shape ``(size,)``, and
the process reads (or writes) its neurons at ``offset .. offset + width``; the rest of an
input is ignored and the rest of ``a_out`` is zero. Ports not named keep their own width.

``reset_interval`` / ``reset_offset`` work as in Lava's ``LIFReset``: the state (not
``saturation``) is zeroed at the start of every step t with ``t % reset_interval ==
reset_offset``, so samples can run back to back without writing Vars from outside.

The parameters are constants of the run and travel as process parameters (as ``Dense``'s
``weight_exp``), not as Vars: ``decay [H]``, ``scale``, ``out_scale [H*d]``, ``plasticity``
(per-head ``[H]`` arrays, names as in ``neuromorphic.ir.Attention``) for ``floating_pt``, and
``fixed`` (the integer dict made by ``neuromorphic.quantize``) for ``fixed_pt``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

# absolute import only: Lava executes the model file of this package as a top-level module
from spikeformer.variants import PARAMETERS, VARIANTS as _TABLE

VARIANTS = tuple(_TABLE)  # spikeformer/variants.py
PLASTICITY = {name: v.parameter_names for name, v in _TABLE.items()}
STATE_VARS = ("memory", "pre_trace", "post_trace", "eligibility")
DECAY_FIELDS = ("decay",) + tuple(n for n, p in PARAMETERS.items() if p.kind == "decay")  # 12-bit decrements


def _per_head(value: Any, heads: int, what: str) -> np.ndarray:
    arr = np.asarray(value, np.float64).reshape(-1)
    if arr.shape != (heads,):
        raise ValueError(f"SpikingAttention {what} must have one value per head, shape ({heads},), "
                         f"got shape {np.shape(value)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"SpikingAttention {what} contains NaN or infinite values")
    return arr


def check_fixed(fixed: dict, variant: str, heads: int, head_dim: int) -> dict[str, Any]:
    """The integer parameters of ``fixed_ref.attention_step_fixed``, checked and as int64 arrays."""
    need = ("one", "state_bits", "decay", "out_mant", "out_shift") + PLASTICITY[variant]
    missing = [name for name in need if name not in fixed]
    if missing:
        raise ValueError(f"SpikingAttention fixed parameters lack {missing}; make them with "
                         "neuromorphic.quantize (att.fixed) or pass fixed=None for floating_pt only")
    out: dict[str, Any] = {"one": int(fixed["one"]), "state_bits": int(fixed["state_bits"]),
                           "out_shift": int(fixed["out_shift"])}
    out["trace_bits"] = int(fixed.get("trace_bits", out["state_bits"]))  # stdp traces (older IR: the state's)
    for key in ("state_bits", "trace_bits"):
        if not 2 <= out[key] <= 62:
            raise ValueError(f"SpikingAttention fixed {key} must lie in 2..62 (int64 arithmetic), got {out[key]}")
    if out["one"] < 1 or out["out_shift"] < 0:
        raise ValueError(f"SpikingAttention fixed 'one' must be >= 1 and 'out_shift' >= 0, "
                         f"got {out['one']} and {out['out_shift']}")
    for name in ("decay",) + PLASTICITY[variant]:
        arr = np.asarray(fixed[name], np.int64).reshape(-1)
        if arr.shape != (heads,):
            raise ValueError(f"SpikingAttention fixed {name!r} must have shape ({heads},), got {np.shape(fixed[name])}")
        if name in DECAY_FIELDS and ((arr < 0) | (arr > 4096)).any():
            raise ValueError(f"SpikingAttention fixed {name!r} holds 12-bit decrements in 0..4096, got {arr}")
        out[name] = arr
    mant = np.asarray(fixed["out_mant"], np.int64).reshape(-1)
    if mant.shape != (heads * head_dim,):
        raise ValueError(f"SpikingAttention fixed 'out_mant' must have shape ({heads * head_dim},), "
                         f"got {np.shape(fixed['out_mant'])}")
    out["out_mant"] = mant
    return out


def attention_params(tokens: int, heads: int, head_dim: int, variant: str, decay: Any, scale: float,
                     out_scale: Any, plasticity: dict | None, fixed: dict | None) -> dict[str, Any]:
    """The checked process parameters (the models' ``proc_params``); ValueError names a bad one."""
    for what, value in (("tokens", tokens), ("heads", heads), ("head_dim", head_dim)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"SpikingAttention {what} must be a positive integer, got {value!r}")
    tokens, heads, head_dim = int(tokens), int(heads), int(head_dim)
    if variant not in VARIANTS:
        raise ValueError(f"SpikingAttention variant must be one of {VARIANTS}, got {variant!r}")
    plasticity = dict(plasticity or {})
    missing = [p for p in PLASTICITY[variant] if p not in plasticity]
    if missing:
        raise ValueError(f"SpikingAttention variant {variant!r} needs plasticity parameters {missing}")
    out_scale = np.asarray(out_scale, np.float64).reshape(-1)
    if out_scale.shape != (heads * head_dim,):
        raise ValueError(f"SpikingAttention out_scale must have shape ({heads * head_dim},) = (H*d,), "
                         f"got {out_scale.shape}")
    return {"tokens": tokens, "heads": heads, "head_dim": head_dim, "variant": variant,
            "decay": _per_head(decay, heads, "decay"), "scale": float(scale), "out_scale": out_scale,
            "plasticity": {p: _per_head(plasticity[p], heads, f"plasticity {p!r}") for p in PLASTICITY[variant]},
            "fixed": check_fixed(fixed, variant, heads, head_dim) if fixed else None}


PORTS = ("q_in", "k_in", "v_in", "m_in", "a_out")


def port_layout(layout: dict | None, tokens: int, heads: int, head_dim: int) -> dict[str, tuple[int, int]]:
    """``{port: (size, offset)}`` for every port, checked: each port's own neurons must fit."""
    widths = {"q_in": tokens * heads * head_dim, "k_in": tokens * heads * head_dim, "v_in": tokens * heads * head_dim,
              "m_in": tokens * heads, "a_out": tokens * heads * head_dim}
    layout = dict(layout or {})
    unknown = sorted(set(layout) - set(PORTS))
    if unknown:
        raise ValueError(f"SpikingAttention layout names unknown ports {unknown}; known: {list(PORTS)}")
    out = {}
    for port, width in widths.items():
        size, offset = layout.get(port, (width, 0))
        if not (isinstance(size, (int, np.integer)) and isinstance(offset, (int, np.integer))
                and 0 <= offset and offset + width <= size):
            raise ValueError(f"SpikingAttention layout of {port} must be (size, offset) with its {width} neurons "
                             f"inside, got {layout.get(port)!r}")
        out[port] = (int(size), int(offset))
    return out


def reset_params(reset_interval: int | None, reset_offset: int) -> dict[str, int]:
    """``reset_interval`` 0 means never (``None`` given); the offset is taken modulo the interval."""
    if reset_interval is None:
        return {"reset_interval": 0, "reset_offset": 0}
    if not isinstance(reset_interval, (int, np.integer)) or reset_interval < 1:
        raise ValueError(f"SpikingAttention reset_interval must be a positive integer or None (never), "
                         f"got {reset_interval!r}")
    if not isinstance(reset_offset, (int, np.integer)):
        raise TypeError(f"SpikingAttention reset_offset must be an integer, got {reset_offset!r}")
    return {"reset_interval": int(reset_interval), "reset_offset": int(reset_offset) % int(reset_interval)}


class SpikingAttention(AbstractProcess):
    """Event-driven spiking attention over ``tokens`` tokens (module docstring).

    Parameters
    ----------
    tokens, heads, head_dim : int
        N, H and d; every port is flattened token-major.
    variant : str
        ``hebbian``, ``stdp``, ``three_factor`` or ``delta``.
    decay : array [H]
        lambda per head (float model).
    scale : float
        The read scale (float model).
    out_scale : array [H*d]
        Gain per output column (float model).
    plasticity : dict of [H] arrays
        The variant's parameters (float model), as ``neuromorphic.ir.Attention.plasticity``.
    fixed : dict or None
        The integer parameters (``Attention.fixed``), needed by the ``fixed_pt`` model only.
    reset_interval, reset_offset : int
        As Lava's ``LIFReset``: at every step t with ``t % reset_interval == reset_offset``
        the state (memory, traces, eligibility; not ``saturation``) is zeroed before that
        step's update, so samples can run back to back. ``None`` (default): never.
    layout : dict or None
        ``{port: (size, offset)}``: ports on wider vectors (module docstring).
    """

    def __init__(self, *, tokens: int, heads: int, head_dim: int, variant: str,
                 decay: Any, scale: float, out_scale: Any, plasticity: dict | None = None,
                 fixed: dict | None = None, reset_interval: int | None = None, reset_offset: int = 0,
                 layout: dict | None = None, name: str | None = None, log_config: LogConfig | None = None) -> None:
        try:
            params = attention_params(tokens, heads, head_dim, variant, decay, scale, out_scale,
                                      plasticity, fixed)
            params.update(reset_params(reset_interval, reset_offset))
            params["layout"] = port_layout(layout, params["tokens"], params["heads"], params["head_dim"])
        except ValueError:
            self._runtime = None  # Lava's __del__ calls stop(), which reads it, on this half-built object
            raise
        super().__init__(**params, name=name, log_config=log_config)
        tokens, heads, head_dim = params["tokens"], params["heads"], params["head_dim"]
        self.proc_params.overwrite("name", self.name)  # Lava's default name, for the models' messages
        sizes = {port: size for port, (size, _) in params["layout"].items()}
        self.q_in = InPort(shape=(sizes["q_in"],))
        self.k_in = InPort(shape=(sizes["k_in"],))
        self.v_in = InPort(shape=(sizes["v_in"],))
        self.m_in = InPort(shape=(sizes["m_in"],))
        self.a_out = OutPort(shape=(sizes["a_out"],))
        self.memory = Var(shape=(heads, head_dim, head_dim), init=0)
        self.pre_trace = Var(shape=(tokens, heads, head_dim), init=0)
        self.post_trace = Var(shape=(tokens, heads, head_dim), init=0)
        self.eligibility = Var(shape=(heads, head_dim, head_dim), init=0)
        self.saturation = Var(shape=(1,), init=0)
        self.synops = Var(shape=(1,), init=0)


def from_ir(att: Any, tokens: int, name: str | None = None, layout: dict | None = None,
            **reset: int) -> SpikingAttention:
    """A ``SpikingAttention`` for the IR node ``att`` (``neuromorphic.ir.Attention``) over
    ``tokens`` tokens; its integer parameters come along when ``att.fixed`` is filled.
    ``reset``: ``reset_interval`` / ``reset_offset``, and ``layout``, as in the constructor."""
    return SpikingAttention(tokens=tokens, heads=att.heads, head_dim=att.head_dim, variant=att.variant,
                            decay=att.decay, scale=att.scale, out_scale=att.out_scale,
                            plasticity=att.plasticity, fixed=att.fixed or None, layout=layout,
                            name=name or att.name, **reset)
