"""NIR interchange (neuromorphic/nir_io.py): IR -> NIR -> Norse spike for spike, snnTorch and
Norse NIR graphs -> IR spike for spike, the written files, the conversions, one-line errors.

Every spike comparison is exact (==) on seeded random networks whose populations are checked
to be active (some spikes, not all), so a wrong decay, gain, bias or delay shows as a mismatch.
Marked ``backend``: under SPIKEFORMER_REQUIRE_BACKENDS=1 (CI) a skip here is a failure.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from neuromorphic.compare import encode_steps, torch_trace
from neuromorphic.ir import Connection, Graph, IRError, LoweringError, Population
from neuromorphic.lower import lower
from neuromorphic.simulate import run_graph
from spikeformer.config import Config
from spikeformer.model import Spikeformer

nir = pytest.importorskip("nir", reason="nir is needed for NIR interchange")
nir_io = pytest.importorskip("neuromorphic.nir_io")

pytestmark = pytest.mark.backend
torch.set_num_threads(1)

SAMPLES = 20


def active(spikes: np.ndarray) -> bool:
    """Some spikes and some silences: a test on this population can fail."""
    return 0.0 < float(spikes.mean()) < 1.0


def one_line_error(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message and message, message
    assert info.value.__cause__ is None and info.value.__suppress_context__ or info.value.__context__ is None
    return message


def feed_forward_model(stem: str, seed: int = 0, alpha: float = 0.0) -> tuple[Spikeformer, torch.Tensor]:
    """A depth-0 ("feed-forward") spikeformer with random weights and BatchNorm statistics
    chosen so every population is active; beta = 0.8 so 1 / (1 - beta) is not a power of 2."""
    torch.manual_seed(seed)
    if stem == "conv1d":
        cfg = Config(task="mnist1d", depth=0, delays="loihi", dim=16, stem="conv1d", conv_channels=4,
                     time_steps=6, beta=0.8, alpha=alpha)
        tokens, features = 40, 1
    elif stem == "conv2d":  # 8x8 digits as 2x2 patch tokens: a 3x3 conv, LIF per pixel, a 2x2 stride-2 conv
        cfg = Config(task="digits", depth=0, delays="loihi", dim=16, stem="conv2d", patch_size=2, conv_channels=4,
                     time_steps=6, beta=0.8, alpha=alpha)
        tokens, features = 16, 4
    else:
        cfg = Config(task="digits", depth=0, delays="loihi", dim=16, time_steps=6, beta=0.8, alpha=alpha)
        tokens, features = 16, 4
    model = Spikeformer(cfg, tokens, features, 10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.5, 1.0)
    x = torch.rand(SAMPLES, tokens, features, generator=torch.Generator().manual_seed(seed + 1))
    return model, x


# ---------------------------------------------------------------------------------------------
# (a) spikeformer -> IR -> NIR -> Norse, spike for spike


@pytest.mark.parametrize("stem, alpha", [("linear", 0.0), ("conv1d", 0.0), ("linear", 0.5), ("conv1d", 0.6),
                                         ("conv2d", 0.0), ("conv2d", 0.6)],
                         ids=["linear", "conv1d", "linear-cuba", "conv1d-cuba", "conv2d", "conv2d-cuba"])
def test_feed_forward_spikeformer_runs_spike_for_spike_in_norse(stem, alpha, tmp_path):
    model, x = feed_forward_model(stem, alpha=alpha)
    graph = lower(model)
    steps = encode_steps(model, x)
    reference = torch_trace(model, steps)
    ir = run_graph(graph, steps)
    path = nir_io.export_nir(graph, tmp_path / "model.nir")
    norse = nir_io.norse_trace(path, steps)  # Norse's own per-node importer + a Delay node
    lif_names = [p.name for p in graph.populations if p.kind == "lif"]
    assert sorted(norse.spikes) == sorted(lif_names)
    for name in lif_names:
        assert active(ir.spikes[name]), name
        np.testing.assert_array_equal(ir.spikes[name], reference.spikes[name], err_msg=name)
        np.testing.assert_array_equal(norse.spikes[name], ir.spikes[name], err_msg=name)
    np.testing.assert_allclose(norse.readout, ir.readout, rtol=0, atol=1e-12)
    np.testing.assert_allclose(norse.logits, reference.logits, rtol=0, atol=1e-9)
    validated, info = nir_io.run_norse(graph, steps)  # what 'spikeformer validate --backend norse' runs
    for name in lif_names:
        np.testing.assert_array_equal(validated.spikes[name], ir.spikes[name], err_msg=name)
    assert info["steps_per_second"] > 0 and info["dtype"] == "float64"


def written_conv_stem(stem: str, seed: int, path) -> tuple[Spikeformer, object, object, object]:
    """A feed-forward model with a conv ``stem`` exported to NIR and read back with nir.read:
    ``(model, graph, conv1, conv2)``, after checking that both convolutions are ``Conv2d`` nodes
    and that the file imports back to the same spikes and readout."""
    model, x = feed_forward_model(stem, seed=seed)
    graph = lower(model)
    steps = encode_steps(model, x)
    ir = run_graph(graph, steps)
    g = nir.read(nir_io.export_nir(graph, path))
    conv1, conv2 = g.nodes["stem.conv1->stem.conv1"], g.nodes["stem.conv2->final"]
    assert isinstance(conv1, nir.Conv2d) and isinstance(conv2, nir.Conv2d)
    back = nir_io.nir_to_graph(g)
    imported = run_graph(back, steps)
    for name in ("stem.conv1", "final"):
        assert active(ir.spikes[name]), name
        np.testing.assert_array_equal(imported.spikes[name], ir.spikes[name], err_msg=name)
    np.testing.assert_allclose(imported.readout, ir.readout, rtol=0, atol=1e-12)
    # the import keeps the geometry, so a re-export writes the same Conv2d nodes again
    convs = {c.name: c.conv for c in graph.connections if c.conv is not None}
    assert len(convs) == 2 and {c.name: c.conv for c in back.connections if c.conv is not None} == convs
    assert {p.name: p.image for p in back.populations if p.image} == {p.name: p.image for p in graph.populations
                                                                      if p.image}
    again = nir.read(nir_io.export_nir(back, path.with_name("again.nir")))
    for name, node in g.nodes.items():
        assert type(again.nodes[name]) is type(node), name
        if isinstance(node, nir.Conv2d):
            np.testing.assert_allclose(again.nodes[name].weight, node.weight, rtol=1e-12, err_msg=name)
    return model, g, conv1, conv2


def test_conv2d_stem_is_written_as_conv2d_nodes_and_imports_back(tmp_path):
    """The 2-d conv stem travels as NIR Conv2d nodes on [C, H, W] images (the input as the
    8x8 image, not patch tokens), reads back with nir.read, and imports to the same spikes."""
    model, g, conv1, conv2 = written_conv_stem("conv2d", 2, tmp_path / "model.nir")
    assert conv1.weight.shape == (4, 1, 3, 3) and conv2.weight.shape == (16, 4, 2, 2)
    np.testing.assert_array_equal(np.asarray(conv2.stride), [2, 2])
    assert list(g.nodes["input"].input_type["input"]) == [1, 8, 8]
    assert list(g.nodes["stem.conv1"].output_type["output"]) == [4, 8, 8]
    assert list(g.nodes["final"].output_type["output"]) == [16, 4, 4]
    assert not any(isinstance(n, nir.Affine) and n.weight.shape[1] in (64, 256) and "stem" in k
                   for k, n in g.nodes.items())
    # the kernel is the trained one, with the BatchNorm after it folded per output channel
    gain = model.stem.norm1.double().affine()[0]
    expected = (gain[:, None, None, None] * model.stem.conv1.weight).detach().double().numpy()
    np.testing.assert_allclose(conv1.weight / (1.0 / (1.0 - 0.8)), expected, rtol=1e-12)


def test_conv1d_stem_is_written_as_one_pixel_high_conv2d_nodes_and_imports_back(tmp_path):
    """The conv1d stem (MNIST-1D) travels as NIR Conv2d nodes over [C, 1, tokens] images (k x k
    kernels whose off-centre rows are zero), not as unrolled Affine matrices, and imports back to
    the same spikes."""
    model, g, conv1, conv2 = written_conv_stem("conv1d", 1, tmp_path / "model.nir")
    assert conv1.weight.shape == (4, 1, 5, 5) and conv2.weight.shape == (16, 4, 3, 3)
    np.testing.assert_array_equal(np.asarray(conv2.stride), [1, 2])
    np.testing.assert_array_equal(np.asarray(conv1.padding), [2, 2])
    for conv in (conv1, conv2):  # only the centre row meets the image
        centre = conv.weight.shape[2] // 2
        assert not np.delete(conv.weight, centre, axis=2).any() and conv.weight[:, :, centre].any()
    assert list(g.nodes["input"].input_type["input"]) == [1, 1, 40]
    assert list(g.nodes["stem.conv1"].output_type["output"]) == [4, 1, 40]
    assert list(g.nodes["final"].output_type["output"]) == [16, 1, 20]
    assert not any(isinstance(n, nir.Affine) and "stem" in k for k, n in g.nodes.items())
    gain = model.stem.norm1.double().affine()[0]
    expected = (gain[:, None, None] * model.stem.conv1.weight).detach().double().numpy()
    np.testing.assert_allclose(conv1.weight[:, :, 2] / (1.0 / (1.0 - 0.8)), expected, rtol=1e-12)


def test_a_weight_that_is_not_its_convolution_is_refused_in_one_line():
    model, _ = feed_forward_model("conv2d")
    graph = lower(model)
    conn = next(c for c in graph.connections if c.conv is not None)
    conn.weight[0, -1] += 0.5  # breaks weight sharing (or adds a synapse outside the window)
    with pytest.raises(LoweringError, match="not one") as info:
        nir_io.graph_to_nir(graph)
    one_line_error(info)


def test_norse_float32_default_dtype_agrees_too(tmp_path):
    """Norse's importer keeps float32 parameters; on this model every spike still agrees."""
    model, x = feed_forward_model("linear", seed=3)
    graph = lower(model)
    steps = encode_steps(model, x)
    ir = run_graph(graph, steps)
    module = nir_io.norse_module(nir_io.graph_to_nir(graph))  # no dtype: Norse's float32
    state, spikes = None, []
    with torch.no_grad():
        for t in range(steps.shape[0]):
            _, state = module(torch.from_numpy(steps[t]).float().reshape(SAMPLES, -1), state)
            spikes.append(state.cache["final"].numpy().reshape(ir.spikes["final"].shape[1:]) != 0)
    np.testing.assert_array_equal(np.array(spikes), ir.spikes["final"])


