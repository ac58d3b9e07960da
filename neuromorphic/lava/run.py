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

Samples run back to back in one compiled network, each followed by two guard steps, with no
Var written from outside (reading or writing a Var costs one message per element in
lava-nc 0.10.0):

    step T + 1   a guard neuron fires (its own RingBuffer)
    step T + 2   its Dense (weight -2^16 in a_in units, more than any possible input) holds every
                 LIF below threshold: nothing fires, so every Dense buffer is empty afterwards
    step 1 of the next sample: ``LIFReset`` (stock Lava) zeroes u and v before integrating, the
                 attention process zeroes its state, and the network is in its initial state.

Floating point runs the ``floating_pt`` models; fixed point (``graph.precision == "fixed"``)
the bit-accurate ones. Spikes are written by ``SpikeRecorder`` processes into .npy files.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from spikeformer.fixed_point import ACT_SHIFT, INPUT_MAX, UV_BITS, WEIGHT_BITS, shift

from ..ir import Graph, IRError, LoweringError
from ..trace import Trace
from . import require_lava

from ..guard import GUARD_A_IN, GUARD_EXP, GUARD_MANTISSA, GUARD_STEPS  # noqa: F401 (public here too)
FLOAT_GUARD = 1e9
FLOAT_NEVER = 1e300  # threshold of the float readout integrator


@dataclass
class LavaNetwork:
    """The built processes, by role, and where the spikes are written."""

    sources: list[Any]
    lifs: dict[str, Any]
    denses: list[Any]
    attentions: dict[str, Any]
    recorders: dict[str, Any]
    files: dict[str, Path]
    readout: Any
    monitor: Any
    period: int
    rule_inputs: dict[str, Any]

    @property
    def process_count(self) -> int:
        return (len(self.sources) + len(self.lifs) + len(self.denses) + len(self.attentions) + len(self.recorders)
                + len(self.rule_inputs) + 1)


def _flat_steps(x_steps: np.ndarray) -> np.ndarray:
    """``[T, B, N, F] -> [N*F, B*(T + guard)]``: one column per step, samples back to back,
    each followed by ``GUARD_STEPS`` zero columns."""
    t, b = x_steps.shape[:2]
    padded = np.concatenate([x_steps, np.zeros((GUARD_STEPS,) + x_steps.shape[1:], x_steps.dtype)], 0)
    return padded.reshape(t + GUARD_STEPS, b, -1).transpose(2, 1, 0).reshape(-1, b * (t + GUARD_STEPS))


def _weights(graph: Graph, conn) -> np.ndarray:
    return conn.full_weight(graph.population(conn.target).tokens)


def _check_guard(graph: Graph) -> None:
    """Fixed point: the guard must hold every LIF below threshold whatever its other inputs, and
    ``(a_in << 6)`` must not wrap Lava's 24-bit ``u`` (which would turn inhibition into excitation).
    A current that keeps ``alpha`` of itself per step sums its inputs up to ``1 / (1 - alpha)`` times."""
    from ..fixed_ref import effective_bias

    limit = 2 ** (UV_BITS - 1 - ACT_SHIFT)  # |a_in| below this keeps a_in << 6 inside u
    for pop in graph.populations:
        if pop.kind != "lif":
            continue
        excite = inhibit = 0
        for conn in graph.incoming(pop.name):
            w = _weights(graph, conn).astype(np.int64)
            peak = INPUT_MAX if conn.num_message_bits else 1  # largest graded message
            excite += int(shift(np.clip(w, 0, None).sum(1).max() * peak, int(conn.weight_exp)))
            inhibit += int(shift(-np.clip(w, None, 0).sum(1).max() * peak, int(conn.weight_exp)))
        gain = 4096 / (int(pop.du) + 1)  # 1 / (1 - alpha): the most the current accumulates
        excite = math.ceil(excite * gain) + (int(effective_bias(pop).max()) >> ACT_SHIFT) + 1 + int(pop.vth)
        inhibit = math.ceil(inhibit * gain)
        if excite >= GUARD_A_IN or inhibit + GUARD_A_IN >= limit:
            raise LoweringError(
                f"population {pop.name!r} can receive up to +{excite} / -{inhibit} (a_in units), too much for the "
                f"guard of -{GUARD_A_IN} that separates samples in Lava; quantise with a smaller vth")


