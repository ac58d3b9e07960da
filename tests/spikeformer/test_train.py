"""Training: resume determinism, NaN handling, metrics keys, the learning-rate schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interrupt import poison_loss, train_until
from spikeformer.checkpoint import load_checkpoint, load_training_checkpoint
from spikeformer.config import Config
from spikeformer.errors import ConfigError, TrainingDiverged
from spikeformer.train import learning_rate, train

TINY = dict(task="digits", dim=16, heads=2, head_dim=8, depth=1, batch_size=256, num_threads=1)
SPEC_KEYS = ("task", "model", "rule", "test_accuracy", "train_seconds", "params", "attention_params",
             "synops_per_sample", "energy_pj_per_sample", "spike_rate", "epochs", "seed", "device")


def quiet(cfg, out, **kw):
    return train(cfg, out, progress=False, log=lambda s: None, **kw)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    cfg = Config(epochs=3, augment_shift=1, **TINY)
    quiet(cfg, tmp_path / "full")
    # the same config, interrupted right after the checkpoint of epoch 1, then resumed
    stopped = tmp_path / "stopped"
    interrupted = train_until(cfg, stopped, stop_after=1)
    assert interrupted == 1
    quiet(cfg, stopped, resume=True)
    _, full_w, full_o = load_checkpoint(tmp_path / "full")
    _, res_w, res_o = load_checkpoint(stopped)
    for key in full_w:
        assert torch.equal(full_w[key], res_w[key]), key
    for key in full_o:
        assert torch.equal(full_o[key], res_o[key]), key
    full_m = json.loads((tmp_path / "full" / "metrics.json").read_text())
    res_m = json.loads((stopped / "metrics.json").read_text())
    assert full_m["test_accuracy"] == res_m["test_accuracy"]


def test_ema_run_trains_the_same_weights_and_checkpoints_their_average(tmp_path):
    plain = Config(epochs=2, augment_shift=1, **TINY)
    quiet(plain, tmp_path / "plain")
    _, plain_w, _ = load_checkpoint(tmp_path / "plain")
    cfg = Config(epochs=2, augment_shift=1, ema_decay=0.9, **TINY)
    quiet(cfg, tmp_path / "ema")
    _, model_w, _, train_w = load_training_checkpoint(tmp_path / "ema")
    params = [k for k in plain_w if "running" not in k and "num_batches" not in k]
    assert set(train_w) == set(model_w) == set(plain_w)
    # averaging never feeds back into training: the stepped weights equal the plain run's
    for key in params:
        assert torch.equal(train_w[key], plain_w[key]), key
    # the model written (and evaluated) is the average, which lags the stepped weights
    moved = [k for k in params if not torch.equal(model_w[k], train_w[k])]
    assert len(moved) > len(params) // 2
    metrics = json.loads((tmp_path / "ema" / "metrics.json").read_text())
    history = json.loads((tmp_path / "ema" / "checkpoint.json").read_text())["history"]
    assert metrics["test_accuracy"] == history[-1]["test_accuracy"]  # the average is what is scored


def test_ema_run_resumes_exactly(tmp_path):
    cfg = Config(epochs=3, ema_decay=0.8, **TINY)
    quiet(cfg, tmp_path / "full")
    stopped = tmp_path / "stopped"
    assert train_until(cfg, stopped, stop_after=1) == 1
    quiet(cfg, stopped, resume=True)
    full = load_training_checkpoint(tmp_path / "full")
    resumed = load_training_checkpoint(stopped)
    for part in (1, 2, 3):  # model (the average), optimizer, training weights
        assert full[part].keys() == resumed[part].keys()
        for key in full[part]:
            assert torch.equal(full[part][key], resumed[part][key]), key


def test_ema_decay_is_validated():
    with pytest.raises(ConfigError, match="ema_decay"):
        Config(ema_decay=1.0)
    with pytest.raises(ConfigError, match="qat"):
        Config(ema_decay=0.99, qat=True, init_from="x", delays="loihi")


def test_metrics_json_has_every_spec_key(tmp_path):
    metrics = quiet(Config(epochs=1, **TINY), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in SPEC_KEYS:
        assert key in on_disk, key
    assert on_disk == json.loads(json.dumps(metrics))
    assert 0 < on_disk["spike_rate"] < 1
    assert on_disk["synops_per_sample"] > 0 and on_disk["energy_pj_per_sample"] > 0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = Config(epochs=3, **TINY)
    import spikeformer.train as train_mod

    steps_per_epoch = -(-1347 // cfg.batch_size)
    poison_loss(monkeypatch, train_mod, steps_per_epoch + 1, "token_loss")  # epoch 1, step 1
    with pytest.raises(TrainingDiverged, match="epoch 1 step 1.*last good checkpoint: epoch 0"):
        quiet(cfg, tmp_path / "run")
    meta, _, _ = load_checkpoint(tmp_path / "run")
    assert meta["epoch"] == 0
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = Config(epochs=1, **TINY)
    quiet(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="--resume"):
        quiet(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="differ"):
        quiet(Config(epochs=1, **{**TINY, "dim": 32}), tmp_path / "run", resume=True)


def test_unusable_out_fails_before_training(tmp_path, monkeypatch):
    import spikeformer.train as train_mod

    def no_training(cfg):
        raise AssertionError("training started")

    monkeypatch.setattr(train_mod, "load_task", no_training)  # the check must come before any data or epoch
    cfg = Config(epochs=1, **TINY)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run")
    with pytest.raises(ConfigError, match="notes.txt' is an existing file.*choose another --out"):
        quiet(cfg, a_file)
    with pytest.raises(ConfigError, match="notes.txt', which is a file"):
        quiet(cfg, a_file / "run")
    assert a_file.read_text() == "not a run"
    # root ignores permission bits, so a read-only folder cannot be made here: stand in for os.access
    monkeypatch.setattr(train_mod.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(ConfigError, match="not writable.*choose an --out in a folder you can write to"):
        quiet(cfg, tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()


def test_learning_rate_warmup_then_cosine_to_zero():
    cfg = Config(epochs=10, warmup_epochs=2, lr=1.0)
    assert learning_rate(cfg, 0, 10) == pytest.approx(0.05)
    assert learning_rate(cfg, 19, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 20, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 60, 10) == pytest.approx(0.5)
    assert learning_rate(cfg, 100, 10) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_ann_baseline_trains_through_the_same_loop(tmp_path):
    metrics = quiet(Config(epochs=2, model="ann", **TINY), tmp_path / "ann")
    assert metrics["model"] == "ann"
    assert metrics["synops_per_sample"] == 0 and metrics["macs_per_sample"] > 0
    assert metrics["test_accuracy"] > 0.3


def test_recalibrated_norm_statistics_are_exact_averages():
    from spikeformer.model import build_model
    from spikeformer.train import recalibrate_norms

    cfg = Config(**TINY)
    model = build_model(cfg, 16, 4, 10)
    x = torch.rand(50, 16, 4)
    embed = model.stem.embed
    with torch.no_grad():
        pre = embed.linear(x.unsqueeze(0).expand(cfg.time_steps, *x.shape)) + model.stem.position
    expected = pre.reshape(-1, cfg.dim).mean(0)
    for batch in (7, 50):  # a cumulative average does not depend on the batching
        recalibrate_norms(model, x, "cpu", batch, torch.Generator().manual_seed(0))
        assert torch.allclose(embed.norm.bn.running_mean, expected, atol=1e-5)
        assert embed.norm.bn.momentum == 0.1 and embed.norm.bn.num_batches_tracked > 0


def test_mnist_trains_on_patch_tokens(tmp_path):
    """The full-MNIST task end to end on a 600-sample subset: it trains and learns something."""
    cfg = Config(task="mnist", patch_size=7, augment_shift=1, dim=32, heads=2, head_dim=8, depth=1, time_steps=2,
                 epochs=2, batch_size=64, train_size=600, lr=3e-3)
    metrics = train(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert metrics["task"] == "mnist" and metrics["world_size"] == 1
    assert metrics["test_accuracy"] > 0.15  # chance is 0.1 (+-0.003 over 10,000 test images); measured 0.26