# ---------------------------------------------------------------------------------------------
# (b) snnTorch and Norse NIR graphs -> IR, spike for spike


def run_snntorch(net, x: torch.Tensor) -> list[np.ndarray]:
    """Spikes ``[T, B, n]`` of each Leaky/Synaptic layer of a Sequential, stepped by hand in float64."""
    import snntorch.utils

    net = net.double()
    snntorch.utils.reset(net)
    layers: list[list[np.ndarray]] = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            h, k = x[t].double(), 0
            for module in net:
                out = module(h)
                if isinstance(out, tuple):  # output=True layers return (spk, ...)
                    out = out[0]
                if module.__class__.__module__.startswith("snntorch"):
                    if len(layers) <= k:
                        layers.append([])
                    layers[k].append(out.numpy().copy())
                    k += 1
                h = out.double()
    return [np.array(spikes) for spikes in layers]


def run_imported(graph: Graph, x: np.ndarray, steps: int):
    """Run an imported graph on ``x [T, B, n]`` (padded by the largest shift) in NIR time."""
    pad = max(graph.meta["nir_shift"].values())
    x_steps = np.concatenate([x, np.zeros((pad, *x.shape[1:]))])[:, :, None, :]  # [T + pad, B, 1, n]
    return nir_io.to_source_time(run_graph(graph, x_steps), graph, steps)