def _learning_dense(graph: Graph, conn, kwargs: dict[str, Any], folder: Path, batch: int, period: int,
                    labels: Optional[np.ndarray], feedback: Optional[dict[str, np.ndarray]],
                    lifs: dict[str, Any], rule_inputs: dict[str, Any]) -> Any:
    """A plastic connection: a ``RecordingLearningDense`` (recording its weights after every
    sample); with a mask, its dw strings are multiplied by ``d`` = the mask (``learning.masked``),
    so only existing synapses learn. STDP gets the target's spikes as bAPs; three_factor gets a
    ``RuleInputs`` (its y inputs, and the bAP 1 of a readout target), whose readout current is
    connected once every connection exists.

    Fixed point: the rule, tag_2 and (three_factor) the y inputs' arithmetic are
    ``fixed_learning.connection_rule``'s (the reference's own), the model
    ``PyRecordingLearningDenseFixed`` (Lava's bit-approximate engine), and the weights are
    recorded as integers."""
    from .learning import hold_y_inputs, learning_rule
    from .plasticity.process import RecordingLearningDense, RuleInputs

    params = conn.rule_parameters()
    fixed = graph.precision == "fixed"
    path = folder / f"weights-{len(rule_inputs)}-{abs(hash(conn.name))}.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.int64 if fixed else np.float64,
                              shape=(batch, int(conn.synapses().sum()))).flush()
    if conn.rule == "three_factor" and (labels is None or feedback is None or conn.name not in feedback):
        raise IRError(f"connection {conn.name!r} learns by three_factor: give the samples' labels and its feedback "
                      "matrix (the output error is its third factor)")
    realization = None
    if fixed:
        from ..fixed_learning import connection_rule
        from .learning import fixed_learning_rule

        realization = connection_rule(graph, conn, None if feedback is None else feedback.get(conn.name))
        if realization.third_factor and realization.inputs.steps != period - GUARD_STEPS:
            raise IRError(f"the input has {period - GUARD_STEPS} steps per sample, the graph {realization.inputs.steps}")
        rule = fixed_learning_rule(realization.rule, realization.third_factor)
        extra = {} if realization.tag_2 is None else {"tag_2": realization.tag_2}
    else:
        rule = learning_rule(conn.rule, params, conn.mask is not None)
        extra = {} if conn.mask is None else {"tag_2": conn.mask.astype(np.float64)}
    dense = RecordingLearningDense(weights=_weights(graph, conn), name=conn.name, path=str(path), period=period,
                                   learning_rule=rule, mask=conn.synapses(), **extra, **kwargs)
    if fixed and realization.third_factor:
        hold_y_inputs(rule)  # after the process exists (fixed_learning_rule)
    target = graph.population(conn.target)
    if conn.rule == "stdp":
        lifs[conn.target].s_out.connect(dense.s_in_bap)
        return dense
    from rules.base import decay

    readout = graph.readout
    common = dict(size=target.size, classes=readout.size, labels=np.asarray(labels).astype(np.int64),
                  steps=period - GUARD_STEPS, period=period, name=f"{conn.name}:inputs")
    if fixed:
        inputs = RuleInputs(spiking=target.kind == "lif", fixed=realization.inputs, **common)
    else:
        inputs = RuleInputs(spiking=target.kind == "lif", a_minus=params.a_minus, post_decay=decay(params.tau_post),
                            eligibility_decay=decay(params.tau_eligibility), lr=params.lr,
                            feedback=np.asarray(feedback[conn.name], np.float64),
                            readout_bias=readout.bias.reshape(-1), window=int(graph.meta["window"]), **common)
    if target.kind == "lif":
        lifs[conn.target].s_out.connect(inputs.s_post)
        lifs[conn.target].s_out.connect(dense.s_in_bap)
    else:
        inputs.bap.connect(dense.s_in_bap)
    inputs.y1.connect(dense.s_in_y1)
    inputs.y2.connect(dense.s_in_y2)
    inputs.y3.connect(dense.s_in_y3)
    rule_inputs[conn.name] = inputs
    return dense


