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


def _make_plastic(graph, rule="three_factor"):
    """Give the graph's first full connection (one weight per synapse) a learning rule and some trace state."""
    conn = next(c for c in graph.connections if c.kind == "full")
    src, dst = graph.population(conn.source), graph.population(conn.target)
    rng = np.random.default_rng(0)
    conn.rule = rule
    conn.rule_params = {"lr": 0.01, "a_plus": 1.0, "a_minus": 0.5, "tau_pre": 2.0, "tau_post": 3.0}
    conn.traces = {"pre": rng.random(src.size), "post": rng.random(dst.size)}
    if rule == "three_factor":
        conn.rule_params["tau_eligibility"] = 8.0
        conn.traces["eligibility"] = rng.normal(size=conn.weight.shape)
    return conn


@pytest.mark.parametrize("rule", ["stdp", "three_factor"])
def test_a_plastic_connection_round_trips(graph, tmp_path, rule):
    conn = _make_plastic(graph, rule)
    loaded = load_graph(save_graph(graph, tmp_path / rule))
    _same(graph, loaded)
    again = next(c for c in loaded.connections if c.name == conn.name)
    assert again.rule == rule and again.rule_params == conn.rule_params
    assert set(again.traces) == set(conn.traces)


@pytest.mark.parametrize("damage,match", [
    (lambda c: setattr(c, "rule", "eprop"), r"learning rule 'eprop'; a connection learns by one of stdp, three_factor"),
    (lambda c: c.rule_params.update(tau_pre=-1.0), r"tau_pre must be a finite number > 0"),
    (lambda c: c.rule_params.update(gain=2.0), r"unknown three_factor parameters \['gain'\]"),
    (lambda c: c.traces.pop("eligibility"), r"traces must be \['eligibility', 'post', 'pre'\]"),
    (lambda c: c.traces.update(pre=np.full(c.traces["pre"].shape, np.nan)), r"trace 'pre' must be a finite float array"),
])
def test_a_malformed_rule_in_an_ir_file_is_refused_in_one_line(graph, tmp_path, damage, match):
    conn = _make_plastic(graph)
    path = save_graph(graph, tmp_path / "ir")
    record = json.loads((path / GRAPH_FILE).read_text())
    damage(conn)  # the same damage, written into the file's record
    entry = next(c for c in record["connections"] if c["name"] == conn.name)
    entry["rule"], entry["rule_params"] = conn.rule, conn.rule_params
    if set(conn.traces) != set(entry["traces"]):
        entry["traces"] = {k: v for k, v in entry["traces"].items() if k in conn.traces}
    (path / GRAPH_FILE).write_text(json.dumps(record))
    if np.isnan(conn.traces["pre"]).any():  # an array's damage goes through the validator
        with pytest.raises(IRError, match=match) as exc:
            graph.validate()
    else:
        with pytest.raises(IRError, match=match) as exc:
            load_graph(path)
    _one_line(exc)


def test_backends_refuse_a_plastic_graph_in_one_line(graph):
    from neuromorphic.fixed_ref import run_fixed
    from neuromorphic.nir_export import graph_to_nir
    from neuromorphic.simulate import run_graph

    conn = _make_plastic(graph, "stdp")
    x = np.zeros((2, 1, graph.input.tokens, graph.input.features))
    for run in (lambda: run_graph(graph, x), lambda: run_fixed(graph, x), lambda: graph_to_nir(graph)):
        with pytest.raises(IRError, match=f"connection {conn.name!r} learns by a rule") as exc:
            run()
        _one_line(exc)


def test_per_token_plastic_copies_round_trip_with_their_mask(graph, tmp_path):
    """A tokenwise weight made plastic: the full kron(I_N, W) with its block mask, saved and
    loaded (the mask comes back bool), and a mask that lets weight outside it refused."""
    from neuromorphic.ir import plastic_connection

    index, conn = next((i, c) for i, c in enumerate(graph.connections)
                       if c.kind == "tokenwise" and graph.population(c.source).kind == "lif")
    tokens = graph.population(conn.target).tokens
    graph.connections[index] = plastic = plastic_connection(conn, tokens, "stdp", {"lr": 0.01})
    assert plastic.kind == "full" and plastic.mask.dtype == np.bool_
    np.testing.assert_array_equal(plastic.weight, np.kron(np.eye(tokens), conn.weight))
    assert plastic.mask.sum() == tokens * conn.weight.size
    loaded = load_graph(save_graph(graph, tmp_path / "masked"))
    again = loaded.connections[index]
    assert again.mask.dtype == np.bool_ and np.array_equal(again.mask, plastic.mask)
    plastic.mask = plastic.mask.astype(np.float64)
    with pytest.raises(IRError, match="mask must be a bool array") as exc:
        graph.validate()
    _one_line(exc)


@pytest.fixture
def conv_graph(make_model):
    return lower(make_model(stem="conv2d", patch_size=4, conv_channels=3))


def test_conv_geometry_and_image_grids_round_trip(conv_graph, tmp_path):
    convs = [c for c in conv_graph.connections if c.conv is not None]
    assert [c.conv for c in convs][:2] == [{"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1]},
                                          {"kernel": [4, 4], "stride": [4, 4], "padding": [0, 0]}]
    assert conv_graph.input.image == [8, 8, 4] and conv_graph.population("stem.conv1").image == [8, 8, 1]
    _same(conv_graph, load_graph(save_graph(conv_graph, tmp_path / "ir")))
    fixed = quantize(conv_graph)
    _same(fixed, load_graph(save_graph(fixed, tmp_path / "fixed")))


def test_image_order_puts_channels_first():
    from neuromorphic.ir import Population
    patches = Population("x", "input", 4, 4, image=[4, 4, 2])  # 2x2 patches of a 4x4 one-channel image
    image = np.arange(16).reshape(4, 4)  # pixel values = their raster index
    grid = image.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4)  # [patch, pixel in patch]
    np.testing.assert_array_equal(grid.reshape(-1)[patches.image_order()], np.arange(16))
    pixels = Population("s", "lif", 4, 3, image=[2, 2, 1], bias=np.zeros((4, 3)))  # [H*W, C]
    hwc = np.arange(12).reshape(2, 2, 3)
    np.testing.assert_array_equal(hwc.reshape(-1)[pixels.image_order()], hwc.transpose(2, 0, 1).reshape(-1))


@pytest.mark.parametrize("damage,match", [
    (lambda g, c: setattr(g.input, "image", [8, 8, 3]), r"image \[8, 8, 3\] \(height, width, patch\) does not tile"),
    (lambda g, c: setattr(g.input, "image", None), r"needs kind 'full' between image grids"),
    (lambda g, c: c.conv.update(stride=[2, 1]), r"maps a \[8, 8\] image onto \[8, 8\]"),
    (lambda g, c: c.conv.pop("padding"), r"conv must be a table of kernel, stride and padding"),
    (lambda g, c: c.conv.update(kernel=[0, 3]), r"conv kernel must be a list of 2 integers"),
])
def test_a_bad_conv_geometry_is_refused_in_one_line(conv_graph, damage, match):
    conn = next(c for c in conv_graph.connections if c.conv is not None)
    damage(conv_graph, conn)
    with pytest.raises(IRError, match=match) as exc:
        conv_graph.validate()
    _one_line(exc)
