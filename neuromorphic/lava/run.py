"""Run an IR ``Graph`` as Lava processes and return the same ``Trace`` the numpy references return.

In lava-nc 0.10.0 every Lava process is an OS process that the runtime steps in lock step, so
the network's speed falls with its number of processes (docs/backends.md has the figures).
The mapping therefore puts many IR objects into few processes (docs/backends.md has the
equations):

    input population   lava.proc.io.source.RingBuffer holding every sample's steps back to back;
                       its last row is the guard neuron (below)
    lif populations    stock lava.proc.lif.process.LIFReset, one per group of populations with the
                       same parameters and the same attention stage (``lif_groups``): the
                       populations' neurons lie side by side in its vectors
    connections        ``neuromorphic.lava.synapses.Synapses``: every static connection, each with
                       Dense's own arithmetic and weight_exp (one-step delay, SPEC §2.2); tokenwise
                       weights are applied per token, never expanded to kron(I_N, W)
    attention          ``neuromorphic.lava.attention.SpikingAttention`` per node (same-step,
                       event-driven), reading its q/k/v slices of the group vectors
    readout            ``neuromorphic.lava.readout.ReadoutLIF``: a LIFReset with dv = 0 that never
                       fires and sends its membrane v each step; the per-step increments are the
                       readout
    recording          ``neuromorphic.lava.recorder.SpikeRecorder``: every group's spikes and the
                       readout's v, each into a memory-mapped .npy file
    plastic connection a stock LearningDense (``_learning_dense``) between populations that each
                       keep a process of their own

A population read by an attention node's target in the same step must not share a process
with that target (a same-step cycle would deadlock), hence the stages: a population's stage is
0, or one more than the stages of the attention inputs it receives.

Samples run back to back in one compiled network, each followed by two guard steps, with no
Var written from outside (reading or writing a Var costs one message per element in
lava-nc 0.10.0):

    step T + 1   the guard neuron fires (the input RingBuffer's last row)
    step T + 2   its synapses (weight -2^16 in a_in units, more than any possible input) hold every
                 LIF below threshold: nothing fires, so every Dense buffer is empty afterwards
    step 1 of the next sample: ``LIFReset`` (stock Lava) zeroes u and v before integrating, the
                 attention process zeroes its state, and the network is in its initial state.

Floating point runs the ``floating_pt`` models; fixed point (``graph.precision == "fixed"``)
the bit-accurate ones.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from spikeformer.fixed_point import ACT_SHIFT, INPUT_MAX, UV_BITS, WEIGHT_BITS, shift

from ..ir import Graph, IRError, LoweringError
from ..trace import Trace
from . import require_lava

from ..guard import GUARD_A_IN, GUARD_EXP, GUARD_MANTISSA, GUARD_STEPS, guard_steps  # noqa: F401 (public here too)
FLOAT_GUARD = 1e9
FLOAT_NEVER = 1e300  # threshold of the float readout integrator
PORTS_PER_PROCESS = 16  # vectors per Synapses / SpikeRecorder (at most their MAX_PORTS); more: more processes


@dataclass
class Group:
    """Populations run as one Lava process, side by side in its vectors (token-major each)."""

    names: list[str]
    offsets: dict[str, int] = field(default_factory=dict)  # population -> first index in the vector
    size: int = 0

    def add(self, name: str, size: int) -> None:
        self.names.append(name)
        self.offsets[name] = self.size
        self.size += size


@dataclass
class LavaNetwork:
    """The built processes and where their outputs are written.

    ``processes``: every Lava process (running the first runs them all); ``spans``: population
    (and ``"readout"`` for the readout's v) -> (recording file, first column, last column + 1)."""

    processes: list[Any]
    attentions: dict[str, Any]
    files: list[Path]
    spans: dict[str, tuple[int, int, int]]
    weight_files: dict[str, Path]
    period: int
    rule_inputs: dict[str, Any]

    @property
    def process_count(self) -> int:
        return len(self.processes)


def _flat_steps(x_steps: np.ndarray, guard: int = GUARD_STEPS) -> np.ndarray:
    """``[T, B, N, F] -> [N*F, B*(T + guard)]``: one column per step, samples back to back,
    each followed by ``guard`` zero columns."""
    t, b = x_steps.shape[:2]
    padded = np.concatenate([x_steps, np.zeros((guard,) + x_steps.shape[1:], x_steps.dtype)], 0)
    return padded.reshape(t + guard, b, -1).transpose(2, 1, 0).reshape(-1, b * (t + guard))


def _weights(graph: Graph, conn) -> np.ndarray:
    return conn.full_weight(graph.population(conn.target).tokens)


def _check_guard(graph: Graph) -> None:
    """Fixed point: the guard must hold every LIF below threshold whatever its other inputs, and
    ``(a_in << 6)`` must not wrap Lava's 24-bit ``u`` (which would turn inhibition into excitation).
    A current that keeps ``alpha`` of itself per step sums its inputs up to ``1 / (1 - alpha)`` times.
    Row sums of a tokenwise ``W`` are those of ``kron(I_N, W)``, so ``W`` itself is summed."""
    from ..fixed_ref import effective_bias

    limit = 2 ** (UV_BITS - 1 - ACT_SHIFT)  # |a_in| below this keeps a_in << 6 inside u
    for pop in graph.populations:
        if pop.kind != "lif":
            continue
        excite = inhibit = 0
        for conn in graph.incoming(pop.name):
            w = conn.weight.astype(np.int64)
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


def _stages(graph: Graph) -> dict[str, int]:
    """0 for a population no attention node drives; else one more than its attention inputs'."""
    stage: dict[str, int] = {}
    for name in graph.step_order():  # attention inputs come before their targets
        inputs = [n for a in graph.attention_into(name) for n in (a.query, a.key, a.value, a.modulator) if n]
        stage[name] = 1 + max(stage[n] for n in inputs) if inputs else 0
    return stage


def _plastic_ends(graph: Graph) -> set[str]:
    """Populations a plastic connection joins: its Lava LearningDense reads and drives them whole."""
    return {name for c in graph.connections if c.rule is not None for name in (c.source, c.target)}


def lif_groups(graph: Graph) -> list[Group]:
    """The LIF (and readout) populations by Lava process, in the graph's order: populations with
    the same LIF parameters (Lava's LIF takes one du, dv, vth per process) and the same stage
    share one; the readout and the ends of a plastic connection have one each."""
    fixed = graph.precision == "fixed"
    stage, alone = _stages(graph), _plastic_ends(graph)
    groups: dict[tuple, Group] = {}
    for pop in graph.populations:
        if pop.kind == "input":
            continue
        if pop.kind == "readout" or pop.name in alone:
            key: tuple = ("alone", pop.name)
        else:
            key = (stage[pop.name],) + ((pop.du, pop.dv, pop.vth) if fixed else (pop.alpha, pop.beta, pop.threshold))
        groups.setdefault(key, Group([])).add(pop.name, pop.size)
    return list(groups.values())


def _lif_process(graph: Graph, group: Group, reset: dict[str, int]) -> Any:
    """One LIFReset (a ReadoutLIF for the readout) for the group's populations, biases side by side."""
    from lava.proc.lif.process import LIFReset

    from .readout.process import ReadoutLIF

    pops = [graph.population(name) for name in group.names]
    first, fixed = pops[0], graph.precision == "fixed"
    kind = ReadoutLIF if first.kind == "readout" else LIFReset
    name = first.name if len(pops) == 1 else f"{first.name}+{len(pops) - 1}"
    if fixed:  # the readout's vth is the 17-bit maximum (quantize): it never fires
        return kind(shape=(group.size,), du=first.du, dv=first.dv, vth=first.vth,
                    bias_mant=np.concatenate([p.bias_mant.reshape(-1) for p in pops]),
                    bias_exp=np.concatenate([p.bias_exp.reshape(-1) for p in pops]), name=name, **reset)
    bias = np.concatenate([p.bias.reshape(-1) for p in pops]).astype(np.float64)
    if first.kind == "lif":
        return kind(shape=(group.size,), du=1.0 - first.alpha, dv=1.0 - first.beta, vth=first.threshold,
                    bias_mant=bias, name=name, **reset)
    return kind(shape=(group.size,), du=1.0, dv=0.0, vth=FLOAT_NEVER, bias_mant=bias, name=name, **reset)  # integrator


@dataclass
class _Port:
    """Where a population's vector lies: the OutPort that carries it and its first index there."""

    port: Any
    size: int
    offset: int


def _blocks(graph: Graph, sources: dict[str, _Port], guard: _Port, groups: list[Group],
            source_ids: dict[int, int]) -> list[Any]:
    """A ``Synapses`` block per static connection and a guard block per LIF group (its output
    port is the group's index; ``source_ids``: id of an OutPort -> its input port)."""
    from .synapses.process import Block

    fixed = graph.precision == "fixed"
    targets = {name: (g, group.offsets[name]) for g, group in enumerate(groups) for name in group.names}
    blocks = []
    for conn in graph.connections:
        if conn.rule is not None:
            continue
        message_bits = int(conn.num_message_bits)
        if graph.input.graded and conn.source == graph.input.name and not fixed:
            message_bits = 24  # float graded input: any value > 0 selects the graded path
        src, (group, offset) = sources[conn.source], targets[conn.target]
        tokens = graph.population(conn.target).tokens if conn.kind == "tokenwise" else 1
        blocks.append(Block(source=source_ids[id(src.port)], source_start=src.offset, target=group,
                            target_start=offset, tokens=tokens, weight=conn.weight, graded=message_bits > 0,
                            weight_exp=int(conn.weight_exp or 0), num_weight_bits=int(conn.num_weight_bits or WEIGHT_BITS),
                            name=conn.name, delay=int(conn.delay)))
    for g, group in enumerate(groups):  # the guard neuron into every LIF (the readout never fires)
        if graph.population(group.names[0]).kind != "lif":
            continue
        weight = np.full((group.size, 1), GUARD_MANTISSA if fixed else -FLOAT_GUARD)
        blocks.append(Block(source=source_ids[id(guard.port)], source_start=guard.offset, target=g,
                            target_start=0, tokens=1, weight=weight, weight_exp=GUARD_EXP if fixed else 0,
                            num_weight_bits=WEIGHT_BITS, name=f"guard->{group.names[0]}"))
    return blocks


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


def _synapses(graph: Graph, sources: dict[str, _Port], guard: _Port, groups: list[Group],
              lifs: list[Any]) -> tuple[list[Any], list[tuple[Any, int]]]:
    """The ``Synapses`` processes of every static connection and the guard, wired up: one, or one
    per pair of ``PORTS_PER_PROCESS``-sized chunks of inputs and outputs when a network has more.
    Returns them and their (OutPort, group index) pairs."""
    from .synapses.process import Synapses

    read = [sources[c.source] for c in graph.connections if c.rule is None] + [guard]
    unique = {id(p.port): p for p in read}  # each OutPort read once (its vector's size is the same)
    ports = list(unique.values())
    source_ids = {key: i for i, key in enumerate(unique)}
    blocks = _blocks(graph, sources, guard, groups, source_ids)
    procs, outputs = [], []
    for ins in _chunks(list(range(len(ports))), PORTS_PER_PROCESS):
        for outs in _chunks(list(range(len(groups))), PORTS_PER_PROCESS):
            mine = [b for b in blocks if b.source in ins and b.target in outs]
            if not mine:
                continue
            local = [replace(b, source=ins.index(b.source), target=outs.index(b.target)) for b in mine]
            proc = Synapses(blocks=local, in_sizes=[ports[i].size for i in ins],
                            out_sizes=[groups[g].size for g in outs], name=f"synapses{len(procs)}")
            for k, i in enumerate(ins):
                ports[i].port.connect(proc.in_port(k))
            for k, g in enumerate(outs):
                proc.out_port(k).connect(lifs[g].a_in)
                outputs.append((proc.out_port(k), g))
            procs.append(proc)
    return procs, outputs


def _attention(graph: Graph, att, ports: dict[str, _Port], targets: dict[str, tuple[Group, Any]],
               reset: dict[str, int]) -> Any:
    """A SpikingAttention reading its q, k, v (, m) slices of the group vectors, writing its target's."""
    from .attention.process import SpikingAttention

    roles = {"q_in": att.query, "k_in": att.key, "v_in": att.value}
    if att.modulator is not None:
        roles["m_in"] = att.modulator
    layout = {port: (ports[name].size, ports[name].offset) for port, name in roles.items()}
    group, lif = targets[att.target]
    layout["a_out"] = (group.size, group.offsets[att.target])
    proc = SpikingAttention(
        tokens=graph.population(att.query).tokens, heads=att.heads, head_dim=att.head_dim,
        variant=att.variant, decay=att.decay, scale=att.scale, out_scale=att.out_scale,
        plasticity=att.plasticity, fixed=att.fixed if graph.precision == "fixed" else None,
        layout=layout, name=att.name, **reset)
    for port, name in roles.items():
        ports[name].port.connect(getattr(proc, port))
    proc.a_out.connect(lif.a_in)
    return proc


def _recorders(graph: Graph, groups: list[Group], lifs: list[Any], folder: Path, total: int,
               keep: Optional[set[str]]) -> tuple[list[Any], list[Path], dict[str, tuple[int, int, int]]]:
    """SpikeRecorders of every group holding a kept LIF population, and of the readout's v."""
    from .recorder.process import SpikeRecorder

    fixed = graph.precision == "fixed"
    recorded: list[tuple[Any, int, Any]] = []  # (OutPort, size, file dtype)
    spans: dict[str, tuple[int, int, int]] = {}
    for group, lif in zip(groups, lifs):
        pops = [graph.population(name) for name in group.names]
        if pops[0].kind == "readout":
            spans["readout"] = (len(recorded), 0, group.size)
            recorded.append((lif.v_out, group.size, np.int64 if fixed else np.float64))
            continue
        kept = [p for p in pops if keep is None or p.name in keep]
        for pop in kept:
            offset = group.offsets[pop.name]
            spans[pop.name] = (len(recorded), offset, offset + pop.size)
        if kept:
            recorded.append((lif.s_out, group.size, np.uint8))
    files = []
    for i, (_, size, dtype) in enumerate(recorded):
        files.append(folder / f"{i}.npy")
        np.lib.format.open_memmap(files[-1], mode="w+", dtype=dtype, shape=(total, size)).flush()
    procs = []
    for part in _chunks(list(range(len(recorded))), PORTS_PER_PROCESS):
        proc = SpikeRecorder(sizes=[recorded[i][1] for i in part], steps=total, paths=[str(files[i]) for i in part])
        for k, i in enumerate(part):
            recorded[i][0].connect(proc.in_port(k))
        procs.append(proc)
    return procs, files, spans


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


def _sources(graph: Graph, x_steps: np.ndarray, period: int) -> tuple[list[Any], dict[str, _Port], _Port]:
    """The input RingBuffer (``x_steps [T, B, N, F]`` as ``[N*F, B*period]``) and the guard neuron,
    which fires in the first guard step of every sample: the input's last row, or its own
    RingBuffer when a plastic connection reads the input (its LearningDense takes it whole)."""
    from lava.proc.io.source import RingBuffer as Source

    inp, steps = graph.input, x_steps.shape[0]
    dtype = np.int32 if graph.precision == "fixed" else np.float64
    data = _flat_steps(x_steps, period - steps).astype(dtype)
    guard_row = np.zeros((1, data.shape[1]), dtype)
    for step in range(steps, period - 1):  # every guard step but the last: the LIFs are held until the next sample
        guard_row[0, step::period] = 1
    if inp.name in _plastic_ends(graph):
        source, guard = Source(data=data), Source(data=guard_row)
        return [source, guard], {inp.name: _Port(source.s_out, inp.size, 0)}, _Port(guard.s_out, 1, 0)
    source = Source(data=np.concatenate([data, guard_row]))  # one process fewer
    return [source], {inp.name: _Port(source.s_out, inp.size + 1, 0)}, _Port(source.s_out, inp.size + 1, inp.size)


def _plastic(graph: Graph, ports: dict[str, _Port], singles: dict[str, Any], into_readout: list[Any],
             folder: Path, batch: int, period: int, labels: Optional[np.ndarray],
             feedback: Optional[dict[str, np.ndarray]]) -> tuple[list[Any], dict[str, Any], dict[str, Path]]:
    """Every plastic connection as a LearningDense between its populations' own processes
    (``singles``); returns them, their RuleInputs and their weight files. ``into_readout``: the
    OutPorts of the static currents into the readout, which each RuleInputs also receives."""
    fixed = graph.precision == "fixed"
    learning, rule_inputs, weight_files = [], {}, {}
    for conn in graph.connections:
        if conn.rule is None:
            continue
        kwargs: dict[str, Any] = {"num_message_bits": int(conn.num_message_bits)}
        if fixed:
            kwargs.update(weight_exp=int(conn.weight_exp), num_weight_bits=int(conn.num_weight_bits))
        dense = _learning_dense(graph, conn, kwargs, folder, batch, period, labels, feedback, singles, rule_inputs)
        weight_files[conn.name] = Path(dense.proc_params["path"])
        ports[conn.source].port.connect(dense.s_in)
        dense.a_out.connect(singles[conn.target].a_in)
        learning.append(dense)
        if conn.target == graph.readout.name:
            into_readout = into_readout + [dense.a_out]
    for inputs in rule_inputs.values():  # each RuleInputs sums the readout's current beside the readout
        for port in into_readout:
            port.connect(inputs.readout_in)
    return learning, rule_inputs, weight_files


def build_network(graph: Graph, x_steps: np.ndarray, folder: Path, labels: Optional[np.ndarray] = None,
                  feedback: Optional[dict[str, np.ndarray]] = None, keep: Optional[set[str]] = None) -> LavaNetwork:
    """Lava processes for ``graph`` fed with ``x_steps [T, B, N, F]`` (integers for fixed point);
    recordings go to ``folder`` (the spikes of the LIF populations in ``keep``, default all, and
    the readout). A three_factor connection needs the samples' ``labels [B]`` and its
    ``feedback [C, target size]`` (``neuromorphic.reward``)."""
    require_lava()
    for conn in graph.connections:
        if conn.delay != 1 and conn.rule is not None:
            raise IRError(f"plastic connection {conn.name!r} has delay {conn.delay}; Lava's LearningDense delays one step")
    if graph.precision == "fixed":
        _check_guard(graph)
    steps, batch = x_steps.shape[:2]
    period = steps + guard_steps(max(c.delay for c in graph.connections))
    sources, ports, guard = _sources(graph, x_steps, period)
    reset = {"reset_interval": period, "reset_offset": 1}  # zero u, v at the start of each sample
    groups = lif_groups(graph)
    lifs = [_lif_process(graph, group, reset) for group in groups]
    where: dict[str, tuple[Group, Any]] = {}
    for group, lif in zip(groups, lifs):
        for name in group.names:
            where[name] = (group, lif)
            ports[name] = _Port(lif.s_out, group.size, group.offsets[name])
    synapses, outputs = _synapses(graph, ports, guard, groups, lifs)
    readout = groups.index(where[graph.readout.name][0])
    singles = {name: lif for name, (group, lif) in where.items() if len(group.names) == 1}
    learning, rule_inputs, weight_files = _plastic(graph, ports, singles, [p for p, g in outputs if g == readout],
                                                   folder, batch, period, labels, feedback)
    attentions = {att.name: _attention(graph, att, ports, where, reset) for att in graph.attentions}
    recorders, files, spans = _recorders(graph, groups, lifs, folder, period * batch, keep)
    processes = (sources + lifs + synapses + learning + list(rule_inputs.values()) + list(attentions.values())
                 + recorders)
    return LavaNetwork(processes, attentions, files, spans, weight_files, period, rule_inputs)


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
    from tqdm import tqdm

    fixed = graph.precision == "fixed"
    inp = graph.input
    if x_steps.ndim != 4 or x_steps.shape[2:] != (inp.tokens, inp.features):
        raise IRError(f"input steps must be [T, B, {inp.tokens}, {inp.features}], got {x_steps.shape}")
    steps, batch = x_steps.shape[:2]
    with tempfile.TemporaryDirectory(prefix="spikeformer-lava-") as folder:
        start = time.perf_counter()
        net = build_network(graph, x_steps, Path(folder), labels, feedback, keep)
        build_seconds = time.perf_counter() - start
        first = net.processes[0]
        tick = time.perf_counter()
        first.create_runtime(run_cfg=Loihi2SimCfg(select_tag="fixed_pt" if fixed else "floating_pt"))
        compile_seconds = time.perf_counter() - tick  # compile, then start every process model
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
            saturation = sum(int(np.asarray(p.saturation.get()).sum()) for p in net.attentions.values())
            _learned_weights(graph, net, weights_per_sample)
        finally:
            first.stop()
        recorded = [np.load(path) for path in net.files]  # the runtime has stopped: files are complete
        read_seconds = time.perf_counter() - tick
    file, lo, hi = net.spans["readout"]
    v = recorded[file][:, lo:hi].reshape(batch, net.period, -1)[:, :steps]
    previous = np.concatenate([np.zeros_like(v[:, :1]), v[:, :-1]], 1)
    readout = (v - previous).transpose(1, 0, 2)  # integrator increments: [T, B, C]
    spikes = {}
    for pop in graph.populations:
        if pop.kind != "lif" or (keep is not None and pop.name not in keep):
            continue
        file, lo, hi = net.spans[pop.name]
        data = recorded[file][:, lo:hi].reshape(batch, net.period, pop.tokens, pop.features)[:, :steps]
        spikes[pop.name] = data.transpose(1, 0, 2, 3) != 0  # [T, B, N, F]
    info = {"build_seconds": build_seconds, "compile_seconds": compile_seconds, "run_seconds": run_seconds,
            "read_seconds": read_seconds, "guard_steps_per_sample": net.period - steps,
            "steps_per_second": net.period * batch / run_seconds if run_seconds else float("nan"),
            "processes": net.process_count, "lava_processes": net.process_count,
            "saturation_events_attention": saturation}
    return Trace(spikes, readout, int(graph.meta["window"]), saturation), info


def _learned_weights(graph: Graph, net: LavaNetwork, weights_per_sample: Optional[dict[str, np.ndarray]]) -> None:
    """Each plastic connection's learned weight back into ``graph``, from its recorded file
    (and every sample's weights into ``weights_per_sample`` if given)."""
    for conn in graph.connections:
        if conn.rule is None:
            continue
        recorded = np.array(np.load(net.weight_files[conn.name], mmap_mode="r"))
        weight = np.zeros(conn.weight.shape, recorded.dtype)  # int64 in fixed point
        weight[conn.synapses()] = recorded[-1]
        conn.weight = weight
        if weights_per_sample is not None:
            weights_per_sample[conn.name] = recorded
