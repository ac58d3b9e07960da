"""Per-layer efficiency in NeuroBench's names (``metrics.efficiency``): the per-layer counts add
up to the model's, and each figure matches a hand count."""

from __future__ import annotations

import pytest
import torch

from spikeformer.config import Config
from spikeformer.metrics import efficiency
from spikeformer.model import Dense, Probe, build_model


def model_and_probe(**kw) -> tuple[torch.nn.Module, Probe]:
    cfg = Config(task="digits", dim=16, heads=2, head_dim=8, depth=1, conv_channels=4, **kw)
    torch.manual_seed(0)
    model = build_model(cfg, 16, 4, 10).eval()
    probe = Probe()
    with torch.no_grad():
        model(torch.rand(3, 16, 4, generator=torch.Generator().manual_seed(1)), probe=probe)
    return model, probe


def test_dense_counts_its_own_events_and_dense_operations():
    layer = Dense(4, 3)
    x = torch.zeros(2, 1, 2, 4)
    x[0, 0, 0, 1] = 1
    x[1, 0, 1, :3] = 1  # four spikes of 16 inputs, each reaching 3 neurons
    probe = Probe()
    layer(x, probe=probe)
    assert probe.layers == {layer: {"ac": 12.0, "mac": 0.0, "dense": 48.0}}


@pytest.mark.parametrize("kw", [{}, {"stem": "conv2d", "patch_size": 2, "delays": "loihi"},
                                {"encoder": "poisson"}, {"attention": "cortical"},
                                {"variant": "three_factor", "top_down": "readout"}],
                         ids=["linear", "conv2d-loihi", "poisson", "cortical", "top-down"])
def test_layers_add_up_to_the_model_totals(kw):
    model, probe = model_and_probe(**kw)
    e = efficiency(model, probe, 3)
    layers = e["layers"]
    assert sum(v["effective_acs"] for v in layers.values()) == pytest.approx(probe.ac / 3, rel=1e-12)
    assert sum(v["effective_macs"] for v in layers.values()) == pytest.approx(probe.mac / 3, rel=1e-12)
    assert e["synaptic_operations"]["effective_acs"] == probe.ac / 3 > 0
    for name, v in layers.items():  # nothing fires more often than every input at once
        assert v["effective_acs"] + v["effective_macs"] <= v["dense"] + 1e-9, name
    assert e["activation_sparsity"] == pytest.approx(1 - probe.spike_rate())
    assert set(e["neurons"]) == set(probe.spike_counts) and "blocks.0.attn.proj.q" in layers
    # the attention block owns its state operations, not the q/k/v/out weights counted beside it
    assert layers["blocks.0.attn"]["weights"] == 0 and layers["blocks.0.attn"]["effective_macs"] > 0
    assert e["footprint_bytes"] == sum(t.numel() * t.element_size()
                                       for t in list(model.parameters()) + list(model.buffers()))


def test_connection_sparsity_counts_zero_weights():
    model, probe = model_and_probe()
    with torch.no_grad():
        model.readout.linear.weight[:, :40] = 0.0  # 10 x 40 of its 10 x 256 weights
    e = efficiency(model, probe, 3)
    assert e["layers"]["readout"]["connection_sparsity"] == 400 / (10 * 256)
    weights = sum(v["weights"] for v in e["layers"].values() if "weights" in v)
    assert e["connection_sparsity"] == pytest.approx(400 / weights)


def test_the_ann_is_one_layer_of_macs_without_activation_sparsity():
    model, probe = model_and_probe(model="ann")
    e = efficiency(model, probe, 3)
    assert list(e["layers"]) == ["model"] and e["activation_sparsity"] is None
    assert e["layers"]["model"]["effective_macs"] == e["layers"]["model"]["dense"] == model.macs_per_sample()
