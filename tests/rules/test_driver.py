"""rules.driver: the layers it finds, the readout's exact gradient, and training through train()."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.functional import cross_entropy

from interrupt import train_until
from rules.base import RuleError
from rules.driver import LocalLearner, layer_map
from spikeformer.checkpoint import load_checkpoint
from spikeformer.config import Config
from spikeformer.errors import ConfigError
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
    assert found.readout_layer.source == "final" and found.readout_layer.dense is model.readout
    assert found.layers[1].dense is model.blocks[0].attn.proj["q"]


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


def test_a_convolution_stem_is_refused_in_one_line():
    cfg, model = tiny_model(rule="eprop", stem="conv1d")
    with pytest.raises(RuleError, match=r"cannot reach stem.conv1, stem.conv2: a convolution"):
        LocalLearner(cfg, model)


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


def test_a_local_rule_resumes_exactly(tmp_path):
    cfg = Config(**{**TINY, "rule": "perturbation", "epochs": 2})
    train(cfg, tmp_path / "full", progress=False, log=lambda s: None)
    once = Config(**{**TINY, "rule": "perturbation", "epochs": 2})
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
                                  "--set", 'stem="conv1d"', "--set", 'task="mnist1d"', "--quiet"),
                          "cannot reach stem.conv1")
    assert not (tmp_path / "run" / "checkpoint.json").exists()


@pytest.mark.backend
def test_a_rule_trained_run_runs_on_brian2_like_any_other(tmp_path):
    from spikeformer.cli import main

    cfg = Config(**{**TINY, "rule": "eprop"})
    train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert main(["validate", str(tmp_path / "run"), "--backend", "brian2", "--samples", "4", "--quiet"]) == 0
    record = json.loads((tmp_path / "run" / "validate-brian2.json").read_text())
    assert record["spike_agreement"] == 1.0 and record["class_agreement"] == 1.0
