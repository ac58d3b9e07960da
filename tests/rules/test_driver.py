"""rules.driver: the layers it finds, the readout's exact gradient, and training through train()."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.functional import cross_entropy

from interrupt import poison_loss, train_until
from rules.base import RuleError
from rules.driver import LocalLearner, layer_map
from spikeformer.checkpoint import load_checkpoint
from spikeformer.config import Config
from spikeformer.errors import ConfigError, TrainingDiverged
from spikeformer.model import build_model
from spikeformer.train import train

TINY = dict(task="digits", dim=16, heads=2, head_dim=4, depth=1, time_steps=2, delays="loihi", patch_size=4,
            batch_size=128, epochs=1, num_threads=1)


def tiny_model(**overrides):
    cfg = Config(**{**TINY, **overrides})
    torch.manual_seed(0)
    return cfg, build_model(cfg, 4, 16, 10)


def test_layer_map_follows_the_models_own_topology():
    _, model = tiny_model()
    found = layer_map(model)
    targets = {layer.name: (layer.source, layer.target, layer.writes_stream) for layer in found.layers}
    assert targets == {
        "stem.embed": ("input", "block0.in", True),
        "block0.attn.q_proj": ("block0.in", "block0.attn.q", False),
        "block0.attn.k_proj": ("block0.in", "block0.attn.k", False),
        "block0.attn.v_proj": ("block0.in", "block0.attn.v", False),
        "block0.attn.out_proj": ("block0.attn.out", "block0.mid", True),
        "block0.mlp.fc1": ("block0.mid", "block0.mlp.hidden", False),
        "block0.mlp.fc2": ("block0.mlp.hidden", "final", True),
    }
    assert found.readout_layer.source == "final" and found.readout_layer.module is model.readout
    assert found.layers[1].module is model.blocks[0].attn.proj["q"]


def _longest_paths(graph) -> dict[str, int]:
    """Per population of an IR graph: the step input step 0 first reaches it, the longest path
    over connections (their delays) and attentions (the same step)."""
    arrival = {"input": 0}
    for _ in graph.populations:  # relax until stable (the graph is acyclic)
        for c in graph.connections:
            if c.source in arrival:
                arrival[c.target] = max(arrival.get(c.target, 0), arrival[c.source] + c.delay)
        for a in graph.attentions:
            if all(p in arrival for p in (a.query, a.key, a.value)):
                arrival[a.target] = max(arrival.get(a.target, 0), *(arrival[p] for p in (a.query, a.key, a.value)))
    return arrival


@pytest.mark.parametrize("overrides", [dict(), dict(depth=2), dict(delays="aligned", depth=2),
                                       dict(task="mnist1d", stem="conv1d", patch_size=1, depth=2),
                                       dict(stem="conv2d", conv_channels=2), dict(delays="none")])
def test_layer_timing_is_the_longest_path_of_the_lowered_graph(overrides):
    from neuromorphic.lower import lower

    cfg = Config(**{**TINY, **overrides})
    shapes = {"digits": (4, 16), "mnist1d": (40, 1)}[cfg.task]
    torch.manual_seed(0)
    model = build_model(cfg, *shapes, 10).eval()
    found = layer_map(model)
    assert found.arrival["readout"] == model.latency
    if not cfg.dense_delay:
        assert set(found.arrival.values()) == {0}
        assert all(layer.shift == layer.back == 0 for layer in found.layers)
        return
    expected = _longest_paths(lower(model))
    assert {k: v for k, v in found.arrival.items()} == {k: expected[k] for k in found.arrival}
    final = found.readout_layer.source
    for layer in found.layers:
        assert layer.back == model.latency - expected[layer.signal_target]
        assert layer.shift == expected[layer.signal_target] - expected[layer.source] - 1
        assert layer.shift >= 0 and (layer.shift == 0 or (layer.writes_stream and layer.signal_target == final))


def test_eprop_reaches_the_stem_under_loihi_timing():
    """The embedding writes the stream its input reaches the readout window through only along
    the longest path: paired with the final neurons' response that many steps later, it learns."""
    cfg, model = tiny_model(rule="eprop", feedback="symmetric", beta=0.0)  # no trace outlasts a step
    model.train()
    x, labels = torch.rand(8, 4, 16), torch.arange(8) % 10
    LocalLearner(cfg, model).step(x, labels, torch.Generator().manual_seed(0))
    assert model.stem.embed.linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("rule", ["eprop", "three_factor", "perturbation", "stdp", "readout_only"])