def build_network(graph: Graph, x_steps: np.ndarray, folder: Path, labels: Optional[np.ndarray] = None,
                  feedback: Optional[dict[str, np.ndarray]] = None) -> LavaNetwork:
    """Lava processes for ``graph`` fed with ``x_steps [T, B, N, F]`` (integers for fixed point);
    spike files go to ``folder``. A three_factor connection needs the samples' ``labels [B]``
    and its ``feedback [C, target size]`` (``neuromorphic.reward``)."""
    require_lava()
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIFReset
    from lava.proc.monitor.process import Monitor

    from .recorder.process import SpikeRecorder

    fixed = graph.precision == "fixed"
    if fixed:
        _check_guard(graph)
    steps, batch = x_steps.shape[:2]
    period = steps + GUARD_STEPS
    total = period * batch
    data = _flat_steps(x_steps)
    source = Source(data=data.astype(np.int32) if fixed else data.astype(np.float64))
    guard_data = np.zeros((1, total))
    guard_data[0, steps::period] = 1  # fires in the first guard step of every sample
    guard = Source(data=guard_data.astype(np.int32) if fixed else guard_data)
    reset = {"reset_interval": period, "reset_offset": 1}  # zero u, v at the start of each sample
    lifs: dict[str, Any] = {}
    recorders: dict[str, Any] = {}
    files: dict[str, Path] = {}
    denses = []
    for pop in graph.populations:
        if pop.kind == "input":
            continue
        if fixed:
            # the readout's vth is the 17-bit maximum (quantize): it never fires
            lif = LIFReset(shape=(pop.size,), du=pop.du, dv=pop.dv, vth=pop.vth, bias_mant=pop.bias_mant.reshape(-1),
                           bias_exp=pop.bias_exp.reshape(-1), name=pop.name, **reset)
        elif pop.kind == "lif":
            lif = LIFReset(shape=(pop.size,), du=1.0 - pop.alpha, dv=1.0 - pop.beta, vth=pop.threshold,
                           bias_mant=pop.bias.reshape(-1).astype(np.float64), name=pop.name, **reset)
        else:  # float readout integrator
            lif = LIFReset(shape=(pop.size,), du=1.0, dv=0.0, vth=FLOAT_NEVER,
                           bias_mant=pop.bias.reshape(-1).astype(np.float64), name=pop.name, **reset)
        lifs[pop.name] = lif
        if pop.kind == "lif":
            files[pop.name] = folder / f"{len(files)}.npy"
            np.lib.format.open_memmap(files[pop.name], mode="w+", dtype=np.uint8, shape=(total, pop.size)).flush()
            recorders[pop.name] = SpikeRecorder(size=pop.size, steps=total, path=str(files[pop.name]))
            lif.s_out.connect(recorders[pop.name].a_in)
            if fixed:
                stop = Dense(weights=np.full((pop.size, 1), GUARD_MANTISSA), weight_exp=GUARD_EXP,
                             num_weight_bits=WEIGHT_BITS)
            else:
                stop = Dense(weights=np.full((pop.size, 1), -FLOAT_GUARD))
            guard.s_out.connect(stop.s_in)
            stop.a_out.connect(lif.a_in)
            denses.append(stop)
    ports = {name: lif.s_out for name, lif in lifs.items()}
    ports[graph.input.name] = source.s_out
    rule_inputs: dict[str, Any] = {}
    into_readout = []
    for conn in graph.connections:
        if conn.delay != 1:
            raise IRError(f"connection {conn.name!r} has delay {conn.delay}; Lava's Dense delays exactly one step")
        kwargs: dict[str, Any] = {"num_message_bits": int(conn.num_message_bits)}
        if graph.input.graded and conn.source == graph.input.name and not fixed:
            kwargs["num_message_bits"] = 24  # float graded input: any value > 0 selects the graded path
        if fixed:
            kwargs.update(weight_exp=int(conn.weight_exp), num_weight_bits=int(conn.num_weight_bits))
        if conn.rule is not None:  # on-chip learning, docs/backends.md "On-chip learning"
            dense = _learning_dense(graph, conn, kwargs, folder, batch, period, labels, feedback, lifs, rule_inputs)
            files[f"weights:{conn.name}"] = Path(dense.proc_params["path"])
        else:
            dense = Dense(weights=_weights(graph, conn), name=conn.name, **kwargs)
        ports[conn.source].connect(dense.s_in)
        dense.a_out.connect(lifs[conn.target].a_in)
        denses.append(dense)
        if conn.target == graph.readout.name:
            into_readout.append(dense)
    for inputs in rule_inputs.values():  # each RuleInputs sums the readout's current beside the readout
        for dense in into_readout:
            dense.a_out.connect(inputs.readout_in)
    attentions = {}
    if graph.attentions:
        from .attention.process import SpikingAttention
    for att in graph.attentions:
        proc = SpikingAttention(
            tokens=graph.population(att.query).tokens, heads=att.heads, head_dim=att.head_dim,
            variant=att.variant, decay=att.decay, scale=att.scale, out_scale=att.out_scale,
            plasticity=att.plasticity, fixed=att.fixed if fixed else None, name=att.name, **reset)
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
    return LavaNetwork([source, guard], lifs, denses, attentions, recorders, files, readout, monitor, period,
                       rule_inputs)


