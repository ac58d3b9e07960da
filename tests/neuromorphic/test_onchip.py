"""On-chip learning inside a network: per-token plastic copies (a masked full weight), three_factor
with the output error as its third factor (``neuromorphic.reward``), on hidden LIFs and on the
readout, in Lava float against ``simulate.learn_online``, weights after every sample."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from neuromorphic.ir import Connection, Graph, IRError, Population, learning_refusal, plastic_connection
from neuromorphic.reward import modulator, output_error
from neuromorphic.simulate import learn_online

TOKENS, F_IN, F_HID, CLASSES, STEPS, WINDOW = 2, 3, 4, 3, 8, 4
STDP = {"lr": 0.05, "a_plus": 1.0, "a_minus": 0.8, "tau_pre": 2.0, "tau_post": 3.0}
THREE_FACTOR = {**STDP, "lr": 0.2, "tau_eligibility": 4.0}


def populations(rng: np.random.Generator) -> list[Population]:
    """input [2, 3] -> hidden, deep (LIF [2, 4]) -> readout [3]: the networks of the on-chip tests."""
    lif = dict(beta=0.5, threshold=1.0)
    return [Population("input", "input", TOKENS, F_IN),
            Population("hidden", "lif", TOKENS, F_HID, bias=np.zeros((TOKENS, F_HID)), **lif),
            Population("deep", "lif", TOKENS, F_HID, bias=np.full((TOKENS, F_HID), 0.1), **lif),
            Population("readout", "readout", 1, CLASSES, bias=rng.normal(size=(1, CLASSES)) * 0.1)]


def network(hidden_rule: str = "stdp", seed: int = 0) -> tuple[Graph, dict[str, np.ndarray]]:
    """input -> hidden (tokenwise, plastic by ``hidden_rule``) -> deep (tokenwise, three_factor)
    -> readout (full, three_factor); returns the graph and each three_factor connection's feedback."""
    rng = np.random.default_rng(seed)
    pops = populations(rng)
    conns = [Connection("input->hidden", "input", "hidden", "tokenwise", rng.uniform(0.1, 0.9, (F_HID, F_IN))),
             Connection("hidden->deep", "hidden", "deep", "tokenwise", rng.uniform(0.1, 0.9, (F_HID, F_HID))),
             Connection("deep->readout", "deep", "readout", "full", rng.normal(size=(CLASSES, TOKENS * F_HID)))]
    meta = {"mode": "global", "steps": STEPS, "window": WINDOW, "latency": 0, "classes": CLASSES}
    graph = Graph(pops, conns, [], meta)
    rules = {"input->hidden": (hidden_rule, STDP if hidden_rule == "stdp" else THREE_FACTOR),
             "hidden->deep": ("three_factor", THREE_FACTOR), "deep->readout": ("three_factor", THREE_FACTOR)}
    for i, conn in enumerate(graph.connections):
        rule, params = rules[conn.name]
        graph.connections[i] = plastic_connection(conn, graph.population(conn.target).tokens, rule, params)
    feedback = {"hidden->deep": np.tile(rng.normal(size=(CLASSES, F_HID)), (1, TOKENS)),
                "deep->readout": np.eye(CLASSES)}
    if hidden_rule == "three_factor":
        feedback["input->hidden"] = np.tile(rng.normal(size=(CLASSES, F_HID)), (1, TOKENS))
    return graph.validate(), feedback


def samples(count: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((count, STEPS, TOKENS, F_IN)) < 0.5).astype(np.float64), rng.integers(0, CLASSES, count)


def reference(graph: Graph, x: np.ndarray, labels: np.ndarray, feedback: dict, guard_steps: int):
    """learn_online with the output error as third factor; spikes [T, S, N, F] and weights per sample."""
    per_sample: dict[str, list] = {c.name: [] for c in graph.connections if c.rule}

    def record(_: int) -> None:
        for conn in graph.connections:
            if conn.rule:
                per_sample[conn.name].append(conn.weight[conn.synapses()].copy())

    traces = learn_online(graph, x, guard_steps=guard_steps, after_sample=record,
                          reward=lambda i, logits, conn: modulator(logits, labels[i], feedback[conn.name]))
    spikes = {name: np.stack([t.spikes[name][:, 0] for t in traces], 1) for name in ("hidden", "deep")}
    return spikes, {k: np.stack(v) for k, v in per_sample.items()}