@pytest.mark.parametrize("neuron", ["Leaky", "Synaptic"])
def test_snntorch_export_imports_spike_for_spike(neuron, tmp_path):
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    n_in, n1, n2, steps = 6, 12, 5, 25

    def layer(n, beta, threshold, **kw):
        # snnTorch's export needs per-neuron (vector) parameters; reset "zero" is what NIR's
        # v_reset means (snnTorch writes v_reset = 0 for its default subtractive reset too), and
        # reset_delay=False (what snnTorch's own import_from_nir builds) zeroes v in the spike
        # step; Synaptic's default delayed zero reset also drops the next step's input
        common = dict(beta=torch.full((n,), beta), threshold=torch.full((n,), threshold),
                      init_hidden=True, reset_mechanism="zero", reset_delay=False, **kw)
        if neuron == "Synaptic":
            return snn.Synaptic(alpha=torch.full((n,), 0.6), **common)
        return snn.Leaky(**common)

    net = torch.nn.Sequential(torch.nn.Linear(n_in, n1), layer(n1, 0.8, 1.0),
                              torch.nn.Linear(n1, n2), layer(n2, 0.7, 0.5, output=True))
    with torch.no_grad():
        net[2].bias.add_(0.2)  # a bias large enough to matter before the first input arrives
    nir.write(tmp_path / "snn.nir", export_to_nir(net, torch.randn(1, n_in), ignore_dims=[0]))
    x = torch.rand(steps, SAMPLES, n_in, generator=torch.Generator().manual_seed(1)) * 2.0
    hidden, output = run_snntorch(net, x)
    graph = nir_io.nir_to_graph(tmp_path / "snn.nir", dt=nir_io.SNNTORCH_DT, time_steps=steps)
    assert graph.population("1").beta == pytest.approx(0.8, abs=1e-6)
    if neuron == "Synaptic":
        assert graph.population("1").alpha == pytest.approx(0.6, abs=1e-6)
    assert graph.meta["nir_shift"] == {"input": 0, "1": 1, "3": 2, "output": 3}
    trace = run_imported(graph, x.double().numpy(), steps)
    assert active(hidden) and active(output)
    np.testing.assert_array_equal(trace.spikes["1"][:, :, 0], hidden)
    np.testing.assert_array_equal(trace.spikes["3"][:, :, 0], output)
    np.testing.assert_array_equal(trace.readout, output)  # Output fed by spikes: readout = spikes