def run_lava(graph: Graph, x_steps: np.ndarray, progress: bool = True,
             keep: Optional[set[str]] = None, chunk: int = 10, labels: Optional[np.ndarray] = None,
             feedback: Optional[dict[str, np.ndarray]] = None,
             weights_per_sample: Optional[dict[str, np.ndarray]] = None) -> tuple[Trace, dict[str, Any]]:
    """Run ``graph`` (float or fixed) on ``x_steps [T, B, N, F]``; returns the ``Trace`` and timings.
    The samples run one after another; a plastic connection (docs/backends.md "On-chip
    learning"; in fixed point matched by ``fixed_ref.learn_online_fixed``) learns
    throughout, and its learned weight is written back into ``graph``. A
    three_factor connection needs ``labels`` and ``feedback`` (``build_network``). If given,
    ``weights_per_sample`` receives each plastic connection's weights after every sample
    ``[B, synapses]`` (row-major over ``Connection.synapses()``).

    For fixed point ``x_steps`` must already be the integer messages (``quantize.encode_fixed``).
    ``chunk``: samples per ``run`` call (the progress bar's step).
    """
    graph.require_spike_learning("Lava")
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
    with tempfile.TemporaryDirectory(prefix="spikeformer-lava-") as folder:
        start = time.perf_counter()
        net = build_network(graph, x_steps, Path(folder), labels, feedback)
        build_seconds = time.perf_counter() - start
        run_cfg = Loihi2SimCfg(select_tag="fixed_pt" if fixed else "floating_pt",
                               exception_proc_model_map={Monitor: PyMonitorModel})
        first = net.sources[0]
        tick = time.perf_counter()
        first.create_runtime(run_cfg=run_cfg)  # compile and start every process model
        compile_seconds = time.perf_counter() - tick
        run_seconds = 0.0
        try:
            with tqdm(total=batch, desc=f"lava-{'fixed' if fixed else 'float'}", unit="sample",
                      disable=not progress, leave=False) as bar:
                for done in range(0, batch, chunk):
                    count = min(chunk, batch - done)
                    tick = time.perf_counter()
                    first.run(condition=RunSteps(num_steps=count * net.period))
                    run_seconds += time.perf_counter() - tick
                    bar.update(count)
            tick = time.perf_counter()
            v = np.asarray(net.monitor.get_data()[net.readout.name]["v"]).reshape(batch, net.period, -1)
            saturation = sum(int(np.asarray(p.saturation.get()).sum()) for p in net.attentions.values())
            for conn in graph.connections:  # learned weights back into the graph, from the recorded files
                if conn.rule is None:
                    continue
                recorded = np.array(np.load(net.files.pop(f"weights:{conn.name}"), mmap_mode="r"))
                weight = np.zeros(conn.weight.shape, recorded.dtype)  # int64 in fixed point
                weight[conn.synapses()] = recorded[-1]
                conn.weight = weight
                if weights_per_sample is not None:
                    weights_per_sample[conn.name] = recorded
            read_seconds = time.perf_counter() - tick
        finally:
            first.stop()
        spikes = {}
        for name, path in net.files.items():
            if keep is not None and name not in keep:
                continue
            pop = graph.population(name)
            data = np.load(path).reshape(batch, net.period, pop.tokens, pop.features)[:, :steps]
            spikes[name] = data.transpose(1, 0, 2, 3) != 0  # [T, B, N, F]
    v = v[:, :steps]
    previous = np.concatenate([np.zeros_like(v[:, :1]), v[:, :-1]], 1)
    readout = (v - previous).transpose(1, 0, 2)  # integrator increments: [T, B, C]
    info = {"build_seconds": build_seconds, "compile_seconds": compile_seconds, "run_seconds": run_seconds,
            "read_seconds": read_seconds, "guard_steps_per_sample": GUARD_STEPS,
            "steps_per_second": net.period * batch / run_seconds if run_seconds else float("nan"),
            "processes": net.process_count, "saturation_events_attention": saturation}
    return Trace(spikes, readout, int(graph.meta["window"]), saturation), info
