"""Fuzzing the NIR import (neuromorphic/nir_io.py ``read_nir`` and ``nir_to_graph``): a damaged
.nir file (HDF5) ends in a one-line IRError or LoweringError, never in another exception, a hang or
a huge allocation (tests/fuzz_profiles.py: profiles, mutations and the oracle).

Seeds: files written by ``export_nir`` from feed-forward (depth 0, ``delays = "loihi"``) models,
one LIF and one CubaLIF (alpha > 0). Damage comes at two levels: bytes of the HDF5 file
(truncations, bit flips, ...) and the file's content rewritten with h5py (wrong node types,
shapes, dtypes, NaN/inf, huge sizes, broken edges and metadata), which nir's writer would never
produce. A graph that imports must also run two steps of ``run_graph``. Marked ``backend``:
the tests need the ``nir`` package (skipped without it, a failure under SPIKEFORMER_REQUIRE_BACKENDS=1).
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_profiles import Tally, fuzz_settings, guard, mutated_bytes, mutated_json
from neuromorphic.lower import lower
from neuromorphic.simulate import run_graph
from spikeformer.config import Config
from spikeformer.model import Spikeformer

pytestmark = pytest.mark.backend

KINDS = ["lif", "cuba"]
NODE_TYPES = ["LIF", "IF", "CubaLIF", "Affine", "Linear", "Scale", "Delay", "Flatten", "Input", "Output", "I", "LI",
              "CubaLI", "Conv1d", "Threshold", "NIRGraph", "SumPool2d", "Bogus", ""]


def _modules():
    nir = pytest.importorskip("nir", reason="nir is needed for NIR interchange")
    h5py = pytest.importorskip("h5py")
    nir_io = pytest.importorskip("neuromorphic.nir_io")
    return nir, h5py, nir_io


@lru_cache(maxsize=None)
def seed_file(kind: str) -> bytes:
    """A .nir file exported from a small depth-0 digits model (``lif``: alpha = 0; ``cuba``: alpha = 0.5)."""
    _, _, nir_io = _modules()
    torch.manual_seed(0)
    cfg = Config(task="digits", depth=0, delays="loihi", dim=4, time_steps=2, beta=0.8, patch_size=4,
                 alpha=0.5 if kind == "cuba" else 0.0)
    tokens, features, classes = cfg.task_shape()
    model = Spikeformer(cfg, tokens, features, classes).eval()
    with tempfile.TemporaryDirectory() as tmp:
        return nir_io.export_nir(lower(model), Path(tmp) / "model.nir").read_bytes()


@lru_cache(maxsize=None)
def seed_content(kind: str) -> dict:
    """The seed file's HDF5 tree as nested dicts of numpy values (nir.serialization.hdf2dict)."""
    _, h5py, _ = _modules()
    from nir.serialization import hdf2dict

    with h5py.File(io.BytesIO(seed_file(kind)), "r") as handle:
        return {"version": handle["version"][()], "node": hdf2dict(handle["node"])}


def write_content(tree: dict) -> bytes:
    """An HDF5 file holding ``tree`` the way nir.write lays it out (no checks: any content)."""
    _, h5py, _ = _modules()

    def put(group, node: dict) -> None:
        for key, value in node.items():
            key = str(key) or "_"
            if isinstance(value, dict):
                put(group.create_group(key), value)
            elif isinstance(value, str):
                group.create_dataset(key, data=value, dtype=h5py.string_dtype())
            elif isinstance(value, np.ndarray) and value.dtype == object:
                group.create_dataset(key, data=value.astype(bytes) if value.size else np.zeros(0, "S1"))
            elif isinstance(value, np.ndarray) and value.ndim:
                group.create_dataset(key, data=value, compression="gzip")  # as nir.write
            else:
                group.create_dataset(key, data=value)

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        put(handle, tree)
    return buffer.getvalue()


def import_and_run(blob: bytes) -> None:
    _, _, nir_io = _modules()
    with tempfile.TemporaryDirectory() as tmp:  # hypothesis reuses fixtures: one folder per example
        path = Path(tmp) / "model.nir"
        path.write_bytes(blob)
        graph = nir_io.nir_to_graph(path)
    inp = graph.input
    run_graph(graph, np.ones((2, 1, inp.tokens, inp.features)))


