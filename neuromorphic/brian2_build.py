"""The Brian2 network builder both modes of ``neuromorphic.brian2_ref`` share.

``Builder`` makes what every mode has: the clocks, one ``NeuronGroup`` per population, the
per-sample reset, the spike monitors, the Dense synapses and the attention memory with its
write / recall / gate / read synapses and attention units, then bins the monitors back into a
``Trace``. What differs between discrete and continuous time is a method its subclasses
override (``brian2_exact.ExactBuilder``, ``brian2_bio.BioBuilder``):

    step_ms, _gap        length of an IR step; steps between samples (silent, or guard steps for learning)
    _fine_clock          the clock of the populations' dynamics and of the synapses
    _schedule            the Network's schedule (its slots)
    _schedule_input      when the input group turns its value into an event
    _lif_group           a LIF population's group, its step and bias; ``lif_zero`` resets it
    _readout             the readout group and its StateMonitor
    _dense_delay         the Brian2 delay of a Dense connection
    _attention_slot      the slot the attention statements run in
    _spike_steps         the IR step a spike time stands for
    _readout_steps       the readout per IR step ``[C, B, T]``

The equations are the strings of ``brian2_equations`` (and, for plastic connections, of
``brian2_learning``). brian2 is imported when a builder is made, not when this module is.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import numpy as np

from .brian2_equations import (ATTENTION_LINK, ATTENTION_STEP, ATTENTION_UNITS, DENSE, DENSE_ON_PRE, ERROR_STEP,
                               ERROR_UNITS, GATE, GRADED_WEIGHT, INPUT, INPUT_RESET, INPUT_THRESHOLD, KEY_TRACE,
                               KEY_TRACE_STEP, KEY_TRACE_ZERO, MEMORY, MEMORY_DECAY, MEMORY_RESET, MEMORY_UPDATE, ORDER,
                               READ, RECALL, VALUE_TRACE, VALUE_TRACE_ADD, VALUE_TRACE_DECAY, VALUE_TRACE_ZERO, WRITE)
from .ir import Attention, Connection, Graph, Population, unique_name
from .trace import Trace


def _levels(graph: Graph) -> dict[str, int]:
    """Same-step depth of each population: 0, or 1 + the deepest q/k/v/modulator of an
    attention node feeding it (``Graph.step_order`` guarantees this terminates)."""
    level: dict[str, int] = {}
    for name in graph.step_order():
        feeds = [a for a in graph.attentions if a.target == name]
        level[name] = 1 + max(level[p] for a in feeds for p in _attention_sources(a)) if feeds else 0
    return level


def _attention_sources(att: Attention) -> list[str]:
    return [att.query, att.key, att.value] + ([att.modulator] if att.modulator else [])


def _brian_name(name: str, used: set[str]) -> str:
    """A valid, unique Brian2 object name for an IR name ('block0.attn.q' -> 'p_block0_attn_q')."""
    return unique_name("p_" + re.sub(r"\W", "_", name), used)


def _token_major(tokens: int, f_out: int, f_in: int, weight: np.ndarray, kind: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pre index, post index, weight) of every non-zero entry of a Dense connection."""
    if kind == "tokenwise":
        post_f, pre_f = np.nonzero(weight)  # [F_out, F_in]
        w = weight[post_f, pre_f]
        n = np.repeat(np.arange(tokens), len(w))
        pre = n * f_in + np.tile(pre_f, tokens)
        post = n * f_out + np.tile(post_f, tokens)
        w = np.tile(w, tokens)
    else:  # full [N_out*F_out, N_in*F_in]
        post, pre = np.nonzero(weight)
        w = weight[post, pre]
    order = np.lexsort((post, pre))  # pre-major: a spike's synapses are contiguous
    return pre[order], post[order], w[order]


