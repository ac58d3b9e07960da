"""Model-side noise on the float and fixed-point references (neuromorphic/chip_noise.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_runner import assert_one_line_error, run_cli
from neuromorphic.chip_noise import run_noisy
from neuromorphic.compare import encode_steps
from neuromorphic.fixed_ref import run_fixed
from neuromorphic.lower import lower
from neuromorphic.quantize import encode_fixed, quantize
from neuromorphic.simulate import run_graph
from spikeformer.fixed_point import MANTISSA_MAX, MANTISSA_MIN
from spikeformer.robustness import MODEL_NOISE


@pytest.fixture(scope="module")
def graphs():
    from conftest import active_model, sample_inputs

    model = active_model(3)
    x_steps = encode_steps(model, sample_inputs("digits", 12, 5), torch.Generator().manual_seed(0))
    graph = lower(model)
    fixed = quantize(graph, calibration=x_steps)
    return {"float": (graph, x_steps, run_graph(graph, x_steps)),
            "fixed": (fixed, encode_fixed(fixed, x_steps)[0], None)}


def _clean(graphs, ref):
    graph, steps, trace = graphs[ref]
    return trace if trace is not None else run_fixed(graph, steps)


def _lifs(graph):
    return [p.name for p in graph.populations if p.kind == "lif"]


@pytest.mark.parametrize("ref", ["float", "fixed"])
@pytest.mark.parametrize("name", list(MODEL_NOISE))
def test_zero_strength_is_the_clean_run_bit_for_bit(graphs, ref, name):
    graph, steps, _ = graphs[ref]
    clean = _clean(graphs, ref)
    noisy = run_noisy(graph, steps, name, 0.0, seed=7, fixed=ref == "fixed")
    assert np.array_equal(noisy.readout, clean.readout)
    for pop in clean.spikes:
        assert np.array_equal(noisy.spikes[pop], clean.spikes[pop]), pop


@pytest.mark.parametrize("ref", ["float", "fixed"])
@pytest.mark.parametrize("name", list(MODEL_NOISE))
def test_noise_changes_the_run_and_repeats_for_a_seed(graphs, ref, name):
    graph, steps, _ = graphs[ref]
    clean = _clean(graphs, ref)
    level = MODEL_NOISE[name][-1]
    a = run_noisy(graph, steps, name, level, seed=1, fixed=ref == "fixed")
    b = run_noisy(graph, steps, name, level, seed=1, fixed=ref == "fixed")
    c = run_noisy(graph, steps, name, level, seed=2, fixed=ref == "fixed")
    assert np.array_equal(a.readout, b.readout)
    assert not np.array_equal(a.readout, clean.readout)
    assert not np.array_equal(a.readout, c.readout)


@pytest.mark.parametrize("ref", ["float", "fixed"])
def test_spike_deletion_at_one_silences_every_lif(graphs, ref):
    graph, steps, _ = graphs[ref]
    trace = run_noisy(graph, steps, "spike_deletion", 1.0, seed=0, fixed=ref == "fixed")
    assert all(not trace.spikes[name].any() for name in _lifs(graph))


@pytest.mark.parametrize("ref", ["float", "fixed"])
def test_timing_jitter_at_one_sends_every_spike_a_step_late(graphs, ref):
    graph, steps, _ = graphs[ref]
    clean = _clean(graphs, ref)
    trace = run_noisy(graph, steps, "timing_jitter", 1.0, seed=0, fixed=ref == "fixed")
    first = next(c.target for c in graph.connections if c.source == graph.input.name)  # fed by the input alone
    assert clean.spikes[first].any()
    assert not trace.spikes[first][0].any()
    assert np.array_equal(trace.spikes[first][1:], clean.spikes[first][:-1])


def test_fixed_weight_noise_stays_on_the_mantissa_grid(graphs):
    from neuromorphic.chip_noise import noisy_graph

    fixed = graphs["fixed"][0]
    noisy = noisy_graph(fixed, 0.5, np.random.default_rng(0), fixed=True)
    for before, after in zip(fixed.connections, noisy.connections):
        w, v = np.asarray(before.weight), np.asarray(after.weight)
        assert v.dtype == np.int64 and (v % 2 == 0).all()
        assert v.min() >= MANTISSA_MIN and v.max() <= MANTISSA_MAX
        if before.kind != "tokenwise":
            assert not v[w == 0].any()  # absent synapses stay absent
    assert any(not np.array_equal(b.weight, a.weight) for b, a in zip(fixed.connections, noisy.connections))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from spikeformer.cli import main

    tmp = tmp_path_factory.mktemp("chipnoise")
    config = tmp / "cfg.toml"
    config.write_text('task = "digits"\npatch_size = 4\ndelays = "loihi"\n')
    assert main(["train", "--config", str(config), "--out", str(tmp / "run"), "--set", "dim=16", "--set", "heads=2",
                 "--set", "head_dim=8", "--set", "depth=1", "--set", "epochs=1", "--set", "time_steps=2",
                 "--quiet"]) == 0
    return tmp / "run"


def test_chip_noise_command_writes_each_reference_beside_torch(tiny_run):
    result = run_cli("chip-noise", str(tiny_run), "--samples", "20", "--severities", "1,5", "--quiet",
                     "--noises", "spike_deletion,weight_noise")
    assert result.returncode == 0, result.stderr
    record = json.loads((tiny_run / "chip-noise.json").read_text())
    assert record["samples"] == 20 and record["severities"] == [1, 5]
    assert set(record["clean"]) == {"torch", "float", "fixed"}
    assert record["clean"]["float"] == record["clean"]["torch"]  # the float reference is the torch model
    assert list(record["noise"]) == ["spike_deletion", "weight_noise"]
    for per in record["noise"].values():
        assert set(per) == {"torch", "float", "fixed"} and all(set(v) == {"1", "5"} for v in per.values())
    assert "| `spike_deletion` |" in result.stdout


def test_chip_noise_draws_average_devices_and_the_first_is_the_single_draw(tiny_run):
    from neuromorphic.chip_noise import chip_noise

    noises, severities = ["weight_noise", "spike_deletion"], "5"
    one = chip_noise(tiny_run, samples=30, names=noises, severities=severities, progress=False)
    three = chip_noise(tiny_run, samples=30, names=noises, severities=severities, progress=False, draws=3)
    assert one["draws"] == 1 and one["draw_accuracies"] == {} and three["draws"] == 3
    for who in ("torch", "float", "fixed"):
        accs = three["draw_accuracies"][who]["weight_noise"]["5"]
        assert len(accs) == 3 and accs[0] == one["noise"]["weight_noise"][who]["5"]
        assert three["noise"]["weight_noise"][who]["5"] == pytest.approx(sum(accs) / 3)
        assert len(set(accs)) > 1  # fresh devices, not one device three times
        # spike deletion is drawn afresh at every step: scored once, as in a single-draw run
        assert "spike_deletion" not in three["draw_accuracies"][who]
        assert three["noise"]["spike_deletion"][who] == one["noise"]["spike_deletion"][who]


def test_chip_noise_errors_are_one_line(tiny_run):
    assert_one_line_error(run_cli("chip-noise", str(tiny_run), "--noises", "blur", "--quiet"), "input corruption")
    assert_one_line_error(run_cli("chip-noise", str(tiny_run), "--references", "lava", "--quiet"),
                          "unknown reference 'lava'")
    assert_one_line_error(run_cli("chip-noise", str(tiny_run), "--samples", "0", "--quiet"), "--samples")
    assert_one_line_error(run_cli("chip-noise", str(tiny_run), "--severities", "6", "--quiet"), "out of range")
    assert_one_line_error(run_cli("chip-noise", str(tiny_run), "--draws", "0", "--quiet"), "--draws")
