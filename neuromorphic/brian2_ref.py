"""Brian2 reference networks for the model IR (SPEC §2; docs/backends.md, section "Brian2").

``run_brian2(graph, x_steps, mode, codegen)`` builds one Brian2 ``Network`` from an IR
``Graph`` (explicit imports, an explicit ``Network``, every equation a string in
``brian2_equations``) and returns the same ``Trace`` as ``neuromorphic.simulate.run_graph``.

mode "exact"        discrete time, one Brian2 time step (dt = 1 ms) = one IR step. The spikes
                    equal ``run_graph`` (float64; only a membrane exactly at threshold within
                    rounding could differ).
mode "biophysical"  continuous time with units (``BioParams``: one step = 1 ms, dt = 0.05 ms):
                    leaky membranes (tau_m = -step / ln beta), exponential current synapses
                    (tau_syn = 0.1 ms) scaled so a weight w lifts v by at most w, the bias as a
                    once-per-step pulse from a pacemaker neuron, real axonal delays (a LIF
                    population's step-t activity sits at t + 1/2 ms, an attention target's at
                    t + 1 ms; each Dense delay is one step plus that phase difference), reset of
                    v (and the rest of the step's synaptic current) to zero. The attention
                    memory runs on the 1 ms step clock: a coincidence is "both fired since the
                    last tick", and the read enters the target as one current pulse.
                    ``drift`` measures how far it moves from the discrete model.

How the IR maps onto Brian2 objects (both modes):

    population "lif"       NeuronGroup of N*F neurons, index n*F + f (token-major)
    population "input"     NeuronGroup reading a TimedArray; it emits one graded event per step
                           where its value is non-zero (the value rides on the event, Loihi style)
    population "readout"   NeuronGroup integrating its input (a perfect integrator)
    Connection (Dense)     Synapses ``w`` on_pre, one synapse per non-zero weight; exact: the
                           current is delivered in the step after the spike (the one-step delay of
                           SPEC §2.2 is where Brian2's 'synapses' slot sits after the updates);
                           biophysical: a real delay of one step
    Attention (SPEC §2.3)  per attention node:
        M  memory group, one neuron per cell (h, i, j) of the d x d state of each head: holds S
        write synapses     key neuron (n, h, i) -> cell (h, i, j): they see the key spike as
                           their presynaptic spike and the value spike of the same token through a
                           linked variable; their summed coincidences k_n[i] v_n[j] (hebbian,
                           three_factor), traces (stdp) or errors (delta) change S
        recall synapses    (delta) key (n, h, i) -> error unit (n, h, j), effective weight S:
                           the read k_n S of the Widrow-Hoff rule
        gate synapses      (three_factor) gate neuron (n, h) -> every cell of head h: the
                           modulator m = mean over tokens of the gate spikes
        read synapses      query neuron (n, h, i) -> attention unit (n, h, j), effective weight
                           S (a variable linked to the memory cell): q S
        A  attention units, one per output column (n, h, j): o = out_scale * (scale * q S),
                           the graded current the target LIF reads (linked variable)

Sample isolation: the B samples of ``x_steps`` run back to back in ONE Brian2 run (one build,
one code generation). At each sample's first step every state variable is set back to zero
(a ``run_regularly`` on a clock whose period is one sample). Biophysical runs add silent
steps between samples so that spikes still in flight land before the reset.

On-chip learning (exact mode): plastic connections (``Connection.rule``) learn online exactly as
``neuromorphic.simulate.learn_online(graph, samples, guard_steps=GUARD_STEPS, reward=...)`` and
the Lava backend do: every sample is followed by ``neuromorphic.lava.run.GUARD_STEPS`` guard
steps (the first awake, without input; the rest silent), the third factor of three_factor is
the output error ``neuromorphic.reward.modulator`` at the first guard step, and weights and rule
traces carry over from sample to sample (``brian2_learning``, ``brian2_build._plastic_dense``).

Where the code is: ``brian2_equations`` (every equation string and statement),
``brian2_build.Builder`` (what both modes build: clocks, groups, sample resets, monitors, Dense
synapses, the attention memory, the Trace), ``brian2_exact.ExactBuilder`` (discrete time; its
docstring states the schedule) and ``brian2_bio`` (``BioParams``, ``BioBuilder``: units,
kernels, the pacemaker, phases). This module checks the graph and runs the chosen builder.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np

from spikeformer.variants import VARIANTS as VARIANT_TABLE

from .brian2_bio import BioBuilder, BioParams, check_biophysical
from .brian2_build import _attention_sources, _brian_name, _levels, _token_major  # noqa: F401 (re-exported)
from .brian2_equations import (  # noqa: F401 (re-exported: brian2_ref's names before the split)
    ATTENTION_STEP, ATTENTION_UNITS, BIO_ATTENTION_PULSE, BIO_LIF, BIO_LIF_RESET, BIO_LIF_RESET_CURRENT,
    BIO_LIF_THRESHOLD, BIO_READOUT, CHARGE, DENSE, DENSE_ON_PRE, ERROR_STEP, ERROR_UNITS, EXACT_LIF, EXACT_LIF_RESET,
    EXACT_LIF_STEP, EXACT_LIF_THRESHOLD, EXACT_READOUT, EXACT_READOUT_STEP, GATE, GRADED_WEIGHT, INPUT, INPUT_RESET,
    INPUT_STEP, INPUT_THRESHOLD, KEY_TRACE, KEY_TRACE_STEP, MEMORY, MEMORY_DECAY, MEMORY_RESET, MEMORY_UPDATE, ORDER,
    PACEMAKER, PACEMAKER_ON_PRE, PACEMAKER_STEP, READ, RECALL, VALUE_TRACE, VALUE_TRACE_ADD, VALUE_TRACE_DECAY, WRITE)
from .brian2_exact import ExactBuilder
from .ir import Graph, IRError, LoweringError
from .trace import Trace

MODES = ("exact", "biophysical")
CODEGEN_TARGETS = ("numpy", "cython")
VARIANTS = tuple(VARIANT_TABLE)  # each needs its MEMORY, MEMORY_UPDATE, MEMORY_RESET and WRITE equations


# ---------------------------------------------------------------------------------------------
# public API


def run_brian2(graph: Graph, x_steps: np.ndarray, mode: str = "exact", codegen: str = "numpy",
               bio: BioParams | None = None, labels: np.ndarray | None = None,
               feedback: dict[str, np.ndarray] | None = None,
               weights_per_sample: dict[str, np.ndarray] | None = None) -> tuple[Trace, dict[str, Any]]:
    """Simulate ``graph`` on encoded input ``x_steps [T, B, N, F]`` in Brian2.

    Returns a ``Trace`` (spikes ``[T, B, N, F]`` bool per population, the input included as
    ``x != 0``; readout ``[T, B, C]``) and ``info``: build_seconds (network construction and
    code generation/compilation), run_seconds, steps_per_second (IR steps), neurons, synapses,
    brian2 version, mode, codegen and, for biophysical runs, the physical constants.
    Each of the B samples starts from zero state. Raises ``LoweringError`` (one line) for what
    the chosen mode cannot run.

    Plastic connections (exact mode) learn online over the samples, as ``run_lava`` does: the
    learned weights (and rule traces) are written back into ``graph``; a three_factor connection
    needs the samples' ``labels [B]`` and its ``feedback {name: [C, target size]}`` (the output
    error is its third factor, ``neuromorphic.reward``); if given, ``weights_per_sample``
    receives each plastic connection's weights after every sample (after its guard steps)
    ``[B, synapses]``, row-major over ``Connection.synapses()``. The Trace holds each sample's
    own T steps, guard steps left out.
    """
    if any(c.rule is not None for c in graph.connections) and mode != "exact":
        raise LoweringError("a plastic connection learns in Brian2's exact mode only; pass --brian2-mode exact")
    graph.require_spike_learning("Brian2")
    if mode not in MODES:
        raise LoweringError(f"Brian2 mode {mode!r} is unknown; choose one of {list(MODES)}")
    if codegen not in CODEGEN_TARGETS:
        raise LoweringError(f"Brian2 codegen target {codegen!r} is unknown; choose one of {list(CODEGEN_TARGETS)}")
    if graph.precision != "float":
        raise LoweringError("the Brian2 reference runs float IR graphs; pass the graph from neuromorphic.lower.lower, "
                            "not a quantized one")
    graph.validate()
    inp = graph.input
    x_steps = np.asarray(x_steps, dtype=np.float64)
    if x_steps.ndim != 4 or x_steps.shape[2:] != (inp.tokens, inp.features):
        raise IRError(f"input steps must be [T, B, {inp.tokens}, {inp.features}], got {x_steps.shape}")
    if x_steps.shape[0] == 0 or x_steps.shape[1] == 0 or not np.isfinite(x_steps).all():
        raise IRError(f"input steps {x_steps.shape} must hold at least one step and one sample, all finite")
    _check_supported(graph, mode)
    _check_teaching(graph, x_steps.shape[1], labels, feedback)
    try:
        import brian2
    except ImportError:
        raise LoweringError("the Brian2 backend needs brian2: pip install 'spikeformer[brian2]'") from None
    saved = {key: brian2.prefs[key] for key in ("codegen.target", "codegen.loop_invariant_optimisations")}
    brian2.prefs["codegen.target"] = codegen
    # no sympy rewriting of the step statements: keeps float64 operations in the written order
    brian2.prefs["codegen.loop_invariant_optimisations"] = False
    try:
        builder = (ExactBuilder(graph, x_steps, labels, feedback) if mode == "exact"
                   else BioBuilder(graph, x_steps, bio or BioParams()))
        start = time.perf_counter()
        builder.build()
        marks: list[float] = []  # Brian2 reports once after code generation, before the first step

        def report(*_: Any) -> None:
            marks.append(time.perf_counter())

        # one run for all samples; namespace={}: nothing is resolved from the caller's variables
        builder.net.run(builder.duration, namespace={}, report=report, report_period=1e9 * brian2.second)
        end = time.perf_counter()
        build_seconds, run_seconds = marks[0] - start, end - marks[0]
        trace = builder.trace()
        traces = builder.learned_traces()
        for name, weight in builder.learned_weights().items():  # learned weights (and traces) back into the graph
            conn = next(c for c in graph.connections if c.name == name)
            conn.weight, conn.traces = weight, traces[name]
        if weights_per_sample is not None and builder.teacher is not None:
            weights_per_sample.update(builder.teacher.weights)
    finally:
        for key, value in saved.items():
            brian2.prefs[key] = value
    steps, batch = x_steps.shape[:2]
    info = {
        "mode": mode, "codegen": codegen, "brian2_version": brian2.__version__,
        "samples": batch, "steps": steps, "build_seconds": build_seconds, "run_seconds": run_seconds,
        "steps_per_second": steps * batch / run_seconds if run_seconds > 0 else float("inf"),
        "neurons": builder.neurons, "synapses": builder.synapses, "objects": len(builder.net.objects),
        "sample_isolation": "one run, all state zeroed at each sample's first step"
                            + (f", {builder.gap} guard steps after each sample (the first awake, for learning)"
                               if builder.learns else f", {builder.gap} silent steps between samples" if builder.gap
                               else ""),
    }
    if builder.learns:
        info["guard_steps_per_sample"] = builder.gap
    if mode == "biophysical":
        info["bio"] = asdict(bio or BioParams())
    return trace, info


def drift(reference: Trace, trace: Trace) -> dict[str, Any]:
    """How far a (biophysical) trace is from the discrete reference: spike agreement, class
    agreement, binned spike-train correlation (Pearson over every neuron-step of every shared
    population), per-neuron spike-count correlation, per-population count correlation and the
    readout correlation."""
    names = sorted(set(reference.spikes) & set(trace.spikes) - {"input"})
    a = np.concatenate([reference.spikes[n].reshape(-1) for n in names]).astype(np.float64)
    b = np.concatenate([trace.spikes[n].reshape(-1) for n in names]).astype(np.float64)
    counts_a = np.concatenate([reference.spikes[n].sum(0).reshape(-1) for n in names]).astype(np.float64)
    counts_b = np.concatenate([trace.spikes[n].sum(0).reshape(-1) for n in names]).astype(np.float64)
    per_population = {n: _pearson(reference.spikes[n].sum(0).reshape(-1), trace.spikes[n].sum(0).reshape(-1))
                      for n in names}
    return {
        "spike_agreement": float((a == b).mean()),
        "class_agreement": float((reference.logits.argmax(-1) == trace.logits.argmax(-1)).mean()),
        "spike_train_correlation": _pearson(a, b),
        "spike_count_correlation": _pearson(counts_a, counts_b),
        "readout_correlation": _pearson(reference.readout.reshape(-1), trace.readout.reshape(-1)),
        "spike_rate_reference": float(a.mean()),
        "spike_rate_backend": float(b.mean()),
        "per_population_count_correlation": per_population,
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------------
# checks


def _check_teaching(graph: Graph, batch: int, labels: np.ndarray | None,
                    feedback: dict[str, np.ndarray] | None) -> None:
    """A three_factor connection needs ``labels [B]`` (classes of the readout) and its
    ``feedback [C, target size]``; IRError (one line) otherwise."""
    classes = graph.readout.size
    for conn in graph.connections:
        if conn.rule != "three_factor":
            continue
        if labels is None or feedback is None or conn.name not in feedback:
            raise IRError(f"connection {conn.name!r} learns by three_factor: give the samples' labels and its "
                          "feedback matrix (the output error is its third factor)")
        shape = (classes, graph.population(conn.target).size)
        if np.shape(feedback[conn.name]) != shape:
            raise IRError(f"feedback of connection {conn.name!r} must be [classes, target size] = {list(shape)}, "
                          f"got {list(np.shape(feedback[conn.name]))}")
        values = np.asarray(labels)
        if values.shape != (batch,) or not np.issubdtype(values.dtype, np.integer) or \
                (batch and (values.min() < 0 or values.max() >= classes)):
            raise IRError(f"labels must be [B] = [{batch}] integers in [0, {classes}), got shape {list(values.shape)} "
                          f"of {values.dtype}")


def _check_supported(graph: Graph, mode: str) -> None:
    for att in graph.attentions:
        if att.variant not in VARIANTS:
            raise LoweringError(f"attention {att.name!r} has variant {att.variant!r}, which the Brian2 reference "
                                f"does not build; use one of {list(VARIANTS)}")
        roles = {"query": att.query, "key": att.key, "value": att.value, "target": att.target, "modulator": att.modulator}
        for role, name in roles.items():
            if name is not None and graph.population(name).kind != "lif":
                raise LoweringError(f"attention {att.name!r} has a {graph.population(name).kind} population as its "
                                    f"{role}; the Brian2 reference needs LIF populations there")
        if att.variant == "three_factor" and att.modulator is None:
            raise LoweringError(f"attention {att.name!r} (three_factor) has no modulator population; the Brian2 "
                                "reference takes m from a gate population")
    traced: set[str] = set()
    for att in graph.attentions:
        if att.variant != "stdp":
            continue
        for pop in (att.key, att.value):
            if pop in traced:
                raise LoweringError(f"population {pop!r} carries the STDP trace of more than one attention node; "
                                    "the Brian2 reference keeps one trace per neuron")
            traced.add(pop)
    for conn in graph.connections:
        if conn.delay < 1:
            raise LoweringError(f"connection {conn.name!r} has delay {conn.delay}; Dense connections need a delay "
                                "of at least one step (SPEC §2.2)")
    if mode == "biophysical":
        check_biophysical(graph)
