"""Checkpoints: safetensors + JSON round trip (model and optimizer), resume equivalence, safe errors."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import pytest
import torch

from spikeformer.checkpoint import (
    META,
    VERSION,
    WEIGHTS,
    load_checkpoint,
    load_model_weights,
    restore_optimizer,
    save_checkpoint,
)
from spikeformer.config import Config, config_from_dict
from spikeformer.errors import CheckpointError
from spikeformer.model import build_model

TOKENS, FEATURES, CLASSES = 16, 4, 10


def small_config(**kw) -> Config:
    return Config(dim=16, heads=2, head_dim=8, depth=1, time_steps=2, **kw)


def make_model(cfg: Config, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg, tokens=TOKENS, features=FEATURES, classes=CLASSES)


def make_optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, TOKENS, FEATURES, generator=g) * 2
    y = torch.randint(0, CLASSES, (4,), generator=g)
    return x, y


def train_step(model, optimizer, seed: int) -> None:
    x, y = batch(seed)
    model.train()
    logits, _ = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def meta_for(cfg: Config) -> dict:
    return {"config": cfg.to_dict(), "epoch": 0, "history": [], "train_seconds": 0.0}


def trained(seed: int = 0):
    """A small model and its AdamW after one step (so the optimizer has state)."""
    cfg = small_config()
    model = make_model(cfg, seed)
    opt = make_optimizer(model)
    train_step(model, opt, seed=1)
    return cfg, model, opt


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One saved checkpoint per module (training is the slow part); tests get a copy."""
    cfg, model, opt = trained()
    run = tmp_path_factory.mktemp("pristine") / "run"
    save_checkpoint(run, model, opt, meta_for(cfg))
    return run, cfg, model, opt


@pytest.fixture()
def saved(pristine, tmp_path):
    """A private copy of the run directory (tests may corrupt it); model/opt are read-only."""
    src, cfg, model, opt = pristine
    run = tmp_path / "run"
    shutil.copytree(src, run)
    return run, cfg, model, opt


def _normalise(obj):
    """JSON stores tuples as lists; compare optimizer hyper-parameters modulo that."""
    return json.loads(json.dumps(obj))


def assert_optimizer_states_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    assert len(sa["state"]) > 0
    for index in sa["state"]:
        slots_a, slots_b = sa["state"][index], sb["state"][index]
        assert slots_a.keys() == slots_b.keys()
        for slot in slots_a:
            ta, tb = torch.as_tensor(slots_a[slot]), torch.as_tensor(slots_b[slot])
            assert ta.dtype == tb.dtype, (index, slot)
            assert torch.equal(ta, tb), (index, slot)
    assert _normalise(sa["param_groups"]) == _normalise(sb["param_groups"])


def test_round_trip_model_optimizer_and_resume(tmp_path):
    cfg, model, opt = trained()
    run = tmp_path / "run"
    save_checkpoint(run, model, opt, meta_for(cfg))
    meta, model_tensors, optim_tensors = load_checkpoint(run)

    # meta round trip
    assert meta["epoch"] == 0 and meta["history"] == [] and meta["train_seconds"] == 0.0
    assert meta["version"] == VERSION
    assert config_from_dict(meta["config"]) == cfg

    # fresh model (different init) and fresh optimizer
    fresh_cfg = config_from_dict(meta["config"])
    fresh = make_model(fresh_cfg, seed=123)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    fresh_opt = make_optimizer(fresh)
    load_model_weights(fresh, model_tensors)
    restore_optimizer(fresh_opt, meta, optim_tensors)

    ref = model.state_dict()
    got = fresh.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert ref[key].dtype == got[key].dtype, key
        assert torch.equal(ref[key], got[key]), key
    assert_optimizer_states_equal(opt, fresh_opt)

    # one further identical step on both gives identical weights
    train_step(model, opt, seed=2)
    train_step(fresh, fresh_opt, seed=2)
    for (name, p), (_, p2) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, p2), name
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert_optimizer_states_equal(opt, fresh_opt)


def test_saved_tensor_names(saved):
    run, _, model, opt = saved
    _, model_tensors, optim_tensors = load_checkpoint(run)
    assert set(model_tensors) == set(model.state_dict())
    n_params = len(list(model.parameters()))
    # AdamW keeps step, exp_avg, exp_avg_sq for every parameter that got a gradient
    assert {k.split(".", 2)[2] for k in optim_tensors} == {"step", "exp_avg", "exp_avg_sq"}
    assert len(optim_tensors) == 3 * len(opt.state) and 0 < len(opt.state) <= n_params