class Builder:
    """Builds the Brian2 objects of one graph (see ``brian2_ref``'s docstring for the mapping);
    a subclass supplies the mode's methods listed in this module's docstring."""

    mode: str  # "exact" or "biophysical": the key of DENSE_ON_PRE
    step_ms: float  # wall time of one IR step (ms)
    lif_zero: str  # a LIF group's state back to zero at each sample's first step

    def __init__(self, graph: Graph, x_steps: np.ndarray, labels: Optional[np.ndarray] = None,
                 feedback: Optional[dict[str, np.ndarray]] = None) -> None:
        """``labels [B]`` and ``feedback {connection: [C, target size]}``: the third factor of
        three_factor connections (``neuromorphic.reward``); unused without one."""
        import brian2 as b2

        self.b2 = b2
        self.graph, self.x_steps = graph, x_steps
        self.labels, self.feedback = labels, feedback
        self.steps, self.batch = x_steps.shape[:2]
        self.pops = {p.name: p for p in graph.populations}
        self.level = _levels(graph)
        self.step = self.step_ms * b2.ms
        self.gap = self._gap(max([c.delay for c in graph.connections] + [1]))
        self.sample_steps = self.steps + self.gap
        # LIFs may fire while awake; with learning also in the first guard step (learn_online's order)
        self.awake_steps = self.steps + (1 if self.learns else 0)
        self.duration = self.batch * self.sample_steps * self.step
        self.names: set[str] = set()
        self.groups: dict[str, Any] = {}
        self.objects: list[Any] = []
        self.spike_monitors: dict[str, Any] = {}
        self.neurons = 0
        self.synapses = 0
        self.plastic: dict[str, Any] = {}  # connection name -> its learning Synapses
        self.teacher: Any = None  # brian2_learning.OnlineTeacher, when a connection learns
        self.learn_index: dict[str, int] = {}  # plastic connection -> k of its traces xtrace<k>, ytrace<k>
        self.extra: dict[str, list[str]] = {p: [] for p in self.pops}  # extra model lines (traces, links)
        self.attention_links: dict[str, list[str]] = {p: [] for p in self.pops}
        self.traces: dict[str, str] = {}
        self.link_of: dict[str, str] = {}  # attention name -> the linked variable its target reads
        for att in graph.attentions:
            if att.variant == "stdp":
                self.extra[att.key].append(KEY_TRACE)
                self.extra[att.value].append(VALUE_TRACE)
                self.traces[att.key], self.traces[att.value] = "key", "value"
            link = f"o_{len(self.attention_links[att.target])}"
            self.attention_links[att.target].append(link)
            self.link_of[att.name] = link
            self.extra[att.target].append(ATTENTION_LINK.format(link=link, name=att.name))
        if self.learns:  # per-neuron rule traces of each plastic connection, in its source's and target's model
            from .brian2_learning import LEARN_POST_TRACE, LEARN_PRE_TRACE  # imports torch (the rules): only here

            for conn in graph.connections:
                if conn.rule is not None:
                    k = self.learn_index[conn.name] = len(self.learn_index)
                    self.extra[conn.source].append(LEARN_PRE_TRACE.format(k=k, name=conn.name))
                    self.extra[conn.target].append(LEARN_POST_TRACE.format(k=k, name=conn.name))

    @property
    def learns(self) -> bool:
        """Whether any connection is plastic (then every sample is followed by guard steps)."""
        return any(c.rule is not None for c in self.graph.connections)

    # --- the mode's methods ---------------------------------------------------------------------

    def _gap(self, max_delay: int) -> int:
        """Silent steps between samples, given the longest Dense delay."""
        raise NotImplementedError

    def _fine_clock(self) -> Any:
        raise NotImplementedError

    def _schedule(self) -> list[str]:
        raise NotImplementedError

    def _schedule_input(self, group: Any) -> None:
        raise NotImplementedError

    def _lif_group(self, pop: Population, links: list[str], extra: str) -> Any:
        """The group of LIF population ``pop``; ``links`` are the attention currents it reads,
        ``extra`` the model lines of its traces and links."""
        raise NotImplementedError

    def _readout(self, pop: Population) -> None:
        raise NotImplementedError

    def _dense_delay(self, conn: Connection, src: Population, dst: Population) -> Any:
        raise NotImplementedError

    def _attention_slot(self, att: Attention) -> str:
        raise NotImplementedError

    def _spike_steps(self, times: np.ndarray, pop: Population) -> np.ndarray:
        """The global IR step (int64) each spike time (in steps) of ``pop`` stands for."""
        raise NotImplementedError

    def _readout_steps(self) -> np.ndarray:
        """The readout of every step of every sample, ``[C, B, T]``."""
        raise NotImplementedError

    # --- clocks, schedule, slots --------------------------------------------------------------

    def build(self) -> None:
        b2 = self.b2
        self.clock = b2.Clock(dt=self.step, name=_brian_name("steps", self.names))  # one IR step
        self.fine = self._fine_clock()
        self.sample_clock = b2.Clock(dt=self.sample_steps * self.step, name=_brian_name("samples", self.names))
        awake = np.zeros(self.batch * self.sample_steps)
        awake.reshape(self.batch, self.sample_steps)[:, :self.awake_steps] = 1.0
        self.awake = b2.TimedArray(awake, dt=self.step, name=_brian_name("awake", self.names))
        for pop in self.graph.populations:
            {"input": self._input, "lif": self._lif, "readout": self._readout}[pop.kind](pop)
        for att in self.graph.attentions:
            self._attention(att)
        for conn in self.graph.connections:
            self._dense(conn)
        if self.plastic:
            self._teach()
        self.net = b2.Network(*self.objects, name=_brian_name("net", self.names))
        self.net.schedule = self._schedule()

    def _slot(self, obj: Any, when: str, order: int) -> Any:
        obj.when, obj.order = when, order
        return obj

    def _group(self, pop: Population, model: str, **kw) -> Any:
        group = self.b2.NeuronGroup(pop.size, model, name=_brian_name(pop.name, self.names), **kw)
        self.groups[pop.name] = group
        self.objects.append(group)
        self.neurons += pop.size
        return group

    def _on_sample_start(self, group: Any, code: str) -> None:
        """Every sample starts from zero state: ``code`` runs at each sample's first step."""
        self.objects.append(group.run_regularly(code, clock=self.sample_clock, when="start", order=0,
                                                name=group.name + "_sample_reset"))

    def _regularly(self, group: Any, code: str, when: str, order: int, tag: str) -> None:
        """``code`` once per IR step (the step clock), in slot ``when`` at ``order``."""
        self.objects.append(group.run_regularly(code, clock=self.clock, when=when, order=order,
                                                name=group.name + "_" + tag))

    # --- populations -------------------------------------------------------------------------------

    def _input(self, pop: Population) -> None:
        values = np.zeros((self.batch, self.sample_steps, pop.size))
        values[:, :self.steps] = self.x_steps.transpose(1, 0, 2, 3).reshape(self.batch, self.steps, pop.size)
        self.stimulus = self.b2.TimedArray(values.reshape(-1, pop.size), dt=self.step,
                                           name=_brian_name("stimulus", self.names))
        model = INPUT + "\n".join(self.extra[pop.name])  # + the pre traces of plastic connections
        group = self._group(pop, model, threshold=INPUT_THRESHOLD, reset=INPUT_RESET, clock=self.fine,
                            namespace={"stimulus": self.stimulus})
        self._schedule_input(group)

    def _lif(self, pop: Population) -> None:
        group = self._lif_group(pop, self.attention_links[pop.name], "\n".join(self.extra[pop.name]))
        zero = self.lif_zero
        if pop.name in self.traces:
            zero += "\n" + (KEY_TRACE_ZERO if self.traces[pop.name] == "key" else VALUE_TRACE_ZERO)
        self._on_sample_start(group, zero)
        self._spike_monitor(pop, group)

    def _spike_monitor(self, pop: Population, group: Any) -> None:
        monitor = self.b2.SpikeMonitor(group, name=group.name + "_spikes")
        monitor.when, monitor.order = "end", 0  # the spike space holds the step's spikes until the next threshold
        self.spike_monitors[pop.name] = monitor
        self.objects.append(monitor)

    # --- Dense connections ----------------------------------------------------------------------

    def _plastic_dense(self, conn: Connection) -> None:
        """A connection that learns online (exact mode; docs/backends.md "On-chip learning"), as
        ``neuromorphic.simulate.learn_online`` with ``guard_steps = self.gap`` does:

        - only the synapses of ``conn.synapses()`` exist (a per-token copy is a masked full
          weight), one Synapses object in row-major order over that mask;
        - the pre pathway transmits with the weight before this step's dw (order 0 of the
          'synapses' slot, as every Dense), then the rule pairs this step's source and target
          activity on per-neuron traces (``brian2_learning.LEARN_RULE``): STDP changes w at
          once; three_factor adds to the eligibility ``elig``, and ``OnlineTeacher`` turns it into
          weight at the first guard step with the output error as its third factor;
        - a readout target (an integrator, no spikes) takes 1 as its post factor at every step,
          guard steps included;
        - the traces start from ``conn.traces`` (zero when None) and, like the weights, carry
          over from sample to sample.
        """
        from rules.base import decay

        from .brian2_learning import (LEARN_MODEL, LEARN_ORDER, LEARN_POST_ADD, LEARN_POST_DECAY, LEARN_PRE_STEP,
                                      LEARN_RULE, learning_namespace)

        src, dst = self.pops[conn.source], self.pops[conn.target]
        gsrc, gdst = self.groups[conn.source], self.groups[conn.target]
        params, k = conn.rule_parameters(), self.learn_index[conn.name]
        pre = "x" if src.kind == "input" else "s"  # the pre factor: the input's value, or the spike
        post = "1" if dst.kind == "readout" else "s_post"
        syn = self.b2.Synapses(gsrc, gdst, LEARN_MODEL[conn.rule],
                               on_pre=DENSE_ON_PRE[(self.mode, dst.kind)].format(w="w"), clock=self.fine,
                               namespace=learning_namespace(conn.rule, params), name=_brian_name(conn.name, self.names))
        post_index, pre_index = np.nonzero(conn.synapses())  # row-major: per target, sources in order
        syn.connect(i=pre_index, j=post_index)
        syn.w = conn.weight[post_index, pre_index]
        syn.delay = self._dense_delay(conn, src, dst)
        syn.pre.when, syn.pre.order = "synapses", LEARN_ORDER["transmit"]
        setattr(gsrc, f"xdecay{k}", decay(params.tau_pre))
        setattr(gdst, f"ydecay{k}", decay(params.tau_post))
        if conn.traces:  # a rule that ran before: its traces go on
            setattr(gsrc, f"xtrace{k}", np.asarray(conn.traces["pre"], np.float64))
            setattr(gdst, f"ytrace{k}", np.asarray(conn.traces["post"], np.float64))
            if conn.rule == "three_factor":
                syn.elig = np.asarray(conn.traces["eligibility"], np.float64)[post_index, pre_index]
        self._regularly(gsrc, LEARN_PRE_STEP.format(k=k, activity=pre), "synapses", LEARN_ORDER["traces"],
                        f"xtrace{k}")
        self._regularly(gdst, LEARN_POST_DECAY.format(k=k), "synapses", LEARN_ORDER["traces"], f"ydecay{k}")
        self.objects.append(syn.run_regularly(LEARN_RULE[conn.rule].format(k=k, pre=f"{pre}_pre", post=post),
                                              clock=self.clock, when="synapses", order=LEARN_ORDER["rule"],
                                              name=syn.name + "_rule"))
        self._regularly(gdst, LEARN_POST_ADD.format(k=k, activity="1" if dst.kind == "readout" else "s"),
                        "synapses", LEARN_ORDER["post_trace"], f"ytrace{k}")
        self.synapses += len(pre_index)
        self.objects.append(syn)
        self.plastic[conn.name] = syn

    def _teach(self) -> None:
        """The network operation that gives three_factor connections their third factor at each
        sample's first guard step and records every plastic weight after each sample."""
        from .brian2_learning import OnlineTeacher

        conns = {c.name: c for c in self.graph.connections}
        synapses = {name: (syn, conns[name].rule, float(conns[name].rule_parameters().lr))
                    for name, syn in self.plastic.items()}
        self.teacher = OnlineTeacher(self.groups[self.graph.readout.name], synapses, self.steps, self.sample_steps,
                                     int(self.graph.meta["window"]), self.batch, self.labels, self.feedback, self.step)
        self.objects.append(self.b2.NetworkOperation(self.teacher.end_of_step, clock=self.clock, when="end", order=10,
                                                     name=_brian_name("teacher", self.names)))

    def learned_weights(self) -> dict[str, np.ndarray]:
        """Each plastic connection's weight after the run ``[target size, source size]`` (zero
        outside its synapses)."""
        out = {}
        for name, syn in self.plastic.items():
            conn = next(c for c in self.graph.connections if c.name == name)
            weight = np.zeros(conn.weight.shape)
            weight[syn.j[:], syn.i[:]] = syn.w[:]
            out[name] = weight
        return out

    def learned_traces(self) -> dict[str, dict[str, np.ndarray]]:
        """Each plastic connection's rule traces after the run, as the IR's ``traces`` table:
        ``pre [source size]``, ``post [target size]`` and, for three_factor, ``eligibility
        [target size, source size]`` (zero outside its synapses, which have none)."""
        out = {}
        for name, syn in self.plastic.items():
            conn = next(c for c in self.graph.connections if c.name == name)
            k = self.learn_index[name]
            traces = {"pre": np.array(getattr(self.groups[conn.source], f"xtrace{k}")[:], np.float64),
                      "post": np.array(getattr(self.groups[conn.target], f"ytrace{k}")[:], np.float64)}
            if conn.rule == "three_factor":
                traces["eligibility"] = np.zeros(conn.weight.shape)
                traces["eligibility"][syn.j[:], syn.i[:]] = syn.elig[:]
            out[name] = traces
        return out

    def _dense(self, conn: Connection) -> None:
        if conn.rule is not None:
            return self._plastic_dense(conn)
        src, dst = self.pops[conn.source], self.pops[conn.target]
        # a graded event carries the input value of the step it left in, even when it arrives later
        weight = GRADED_WEIGHT if src.kind == "input" else "w"
        syn = self.b2.Synapses(self.groups[conn.source], self.groups[conn.target], DENSE,
                               on_pre=DENSE_ON_PRE[(self.mode, dst.kind)].format(w=weight), clock=self.fine,
                               namespace={"stimulus": self.stimulus}, name=_brian_name(conn.name, self.names))
        pre, post, w = _token_major(dst.tokens, dst.features, src.features, conn.weight, conn.kind)
        syn.connect(i=pre, j=post)
        syn.w = w
        syn.delay = self._dense_delay(conn, src, dst)
        syn.pre.when, syn.pre.order = "synapses", 0
        self.synapses += len(w)
        self.objects.append(syn)

    # --- attention ------------------------------------------------------------------------------

    def _attention(self, att: Attention) -> None:
        b2 = self.b2
        h, d = att.heads, att.head_dim
        q, v = self.pops[att.query], self.pops[att.value]
        tokens = q.tokens
        gq, gk, gv = (self.groups[n] for n in (att.query, att.key, att.value))
        slot = self._attention_slot(att)

        def part(role: str) -> str:
            return _brian_name(f"{att.name}.{role}", self.names)

        # memory cells (h, i, j), index c = (h * d + i) * d + j
        cells = np.arange(h * d * d)
        head_of_cell = cells // (d * d)
        memory = b2.NeuronGroup(h * d * d, MEMORY[att.variant], clock=self.clock, name=part("memory"))
        memory.lam = att.decay[head_of_cell]
        p = att.plasticity
        if att.variant == "stdp":
            memory.a_plus, memory.a_minus = p["a_plus"][head_of_cell], p["a_minus"][head_of_cell]
            gk.pre_decay = np.tile(np.repeat(p["pre_decay"], d), tokens)
            gv.post_decay = np.tile(np.repeat(p["post_decay"], d), tokens)
            self._regularly(gk, KEY_TRACE_STEP, slot, ORDER["pre_trace"], "pre_trace")
            self._regularly(gv, VALUE_TRACE_DECAY, slot, ORDER["pre_trace"], "post_decay")
            self._regularly(gv, VALUE_TRACE_ADD, slot, ORDER["post_trace"], "post_trace")
        elif att.variant == "three_factor":
            memory.elig_decay = p["eligibility_decay"][head_of_cell]
            memory.tokens = float(self.pops[att.modulator].tokens)
        elif att.variant == "delta":
            memory.rate = p["delta_rate"][head_of_cell]
            self._regularly(memory, MEMORY_DECAY, slot, ORDER["decay"], "decay")
        self._regularly(memory, MEMORY_UPDATE[att.variant], slot, ORDER["memory"], "update")
        self._on_sample_start(memory, MEMORY_RESET[att.variant])
        self.objects.append(memory)
        self.neurons += h * d * d

        # index arrays: one row per (token n, head, i, j)
        n_, h_, i_, j_ = np.meshgrid(np.arange(tokens), np.arange(h), np.arange(d), np.arange(d), indexing="ij")
        n_, h_, i_, j_ = (a.reshape(-1) for a in (n_, h_, i_, j_))
        row = n_ * h * d + h_ * d + i_  # neuron (n, h, i) of a [N, H*d] population
        col = n_ * h * d + h_ * d + j_  # neuron (n, h, j)
        cell = (h_ * d + i_) * d + j_

        errors = None
        if att.variant == "delta":  # error units, and recall synapses key (n, h, i) -> unit (n, h, j) reading S
            errors = b2.NeuronGroup(v.size, ERROR_UNITS, clock=self.clock, name=part("errors"))
            errors.v_s = b2.linked_var(gv, "s")
            recall = b2.Synapses(gk, errors, RECALL, clock=self.clock, name=part("recall"))
            recall.connect(i=row, j=col)
            recall.cell = cell
            recall.S_m = b2.linked_var(memory, "S", index="cell")
            for name in ("r_post", "kc_post"):
                self._slot(recall.summed_updaters[name], slot, ORDER["sums"])
            self._regularly(errors, ERROR_STEP, slot, ORDER["errors"], "step")
            self.objects += [errors, recall]
            self.neurons += v.size
            self.synapses += len(row)
        # write synapses: key (n, h, i) -> cell (h, i, j), the same token's value (n, h, j) linked
        write = b2.Synapses(gk, memory, WRITE[att.variant], clock=self.clock, name=part("write"))
        order = np.lexsort((n_, cell))  # per cell, tokens in order (the float sum over n)
        write.connect(i=row[order], j=cell[order])
        write.vidx = col[order]
        if att.variant == "delta":
            write.err_v = b2.linked_var(errors, "err", index="vidx")
        else:
            write.v_s = b2.linked_var(gv, "s", index="vidx")
        if att.variant == "stdp":
            write.v_y = b2.linked_var(gv, "y", index="vidx")
        for updater in write.summed_updaters.values():
            self._slot(updater, slot, ORDER["delta_write" if att.variant == "delta" else "sums"])
        self.objects.append(write)
        self.synapses += len(row)

        if att.variant == "three_factor":
            gate_pop = self.pops[att.modulator]
            gate_rows = np.repeat(np.arange(gate_pop.size), d * d)  # gate (n, h) -> every cell of head h
            gate_cells = (np.arange(gate_pop.size) % h)[:, None] * d * d + np.arange(d * d)[None, :]
            gate = b2.Synapses(self.groups[att.modulator], memory, GATE, clock=self.clock, name=part("gate"))
            gate.connect(i=gate_rows, j=gate_cells.reshape(-1))
            self._slot(gate.summed_updaters["gate_post"], slot, ORDER["sums"])
            self.objects.append(gate)
            self.synapses += len(gate_rows)

        # read synapses: query (n, h, i) -> attention unit (n, h, j), effective weight S[h, i, j]
        units = b2.NeuronGroup(q.size, ATTENTION_UNITS, clock=self.clock, name=part("units"),
                               namespace={"scale": att.scale})
        units.gain = np.tile(att.out_scale, tokens)
        read = b2.Synapses(gq, units, READ, clock=self.clock, name=part("read"))
        order = np.lexsort((i_, col))  # per unit, rows i in order (the float sum over i)
        read.connect(i=row[order], j=col[order])
        read.cell = cell[order]
        read.S_m = b2.linked_var(memory, "S", index="cell")
        self._slot(read.summed_updaters["qS_post"], slot, ORDER["read"])
        self._regularly(units, ATTENTION_STEP, slot, ORDER["units"], "step")
        setattr(self.groups[att.target], self.link_of[att.name], b2.linked_var(units, "o"))  # the target reads o_k
        self.objects += [units, read]
        self.neurons += q.size
        self.synapses += len(row)

    # --- results --------------------------------------------------------------------------------

    def trace(self) -> Trace:
        T, B = self.steps, self.batch
        spikes: dict[str, np.ndarray] = {"input": self.x_steps != 0}
        for name, monitor in self.spike_monitors.items():
            pop = self.pops[name]
            global_step = self._spike_steps(np.asarray(monitor.t / self.step), pop)  # spike times in steps
            index = np.asarray(monitor.i)
            sample, local = np.divmod(global_step, self.sample_steps)
            keep = (local >= 0) & (local < T) & (sample >= 0) & (sample < B)
            grid = np.zeros((T, B, pop.size), bool)
            grid[local[keep], sample[keep], index[keep]] = True
            spikes[name] = grid.reshape(T, B, pop.tokens, pop.features)
        readout = self._readout_steps().transpose(2, 1, 0)  # [C, B, T] -> [T, B, C]
        return Trace(spikes, np.ascontiguousarray(readout), int(self.graph.meta["window"]))