def test_reward_is_label_minus_prediction_through_the_feedback():
    error = output_error(np.array([0.0, np.log(3.0)]), 0)
    np.testing.assert_allclose(error, [0.75, -0.75])
    np.testing.assert_allclose(modulator(np.array([0.0, np.log(3.0)]), 1, np.array([[1.0, 2.0], [0.0, 1.0]])),
                               [-0.25, 0.25 - 0.5])


def test_a_tokenwise_weight_learns_as_per_token_copies():
    graph, feedback = network()
    conn = graph.connections[0]
    assert conn.kind == "full" and conn.mask.sum() == TOKENS * F_HID * F_IN
    x, labels = samples(3)
    spikes, weights = reference(graph, x, labels, feedback, guard_steps=2)
    w = graph.connections[0].weight
    assert not np.any(w[~conn.mask])  # no synapse grew between tokens
    blocks = [w[n * F_HID:(n + 1) * F_HID, n * F_IN:(n + 1) * F_IN] for n in range(TOKENS)]
    assert not np.allclose(blocks[0], blocks[1])  # each copy learnt from its own token
    assert spikes["hidden"].sum() > 5 and spikes["deep"].sum() > 5


def test_what_cannot_learn_on_chip_is_refused_in_one_line():
    graph, _ = network()
    readout = graph.connections[2]
    assert "does not spike" in learning_refusal(graph, readout, "stdp")
    assert learning_refusal(graph, readout, "three_factor") is None
    graph.connections[2].rule = "stdp"
    graph.connections[2].rule_params = STDP
    with pytest.raises(IRError, match="into the readout, which does not spike") as exc:
        graph.require_spike_learning("Lava")
    assert "\n" not in str(exc.value)
    graph, _ = network()
    graph.connections[0].mask = graph.connections[0].mask.copy()
    graph.connections[0].mask[0, 0] = False
    with pytest.raises(IRError, match="weight outside its mask"):
        graph.validate()


def assert_learns_as_the_reference(run, hidden_rule: str) -> tuple[Graph, Graph, dict]:
    """``run(graph, x_steps, labels=, feedback=, weights_per_sample=)`` (a backend) learns
    ``network(hidden_rule)`` over 6 samples: spikes equal ``learn_online``'s and every plastic
    weight within 1e-9 after every sample. Returns the backend's graph, the reference's and info."""
    from neuromorphic.guard import GUARD_STEPS

    graph, feedback = network(hidden_rule)
    ref = copy.deepcopy(graph)
    x, labels = samples(6, seed=3)
    spikes, expected = reference(ref, x, labels, feedback, GUARD_STEPS)
    recorded: dict[str, np.ndarray] = {}
    trace, info = run(graph, x.transpose(1, 0, 2, 3), labels=labels, feedback=feedback, weights_per_sample=recorded)
    for name in ("hidden", "deep"):
        assert spikes[name].sum() > 5
        np.testing.assert_array_equal(trace.spikes[name], spikes[name])
    w0, _ = network(hidden_rule)
    for conn in w0.connections:
        change = np.abs(expected[conn.name][-1] - conn.weight[conn.synapses()]).max()
        assert change > 1e-3, conn.name  # every connection learnt
        np.testing.assert_allclose(recorded[conn.name], expected[conn.name], rtol=0, atol=1e-9)
    return graph, ref, info


@pytest.mark.backend
@pytest.mark.parametrize("hidden_rule", ["stdp", "three_factor"])
def test_lava_float_learns_in_a_network_as_the_reference_does(hidden_rule):
    """Per-token copies (dw times the mask d), three_factor into hidden LIFs and into the readout
    with the output error computed beside the readout (RuleInputs)."""
    from neuromorphic.lava.run import run_lava

    assert_learns_as_the_reference(lambda *a, **k: run_lava(*a, progress=False, **k), hidden_rule)
