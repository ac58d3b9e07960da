"""Quantisation-aware fine-tuning: the weight grid, the straight-through gradient, the CLI."""

import json

import pytest
import torch

from spikeformer.cli import main
from spikeformer.config import Config
from spikeformer.errors import ConfigError
from spikeformer.qat import fake_quantize, fake_quantize_fraction, round_to_grid


def test_grid_is_even_8_bit_mantissas_times_a_power_of_two():
    torch.manual_seed(0)
    for w in (torch.randn(30, 20), torch.randn(5, 5) * 1e3, torch.rand(4, 4) * 1e-5, -torch.rand(3, 3)):
        q = round_to_grid(w)
        peak = w.abs().max()
        exp = torch.ceil(torch.log2(peak / 254))
        for e in (exp, exp + 1):  # the smallest exponent that fits, or the next one after rounding up
            mant = q / 2 ** e
            if (mant == torch.round(mant)).all() and mant.max() <= 254 and mant.min() >= -256:
                assert (torch.remainder(mant, 2) == 0).all()
                assert (q - w).abs().max() <= 2 ** e
                break
        else:
            pytest.fail("not on the grid")


def test_straight_through_gradient_and_fraction_rounding():
    w = torch.randn(6, 4, requires_grad=True)
    (fake_quantize(w) * torch.arange(4.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(4.0).expand(6, 4))
    d = torch.tensor([0.9, 0.12345], requires_grad=True)
    q = fake_quantize_fraction(d)
    assert torch.equal(q.detach() * 4096, torch.round(d.detach() * 4096))
    q.sum().backward()
    assert torch.equal(d.grad, torch.ones(2))


def test_qat_needs_an_exportable_model_and_a_run():
    with pytest.raises(ConfigError, match="init_from"):
        Config(delays="loihi", qat=True)
    with pytest.raises(ConfigError, match="delays = 'none'"):
        Config(qat=True, init_from="runs/x")
    with pytest.raises(ConfigError, match="stem = 'conv1d'"):
        Config(task="mnist1d", stem="conv1d", delays="loihi", qat=True, init_from="runs/x")


def test_qat_fine_tunes_a_trained_run(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('task = "digits"\nepochs = 1\ndelays = "loihi"\ndim = 16\nheads = 2\nhead_dim = 8\n'
                   'depth = 1\ntime_steps = 2\nbatch_size = 256\nnum_threads = 1\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "float"), "--quiet"]) == 0
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "qat"), "--quiet",
                 "--init", str(tmp_path / "float"), "--qat"]) == 0
    metrics = json.loads((tmp_path / "qat" / "metrics.json").read_text())
    assert metrics["config"]["qat"] is True and metrics["config"]["init_from"] == str(tmp_path / "float")
    # the norms stay frozen at the float run's statistics
    from safetensors.torch import load_file
    before = load_file(tmp_path / "float" / "checkpoint.safetensors")
    after = load_file(tmp_path / "qat" / "checkpoint.safetensors")
    stats = [k for k in before if k.endswith("running_mean")]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("linear.weight"))


def test_init_from_a_different_architecture_is_one_error(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('task = "digits"\nepochs = 1\ndelays = "loihi"\ndim = 16\nheads = 2\nhead_dim = 8\n'
                   'depth = 1\ntime_steps = 2\nbatch_size = 256\nnum_threads = 1\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    with pytest.raises(ConfigError, match="different architecture.*depth"):
        from spikeformer.config import load_config
        from spikeformer.train import train
        train(load_config(cfg, {"depth": 2, "init_from": str(tmp_path / "a")}), tmp_path / "b", progress=False)