def test_every_rule_gives_the_readout_its_exact_gradient(rule):
    cfg, model = tiny_model(rule=rule)
    model.train()
    x, labels = torch.rand(8, 4, 16), torch.arange(8) % 10
    loss, logits = LocalLearner(cfg, model).step(x, labels, torch.Generator().manual_seed(0))
    local = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    hidden = [name for name in local if not name.startswith("readout")]
    assert hidden == ([] if rule == "readout_only" else [n for n, _ in model.named_parameters()
                                                         if n.endswith("linear.weight") and not n.startswith("readout")])
    model.zero_grad()
    again, _ = model(x, generator=torch.Generator().manual_seed(0))  # the same batch statistics and draws
    cross_entropy(again, labels).backward()
    assert torch.equal(again.detach(), logits)
    for name in ("readout.linear.weight", "readout.linear.bias"):
        torch.testing.assert_close(local[name], dict(model.named_parameters())[name].grad, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(loss)


def test_a_convolution_is_reached_window_by_window():
    """The conv1d stem's layers: their windows (``Layer.pre_activity``) times the weight are the
    convolution's output, so a rule's dw [C_out, C_in k] is the conv weight's own update."""
    cfg, model = tiny_model(rule="eprop", task="mnist1d", stem="conv1d", conv_channels=3)
    found = layer_map(model)
    conv1, conv2 = found.layers[:2]
    assert (conv1.name, conv1.source, conv1.target) == ("stem.conv1", "input", "stem.conv1")
    # conv1's spikes reach the readout through conv2, the stream, the block and the final neurons
    assert (conv1.arrives, conv1.back, conv2.arrives, conv2.shift) == (1, model.latency - 1, 2, model.latency - 3)
    assert (conv2.target, conv2.signal_target, conv2.writes_stream) == ("block0.in", "final", True)
    assert conv1.norm is model.stem.norm1 and conv2.norm is model.stem.norm2 and conv1.delay and conv2.delay
    for layer in (conv1, conv2):
        t, b, n = 2, 5, 7
        x = torch.rand(t * b, layer.module.in_channels, n)
        windows = layer.pre_activity(x, t)  # [T, B, N', C_in k]
        out = layer.module(x)  # [T*B, C_out, N']
        via_windows = windows @ layer.weight.reshape(layer.width, -1).T  # [T, B, N', C_out]
        torch.testing.assert_close(via_windows.reshape(t * b, -1, layer.width).transpose(1, 2), out)
    LocalLearner(cfg, model).step(torch.rand(8, 4, 16), torch.arange(8) % 10, torch.Generator().manual_seed(0))
    assert model.stem.conv1.weight.grad.shape == model.stem.conv1.weight.shape
    assert model.stem.conv2.weight.grad.abs().sum() > 0


def test_rule_layers_chooses_the_layers_that_learn():
    cfg, model = tiny_model(rule="eprop", rule_layers="stem.*, block0.mlp.fc?")
    LocalLearner(cfg, model).step(torch.rand(8, 4, 16), torch.arange(8) % 10, torch.Generator().manual_seed(0))
    learned = {name for name, p in model.named_parameters() if p.grad is not None}
    assert learned == {"stem.embed.linear.weight", "blocks.0.mlp.fc1.linear.weight", "blocks.0.mlp.fc2.linear.weight",
                       "readout.linear.weight", "readout.linear.bias"}
    cfg, model = tiny_model(rule="eprop", rule_layers="stem.embed,stem.position")
    with pytest.raises(RuleError, match=r"cannot reach 'stem.position' \(rule_layers\).*stem.embed, block0"):
        LocalLearner(cfg, model)
    with pytest.raises(ConfigError, match="rule_layers"):
        tiny_model(rule="eprop", rule_layers="stem.*,")


def test_rules_need_a_float_spiking_model():
    with pytest.raises(ConfigError, match="needs model = \"spikeformer\""):
        Config(**{**TINY, "rule": "eprop", "model": "ann"})
    with pytest.raises(ConfigError, match="rule_tau_pre' must be > 0"):
        Config(**{**TINY, "rule": "stdp", "rule_tau_pre": -1.0})


def test_readout_only_trains_the_readout_alone(tmp_path):
    cfg = Config(**{**TINY, "rule": "readout_only"})
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg, 4, 16, 10).state_dict()
    metrics = train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert metrics["rule"] == "readout_only"
    _, weights, _ = load_checkpoint(tmp_path / "run")
    for name, value in initial.items():
        if name.endswith("linear.weight"):
            assert torch.equal(weights[name], value) != name.startswith("readout"), name


