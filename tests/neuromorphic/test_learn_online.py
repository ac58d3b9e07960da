"""neuromorphic.simulate.learn_online: the float reference of on-chip learning (plastic IR
connections pair each step's source and target spikes; weights and traces carry over)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuromorphic.ir import Connection, Graph, IRError, Population
from neuromorphic.simulate import learn_online, run_graph
from rules import stdp, three_factor
from rules.base import over_steps

TOKENS, F_IN, F_OUT, STEPS = 2, 3, 4, 10


def plastic_graph(rule: str, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    pops = [Population("input", "input", TOKENS, F_IN),
            Population("hidden", "lif", TOKENS, F_OUT, beta=0.5, threshold=1.0, bias=np.zeros((TOKENS, F_OUT))),
            Population("readout", "readout", 1, 2, bias=np.zeros((1, 2)))]
    params = {"lr": 0.1, "a_plus": 1.0, "a_minus": 0.8, "tau_pre": 2.0, "tau_post": 3.0}
    if rule == "three_factor":
        params["tau_eligibility"] = 4.0
    # full: one weight per synapse (a weight shared over tokens cannot learn locally)
    plastic = Connection("input->hidden", "input", "hidden", "full", rng.uniform(0.0, 0.8, (TOKENS * F_OUT, TOKENS * F_IN)),
                         rule=rule, rule_params=params)
    readout = Connection("hidden->readout", "hidden", "readout", "full", rng.normal(size=(2, TOKENS * F_OUT)))
    meta = {"mode": "global", "steps": STEPS, "window": STEPS, "latency": 0, "classes": 2}
    return Graph(pops, [plastic, readout], [], meta)


def samples(count: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random((count, STEPS, TOKENS, F_IN)) < 0.5).astype(np.float64)


def test_stdp_online_pairs_each_steps_spikes_and_carries_traces_over_samples():
    graph = plastic_graph("stdp")
    w0 = graph.connections[0].weight.copy()
    x = samples(3)
    traces = learn_online(graph, x)
    post = np.concatenate([t.spikes["hidden"][:, 0] for t in traces]).reshape(-1, TOKENS * F_OUT).astype(np.float64)
    pre = x.reshape(-1, TOKENS * F_IN)  # [S*T, N*F]: the flattened grids, samples back to back
    params = stdp.STDPParameters(**graph.connections[0].rule_params)
    # the same rule over the samples back to back: traces carry over, pre and post of the same step pair
    expected = w0 + over_steps(stdp.update, torch.from_numpy(pre[:, None]), torch.from_numpy(post[:, None]),
                               params).numpy()
    assert post.sum() > 5 and np.abs(expected - w0).max() > 0.05
    np.testing.assert_allclose(graph.connections[0].weight, expected, rtol=0, atol=1e-12)
    assert set(graph.connections[0].traces) == {"pre", "post"}
    # learning acts within a sample: with the initial weights frozen, the first sample spikes otherwise
    frozen = plastic_graph("stdp")
    frozen.connections[0].rule = frozen.connections[0].rule_params = None
    assert not np.array_equal(run_graph(frozen, x[0][:, None]).spikes["hidden"], traces[0].spikes["hidden"])


def test_three_factor_online_uses_the_modulator_it_is_given():
    graph = plastic_graph("three_factor")
    w0 = graph.connections[0].weight.copy()
    x = samples(2, seed=3)
    rng = np.random.default_rng(4)
    m = rng.normal(size=(2, STEPS, TOKENS * F_OUT))
    traces = learn_online(graph, x, modulator=lambda sample, t, conn: m[sample, t])
    post = np.concatenate([t.spikes["hidden"][:, 0] for t in traces]).reshape(-1, TOKENS * F_OUT).astype(np.float64)
    pre = x.reshape(-1, TOKENS * F_IN)
    params = three_factor.ThreeFactorParameters(**graph.connections[0].rule_params)
    flat_m = torch.from_numpy(m.reshape(-1, TOKENS * F_OUT))
    expected = w0 + over_steps(three_factor.update, torch.from_numpy(pre[:, None]), torch.from_numpy(post[:, None]),
                               params, lambda t: flat_m[t][None]).numpy()
    assert np.abs(expected - w0).max() > 0.01
    np.testing.assert_allclose(graph.connections[0].weight, expected, rtol=0, atol=1e-12)
    assert graph.connections[0].traces["eligibility"].shape == (TOKENS * F_OUT, TOKENS * F_IN)
    with pytest.raises(IRError, match="a fixed-point graph learns in fixed_ref.learn_online_fixed"):
        graph.precision = "fixed"
        learn_online(graph, x)


def test_a_weight_shared_over_tokens_cannot_be_plastic():
    graph = plastic_graph("stdp")
    conn = graph.connections[0]
    conn.kind, conn.weight = "tokenwise", conn.weight[:F_OUT, :F_IN].copy()
    with pytest.raises(IRError, match="shares its weight over 2 tokens; a plastic connection must be full"):
        graph.validate()


def test_guard_steps_between_samples_let_the_traces_decay():
    graph = plastic_graph("stdp")
    w0 = graph.connections[0].weight.copy()
    x = samples(2, seed=5)
    x[:, -1] = 0.0  # nothing in flight at the end of a sample: the first guard step is silent too
    traces = learn_online(graph, x, guard_steps=2)
    silent = np.zeros((2, TOKENS * F_IN))
    pre = np.concatenate([x[0].reshape(STEPS, -1), silent, x[1].reshape(STEPS, -1)])
    post = [t.spikes["hidden"][:, 0].reshape(STEPS, -1).astype(np.float64) for t in traces]
    post = np.concatenate([post[0], np.zeros((2, TOKENS * F_OUT)), post[1]])
    params = stdp.STDPParameters(**graph.connections[0].rule_params)
    expected = w0 + over_steps(stdp.update, torch.from_numpy(pre[:, None]), torch.from_numpy(post[:, None]),
                               params).numpy()
    np.testing.assert_allclose(graph.connections[0].weight, expected, rtol=0, atol=1e-12)
    back_to_back = plastic_graph("stdp")
    learn_online(back_to_back, x)
    assert not np.allclose(back_to_back.connections[0].weight, graph.connections[0].weight, rtol=0, atol=1e-9)


@pytest.mark.backend
def test_lava_float_learns_online_as_the_reference_does():
    """The plastic connection as a LearningDense whose bAPs are the target LIF's spikes: over 4
    samples run back to back (with Lava's guard steps between them), the spikes and the learned
    weights equal learn_online's."""
    import copy

    from neuromorphic.lava.run import GUARD_STEPS, run_lava

    graph = plastic_graph("stdp")
    reference = copy.deepcopy(graph)
    x = samples(4, seed=7)
    expected = learn_online(reference, x, guard_steps=GUARD_STEPS)
    trace, _ = run_lava(graph, x.transpose(1, 0, 2, 3), progress=False)
    ours = np.stack([t.spikes["hidden"][:, 0] for t in expected], 1)  # [T, S, N, F]
    assert ours.sum() > 10
    np.testing.assert_array_equal(trace.spikes["hidden"], ours)
    assert np.abs(reference.connections[0].weight - plastic_graph("stdp").connections[0].weight).max() > 0.05
    np.testing.assert_allclose(graph.connections[0].weight, reference.connections[0].weight, rtol=0, atol=1e-12)


@pytest.mark.backend
def test_lava_refuses_what_it_cannot_learn_in_one_line():
    from neuromorphic.lava.run import run_lava

    graph = plastic_graph("three_factor")
    with pytest.raises(IRError, match="give the samples' labels and its feedback matrix") as exc:
        run_lava(graph, samples(1).transpose(1, 0, 2, 3), progress=False)
    assert "\n" not in str(exc.value)


@pytest.mark.backend
def test_brian2_exact_learns_online_as_the_reference_does():
    """The plastic connection as Brian2 Synapses whose pre pathway transmits, then learns, on
    per-neuron traces in the same slot: over 4 samples run back to back (with Lava's guard steps
    between them, the first awake), the same spikes, weights and traces as learn_online's."""
    import copy

    from neuromorphic.brian2_ref import run_brian2
    from neuromorphic.lava.run import GUARD_STEPS

    graph = plastic_graph("stdp")
    reference = copy.deepcopy(graph)
    x = samples(4, seed=8)
    expected = learn_online(reference, x, guard_steps=GUARD_STEPS)
    trace, _ = run_brian2(graph, x.transpose(1, 0, 2, 3))
    ours = np.stack([t.spikes["hidden"][:, 0] for t in expected], 1)
    assert ours.sum() > 10
    np.testing.assert_array_equal(trace.spikes["hidden"], ours)
    assert np.abs(reference.connections[0].weight - plastic_graph("stdp").connections[0].weight).max() > 0.05
    np.testing.assert_allclose(graph.connections[0].weight, reference.connections[0].weight, rtol=0, atol=1e-12)
