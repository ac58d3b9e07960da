"""qat trains with exactly the weights the fixed-point export runs: the torch forward of a qat
model equals the IR simulated with the quantised weights, spike for spike."""

import copy

import numpy as np
import pytest
import torch

from neuromorphic.compare import agreement, encode_steps, torch_trace
from neuromorphic.lower import lower
from neuromorphic.quantize import dequantize_weights, quantize
from neuromorphic.simulate import run_graph
from neuromorphic.trace import Trace
from spikeformer.config import Config
from spikeformer.model import Probe, build_model


def _dequantised(graph, fixed):
    """The float graph with every weight replaced by its fixed-point value in float units, and
    the attention decays/rates by their 12-bit values."""
    out = copy.deepcopy(graph)
    for conn, q in zip(out.connections, fixed.connections):
        target = fixed.population(conn.target)
        unit = fixed.fixed["readout_unit"] if target.kind == "readout" else fixed.fixed["vth"] / target.threshold
        if conn.source == fixed.input.name and fixed.input.graded:
            unit /= fixed.fixed["input_scale"]
        conn.weight = dequantize_weights(q) / unit
    for att, q in zip(out.attentions, fixed.attentions):
        att.decay = (4096 - np.asarray(q.fixed["decay"])) / 4096
        for name in att.plasticity:
            values = np.asarray(q.fixed[name], np.float64)
            att.plasticity[name] = (4096 - values) / 4096 if name.endswith("_decay") else values / 4096
    return out


@pytest.mark.parametrize("overrides", [dict(), dict(variant="stdp", depth=2),
                                       dict(task="recall", mode="causal", variant="delta", attn_scale=1.0)])
def test_qat_forward_is_the_quantised_network(overrides, make_model, make_inputs):
    model = make_model(**overrides)
    graph = lower(model)  # float weights
    x_steps = encode_steps(model, make_inputs(model.cfg.task, 6))
    fixed = quantize(graph, calibration=x_steps)
    reference = run_graph(_dequantised(graph, fixed), x_steps)

    cfg = Config(**{**model.cfg.to_dict(), "qat": True, "init_from": "unused"})
    qat = build_model(cfg, model.tokens, model.features, model.classes)
    qat.load_state_dict(model.state_dict())
    qat = qat.double().eval()
    probe = Probe(keep_traces=True)
    with torch.no_grad():
        y, _ = qat.forward_steps(torch.from_numpy(x_steps), probe=probe)
    trace = Trace({k: v.numpy() != 0 for k, v in probe.spikes.items()}, y.numpy(), reference.window)
    score = agreement(reference, trace)
    assert score["spike_agreement"] == 1.0, {k: v for k, v in score["per_population"].items() if v < 1}
    np.testing.assert_allclose(trace.readout, reference.readout, rtol=1e-9, atol=1e-9)
    # and the float reference of the same qat model is the unquantised network
    float_score = agreement(run_graph(graph, x_steps), torch_trace(qat.float(), x_steps))
    assert float_score["spike_agreement"] == 1.0
    assert agreement(reference, run_graph(graph, x_steps))["spike_agreement"] < 1.0  # rounding matters
