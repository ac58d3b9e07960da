"""On-chip learning inside Brian2's exact network: the network of test_onchip.py (per-token
plastic copies, three_factor with the output error as its third factor into hidden LIFs and
into the readout) against ``simulate.learn_online`` with Lava's guard steps, weights after every
sample."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_onchip import assert_learns_as_the_reference, network, reference, samples  # tests/neuromorphic is on sys.path (rootdir conftest)

from neuromorphic.ir import IRError

pytestmark = pytest.mark.backend


@pytest.mark.parametrize("hidden_rule", ["stdp", "three_factor"])
def test_brian2_exact_learns_in_a_network_as_the_reference_does(hidden_rule):
    """Spikes of every sample equal, and every plastic weight within 1e-9 of learn_online's
    after every sample (masked synapses only, guard steps between samples)."""
    from neuromorphic.brian2_ref import run_brian2
    from neuromorphic.guard import GUARD_STEPS

    graph, ref, info = assert_learns_as_the_reference(run_brian2, hidden_rule)
    assert info["guard_steps_per_sample"] == GUARD_STEPS
    for learned, conn in zip(graph.connections, ref.connections):  # written back: weights and traces
        np.testing.assert_allclose(learned.weight, conn.weight, rtol=0, atol=1e-9)
        np.testing.assert_allclose(learned.traces["pre"], conn.traces["pre"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(learned.traces["post"], conn.traces["post"], rtol=0, atol=1e-9)
        if conn.rule == "three_factor":  # on the synapses (Brian2 keeps none elsewhere)
            exists = conn.synapses()
            np.testing.assert_allclose(learned.traces["eligibility"][exists], conn.traces["eligibility"][exists],
                                       rtol=0, atol=1e-9)


def test_brian2_three_factor_needs_labels_and_feedback():
    from neuromorphic.brian2_ref import run_brian2

    graph, feedback = network("three_factor")
    x, labels = samples(1)
    with pytest.raises(IRError, match="give the samples' labels and its feedback matrix") as exc:
        run_brian2(graph, x.transpose(1, 0, 2, 3))
    assert "\n" not in str(exc.value)
    with pytest.raises(IRError, match="must be \\[classes, target size\\]"):
        run_brian2(graph, x.transpose(1, 0, 2, 3), labels=labels, feedback={**feedback, "deep->readout": np.eye(2)})


def test_brian2_learning_goes_on_where_the_last_run_stopped():
    """The rule traces (and weights) written back into the graph carry over to the next run: two
    runs of 2 samples learn as learn_online does over the 4."""
    from neuromorphic.brian2_ref import run_brian2
    from neuromorphic.lava.run import GUARD_STEPS

    graph, feedback = network("three_factor")
    x, labels = samples(4, seed=5)
    _, expected = reference(copy.deepcopy(graph), x, labels, feedback, GUARD_STEPS)
    first: dict[str, np.ndarray] = {}
    second: dict[str, np.ndarray] = {}
    for part, recorded in ((slice(0, 2), first), (slice(2, 4), second)):
        run_brian2(graph, x[part].transpose(1, 0, 2, 3), labels=labels[part], feedback=feedback,
                   weights_per_sample=recorded)
    for name, weights in expected.items():
        np.testing.assert_allclose(np.concatenate([first[name], second[name]]), weights, rtol=0, atol=1e-9)
