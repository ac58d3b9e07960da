"""Fixed-point on-chip learning inside a network, STDP and three_factor: Lava's fixed_pt network
(bit-approximate LearningDense, masked per-token copies through tag_2, RuleInputs' integer y
inputs) against ``fixed_ref.learn_online_fixed``, integer for integer: spikes, and every plastic
weight after every sample."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from neuromorphic.fixed_learning import connection_rule, mask_tag, realized_amplitudes
from neuromorphic.fixed_ref import learn_online_fixed
from neuromorphic.ir import Connection, Graph, IRError, plastic_connection
from neuromorphic.quantize import quantize, weight_scale
from test_onchip import CLASSES, F_HID, F_IN, STDP, STEPS, TOKENS, WINDOW, populations  # tests/neuromorphic on sys.path

pytestmark = pytest.mark.backend

STDP_DW = "y0 * x1 - x0 * y1 + x0 * y2"


def network(seed: int = 0) -> Graph:
    """input -> hidden (tokenwise: masked per-token copies) -> deep (full, every pair a synapse)
    -> readout (frozen), both hidden connections plastic by STDP, quantised with vth 256."""
    rng = np.random.default_rng(seed)
    pops = populations(rng)
    conns = [Connection("input->hidden", "input", "hidden", "tokenwise", rng.uniform(0.1, 0.9, (F_HID, F_IN))),
             Connection("hidden->deep", "hidden", "deep", "full",
                        rng.uniform(-0.2, 0.6, (TOKENS * F_HID, TOKENS * F_HID))),
             Connection("deep->readout", "deep", "readout", "full", rng.normal(size=(CLASSES, TOKENS * F_HID)))]
    meta = {"mode": "global", "steps": STEPS, "window": WINDOW, "latency": 0, "classes": CLASSES}
    graph = Graph(pops, conns, [], meta)
    for i, conn in enumerate(graph.connections[:2]):
        graph.connections[i] = plastic_connection(conn, graph.population(conn.target).tokens, "stdp", STDP)
    return quantize(graph.validate())


def samples(count: int, seed: int = 1) -> np.ndarray:
    """Binary input ``[S, T, N, F]``."""
    rng = np.random.default_rng(seed)
    return (rng.random((count, STEPS, TOKENS, F_IN)) < 0.5).astype(np.int64)


def test_quantize_keeps_the_rule_and_derives_one_integer_rule():
    graph = network()
    hidden, deep = graph.connections[:2]
    assert graph.precision == "fixed" and hidden.rule == "stdp" and hidden.rule_params == STDP
    assert hidden.mask is not None and hidden.mask.sum() == TOKENS * F_HID * F_IN and deep.mask is None
    assert not np.any(hidden.weight[~hidden.mask]) and hidden.weight.dtype.kind == "i"
    # dw in float units maps to weight units through the connection's own quantisation
    for conn in (hidden, deep):
        fixed = connection_rule(graph, conn)
        wanted = np.array([STDP["a_plus"], STDP["a_minus"]]) * STDP["lr"] * weight_scale(graph, conn) \
            * 2.0 ** -conn.weight_exp
        tag = 0 if fixed.tag_2 is None else int(fixed.tag_2.max())
        np.testing.assert_allclose(realized_amplitudes(fixed.rule, tag), wanted, rtol=0.05)
        assert fixed.rule == connection_rule(graph, conn).rule  # deterministic, rng_seed included
    fixed = connection_rule(graph, hidden)
    assert fixed.rule["dw"].count("* d") == 3 and set(np.unique(fixed.tag_2)) == {0, mask_tag(STDP_DW)} == {0, 32}
    assert connection_rule(graph, deep).rule["rng_seed"] != fixed.rule["rng_seed"]


def test_lava_fixed_point_stdp_in_a_network_equals_the_integer_reference():
    """5 samples back to back with Lava's two guard steps: every spike and, after every sample,
    every plastic weight equal; the weights moved, no synapse grew between tokens."""
    from neuromorphic.lava.run import GUARD_STEPS, run_lava

    graph = network()
    w0 = {c.name: c.weight[c.synapses()].copy() for c in graph.connections if c.rule}
    x = samples(5, seed=3)
    ref_graph = copy.deepcopy(graph)
    expected: dict[str, list] = {name: [] for name in w0}

    def record(_: int) -> None:
        for conn in ref_graph.connections:
            if conn.rule:
                expected[conn.name].append(conn.weight[conn.synapses()].copy())

    traces = learn_online_fixed(ref_graph, x, GUARD_STEPS, after_sample=record)
    recorded: dict[str, np.ndarray] = {}
    trace, _ = run_lava(graph, x.transpose(1, 0, 2, 3), progress=False, weights_per_sample=recorded)
    for name in ("hidden", "deep"):
        ref_spikes = np.concatenate([t.spikes[name] for t in traces], 1)
        np.testing.assert_array_equal(trace.spikes[name], ref_spikes)
        assert ref_spikes.sum() > 10, name
    np.testing.assert_array_equal(trace.readout, np.concatenate([t.readout for t in traces], 1))
    for name, first in w0.items():
        want = np.stack(expected[name])
        assert recorded[name].dtype == np.int64
        np.testing.assert_array_equal(recorded[name], want)
        assert np.abs(want[-1] - first).max() >= 5, name  # learnt by whole weight units
    hidden = ref_graph.connections[0]
    assert not np.any(hidden.weight[~hidden.mask])
    blocks = [hidden.weight[n * F_HID:(n + 1) * F_HID, n * F_IN:(n + 1) * F_IN] for n in range(TOKENS)]
    assert not np.array_equal(blocks[0], blocks[1])
    for conn, ref_conn in zip(graph.connections, ref_graph.connections):  # run_lava wrote the weights back
        np.testing.assert_array_equal(conn.weight, ref_conn.weight)


def test_lava_fixed_point_three_factor_in_a_network_equals_the_integer_reference():
    """Every connection three_factor (tokenwise copies into both LIF layers, and the readout), the
    output error through each one's feedback, 5 labelled samples: spikes, readout and every plastic
    weight after every sample equal the integer reference; the weights and the y inputs' gains
    are real (weights moved by whole units, nothing grew outside the mask)."""
    from neuromorphic.lava.run import GUARD_STEPS, run_lava
    import test_onchip

    float_graph, feedback = test_onchip.network("three_factor")
    graph = quantize(float_graph)
    x = samples(5, seed=3)
    labels = np.array([0, 2, 1, 2, 0])
    start = {c.name: c.weight[c.synapses()].copy() for c in graph.connections}
    ref_graph = copy.deepcopy(graph)
    expected: dict[str, list] = {c.name: [] for c in graph.connections}

    def record(_: int) -> None:
        for conn in ref_graph.connections:
            expected[conn.name].append(conn.weight[conn.synapses()].copy())

    traces = learn_online_fixed(ref_graph, x, GUARD_STEPS, after_sample=record, labels=labels, feedback=feedback)
    recorded: dict[str, np.ndarray] = {}
    trace, _ = run_lava(graph, x.transpose(1, 0, 2, 3), progress=False, labels=labels, feedback=feedback,
                        weights_per_sample=recorded)
    for name in ("hidden", "deep"):
        np.testing.assert_array_equal(trace.spikes[name], np.concatenate([t.spikes[name] for t in traces], 1))
    np.testing.assert_array_equal(trace.readout, np.concatenate([t.readout for t in traces], 1))
    for conn in graph.connections:
        want = np.stack(expected[conn.name])
        np.testing.assert_array_equal(recorded[conn.name], want)
        assert np.abs(want[-1] - start[conn.name]).max() >= 2, conn.name
    for conn in ref_graph.connections:
        assert conn.mask is None or not np.any(conn.weight[~conn.mask])
    realization = connection_rule(graph, graph.connections[-1], feedback["deep->readout"])
    assert realization.third_factor and realization.inputs.gains.modulator_gain == 127  # |m| <= 1 at the readout
    with pytest.raises(IRError, match="labels"):
        learn_online_fixed(copy.deepcopy(graph), x, GUARD_STEPS, feedback=feedback)
