"""torch_trace: the float64 eval reference, computed without touching the caller's model."""

import copy

import numpy as np
import torch

from neuromorphic.compare import encode_steps, torch_trace
from spikeformer.model import Probe


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), key


def _expected(model: torch.nn.Module, x_steps: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """What torch_trace computed before it worked on a copy: the model in eval mode, float64."""
    reference = copy.deepcopy(model).double().eval()
    probe = Probe(keep_traces=True)
    with torch.no_grad():
        y, _ = reference.forward_steps(torch.from_numpy(x_steps).double(), probe=probe)
    return {k: v.numpy() != 0 for k, v in probe.spikes.items()}, y.numpy()


def _assert_trace(trace, expected) -> None:
    spikes, readout = expected
    assert trace.spikes.keys() == spikes.keys()
    for name in spikes:
        np.testing.assert_array_equal(trace.spikes[name], spikes[name], err_msg=name)
    np.testing.assert_array_equal(trace.readout, readout)
    assert trace.readout.dtype == np.float64


def test_train_mode_model_stays_in_train_mode(make_model, make_inputs):
    model = make_model()
    x_steps = encode_steps(model, make_inputs("digits", 4))
    expected = _expected(model, x_steps)  # from the eval-mode model
    model.train()
    before = _snapshot(model)
    trace = torch_trace(model, x_steps)
    assert all(m.training for m in model.modules())
    _assert_same_state(model, before)  # float32 kept, BatchNorm running statistics not updated
    _assert_trace(trace, expected)


def test_float64_model_stays_float64(make_model, make_inputs):
    model = make_model().double()
    x_steps = encode_steps(model, make_inputs("digits", 4))
    expected = _expected(model, x_steps)
    before = _snapshot(model)
    trace = torch_trace(model, x_steps)
    assert not model.training
    assert all(t.dtype == torch.float64 for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
    _assert_same_state(model, before)
    _assert_trace(trace, expected)
    _assert_trace(torch_trace(model, x_steps), expected)  # a second call sees the same model


def test_per_token_logits_of_a_trace_equal_the_language_models():
    """``Trace.logits`` with ``tokens`` restates ``Spikeformer.token_logits`` in numpy: the same windows."""
    from dataclasses import replace

    from spikeformer.config import Config
    from spikeformer.model import build_model

    cfg = Config(task="shakespeare", mode="causal", context=6, dim=16, heads=2, head_dim=8, depth=2,
                 steps_per_token=2, delays="aligned")
    torch.manual_seed(0)
    model = build_model(cfg, 6, 84, 84).eval()
    x = torch.nn.functional.one_hot(torch.randint(0, 84, (3, 6)), 84).float()
    trace = replace(torch_trace(model, encode_steps(model, x)), tokens=6, latency=model.latency)
    with torch.no_grad():
        logits, _ = model.double()(x.double())
    assert trace.logits.shape == (3, 6, 84)
    np.testing.assert_allclose(trace.logits, logits.numpy(), rtol=0, atol=1e-12)


def test_chip_activity_counts_each_event_once_per_nonzero_fan_out_weight():
    """One synaptic event per spike (or nonzero graded input) per nonzero weight it reaches,
    counted by hand over every step, sample, token and neuron."""
    from neuromorphic.compare import chip_activity
    from neuromorphic.ir import Connection, Graph, Population
    from neuromorphic.trace import Trace

    pops = [Population("input", "input", 2, 3, graded=True), Population("hidden", "lif", 2, 4, bias=np.zeros((2, 4))),
            Population("readout", "readout", 1, 2, bias=np.zeros((1, 2)))]
    w1 = np.array([[1.0, 0, 2], [0, 0, 1], [3, 0, 0], [1, 1, 1]])  # tokenwise: input column f reaches 3, 1, 3
    w2 = np.zeros((2, 8))
    w2[0, :5], w2[1, 0] = 1.0, -2.0  # full: hidden neuron j reaches 2, 1, 1, 1, 1, 0, 0, 0
    graph = Graph(pops, [Connection("w1", "input", "hidden", "tokenwise", w1),
                         Connection("w2", "hidden", "readout", "full", w2, delay=2)], [],
                  {"mode": "global", "steps": 5, "window": 5, "latency": 3, "classes": 2}).validate()
    rng = np.random.default_rng(0)
    inputs = np.maximum(rng.normal(size=(5, 3, 2, 3)), 0)  # [T, B, N, F], some exact zeros
    hidden = rng.random((5, 3, 2, 4)) < 0.3
    out = chip_activity(graph, Trace({"hidden": hidden}, np.zeros((5, 3, 2)), 5), inputs)
    w1_events = w2_events = 0
    for t in range(5):
        for b in range(3):
            for n in range(2):
                w1_events += sum([3, 1, 3][f] for f in range(3) if inputs[t, b, n, f] != 0)
                w2_events += sum([2, 1, 1, 1, 1, 0, 0, 0][n * 4 + f] for f in range(4) if hidden[t, b, n, f])
    assert 0 < w1_events and 0 < w2_events
    assert out["connections"] == {"w1": w1_events / 3, "w2": w2_events / 3}
    assert out["synaptic_events_per_sample"] == (w1_events + w2_events) / 3
    assert out["spikes_per_sample"] == {"hidden": hidden.sum() / 3} and out["attentions"] == {}