def test_rule_lr_steps_the_rule_trained_weights_apart_from_the_readout(tmp_path):
    cfg = Config(**{**TINY, "rule": "eprop", "rule_lr": 1e-5, "lr": 1e-3, "weight_decay": 0.0, "grad_clip": 0.0})
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg, 4, 16, 10).state_dict()
    train(cfg, tmp_path / "run", progress=False, log=lambda s: None)  # one epoch: 11 steps of warm-up
    _, weights, _ = load_checkpoint(tmp_path / "run")
    moved = {name: float((weights[name] - initial[name]).abs().max()) for name in initial if name.endswith("weight")
             and "norm" not in name}
    # Adam moves a weight by at most about its lr per step: the readout by lr, the rest by rule_lr
    assert 1e-4 < moved["readout.linear.weight"] < 11 * 1e-3
    assert all(0 < v < 11 * 1e-5 * 1.01 for name, v in moved.items() if name != "readout.linear.weight"), moved


def test_a_local_rule_resumes_exactly(tmp_path):
    cfg = Config(**{**TINY, "rule": "perturbation", "epochs": 2, "rule_lr": 1e-3})
    train(cfg, tmp_path / "full", progress=False, log=lambda s: None)
    once = Config(**{**TINY, "rule": "perturbation", "epochs": 2, "rule_lr": 1e-3})
    assert train_until(once, tmp_path / "stopped", stop_after=0) == 0
    train(once, tmp_path / "stopped", resume=True, progress=False, log=lambda s: None)
    _, full, _ = load_checkpoint(tmp_path / "full")
    _, resumed, _ = load_checkpoint(tmp_path / "stopped")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    metrics = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert metrics["rule"] == "perturbation" and metrics["epochs"] == 2


def test_bad_rule_input_is_one_line_on_the_command_line(tmp_path):
    from cli_runner import assert_one_line_error, run_cli

    config = tmp_path / "cfg.toml"
    config.write_text('task = "digits"\nepochs = 1\ndim = 16\nheads = 2\nhead_dim = 4\ndepth = 1\nnum_threads = 1\n')
    out = str(tmp_path / "run")
    assert_one_line_error(run_cli("train", "--config", str(config), "--out", out, "--rule", "hebb"),
                          "'rule'", "eprop")
    assert_one_line_error(run_cli("train", "--config", str(config), "--out", out, "--rule", "stdp",
                                  "--set", "rule_tau_post=-2.0"), "rule_tau_post", "> 0")
    assert_one_line_error(run_cli("train", "--config", str(config), "--out", out, "--rule", "eprop",
                                  "--set", 'rule_layers="block0.attn.decay"', "--quiet"),
                          "cannot reach 'block0.attn.decay'")
    assert not (tmp_path / "run" / "checkpoint.json").exists()


@pytest.mark.backend
def test_a_rule_trained_run_runs_on_brian2_like_any_other(tmp_path):
    from spikeformer.cli import main

    cfg = Config(**{**TINY, "rule": "eprop"})
    train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert main(["validate", str(tmp_path / "run"), "--backend", "brian2", "--samples", "4", "--quiet"]) == 0
    record = json.loads((tmp_path / "run" / "validate-brian2.json").read_text())
    assert record["spike_agreement"] == 1.0 and record["class_agreement"] == 1.0


def test_a_diverging_local_rule_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import rules.driver as driver

    cfg = Config(**{**TINY, "rule": "eprop", "epochs": 3})
    steps_per_epoch = -(-1347 // cfg.batch_size)
    poison_loss(monkeypatch, driver, steps_per_epoch + 1)  # epoch 1, step 1
    with pytest.raises(TrainingDiverged, match="epoch 1 step 1.*last good checkpoint: epoch 0"):
        train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    meta, _, _ = load_checkpoint(tmp_path / "run")
    assert meta["epoch"] == 0 and not (tmp_path / "run" / "metrics.json").exists()