def test_snntorch_conv_net_imports_as_image_grids_spike_for_spike(tmp_path):
    """A foreign conv net (snnTorch: Conv2d -> Leaky -> strided Conv2d -> Leaky -> Flatten ->
    Linear -> Leaky), whose nodes carry no spikeformer metadata: the [C, H, W] nodes become image
    grids (one token per pixel), the convolutions keep their geometry, the IR runs spike for spike
    with snnTorch, and a re-export writes both Conv2d nodes again."""
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    steps, channels, side = 12, 3, 6

    def leaky(shape, beta, threshold, **kw):  # per-neuron parameters, zero reset (as above)
        return snn.Leaky(beta=torch.full(shape, beta), threshold=torch.full(shape, threshold), init_hidden=True,
                         reset_mechanism="zero", reset_delay=False, **kw)

    net = torch.nn.Sequential(torch.nn.Conv2d(1, channels, 3, padding=1), leaky((channels, side, side), 0.8, 1.0),
                              torch.nn.Conv2d(channels, 4, 2, stride=2), leaky((4, 3, 3), 0.7, 0.5),
                              torch.nn.Flatten(), torch.nn.Linear(36, 5), leaky((5,), 0.7, 0.5, output=True))
    nir.write(tmp_path / "conv.nir", export_to_nir(net, torch.randn(1, 1, side, side), ignore_dims=[0]))
    unbiased = copy.deepcopy(net)
    with torch.no_grad():
        for layer in (unbiased[0], unbiased[2], unbiased[5]):
            layer.bias.zero_()
    unbiased = nir_io.nir_to_graph(export_to_nir(unbiased, torch.randn(1, 1, side, side), ignore_dims=[0]),
                                   dt=nir_io.SNNTORCH_DT, time_steps=steps)
    x = torch.rand(steps, SAMPLES, 1, side, side, generator=torch.Generator().manual_seed(1)) * 2.0
    layers = run_snntorch(net, x)
    graph = nir_io.nir_to_graph(tmp_path / "conv.nir", dt=nir_io.SNNTORCH_DT, time_steps=steps)
    assert graph.input.image == [side, side, 1] and (graph.input.tokens, graph.input.features) == (36, 1)
    assert graph.population("1").image == [side, side, 1] and graph.population("1").features == channels
    assert graph.population("3").image == [3, 3, 1] and graph.population("6").image is None
    convs = {c.name: c.conv for c in graph.connections if c.conv is not None}
    assert convs == {"0": {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1]},
                     "2": {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0]}}
    pad = max(graph.meta["nir_shift"].values())
    x_ir = nir_io.source_input(graph, np.concatenate([x.double().numpy(), np.zeros((pad, *x.shape[1:]))]))
    assert x_ir.shape == (steps + pad, SAMPLES, 36, 1)
    trace = nir_io.to_source_time(run_graph(graph, x_ir), graph, steps)
    for name, expected in zip(("1", "3", "6"), layers):
        pop = graph.population(name)
        spikes = trace.spikes[name].reshape(steps, SAMPLES, -1)[..., pop.image_order() if pop.image else slice(None)]
        assert active(expected), name
        np.testing.assert_array_equal(spikes, expected.reshape(steps, SAMPLES, -1), err_msg=name)
    # without biases (no clock) the re-export writes both convolutions as Conv2d nodes again
    convs = [node for node in nir_io.graph_to_nir(unbiased).nodes.values() if isinstance(node, nir.Conv2d)]
    assert [list(node.weight.shape) for node in convs] == [[channels, 1, 3, 3], [4, channels, 2, 2]]
    # with them, the biases start after the import's shift through the nir.clock population: it
    # re-exports as a LIF fed a zero-weight edge from the input; the image populations it feeds
    # stay flat (NIR cannot write an Affine into a [C, H, W] node), and the file runs the same spikes
    assert nir_io.CLOCK in {p.name for p in graph.populations}
    path = nir_io.export_nir(graph, tmp_path / "again.nir")
    again = nir.read(path)
    assert not any(isinstance(node, nir.Conv2d) for node in again.nodes.values())
    assert not np.any(again.nodes[f"input->{nir_io.CLOCK}.bias"].weight)
    first = run_graph(graph, x_ir)
    back = nir_io.nir_to_graph(again)
    assert set(back.meta["nir_shift"].values()) == {0}  # every edge has its Delay now: no new clock
    reimported, norse = run_graph(back, x_ir), nir_io.norse_trace(path, x_ir)
    for name in ("1", "3", "6", nir_io.CLOCK):
        np.testing.assert_array_equal(reimported.spikes[name], first.spikes[name], err_msg=name)
        np.testing.assert_array_equal(norse.spikes[name], first.spikes[name], err_msg=name)
    # nirtorch's own depth-first order would run population 1 before the Affine from the input
    # and return that Affine as the output (nir_norse._topological); in order, the readout agrees
    np.testing.assert_allclose(norse.readout, first.readout, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(reimported.readout, first.readout)


def test_source_input_refuses_a_wrong_shape_in_one_line():
    graph = small_graph(0.6, 0.0, 0.1)
    with pytest.raises(ValueError) as info:
        nir_io.source_input(graph, np.zeros((4, 2, 5)))
    assert "takes 6 values" in one_line_error(info)


def test_norse_export_imports_spike_for_spike():
    """Norse's to_nir writes tau = dt / tau_mem_inv (norse/norse#411): read it with dt = dt_norse**2."""
    import norse.torch as norse
    from norse.torch.module.lif_box import LIFBoxCell, LIFBoxParameters

    torch.manual_seed(0)
    n_in, n1, n2, steps, dt = 6, 12, 5, 25, 1e-3

    def cell(n, tau_mem_inv, threshold):
        def full(value):
            return torch.full((n,), value, dtype=torch.float64)

        return LIFBoxCell(LIFBoxParameters(tau_mem_inv=full(tau_mem_inv), v_th=full(threshold),
                                           v_leak=full(0.0), v_reset=full(0.0)), dt=dt)

    net = norse.SequentialState(torch.nn.Linear(n_in, n1), cell(n1, 200.0, 0.3),
                                torch.nn.Linear(n1, n2), cell(n2, 100.0, 0.1)).double()
    graph_nir = norse.to_nir(net, torch.randn(n_in, dtype=torch.float64), dt=dt)
    x = torch.rand(steps, SAMPLES, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2.0
    hidden, output, states = [], [], [None, None]
    with torch.no_grad():
        for t in range(steps):
            h, states[0] = net[1](net[0](x[t]), states[0])
            y, states[1] = net[3](net[2](h), states[1])
            hidden.append(h.numpy())
            output.append(y.numpy())
    hidden, output = np.array(hidden), np.array(output)
    graph = nir_io.nir_to_graph(graph_nir, dt=dt ** 2, time_steps=steps)
    assert graph.population("1").beta == pytest.approx(1 - 200.0 * dt)
    trace = run_imported(graph, x.numpy(), steps)
    assert active(hidden) and active(output)
    np.testing.assert_array_equal(trace.spikes["1"][:, :, 0], hidden)
    np.testing.assert_array_equal(trace.spikes["3"][:, :, 0], output)


# ---------------------------------------------------------------------------------------------
# (c) the written files


def test_written_file_loads_with_nir_read_and_round_trips(tmp_path):
    model, x = feed_forward_model("conv1d", seed=5)
    graph = lower(model)
    path = nir_io.export_nir(graph, tmp_path / "model.nir", dt=1e-4)
    loaded = nir.read(path)
    kinds = {name: type(node).__name__ for name, node in loaded.nodes.items()}
    assert kinds == {"input": "Input", "input.delay": "Delay", "stem.conv1->stem.conv1": "Conv2d",
                     "stem.conv1": "LIF", "stem.conv1.delay": "Delay", "stem.conv2->final": "Conv2d",
                     "final": "LIF", "final.delay": "Delay", "final.delay.flat": "Flatten",
                     "readout->readout": "Affine", "readout": "Output"}
    assert float(loaded.metadata["dt"]) == 1e-4
    np.testing.assert_allclose(loaded.nodes["final"].tau, 1e-4 / (1 - 0.8))
    np.testing.assert_array_equal(loaded.nodes["final"].r, 1.0)
    np.testing.assert_allclose(loaded.nodes["final.delay"].delay, 1e-4)
    back = nir_io.nir_to_graph(path)  # dt from the file's metadata
    assert [p.name for p in back.populations] == [p.name for p in graph.populations]
    assert set(back.meta["nir_shift"].values()) == {0}
    assert back.meta["latency"] == graph.meta["latency"] and back.meta["window"] == graph.meta["window"]
    steps = encode_steps(model, x)
    a, b = run_graph(graph, steps), run_graph(back, steps)
    for name in a.spikes:
        np.testing.assert_array_equal(a.spikes[name], b.spikes[name], err_msg=name)
    np.testing.assert_allclose(a.readout, b.readout, rtol=0, atol=1e-12)


def small_graph(beta: float, alpha: float, bias: float) -> Graph:
    """input [2, 3] -> tokenwise -> lif [2, 4] -> full -> readout [1, 2], random weights."""
    rng = np.random.default_rng(0)
    pops = [Population("input", "input", 2, 3, graded=True),
            Population("hidden", "lif", 2, 4, beta=beta, alpha=alpha, threshold=0.7,
                       bias=np.full((2, 4), bias)),
            Population("readout", "readout", 1, 2, bias=np.array([[0.1, -0.2]]))]
    conns = [Connection("w1", "input", "hidden", "tokenwise", rng.normal(0.5, 0.6, (4, 3))),
             Connection("w2", "hidden", "readout", "full", rng.normal(0, 1, (2, 8)), delay=2)]
    meta = {"mode": "global", "steps": 30, "window": 30, "latency": 3, "classes": 2}
    return Graph(pops, conns, [], meta).validate()


@pytest.mark.parametrize("beta, alpha, node", [(0.6, 0.0, "LIF"), (1.0, 0.0, "IF"), (0.7, 0.5, "CubaLIF")])
def test_each_neuron_kind_round_trips_and_runs_in_norse(beta, alpha, node, tmp_path):
    graph = small_graph(beta, alpha, 0.15)  # CubaLIF: the bias in v_leak (norse_module mends Norse's import)
    x = np.random.default_rng(1).uniform(0, 0.8, (30, SAMPLES, 2, 3))
    ir = run_graph(graph, x)
    assert active(ir.spikes["hidden"])
    nir_graph = nir_io.graph_to_nir(graph)
    assert type(nir_graph.nodes["hidden"]).__name__ == node
    assert nir_graph.nodes["w2"].weight.shape == (2, 8)
    assert nir_graph.nodes["w1"].weight.shape == (8, 6)  # tokenwise [4, 3] -> kron(I_2, W)
    assert isinstance(nir_graph.nodes["hidden.delay2"], nir.Delay)
    back = nir_io.nir_to_graph(nir_graph)
    assert back.connections[0].kind == "tokenwise" and back.connections[1].delay == 2
    np.testing.assert_array_equal(run_graph(back, x).spikes["hidden"], ir.spikes["hidden"])
    norse = nir_io.norse_trace(nir_graph, x)
    np.testing.assert_array_equal(norse.spikes["hidden"], ir.spikes["hidden"])
    np.testing.assert_allclose(norse.readout, ir.readout, rtol=0, atol=1e-12)


def test_cuba_lif_bias_round_trips_through_v_leak():
    graph = small_graph(0.7, 0.5, 0.2)
    node = nir_io.graph_to_nir(graph).nodes["hidden"]
    np.testing.assert_allclose(node.v_leak, 0.2 / (1 - 0.7))
    np.testing.assert_allclose(node.w_in, 1 / (1 - 0.5))
    x = np.random.default_rng(2).uniform(0, 0.8, (30, 4, 2, 3))
    back = nir_io.nir_to_graph(nir_io.graph_to_nir(graph))
    np.testing.assert_allclose(back.population("hidden").bias, 0.2)
    np.testing.assert_array_equal(run_graph(back, x).spikes["hidden"], run_graph(graph, x).spikes["hidden"])


# ---------------------------------------------------------------------------------------------
# conversions, checked on a hand-written NIR graph


def test_import_conversions_by_hand():
    """LIF(tau, r, v_leak) at dt: beta = 1 - dt/tau, weight * r dt/tau, bias (dt/tau)(r b + v_leak);
    same-step edges shift the LIF one step and the Affine bias arrives through the clock."""
    dt, tau, r = 1e-3, 4e-3, 2.0
    w, b, v_leak = np.array([[1.0, -2.0]]), np.array([0.5]), np.array([0.4])
    g = nir.NIRGraph(
        nodes={"in": nir.Input(input_type={"input": np.array([2])}),
               "aff": nir.Affine(weight=w, bias=b),
               "lif": nir.LIF(tau=np.array([tau]), r=np.array([r]), v_leak=v_leak, v_threshold=np.array([1.0])),
               "out": nir.Output(output_type={"output": np.array([1])})},
        edges=[("in", "aff"), ("aff", "lif"), ("lif", "out")])
    graph = nir_io.nir_to_graph(g, dt=dt)
    lif = graph.population("lif")
    assert lif.beta == pytest.approx(0.75) and lif.threshold == 1.0
    assert graph.meta["nir_shift"] == {"in": 0, "lif": 1, "out": 2}
    conns = {c.name: c for c in graph.connections}
    np.testing.assert_allclose(conns["aff"].weight, w * r * dt / tau)
    assert conns["aff"].delay == 1
    clock = conns[f"{nir_io.CLOCK}->lif@1"]
    np.testing.assert_allclose(clock.weight, (r * b + v_leak)[:, None] * dt / tau)
    np.testing.assert_array_equal(lif.bias, 0.0)  # the bias starts at IR step 1, with the input
    assert conns["lif->out"].delay == 1 and np.array_equal(conns["lif->out"].weight, np.eye(1))
    # the same graph with a Delay before the Affine needs no shift: bias straight into the LIF
    g.nodes["d"] = nir.Delay(delay=np.array([dt, dt]))
    g.edges = [("in", "d"), ("d", "aff"), ("aff", "lif"), ("lif", "out")]
    graph = nir_io.nir_to_graph(g, dt=dt)
    assert graph.meta["nir_shift"]["lif"] == 0
    np.testing.assert_allclose(graph.population("lif").bias, (r * b + v_leak)[:, None] * dt / tau)


def test_import_matches_a_direct_euler_run_of_the_nir_equations():
    """Input -> Affine -> LIF -> Affine -> Output, no Delay: the imported IR (shifted, biases via
    the clock) equals forward Euler of the NIR ODEs at dt, written out here."""
    dt, tau, r = 1e-3, 5e-3, 5.0
    w1, b1 = np.array([[1.0, 0.5, -0.3], [0.2, 0.9, 0.4]]), np.array([0.1, 0.05])
    w2, b2 = np.array([[1.0, -1.0]]), np.array([0.7])
    g = nir.NIRGraph(
        nodes={"in": nir.Input(input_type={"input": np.array([3])}), "a": nir.Affine(weight=w1, bias=b1),
               "l": nir.LIF(tau=np.full(2, tau), r=np.full(2, r), v_leak=np.zeros(2), v_threshold=np.ones(2)),
               "b": nir.Affine(weight=w2, bias=b2), "out": nir.Output(output_type={"output": np.array([1])})},
        edges=[("in", "a"), ("a", "l"), ("l", "b"), ("b", "out")])
    steps = 12
    x = np.random.default_rng(0).uniform(0, 1, (steps, 4, 3))
    v, spikes, outputs = np.zeros((4, 2)), [], []
    for t in range(steps):  # tau dv/dt = -v + r I, Euler at dt, reset to 0 in the spiking step
        v = v + dt / tau * (-v + r * (x[t] @ w1.T + b1))
        s = v > 1.0
        v = np.where(s, 0.0, v)
        spikes.append(s)
        outputs.append(s @ w2.T + b2)
    graph = nir_io.nir_to_graph(g, dt=dt, time_steps=steps)
    trace = run_imported(graph, x, steps)
    assert active(np.array(spikes))
    np.testing.assert_array_equal(trace.spikes["l"][:, :, 0], np.array(spikes))
    np.testing.assert_allclose(trace.readout, np.array(outputs), rtol=0, atol=1e-12)


def test_export_conversions_by_hand():
    graph = small_graph(0.6, 0.0, 0.15)
    g = nir_io.graph_to_nir(graph, dt=1e-4)
    lif, w1, w2 = g.nodes["hidden"], g.nodes["w1"], g.nodes["w2"]
    np.testing.assert_allclose(lif.tau, 1e-4 / 0.4)  # tau = dt / (1 - beta)
    np.testing.assert_array_equal(lif.r, 1.0)
    np.testing.assert_array_equal(lif.v_leak, 0.0)
    np.testing.assert_allclose(lif.v_threshold, 0.7)
    np.testing.assert_allclose(w1.weight, np.kron(np.eye(2), graph.connections[0].weight) / 0.4)
    np.testing.assert_allclose(w1.bias, 0.15 / 0.4)  # bias / (1 - beta), delivered every step
    np.testing.assert_allclose(w2.bias, [0.1, -0.2])  # readout: no gain
    np.testing.assert_allclose(g.nodes["hidden.delay2"].delay, 2e-4)
    assert ("input", "input.delay") in g.edges and ("input.delay", "w1") in g.edges


# ---------------------------------------------------------------------------------------------
# (d), (e): one-line errors


def test_attention_graph_raises_one_line_naming_the_layer():
    cfg = Config(task="digits", depth=1, delays="loihi", dim=8, heads=2, head_dim=4, time_steps=2)
    graph = lower(Spikeformer(cfg, 16, 4, 10).eval())
    with pytest.raises(LoweringError) as info:
        nir_io.graph_to_nir(graph)
    message = one_line_error(info)
    assert "block0.attn" in message and "NIR" in message


def test_fixed_point_graph_raises_one_line():
    graph = small_graph(0.6, 0.0, 0.1)
    graph.precision = "fixed"
    with pytest.raises((LoweringError, IRError)) as info:
        nir_io.graph_to_nir(graph)
    one_line_error(info)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing", "not_nir_hdf5"])
def test_malformed_nir_file_raises_one_line(damage, tmp_path):
    good = nir_io.export_nir(small_graph(0.6, 0.0, 0.1), tmp_path / "good.nir")
    bad = tmp_path / "bad.nir"
    data = good.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"\x89HDF\r\n" + bytes(range(256)) * 8)
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "not_nir_hdf5":
        import h5py

        with h5py.File(bad, "w") as f:
            f.create_dataset("version", data="1.0")
            f.create_group("node").create_dataset("type", data="Nonsense")
    with pytest.raises(IRError) as info:
        nir_io.nir_to_graph(bad)
    assert str(bad) in one_line_error(info)


def test_unsupported_nodes_and_missing_dt_raise_one_line():
    def graph(neuron):
        return nir.NIRGraph(
            nodes={"in": nir.Input(input_type={"input": np.array([2])}),
                   "aff": nir.Affine(weight=np.ones((2, 2)), bias=np.zeros(2)), "n": neuron,
                   "out": nir.Output(output_type={"output": np.array([2])})},
            edges=[("in", "aff"), ("aff", "n"), ("n", "out")])

    li = nir.LI(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2))
    lif = nir.LIF(tau=np.full(2, 1e-3), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2))
    reset = nir.LIF(tau=np.full(2, 1e-3), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2),
                    v_reset=np.full(2, -0.5))
    cases = [(graph(li), 1e-3, "'n' (LI)"), (graph(lif), None, "dt"), (graph(lif), 1e-2, "shorter than dt"),
             (graph(reset), 1e-3, "v_reset")]
    for g, dt, words in cases:
        with pytest.raises(LoweringError) as info:
            nir_io.nir_to_graph(g, dt=dt)
        assert words in one_line_error(info)
    cyclic = graph(lif)
    cyclic.nodes["rec"] = nir.Linear(weight=np.eye(2))
    cyclic.edges += [("n", "rec"), ("rec", "n")]
    with pytest.raises(LoweringError) as info:
        nir_io.nir_to_graph(cyclic, dt=1e-4)
    assert "cycle" in one_line_error(info)


@pytest.mark.parametrize("field, value, error, match", [
    ("stride", (0, 0), IRError, r"strides and kernel sizes must be >= 1"),
    ("padding", (1.5, 1), LoweringError, r"padding .* the importer takes whole numbers"),
    ("dilation", (2, 2), LoweringError, r"dilation \[2, 2\] .* plain convolutions"),
    ("padding", (-5, -5), IRError, r"padding >= 0"),
])
def test_a_conv2d_node_the_importer_cannot_hold_raises_one_line(field, value, error, match):
    model, _ = feed_forward_model("conv2d")
    g = nir_io.graph_to_nir(lower(model))
    setattr(g.nodes["stem.conv1->stem.conv1"], field, value)
    with pytest.raises(error, match=match) as info:
        nir_io.nir_to_graph(g)
    one_line_error(info)
