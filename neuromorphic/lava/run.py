"""Run an IR ``Graph`` as Lava processes and return the same ``Trace`` the numpy references return.

Mapping (docs/backends.md has the equations):

    input population   lava.proc.io.source.RingBuffer holding every sample's steps back to back
    lif population     stock lava.proc.lif.process.LIF (du, dv, vth, bias), spikes recorded by a
                       lava.proc.io.sink.RingBuffer
    connection         stock lava.proc.dense.process.Dense (one-step delay, SPEC §2.2); tokenwise
                       weights become a block-diagonal matrix kron(I_N, W)
    attention          neuromorphic.lava.attention SpikingAttention (same-step, event-driven)
    readout            a LIF with dv = 0 that never fires: its membrane integrates the readout
                       current; a Monitor records v, and the per-step increments are the readout

Samples run one after another in one compiled network: ``run(steps)`` per sample, then every
state Var (LIF u and v, Dense a_buff, attention state) is set back to zero, so each sample
starts from the same all-zero state as the torch model. Floating point runs the
``floating_pt`` models; fixed point (``graph.precision == "fixed"``) the bit-accurate ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..ir import Graph, IRError
from ..simulate import Trace
from . import require_lava

ATTENTION_STATE = ("memory", "pre_trace", "post_trace", "eligibility")
FLOAT_NEVER = 1e300  # threshold of the float readout integrator


@dataclass
class LavaNetwork:
    """The built processes, by role."""

    source: Any
    lifs: dict[str, Any]
    denses: list[Any]
    attentions: dict[str, Any]
    sinks: dict[str, Any]
    readout: Any
    monitor: Any
    extra: dict[str, Any] = field(default_factory=dict)


def _flat_steps(x_steps: np.ndarray) -> np.ndarray:
    """``[T, B, N, F] -> [N*F, B*T]``: one column per step, samples back to back."""
    t, b = x_steps.shape[:2]
    return x_steps.reshape(t, b, -1).transpose(2, 1, 0).reshape(-1, b * t)


def _weights(graph: Graph, conn) -> np.ndarray:
    if conn.kind == "tokenwise":
        tokens = graph.population(conn.target).tokens
        return np.kron(np.eye(tokens, dtype=conn.weight.dtype), conn.weight)
    return conn.weight


def build_network(graph: Graph, x_steps: np.ndarray) -> LavaNetwork:
    """Lava processes for ``graph`` fed with ``x_steps [T, B, N, F]`` (integers for fixed point)."""
    require_lava()
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF
    from lava.proc.monitor.process import Monitor

    fixed = graph.precision == "fixed"
    total = x_steps.shape[0] * x_steps.shape[1]
    data = _flat_steps(x_steps)
    source = Source(data=data.astype(np.int32) if fixed else data.astype(np.float64))
    lifs: dict[str, Any] = {}
    sinks: dict[str, Any] = {}
    for pop in graph.populations:
        if pop.kind == "input":
            continue
        if fixed:
            vth = pop.vth if pop.kind == "lif" else 2 ** 17 - 1
            lif = LIF(shape=(pop.size,), du=pop.du, dv=pop.dv, vth=vth, bias_mant=pop.bias_mant.reshape(-1),
                      bias_exp=pop.bias_exp.reshape(-1), name=pop.name)
        elif pop.kind == "lif":
            lif = LIF(shape=(pop.size,), du=1.0 - pop.alpha, dv=1.0 - pop.beta, vth=pop.threshold,
                      bias_mant=pop.bias.reshape(-1).astype(np.float64), name=pop.name)
        else:  # float readout integrator
            lif = LIF(shape=(pop.size,), du=1.0, dv=0.0, vth=FLOAT_NEVER,
                      bias_mant=pop.bias.reshape(-1).astype(np.float64), name=pop.name)
        lifs[pop.name] = lif
        if pop.kind == "lif":
            sinks[pop.name] = Sink(shape=(pop.size,), buffer=total)
            lif.s_out.connect(sinks[pop.name].a_in)
    ports = {name: lif.s_out for name, lif in lifs.items()}
    ports[graph.input.name] = source.s_out
    denses = []
    for conn in graph.connections:
        if conn.delay != 1:
            raise IRError(f"connection {conn.name!r} has delay {conn.delay}; Lava's Dense delays exactly one step")
        kwargs: dict[str, Any] = {"num_message_bits": int(conn.num_message_bits)}
        if graph.input.graded and conn.source == graph.input.name and not fixed:
            kwargs["num_message_bits"] = 24  # float graded input: any non-zero value means graded
        if fixed:
            kwargs.update(weight_exp=int(conn.weight_exp), num_weight_bits=int(conn.num_weight_bits))
        dense = Dense(weights=_weights(graph, conn), name=conn.name, **kwargs)
        ports[conn.source].connect(dense.s_in)
        dense.a_out.connect(lifs[conn.target].a_in)
        denses.append(dense)
    attentions = {}
    if graph.attentions:
        from .attention.process import SpikingAttention
    for att in graph.attentions:
        proc = SpikingAttention(
            tokens=graph.population(att.query).tokens, heads=att.heads, head_dim=att.head_dim,
            variant=att.variant, decay=att.decay, scale=att.scale, out_scale=att.out_scale,
            plasticity=att.plasticity, fixed=att.fixed if fixed else None, name=att.name)
        lifs[att.query].s_out.connect(proc.q_in)
        lifs[att.key].s_out.connect(proc.k_in)
        lifs[att.value].s_out.connect(proc.v_in)
        if att.modulator is not None:
            lifs[att.modulator].s_out.connect(proc.m_in)
        proc.a_out.connect(lifs[att.target].a_in)
        attentions[att.name] = proc
    readout = lifs[graph.readout.name]
    monitor = Monitor()
    monitor.probe(readout.v, total)
    return LavaNetwork(source, lifs, denses, attentions, sinks, readout, monitor)


def _reset(net: LavaNetwork, fixed: bool) -> None:
    """Every state Var back to zero (the next sample starts like a fresh torch forward)."""
    for lif in net.lifs.values():
        zero = np.zeros(lif.u.shape, np.int32 if fixed else np.float64)
        lif.u.set(zero)
        lif.v.set(zero)
    for dense in net.denses:
        dense.a_buff.set(np.zeros(dense.a_buff.shape, np.int32 if fixed else np.float64))
    for proc in net.attentions.values():
        for name in ATTENTION_STATE:
            var = getattr(proc, name, None)
            if var is not None:
                var.set(np.zeros(var.shape, np.int64 if fixed else np.float64))


def run_lava(graph: Graph, x_steps: np.ndarray, progress: bool = True,
             keep: Optional[set[str]] = None) -> tuple[Trace, dict[str, Any]]:
    """Run ``graph`` (float or fixed) on ``x_steps [T, B, N, F]``; returns the ``Trace`` and timings.

    For fixed point ``x_steps`` must already be the integer messages (``quantize.encode_fixed``).
    """
    require_lava()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.monitor.models import PyMonitorModel
    from lava.proc.monitor.process import Monitor
    from tqdm import tqdm

    fixed = graph.precision == "fixed"
    inp = graph.input
    if x_steps.ndim != 4 or x_steps.shape[2:] != (inp.tokens, inp.features):
        raise IRError(f"input steps must be [T, B, {inp.tokens}, {inp.features}], got {x_steps.shape}")
    steps, batch = x_steps.shape[:2]
    start = time.perf_counter()
    net = build_network(graph, x_steps)
    run_cfg = Loihi2SimCfg(select_tag="fixed_pt" if fixed else "floating_pt",
                           exception_proc_model_map={Monitor: PyMonitorModel})
    build_seconds = time.perf_counter() - start
    run_seconds = 0.0
    first = net.source
    try:
        for b in tqdm(range(batch), desc=f"lava-{'fixed' if fixed else 'float'}", unit="sample",
                      disable=not progress, leave=False):
            tick = time.perf_counter()
            first.run(condition=RunSteps(num_steps=steps), run_cfg=run_cfg)
            run_seconds += time.perf_counter() - tick
            _reset(net, fixed)
        spikes = {}
        for name, sink in net.sinks.items():
            if keep is not None and name not in keep:
                continue
            pop = graph.population(name)
            data = np.asarray(sink.data.get()).reshape(pop.tokens, pop.features, batch, steps)
            spikes[name] = data.transpose(3, 2, 0, 1) != 0  # [T, B, N, F]
        v = np.asarray(net.monitor.get_data()[net.readout.name]["v"]).reshape(batch, steps, -1)
        saturation = sum(int(np.asarray(p.saturation.get()).sum()) for p in net.attentions.values()
                         if hasattr(p, "saturation"))
    finally:
        first.stop()
    previous = np.concatenate([np.zeros_like(v[:, :1]), v[:, :-1]], 1)
    readout = (v - previous).transpose(1, 0, 2)  # integrator increments: [T, B, C]
    info = {"build_seconds": build_seconds, "run_seconds": run_seconds,
            "steps_per_second": steps * batch / run_seconds if run_seconds else float("nan"),
            "processes": 1 + len(net.lifs) + len(net.denses) + len(net.attentions) + len(net.sinks) + 1,
            "saturation_events_attention": saturation}
    return Trace(spikes, readout, int(graph.meta["window"]), saturation), info
