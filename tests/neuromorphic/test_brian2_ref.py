"""The Brian2 reference network (``neuromorphic.brian2_ref``) against the IR simulator and torch.

Exact mode must reproduce ``run_graph`` (and so the torch model in ``delays = "loihi"``)
spike for spike; the biophysical mode only has to stay close. Brian2 runs on its numpy
target here (no compile step). Marked ``backend``: under SPIKEFORMER_REQUIRE_BACKENDS=1 a
skip is a failure.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("brian2", reason="brian2 is needed for the Brian2 reference backend")

from neuromorphic.brian2_ref import BioParams, drift, run_brian2
from neuromorphic.compare import agreement, encode_steps, torch_trace
from neuromorphic.ir import IRError, LoweringError
from neuromorphic.lower import lower
from neuromorphic.simulate import run_graph

CASES = {
    "global-hebbian": dict(),
    "causal-delta": dict(task="recall", mode="causal", variant="delta", attn_scale=1.0),  # 5 tokens x 32, binary
    "global-stdp": dict(variant="stdp"),
    "global-three_factor": dict(variant="three_factor"),
    "global-delta": dict(variant="delta"),
    "cuba-global-hebbian": dict(alpha=0.5),
    "aligned-global-hebbian": dict(delays="aligned", depth=2),
    "cortical-hebbian": dict(attention="cortical", heads=4),  # full Dense connections that pool tokens
    # top-down feedback: a bottom-up copy of the layers whose readers feed the gates one step late
    "top_down-block": dict(variant="three_factor", top_down="block", depth=2),
}


@pytest.mark.backend
@pytest.mark.parametrize("case", list(CASES))
def test_exact_mode_reproduces_run_graph_and_torch(case, make_model, make_inputs):
    model = make_model(**CASES[case])
    x_steps = encode_steps(model, make_inputs(model.cfg.task, 4))  # [T, B, N, F], 4 samples in one run
    graph = lower(model)
    reference = run_graph(graph, x_steps)
    torch_ref = torch_trace(model, x_steps)
    trace, info = run_brian2(graph, x_steps, mode="exact")

    assert set(trace.spikes) == set(reference.spikes)
    for name, spikes in reference.spikes.items():
        assert trace.spikes[name].shape == spikes.shape, name
        np.testing.assert_array_equal(trace.spikes[name], spikes, err_msg=name)
        if name != "input":  # torch records no spikes for its input
            np.testing.assert_array_equal(trace.spikes[name], torch_ref.spikes[name], err_msg=name)
    np.testing.assert_allclose(trace.readout, reference.readout, rtol=0, atol=1e-12)
    np.testing.assert_allclose(trace.readout, torch_ref.readout, rtol=1e-9, atol=1e-9)
    assert agreement(torch_ref, trace)["spike_agreement"] == 1.0
    # the comparison means something only if every population, attention outputs included, fires
    for name, spikes in trace.spikes.items():
        assert spikes.sum() > 0, name
    assert any(name.endswith("attn.out") for name in trace.spikes)
    assert info["build_seconds"] > 0 and info["run_seconds"] > 0 and info["samples"] == 4


@pytest.mark.backend
def test_biophysical_mode_stays_close_to_the_discrete_model(make_model, make_inputs):
    model = make_model()
    x_steps = encode_steps(model, make_inputs("digits", 4))
    graph = lower(model)
    reference = run_graph(graph, x_steps)
    trace, info = run_brian2(graph, x_steps, mode="biophysical", bio=BioParams(dt_ms=0.1))
    score = drift(reference, trace)

    assert trace.readout.shape == reference.readout.shape
    assert {name: s.shape for name, s in trace.spikes.items()} == {name: s.shape for name, s in reference.spikes.items()}
    assert 0.0 <= score["class_agreement"] <= 1.0
    assert score["spike_count_correlation"] > 0.5  # measured about 0.98
    assert score["spike_train_correlation"] > 0.3  # measured about 0.8
    assert score["spike_agreement"] > 0.7  # measured about 0.9
    assert info["bio"]["dt_ms"] == 0.1 and info["mode"] == "biophysical"


@pytest.mark.backend
def test_unsupported_variant_raises_one_clear_line(make_model):
    graph = lower(make_model())
    graph.attentions[0].variant = "softmax"
    x_steps = np.zeros((graph.meta["steps"], 1, graph.input.tokens, graph.input.features))
    with pytest.raises(IRError, match="variant 'softmax'") as err:  # the IR's own check, before any build
        run_brian2(graph, x_steps)
    assert "\n" not in str(err.value)


@pytest.mark.backend
def test_bad_mode_and_bad_input_shape_raise_one_clear_line(make_model):
    graph = lower(make_model())
    x_steps = np.zeros((graph.meta["steps"], 1, graph.input.tokens, graph.input.features))
    with pytest.raises(LoweringError, match="mode 'lava'"):
        run_brian2(graph, x_steps, mode="lava")
    with pytest.raises(LoweringError, match="codegen target 'cpp'"):
        run_brian2(graph, x_steps, codegen="cpp")
    with pytest.raises(IRError, match="input steps must be"):
        run_brian2(graph, x_steps[:, :, :1])
    graph.populations[1].beta = 0.0  # no membrane time constant: only the exact mode runs it
    with pytest.raises(LoweringError, match="beta = 0.0.*mode 'exact'"):
        run_brian2(graph, x_steps, mode="biophysical")


@pytest.mark.backend
def test_longer_dense_delays_keep_samples_apart(make_model, make_inputs):
    """Delays above one step: spikes in flight at a sample's end must not leak into the next."""
    model = make_model(depth=0)
    graph = lower(model)
    for conn in graph.connections:
        conn.delay = 3
    x_steps = encode_steps(model, make_inputs("digits", 3))
    x_steps = np.concatenate([x_steps, np.zeros((4, *x_steps.shape[1:]))])  # room for the longer latency
    reference = run_graph(graph, x_steps)
    trace, info = run_brian2(graph, x_steps)
    for name, spikes in reference.spikes.items():
        np.testing.assert_array_equal(trace.spikes[name], spikes, err_msg=name)
    np.testing.assert_allclose(trace.readout, reference.readout, rtol=0, atol=1e-12)
    assert reference.spikes["final"].sum() > 0 and "2 silent steps" in info["sample_isolation"]


@pytest.mark.backend
def test_bad_biophysical_constants_raise_one_clear_line():
    with pytest.raises(LoweringError, match="kernel 'box'"):
        BioParams(kernel="box")
    with pytest.raises(LoweringError, match="dt_ms = 0.3 must divide half a step"):
        BioParams(dt_ms=0.3)
