"""Lowering: the IR simulated in numpy reproduces the torch model spike for spike."""

import numpy as np
import pytest
import torch

from neuromorphic.compare import agreement, encode_steps, torch_trace
from neuromorphic.ir import LoweringError
from neuromorphic.lower import lower
from neuromorphic.simulate import run_graph
from spikeformer.config import Config
from spikeformer.model import build_model

CASES = {
    "global-hebbian": dict(),
    "global-stdp": dict(variant="stdp"),
    "global-three_factor": dict(variant="three_factor"),
    "global-delta": dict(variant="delta"),
    "causal-delta": dict(task="recall", mode="causal", variant="delta", attn_scale=1.0),
    "causal-hebbian": dict(task="recall", mode="causal", variant="hebbian", attn_scale=0.5),
    "conv1d-stem": dict(task="mnist1d", stem="conv1d"),
    "depth2-learnt-threshold": dict(depth=2, learn_threshold=True),
    "feed-forward": dict(depth=0),
    "cuba-global-stdp": dict(alpha=0.5, variant="stdp"),  # synaptic current: biases on the membrane
    "cuba-conv1d-stem": dict(task="mnist1d", stem="conv1d", alpha=0.7),
    "cuba-causal-three_factor": dict(task="recall", mode="causal", variant="three_factor", alpha=0.3),
    "aligned-depth2": dict(delays="aligned", depth=2),
    "aligned-conv1d-stem-cuba": dict(task="mnist1d", stem="conv1d", delays="aligned", alpha=0.5),
    "conv2d-stem": dict(stem="conv2d", patch_size=4, conv_channels=4),
    "aligned-conv2d-stem-cuba": dict(stem="conv2d", patch_size=4, conv_channels=3, delays="aligned", alpha=0.4,
                                     depth=2),
    "aligned-causal-stdp": dict(task="recall", mode="causal", variant="stdp", delays="aligned", depth=2),
    # multi-scale cortical projections (spikeformer/cortical.py): full Dense terms that pool tokens
    "cortical": dict(attention="cortical", heads=4),
    "cortical-conv1d-stem-cuba-depth2": dict(task="mnist1d", stem="conv1d", attention="cortical", heads=4,
                                             alpha=0.5, depth=2),
    "cortical-aligned-stdp": dict(attention="cortical", heads=4, delays="aligned", variant="stdp"),
    # the retina runs where the sensor is: its ganglion spikes are the graph's binary input
    "retina": dict(encoder="retina", patch_size=4),
    "retina-mnist1d-cuba": dict(task="mnist1d", encoder="retina", alpha=0.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ir_reproduces_torch_spikes(case, make_model, make_inputs):
    model = make_model(**CASES[case])
    if model.cfg.learn_threshold:  # per-neuron thresholds fold into the inputs
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("threshold_param"):
                    p.uniform_(0.6, 1.4)
    x_steps = encode_steps(model, make_inputs(model.cfg.task, 6))
    reference = torch_trace(model, x_steps)
    trace = run_graph(lower(model), x_steps)
    score = agreement(reference, trace)
    assert score["populations_compared"] == len(reference.spikes)
    assert score["spike_agreement"] == 1.0, {k: v for k, v in score["per_population"].items() if v < 1}
    np.testing.assert_allclose(trace.readout, reference.readout, rtol=1e-9, atol=1e-9)
    for name, spikes in trace.spikes.items():  # the comparison means something only if neurons fire
        if name not in ("input",) and "attn.out" not in name:
            assert spikes.any(), name
    attention_out = [s for n, s in trace.spikes.items() if n.endswith("attn.out")]
    assert all(s.any() for s in attention_out)


def test_lowering_needs_loihi_delays():
    model = build_model(Config(task="digits", dim=16, heads=2, head_dim=4, depth=1), 4, 16, 10)
    with pytest.raises(LoweringError, match="delays"):
        lower(model)


def test_cuba_model_puts_biases_on_the_membrane(make_model, make_inputs):
    """alpha > 0: a bias passed through the current would sum to b / (1 - alpha); SPEC §2.1 adds
    b to the membrane, as the lowered graph (and Lava's bias_mant) does."""
    model = make_model(alpha=0.5)
    graph = lower(model)
    assert {p.alpha for p in graph.populations if p.kind == "lif"} == {0.5}
    x_steps = encode_steps(model, make_inputs("digits", 4))
    reference = torch_trace(model, x_steps)
    drifted = [p for p in graph.populations if p.kind == "lif"]
    for pop in drifted:  # the same graph with each bias fed through the current instead
        pop.bias = pop.bias * (1 - pop.alpha)
    assert agreement(reference, run_graph(graph, x_steps))["spike_agreement"] < 1.0


def test_lowering_names_the_layer_with_per_neuron_beta():
    model = build_model(Config(task="digits", dim=16, heads=2, head_dim=4, depth=1, delays="loihi",
                               learn_beta=True), 4, 16, 10)
    with torch.no_grad():
        model.blocks[0].lif1.lif.beta_logit[0] = 2.0
    with pytest.raises(LoweringError, match="'block0.in'.*per-neuron beta"):
        lower(model)


def test_ann_baseline_does_not_lower():
    model = build_model(Config(task="digits", model="ann", dim=16, heads=2, head_dim=4), 4, 16, 10)
    with pytest.raises(LoweringError, match="ANNTransformer"):
        lower(model)


def test_aligned_skips_are_as_long_as_the_sublayers_they_skip(make_model):
    """Writer j (stem = 0, then each sublayer) reaches reader p (block0.in = 0, ..., final) after
    1 + 2 (p - j) steps: every path from the input to the readout is ``latency`` steps long."""
    graph = lower(make_model(delays="aligned", depth=2))
    readers = ["block0.in", "block0.mid", "block1.in", "block1.mid", "final"]
    writers = ["stem.embed", "block0.attn.out_proj", "block0.mlp.fc2", "block1.attn.out_proj", "block1.mlp.fc2"]
    delays = {(c.source, c.target): c.delay for c in graph.connections}
    for p, reader in enumerate(readers):
        for j, writer in enumerate(writers[:p + 1]):
            conn = next(c for c in graph.connections if c.name == f"{writer}->{reader}")
            assert conn.delay == 1 + 2 * (p - j), conn.name
    assert max(delays.values()) == 9 and graph.meta["latency"] == 10 and graph.meta["delays"] == "aligned"
    loihi = lower(make_model(delays="loihi", depth=2))
    assert {c.delay for c in loihi.connections} == {1}


@pytest.mark.parametrize("delays, alpha", [("loihi", 0.0), ("aligned", 0.4)])
def test_block_top_down_lowers_as_two_copies_spike_for_spike(delays, alpha, make_model, make_inputs):
    """``top_down = "block"``: the bottom-up sweep is a second copy of the layers (``bottom_up.*``,
    the names the probe records it under), whose readers feed the gates one step late."""
    model = make_model(variant="three_factor", top_down="block", depth=2, delays=delays, alpha=alpha)
    x_steps = encode_steps(model, make_inputs("digits", 6))
    reference = torch_trace(model, x_steps)
    graph = lower(model)
    names = {p.name for p in graph.populations}
    copies = {n for n in names if n.startswith("bottom_up.")}
    assert copies and names - copies - {"input", "readout"} == {n[len("bottom_up."):] for n in copies}
    feedback = [c for c in graph.connections if c.name.startswith("top_down")]
    assert [(c.source, c.target, c.delay) for c in feedback] == [
        ("bottom_up.block1.in", "block0.attn.gate", 1), ("bottom_up.final", "block1.attn.gate", 1)]
    trace = run_graph(graph, x_steps)
    score = agreement(reference, trace)
    assert score["populations_compared"] == len(reference.spikes) == len(names) - 2
    assert score["spike_agreement"] == 1.0, {k: v for k, v in score["per_population"].items() if v < 1}
    np.testing.assert_allclose(trace.readout, reference.readout, rtol=1e-9, atol=1e-9)
    gates = [n for n in names if n.endswith("attn.gate")]  # the feedback matters: the sweeps differ
    assert any((trace.spikes[n] != trace.spikes["bottom_up." + n]).any() for n in gates if "bottom_up" not in n)


def test_readout_top_down_does_not_lower(make_model):
    model = make_model(variant="three_factor", top_down="readout")
    with pytest.raises(LoweringError, match="graded current.*top_down = \"block\""):
        lower(model)