def test_valid_seeds_import_and_run():
    for kind in KINDS:
        import_and_run(seed_file(kind))
        import_and_run(write_content(seed_content(kind)))  # the h5py writer keeps a valid file valid


def test_fuzz_nir_bytes():
    """The HDF5 file truncated, bit-flipped, with random bytes, inserted or deleted ranges."""
    tally = Tally("nir/bytes")

    @fuzz_settings(100)
    @given(data=st.data(), kind=st.sampled_from(KINDS))
    def run(data, kind):
        blob = data.draw(mutated_bytes(seed_file(kind)) | st.sampled_from([b"", b"\x89HDF\r\n\x1a\n", b"{}"]))
        tally.check(lambda: import_and_run(blob))

    run()
    tally.finish()


def _leaves(tree: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in tree.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out += _leaves(value, prefix + (key,))
    return out


NUMBERS = [0.0, -1.0, 1.0, 1e-300, 1e300, float("nan"), float("inf"), -float("inf"), 10 ** 12, -(10 ** 12), 2 ** 62]


def replacement(draw, old: Any) -> Any:
    """A damaged value in place of ``old``: other shape, dtype, NaN/inf, huge, a string, ..."""
    size = int(np.size(old)) if isinstance(old, np.ndarray) else 1
    options = [
        lambda: np.full(draw(st.sampled_from([0, 1, max(size - 1, 0), size + 1, size * 2])), draw(st.sampled_from(NUMBERS))),
        lambda: np.full((2, 3), draw(st.sampled_from(NUMBERS))),
        lambda: (np.asarray(old, np.float64) * draw(st.sampled_from([-1.0, 0.0, 1e9, 1e-9, float("nan")])))
        if isinstance(old, (np.ndarray, np.number, int, float)) and np.asarray(old).dtype.kind in "biuf" else old,
        lambda: draw(st.sampled_from(NUMBERS)),
        lambda: np.int64(draw(st.sampled_from([0, -1, 10 ** 12, 2 ** 62]))),
        lambda: draw(st.sampled_from(["", "x", "LIF", "1e-3", "{", "[]", "null"])),
        lambda: np.array([1 + 2j]),
        lambda: np.array([True, False]),
        lambda: np.array([b"a", b"b"]),
        lambda: {"x": np.zeros(2)},
    ]
    return options[draw(st.integers(0, len(options) - 1))]()


@st.composite
def damaged_content(draw, kind: str) -> dict:
    tree = copy.deepcopy(seed_content(kind))
    graph = tree["node"]
    names = sorted(graph["nodes"])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["value", "value", "type", "delete", "add", "edges", "dt", "ir_meta", "grid"]))
        if op in ("value", "delete", "add"):
            paths = _leaves(tree)
            if not paths:
                continue
            path = draw(st.sampled_from(paths))
            parent = tree
            for key in path[:-1]:
                parent = parent[key]
            if op == "value":
                parent[path[-1]] = replacement(draw, parent[path[-1]])
            elif op == "delete":
                del parent[path[-1]]
            elif isinstance(parent.get(path[-1]), dict):
                parent[path[-1]][draw(st.sampled_from(["extra", "metadata", "type", "weight"]))] = np.zeros(3)
        elif op == "type" and isinstance(graph.get("nodes"), dict):
            node = graph["nodes"].get(draw(st.sampled_from(names)))
            if isinstance(node, dict):
                node["type"] = draw(st.sampled_from(NODE_TYPES))
        elif op == "edges" and isinstance(graph.get("edges"), np.ndarray) and graph["edges"].ndim == 2:
            edges = [list(e) for e in graph["edges"]]
            how = draw(st.sampled_from(["drop", "reverse", "self", "unknown", "duplicate"]))
            if edges:
                i = draw(st.integers(0, len(edges) - 1))
                if how == "drop":
                    edges.pop(i)
                elif how == "reverse":
                    edges.append(edges[i][::-1])
                elif how == "self":
                    edges.append([edges[i][0], edges[i][0]])
                elif how == "unknown":
                    edges[i][draw(st.integers(0, 1))] = b"nowhere"
                else:
                    edges.append(list(edges[i]))
            graph["edges"] = np.array(edges, dtype=object) if edges else np.zeros((0, 2), "S1")
        elif op == "dt" and isinstance(graph.get("metadata"), dict):
            graph["metadata"]["dt"] = draw(st.sampled_from([0.0, -1e-3, float("nan"), float("inf"), 1e-300, 1e300, 2e-3,
                                                            "x", np.array([1e-3, 2e-3])]))
        elif op == "ir_meta" and isinstance(graph.get("metadata"), dict) and isinstance(graph["metadata"].get("ir_meta"), str):
            try:
                meta = json.loads(graph["metadata"]["ir_meta"])
            except (TypeError, ValueError, RecursionError):  # damaged by an earlier edit of this example
                continue
            edited = draw(mutated_json(meta) | st.sampled_from([None, [], "x", {}]))
            graph["metadata"]["ir_meta"] = draw(st.sampled_from([json.dumps(edited), "{", "[" * 5000, "9" * 5000]))
        elif op == "grid" and isinstance(graph.get("nodes"), dict):  # tokens/features the exporter wrote
            node = graph["nodes"].get(draw(st.sampled_from(names)))
            if isinstance(node, dict) and isinstance(node.get("metadata"), dict):
                node["metadata"][draw(st.sampled_from(["tokens", "features", "graded", "kind", "steps"]))] = \
                    draw(st.sampled_from([0, -1, 10 ** 12, 2 ** 62, "x", 1.5, "tokenwise", "full"]))
    return tree