def test_no_temp_files_left_after_save(pristine, tmp_path):
    _, cfg, model, opt = pristine
    run = tmp_path / "run"
    save_checkpoint(run, model, opt, meta_for(cfg))
    assert sorted(p.name for p in run.iterdir()) == sorted([META, WEIGHTS])
    # overwriting an existing checkpoint leaves no stray files either
    save_checkpoint(run, model, opt, dict(meta_for(cfg), epoch=1))
    assert sorted(p.name for p in run.iterdir()) == sorted([META, WEIGHTS])
    meta, tensors, _ = load_checkpoint(run)
    assert meta["epoch"] == 1
    for key, value in model.state_dict().items():
        assert torch.equal(tensors[key], value)


def test_weights_hash_recorded(saved):
    run, *_ = saved
    meta = json.loads((run / META).read_text())
    assert meta["weights_sha256"] == hashlib.sha256((run / WEIGHTS).read_bytes()).hexdigest()


def test_save_without_optimizer_cannot_resume(tmp_path):
    cfg = small_config()
    model = make_model(cfg)
    save_checkpoint(tmp_path / "run", model, None, meta_for(cfg))
    meta, tensors, optim_tensors = load_checkpoint(tmp_path / "run")
    assert optim_tensors == {}
    fresh = make_model(cfg, seed=5)
    load_model_weights(fresh, tensors)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    with pytest.raises(CheckpointError, match="optimizer"):
        restore_optimizer(make_optimizer(fresh), meta, optim_tensors)


# ---- errors ----


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_plain_file_path(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(path)


class _Bomb:
    """Unpickling this object would call ``_detonate``; the loader must never unpickle."""

    def __reduce__(self):
        return (_detonate, ())


def _detonate():
    raise AssertionError("a pickle was loaded")


def test_torch_pickle_file_is_refused_never_unpickled(tmp_path, monkeypatch):
    cfg = small_config()
    path = tmp_path / "model.pt"
    torch.save({"state": make_model(cfg).state_dict(), "bomb": _Bomb()}, path)

    def forbidden(*args, **kwargs):
        raise AssertionError("the checkpoint loader must never unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)
    # a run directory holding only a .pt pickle is refused too
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(run)


def test_truncated_weights_detected_by_hash(saved):
    run, *_ = saved
    data = (run / WEIGHTS).read_bytes()
    (run / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(run)


def test_garbage_weights_with_matching_hash(saved):
    run, *_ = saved
    garbage = b"this is not a safetensors file at all" * 10
    (run / WEIGHTS).write_bytes(garbage)
    meta = json.loads((run / META).read_text())
    meta["weights_sha256"] = hashlib.sha256(garbage).hexdigest()
    (run / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(run)


def test_corrupt_json(saved):
    run, *_ = saved
    text = (run / META).read_text()
    (run / META).write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(run)


def test_json_not_an_object_or_foreign(saved):
    run, *_ = saved
    (run / META).write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match="not a spikeformer checkpoint"):
        load_checkpoint(run)
    (run / META).write_text(json.dumps({"format": "something-else", "version": VERSION}))
    with pytest.raises(CheckpointError, match="not a spikeformer checkpoint"):
        load_checkpoint(run)


@pytest.mark.parametrize("version", [VERSION + 1, 0, None, "1"])
def test_wrong_version(saved, version):
    run, *_ = saved
    meta = json.loads((run / META).read_text())
    meta["version"] = version
    (run / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(run)


def test_missing_one_of_the_pair(saved):
    run, *_ = saved
    (run / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(run)


def test_weights_for_a_different_model_size(saved):
    run, *_ = saved
    meta, tensors, optim_tensors = load_checkpoint(run)
    bigger = make_model(Config(dim=32, heads=2, head_dim=8, depth=1))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model_weights(bigger, tensors)
    deeper = make_model(Config(dim=16, heads=2, head_dim=8, depth=2))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model_weights(deeper, tensors)
    # the optimizer state of the small model does not fit the deeper model's optimizer
    with pytest.raises(CheckpointError, match="optimizer"):
        restore_optimizer(make_optimizer(deeper), meta, optim_tensors)
