"""Fuzzing the IR loader (neuromorphic/ir.py ``load_graph`` and ``_validate``): a damaged
graph.json or arrays.safetensors ends in a one-line IRError, never in another exception, a hang
or a huge allocation (tests/fuzz_profiles.py: profiles, mutations and the oracle).

Seeds: IR folders saved by ``save_graph`` from small lowered models (float stdp, fixed-point
stdp and three_factor). A graph that loads must also run: two steps of ``run_graph`` (float) or
``run_fixed`` (fixed point) on one sample, so a field ``_validate`` lets through unchecked shows
up as a crash here. The arrays hash in graph.json is recomputed after most array-file edits so
the fuzzer reaches the safetensors parser and the shape checks behind the hash check.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_profiles import Tally, fuzz_settings, in_folder, mutated_bytes, mutated_json
from neuromorphic.fixed_ref import run_fixed
from neuromorphic.ir import ARRAYS_FILE, GRAPH_FILE, IRError, load_graph, save_graph
from neuromorphic.lower import lower
from neuromorphic.quantize import encode_fixed, quantize
from neuromorphic.simulate import run_graph
from spikeformer.config import Config
from spikeformer.model import build_model


@lru_cache(maxsize=None)
def seed_files(kind: str) -> tuple[bytes, bytes]:
    """``(graph.json, arrays.safetensors)`` of a small lowered model: float-stdp | fixed-stdp | fixed-three_factor."""
    precision, variant = kind.split("-", 1)
    torch.manual_seed(0)
    cfg = Config(task="digits", dim=8, heads=2, head_dim=4, depth=1, time_steps=2, delays="loihi", variant=variant,
                 patch_size=4)
    tokens, features, classes = cfg.task_shape()
    graph = lower(build_model(cfg, tokens, features, classes).eval())
    if precision == "fixed":
        graph = quantize(graph)
    with tempfile.TemporaryDirectory() as tmp:
        save_graph(graph, tmp)
        return (Path(tmp) / GRAPH_FILE).read_bytes(), (Path(tmp) / ARRAYS_FILE).read_bytes()


KINDS = ["float-stdp", "fixed-stdp", "fixed-three_factor"]


def load_and_run(graph_json: bytes | None, arrays: bytes | None) -> None:
    graph = in_folder({GRAPH_FILE: graph_json, ARRAYS_FILE: arrays}, load_graph)
    inp = graph.input
    x = np.ones((2, 1, inp.tokens, inp.features))
    if graph.precision == "fixed":
        run_fixed(graph, encode_fixed(graph, x)[0])
    else:
        run_graph(graph, x)


def with_hash(graph_json: bytes, arrays: bytes) -> bytes:
    record = json.loads(graph_json)
    record["arrays_sha256"] = hashlib.sha256(arrays).hexdigest()
    return json.dumps(record).encode()


def test_valid_seeds_load_and_run():
    for kind in KINDS:
        load_and_run(*seed_files(kind))


def test_fuzz_graph_json():
    """graph.json with wrong types, huge / negative / NaN numbers (tokens = 10**12, delay = -1,
    heads = 10**9), missing and unknown keys, wrong versions (the arrays hash intact)."""
    tally = Tally("ir/graph-json")
    records = {kind: json.loads(seed_files(kind)[0]) for kind in KINDS}

    @fuzz_settings(100)
    @given(data=st.data(), kind=st.sampled_from(KINDS))
    def run(data, kind):
        edited = data.draw(mutated_json(records[kind], max_edits=3, protect=("arrays_sha256",)))
        tally.check(lambda: load_and_run(json.dumps(edited).encode(), seed_files(kind)[1]))

    run()
    tally.finish()


def test_fuzz_graph_bytes():
    """graph.json truncated, bit-flipped, with random bytes; or a file missing."""
    tally = Tally("ir/graph-bytes")

    @fuzz_settings(50)
    @given(data=st.data(), kind=st.sampled_from(KINDS))
    def run(data, kind):
        graph_json, arrays = seed_files(kind)
        blob = data.draw(mutated_bytes(graph_json) | st.sampled_from([None, b"", b"[]", b"{}", b"[" * 100000]))
        tally.check(lambda: load_and_run(blob, arrays))

    run()
    tally.finish()


def test_fuzz_arrays():
    """arrays.safetensors: byte edits, or header edits (dtype, shape, offsets, renamed and
    dropped arrays, NaN data); the hash in graph.json recomputed unless ``stale``."""
    tally = Tally("ir/arrays")

    @st.composite
    def damaged(draw, kind):
        graph_json, arrays = seed_files(kind)
        (n,) = struct.unpack("<Q", arrays[:8])
        if draw(st.booleans()):
            return draw(mutated_bytes(arrays))
        header, raw = json.loads(arrays[8:8 + n]), bytearray(arrays[8 + n:])
        names = sorted(k for k in header if k != "__metadata__")
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(names))
            entry = header.get(name)
            if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
                continue  # dropped or renamed by an earlier edit
            op = draw(st.sampled_from(["dtype", "shape", "rename", "drop", "nan", "consistent"]))
            if op == "dtype":
                entry["dtype"] = draw(st.sampled_from(["F32", "F64", "I64", "I32", "U8", "BOOL", "F16", "C64", "X"]))
            elif op == "shape":
                entry["shape"] = draw(st.sampled_from([[], [0], [10 ** 12], [-1], list(reversed(entry["shape"])),
                                                       entry["shape"] + [1]]) | st.lists(st.integers(0, 40), max_size=3))
            elif op == "rename":
                header[draw(st.sampled_from(["pop/x/bias", "other", name + "x"]))] = header.pop(name)
            elif op == "drop":
                del header[name]
            elif op == "nan" and entry["dtype"] in ("F64", "F32"):
                start, end = entry["data_offsets"]
                if end - start >= 8 and entry["dtype"] == "F64":
                    raw[start:start + 8] = struct.pack("<d", draw(st.sampled_from([float("nan"), float("inf"), 1e300])))
            elif op == "consistent" and entry["dtype"] in ("F64", "I64"):
                # same bytes, another reading: 8-byte [n] -> F32/I32 [2n] or U8 [8n]
                count = (entry["data_offsets"][1] - entry["data_offsets"][0]) // 8
                entry["dtype"], per = draw(st.sampled_from([("F32", 2), ("I32", 2), ("U8", 8), ("I64", 1), ("F64", 1)]))
                entry["shape"] = [count * per] if draw(st.booleans()) or not entry["shape"] else \
                    entry["shape"][:-1] + [entry["shape"][-1] * per]
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + bytes(raw)

    @fuzz_settings(100)
    @given(data=st.data(), kind=st.sampled_from(KINDS), stale=st.integers(0, 9).map(lambda i: i == 9))
    def run(data, kind, stale):
        graph_json, _ = seed_files(kind)
        blob = data.draw(damaged(kind))
        tally.check(lambda: load_and_run(graph_json if stale else with_hash(graph_json, blob), blob))

    run()
    tally.finish()


def _edited(kind: str, edit) -> bytes:
    record = json.loads(seed_files(kind)[0])
    edit(record)
    return json.dumps(record).encode()


def _set(path: tuple, value):
    def edit(record):
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


KNOWN = {  # inputs the fuzzer found; what each did before the fix, in the comment
    "input tokens 10**12": ("float-stdp", _set(("populations", 0, "tokens"), 10 ** 12)),  # IRError already (shapes)
    "delay 10**9": ("float-stdp", _set(("connections", 0, "delay"), 10 ** 9)),  # MemoryError in run_graph
    "delay true": ("float-stdp", _set(("connections", 0, "delay"), True)),  # accepted
    "beta true": ("float-stdp", _set(("populations", 1, "beta"), True)),  # accepted
    "threshold null": ("float-stdp", _set(("populations", 1, "threshold"), None)),  # TypeError
    "threshold 2**64": ("float-stdp", _set(("populations", 1, "threshold"), 2 ** 64 + 1)),  # OverflowError in run_graph
    "heads string": ("float-stdp", _set(("attentions", 0, "heads"), "2")),  # IRError already ("2" * 8 features)
    "plasticity key": ("float-stdp", lambda r: r["attentions"][0]["plasticity"].pop("a_minus")),  # KeyError in run_graph
    "variant": ("float-stdp", _set(("attentions", 0, "variant"), "hebbian")),  # accepted with stdp plasticity
    "meta steps": ("float-stdp", _set(("meta", "steps"), "x")),  # accepted
    "meta list": ("float-stdp", _set(("meta",), ["mode", "steps", "window", "latency", "classes"])),  # TypeError
    "populations dict": ("float-stdp", _set(("populations",), {"a": 1})),  # AttributeError
    "fixed one": ("fixed-stdp", lambda r: r["attentions"][0]["fixed"].pop("one")),  # KeyError in run_fixed
    "fixed decay": ("fixed-stdp", _set(("attentions", 0, "fixed", "decay"), [4096])),  # ValueError in run_fixed
    "fixed vth": ("fixed-stdp", _set(("populations", 1, "vth"), 10 ** 30)),  # OverflowError in run_fixed
    "readout du": ("fixed-stdp", lambda r: r["populations"][-1].pop("du")),  # TypeError in run_fixed
    "modulator": ("fixed-three_factor", _set(("attentions", 0, "modulator"), None)),  # AttributeError in run_fixed
}


def test_known_damage_is_one_ir_error():
    for name, (kind, edit) in KNOWN.items():
        with pytest.raises(IRError) as info:
            load_and_run(_edited(kind, edit), seed_files(kind)[1])
        assert "\n" not in str(info.value), name
    for blob in (b"[" * 100000, b'{"version": ' + b"9" * 5000 + b"}"):  # RecursionError, ValueError before
        with pytest.raises(IRError):
            load_and_run(blob, seed_files("float-stdp")[1])
    graph_json, arrays = seed_files("float-stdp")  # a float64 [H] plasticity array read as complex64 [H]
    (n,) = struct.unpack("<Q", arrays[:8])  # (same bytes): accepted before, the imaginary parts dropped
    header = json.loads(arrays[8:8 + n])
    name = next(k for k in header if "/plasticity/" in k and header[k]["dtype"] == "F64")
    header[name]["dtype"] = "C64"
    text = json.dumps(header).encode()
    blob = struct.pack("<Q", len(text)) + text + arrays[8 + n:]
    with pytest.raises(IRError, match="finite real numbers"):
        load_and_run(with_hash(graph_json, blob), blob)
