"""IR save/load: a round trip keeps every array; bad files are rejected with one line."""

import json

import numpy as np
import pytest

from neuromorphic.ir import ARRAYS_FILE, GRAPH_FILE, IRError, load_graph, save_graph
from neuromorphic.lower import lower
from neuromorphic.quantize import quantize


@pytest.fixture
def graph(make_model):
    return lower(make_model(variant="stdp", depth=1))


def _same(a, b):
    assert a.meta == b.meta and a.precision == b.precision and a.fixed == b.fixed
    for xs, ys in ((a.populations, b.populations), (a.connections, b.connections), (a.attentions, b.attentions)):
        assert [x.name for x in xs] == [y.name for y in ys]
        for x, y in zip(xs, ys):
            for key, value in vars(x).items():
                other = getattr(y, key)
                if isinstance(value, np.ndarray):
                    assert value.dtype == other.dtype and np.array_equal(value, other), (x.name, key)
                elif isinstance(value, dict):
                    assert value.keys() == other.keys()
                    for k in value:
                        assert np.array_equal(np.asarray(value[k]), np.asarray(other[k])), (x.name, key, k)
                else:
                    assert value == other, (x.name, key)


def test_round_trip_float_and_fixed(graph, tmp_path):
    _same(graph, load_graph(save_graph(graph, tmp_path / "float")))
    fixed = quantize(graph)
    _same(fixed, load_graph(save_graph(fixed, tmp_path / "fixed")))


def _one_line(exc):
    assert "\n" not in str(exc.value)


def test_missing_folder(tmp_path):
    with pytest.raises(IRError, match="not an IR folder") as exc:
        load_graph(tmp_path / "nothing")
    _one_line(exc)


def test_wrong_version(graph, tmp_path):
    path = save_graph(graph, tmp_path / "ir")
    record = json.loads((path / GRAPH_FILE).read_text())
    record["version"] = 99
    (path / GRAPH_FILE).write_text(json.dumps(record))
    with pytest.raises(IRError, match="version 99") as exc:
        load_graph(path)
    _one_line(exc)


def test_not_an_ir_file(graph, tmp_path):
    path = save_graph(graph, tmp_path / "ir")
    (path / GRAPH_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(IRError, match="not a spikeformer IR"):
        load_graph(path)
    (path / GRAPH_FILE).write_text("{not json")
    with pytest.raises(IRError, match="not valid JSON") as exc:
        load_graph(path)
    _one_line(exc)


def test_truncated_or_modified_arrays(graph, tmp_path):
    path = save_graph(graph, tmp_path / "ir")
    blob = (path / ARRAYS_FILE).read_bytes()
    (path / ARRAYS_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IRError, match="truncated or modified") as exc:
        load_graph(path)
    _one_line(exc)
    (path / ARRAYS_FILE).write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(IRError, match="truncated or modified"):
        load_graph(path)


def test_bad_shape_and_field_are_named(graph, tmp_path):
    path = save_graph(graph, tmp_path / "ir")
    record = json.loads((path / GRAPH_FILE).read_text())
    record["populations"][1]["tokens"] += 1
    (path / GRAPH_FILE).write_text(json.dumps(record))
    with pytest.raises(IRError, match="has shape") as exc:
        load_graph(path)
    _one_line(exc)
    record["populations"][1]["tokens"] -= 1
    record["populations"][1]["colour"] = "blue"
    (path / GRAPH_FILE).write_text(json.dumps(record))
    with pytest.raises(IRError, match="unknown field"):
        load_graph(path)


def test_validation_rejects_nan_and_bad_kinds(graph):
    graph.connections[0].weight[0, 0] = np.nan
    with pytest.raises(IRError, match="NaN"):
        graph.validate()
    graph.connections[0].weight[0, 0] = 0.0
    graph.populations[1].kind = "izhikevich"
    with pytest.raises(IRError, match="unknown kind 'izhikevich'"):
        graph.validate()


def test_fixed_graph_needs_integer_weights(graph):
    fixed = quantize(graph)
    fixed.connections[0].weight = fixed.connections[0].weight.astype(np.float64)
    with pytest.raises(IRError, match="must be integer"):
        fixed.validate()