def test_fuzz_nir_content():
    """The file's content rewritten: wrong node types, shapes, dtypes, NaN/inf, huge sizes and
    delays, broken edges (cycles, unknown nodes), a bad dt, damaged ir_meta and grid metadata."""
    tally = Tally("nir/content")

    @fuzz_settings(100)
    @given(data=st.data(), kind=st.sampled_from(KINDS))
    def run(data, kind):
        blob = write_content(data.draw(damaged_content(kind)))
        tally.check(lambda: import_and_run(blob))

    run()
    tally.finish()


def _identity_bomb() -> dict:
    """Input [60000] -> Delay -> LIF (an identity path, no Affine) -> Affine -> Output: a small
    (compressed) file whose import would build np.eye(60000), 29 GB, as the IR's dense weight."""
    tree = copy.deepcopy(seed_content("lif"))
    nodes, n = tree["node"]["nodes"], 60000
    nodes["input"]["shape"] = np.array([n])
    for key in ("tau", "r", "v_leak", "v_reset", "v_threshold"):
        nodes["final"][key] = np.full(n, nodes["final"][key][0])
    nodes["input.delay"]["delay"] = np.full(n, nodes["input.delay"]["delay"][0])
    nodes["final.delay"]["delay"] = np.full(n, nodes["final.delay"]["delay"][0])
    nodes["readout->readout"]["weight"] = np.zeros((10, n))
    del nodes["stem.embed->final"]
    edges = [list(e) for e in tree["node"]["edges"] if b"stem.embed->final" not in list(e)]
    tree["node"]["edges"] = np.array(edges + [[b"input.delay", b"final"]], dtype=object)
    return tree


def test_known_damage_is_one_line_error():
    """Inputs the fuzzer (or its bounds) found; what each did before the fix, in the comment."""
    _, _, nir_io = _modules()
    cases = {
        "dt string": ("metadata", "dt", "x"),  # ValueError
        "ir_meta deep": ("metadata", "ir_meta", "[" * 5000),  # RecursionError
        "ir_meta digits": ("metadata", "ir_meta", "9" * 5000),  # IRError already
    }
    for name, (group, key, value) in cases.items():
        tree = copy.deepcopy(seed_content("lif"))
        tree["node"][group][key] = value
        with pytest.raises((nir_io.IRError, nir_io.LoweringError)) as info:
            import_and_run(write_content(tree))
        assert "\n" not in str(info.value), name
    with pytest.raises(nir_io.LoweringError, match="dense 60000 x 60000"):  # MemoryError (or the OOM killer)
        import_and_run(write_content(_identity_bomb()))
    tree = copy.deepcopy(seed_content("lif"))
    tree["node"]["metadata"]["format"] = np.array([1, 2])  # ValueError (truth value of an array); now: a
    import_and_run(write_content(tree))  # graph of another tool, imported with its own metadata ignored
    blob = bytearray(seed_file("lif"))
    blob[blob.find(b"GCOL") + 8] = 0xFF  # the global heap's size + 255 bytes: libhdf5 looped forever
    with guard("nir/global-heap"), pytest.raises(nir_io.IRError, match="global heap"):
        import_and_run(bytes(blob))
