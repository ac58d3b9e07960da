"""Fuzzing the checkpoint loader (spikeformer/checkpoint.py): a damaged checkpoint.json or
checkpoint.safetensors ends in a one-line CheckpointError (or ConfigError for its config), never in
another exception, a hang or a huge allocation (tests/fuzz_profiles.py: profiles and oracle).

Each example rewrites a valid run directory made by ``save_checkpoint`` and then does what
``spikeformer.train.load_run`` and ``--resume`` do with it, minus the data: read it, rebuild the
config, build the model, load the weights and the optimizer state, take one optimizer step (on
unit gradients: a forward pass costs what the config asks, e.g. 16384 time steps). The
SHA-256 in checkpoint.json is recomputed after most weight-file edits, so the fuzzer reaches the
safetensors parser and the tensor checks behind the hash check (an adversarial edit, not a torn write).
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_profiles import NASTY, Tally, fuzz_settings, in_folder, mutated_bytes, mutated_json
from spikeformer.checkpoint import META, WEIGHTS, load_checkpoint, load_model_weights, restore_optimizer, save_checkpoint
from spikeformer.config import Config, config_from_dict
from spikeformer.errors import CheckpointError, SpikeformerError
from spikeformer.model import build_model


@lru_cache(maxsize=1)
def valid_run() -> tuple[bytes, bytes]:
    """``(checkpoint.json, checkpoint.safetensors)`` of a tiny digits model after one AdamW step."""
    cfg = Config(dim=16, heads=2, head_dim=8, depth=1, time_steps=2, epochs=2)
    tokens, features, classes = cfg.task_shape()
    torch.manual_seed(0)
    model = build_model(cfg, tokens, features, classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    logits, _ = model(torch.rand(4, tokens, features))
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    optimizer.step()
    history = [{"epoch": 0, "train_loss": 2.3, "train_accuracy": 0.1, "test_loss": 2.3, "test_accuracy": 0.1,
                "lr": 0.01, "seconds": 0.5}]
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, model, optimizer, {"config": cfg.to_dict(), "epoch": 0, "history": history,
                                                "train_seconds": 0.5})
        return (Path(tmp) / META).read_bytes(), (Path(tmp) / WEIGHTS).read_bytes()


def resume_like(run: Path) -> None:
    """What load_run and train(resume=True) do with a checkpoint, without the data set and the forward pass."""
    meta, weights, optim = load_checkpoint(run)
    cfg = config_from_dict(meta.get("config", {}), source=str(run / META))
    tokens, features, classes = cfg.task_shape()
    model = build_model(cfg, tokens, features, classes)
    load_model_weights(model, weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    restore_optimizer(optimizer, meta, optim)
    _ = meta["epoch"] + 1, len(meta["history"]), float(meta["train_seconds"])
    for row in meta["history"]:  # what the report plots
        _ = [float(row[k]) for k in ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")]
    for p in model.parameters():  # the restored state must take one AdamW step (no forward: its cost is the
        p.grad = torch.ones_like(p)  # config's time steps, not the loader's)
    optimizer.step()


def load(meta: bytes | None, weights: bytes | None) -> None:
    in_folder({META: meta, WEIGHTS: weights}, resume_like)


def with_hash(meta: bytes, weights: bytes) -> bytes:
    """checkpoint.json with ``weights_sha256`` set to the hash of ``weights`` (if it parses)."""
    record = json.loads(meta)
    record["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    return json.dumps(record).encode()


def split_safetensors(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join_safetensors(header: object, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_valid_seed_resumes():
    meta, weights = valid_run()
    load(meta, weights)


def test_fuzz_meta_json():
    """checkpoint.json with wrong types, huge / negative / NaN numbers, missing and extra keys, a
    damaged config or optimizer record (the weights hash left intact)."""
    tally = Tally("checkpoint/meta-json")
    meta, weights = valid_run()
    record = json.loads(meta)

    @fuzz_settings(40)
    @given(edited=mutated_json(record, protect=("weights_sha256",)))
    def run(edited):
        tally.check(lambda: load(json.dumps(edited).encode(), weights))

    run()
    tally.finish()


def test_fuzz_meta_bytes():
    """checkpoint.json truncated, bit-flipped, with random bytes; or a file missing."""
    tally = Tally("checkpoint/meta-bytes")
    meta, weights = valid_run()

    @fuzz_settings(40)
    @given(blob=mutated_bytes(meta) | st.sampled_from([None, b"", b"[]", b"null", b"[" * 100000, b"9" * 5000]),
           keep_weights=st.booleans())
    def run(blob, keep_weights):
        tally.check(lambda: load(blob, weights if keep_weights or blob is None else None))

    run()
    tally.finish()


def test_fuzz_weights_bytes():
    """checkpoint.safetensors truncated, bit-flipped, with inserted or deleted bytes; the hash in
    checkpoint.json recomputed (most examples) or left stale."""
    tally = Tally("checkpoint/weights-bytes")
    meta, weights = valid_run()
    (n,) = struct.unpack("<Q", weights[:8])
    header_only = mutated_bytes(weights[:8 + n], 3).map(lambda head: head + weights[8 + n:])
    data_only = mutated_bytes(weights[8 + n:], 3).map(lambda data: weights[:8 + n] + data)

    @fuzz_settings(80)
    @given(blob=mutated_bytes(weights) | header_only | data_only, stale=st.integers(0, 9).map(lambda i: i == 9))
    def run(blob, stale):
        tally.check(lambda: load(meta if stale else with_hash(meta, blob), blob))

    run()
    tally.finish()


def test_fuzz_weights_header():
    """The safetensors header with wrong dtypes and shapes, huge or negative sizes and offsets,
    extra, missing and renamed tensors, tensor data replaced by NaN (the hash recomputed)."""
    tally = Tally("checkpoint/weights-header")
    meta, weights = valid_run()
    header, data = split_safetensors(weights)
    names = sorted(k for k in header if k != "__metadata__")
    dtypes = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "C64", "U64",
              "F4", "X9", ""]

    @st.composite
    def damaged(draw):
        h = copy.deepcopy(header)
        raw = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(names))
            op = draw(st.sampled_from(["dtype", "shape", "offsets", "rename", "drop", "json", "nan", "consistent"]))
            entry = h.get(name)
            if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
                continue  # dropped, renamed or replaced by an earlier edit
            if op == "dtype":
                entry["dtype"] = draw(st.sampled_from(dtypes))
            elif op == "shape":
                entry["shape"] = draw(st.sampled_from([[], [0], [10 ** 12], [-1], [2 ** 63], [1, 1, 1, 1, 1, 1, 1, 1],
                                                       list(reversed(entry["shape"])), entry["shape"] + [1]])
                                      | st.lists(st.integers(0, 64), max_size=3))
            elif op == "offsets":
                entry["data_offsets"] = draw(st.sampled_from([[0, 0], [0, 2 ** 64 - 1], [-1, 4], [4, 0], [0, len(raw) + 8],
                                                              entry["data_offsets"][::-1]])
                                             | st.lists(st.integers(0, len(raw) + 16), min_size=2, max_size=2))
            elif op == "rename":
                h[draw(st.sampled_from(["model.extra", "optim.x", "optim.0", "optim.99.exp_avg", "optim.0.exp_avg.x",
                                        "model.", "other"]))] = h.pop(name)
            elif op == "drop":
                del h[name]
            elif op == "json":
                h[name] = draw(st.sampled_from(NASTY))
            elif op == "nan" and entry.get("dtype") == "F32":
                start, end = entry["data_offsets"]
                if end > start:
                    raw[start:start + 4] = struct.pack("<f", draw(st.sampled_from([float("nan"), float("inf"), 1e38])))
            elif op == "consistent" and entry.get("dtype") == "F32":
                # a dtype and shape change that still fits the bytes: F32 [n] -> I32 / F16 [2n] / U8 [4n]
                count = (entry["data_offsets"][1] - entry["data_offsets"][0]) // 4
                entry["dtype"], per = draw(st.sampled_from([("I32", 1), ("F16", 2), ("U8", 4), ("BF16", 2)]))
                entry["shape"] = [count * per]
        return join_safetensors(h, bytes(raw))

    @fuzz_settings(40)
    @given(blob=damaged())
    def run(blob):
        tally.check(lambda: load(with_hash(meta, blob), blob))

    run()
    tally.finish()


def _edited_meta(**changes) -> bytes:
    record = json.loads(valid_run()[0])
    for key, value in changes.items():
        *path, last = key.split("__")
        target = record
        for part in path:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[last] = value
    return json.dumps(record).encode()


KNOWN_META = {  # inputs the fuzzer found; what each did before the fix, in the comment
    "config list": dict(config=[]),  # AttributeError in config_from_dict (load_run)
    "epoch string": dict(epoch="0"),  # TypeError on resume (meta["epoch"] + 1)
    "history null": dict(history=None),  # TypeError in the report
    "history row": dict(history=[{"epoch": 0}]),  # KeyError in the report
    "train_seconds": dict(train_seconds="none"),  # ValueError
    "betas": dict(optimizer__param_groups__0__betas=[0.9]),  # ValueError in AdamW's step
    "beta one": dict(optimizer__param_groups__0__betas=[1.0, 0.999]),  # ZeroDivisionError (1 - beta ** step = 0)
    "weight_decay list": dict(optimizer__param_groups__0__weight_decay=[1]),  # TypeError in AdamW's step
    "lr huge": dict(optimizer__param_groups__0__lr=1e308),  # accepted
    "amsgrad": dict(optimizer__param_groups__0__amsgrad=True),  # KeyError 'max_exp_avg_sq' in AdamW's step
    "params": dict(optimizer__param_groups__0__params=[-1] + list(range(1, 33))),  # accepted: moments of parameter 0 dropped
    "version true": dict(version=True),  # accepted (True == 1)
    "qat_vth huge": dict(config__qat_vth=10 ** 400),  # OverflowError building the model (qat_vth / threshold)
}


def test_known_damage_is_one_line_error():
    meta, weights = valid_run()
    for name, changes in KNOWN_META.items():
        with pytest.raises(SpikeformerError) as info:
            load(_edited_meta(**changes), weights)
        assert "\n" not in str(info.value), name
    for blob in (b"[" * 100000, b'{"epoch": ' + b"9" * 5000 + b"}"):  # RecursionError, ValueError before
        with pytest.raises(CheckpointError):
            load(blob, weights)
    header, data = split_safetensors(weights)
    name = next(k for k, v in header.items() if k.startswith("model.") and v["dtype"] == "F32")
    start = header[name]["data_offsets"][0]
    nan = join_safetensors(header, data[:start] + struct.pack("<f", float("nan")) + data[start + 4:])
    recast = copy.deepcopy(header)
    recast[name]["dtype"] = "I32"  # same bytes read as int32: accepted, load_state_dict converted them
    start = header[next(k for k in header if k.endswith(".step"))]["data_offsets"][0]
    zero_step = join_safetensors(header, data[:start] + struct.pack("<f", -1.0) + data[start + 4:])  # ZeroDivisionError
    for blob in (nan, join_safetensors(recast, data), zero_step):  # NaN weights: accepted before
        with pytest.raises(CheckpointError):
            load(with_hash(meta, blob), blob)
