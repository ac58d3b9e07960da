"""``spikeformer export`` and ``spikeformer validate`` end to end on a tiny trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_runner import assert_one_line_error as _one_line_error
from cli_runner import run_cli as _cli
from neuromorphic.ir import load_graph
from spikeformer.cli import main
SPEC_KEYS = {"backend", "samples", "spike_agreement", "class_agreement", "accuracy_backend", "accuracy_torch",
             "latency_steps", "steps_per_second", "saturation_events"}


def _train_tiny(folder: Path, config: str) -> Path:
    (folder / "cfg.toml").write_text('task = "digits"\nbatch_size = 128\nnum_threads = 1\n' + config)
    assert main(["train", "--config", str(folder / "cfg.toml"), "--out", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def loihi_run(tmp_path_factory):
    return _train_tiny(tmp_path_factory.mktemp("backends"),
                       'epochs = 2\ndelays = "loihi"\ndim = 16\nheads = 2\nhead_dim = 8\ndepth = 1\ntime_steps = 2\n')


def test_export_ir_float_and_fixed(loihi_run, tmp_path):
    assert main(["export", str(loihi_run), "--to", "ir", "--out", str(tmp_path / "f")]) == 0
    assert main(["export", str(loihi_run), "--to", "ir", "--fixed-point", "--out", str(tmp_path / "q")]) == 0
    assert load_graph(tmp_path / "f").precision == "float"
    assert load_graph(tmp_path / "q").precision == "fixed"


@pytest.mark.backend
def test_export_lava_builds_processes(loihi_run, tmp_path, capsys):
    assert main(["export", str(loihi_run), "--to", "lava", "--fixed-point", "--out", str(tmp_path / "l")]) == 0
    assert "Lava processes" in capsys.readouterr().out


@pytest.mark.backend
@pytest.mark.parametrize("backend", ["lava-float", "lava-fixed", "brian2"])
def test_validate_writes_spec_keys(loihi_run, backend):
    assert main(["validate", str(loihi_run), "--backend", backend, "--samples", "4", "--quiet"]) == 0
    record = json.loads((loihi_run / f"validate-{backend}.json").read_text())
    assert SPEC_KEYS <= set(record)
    assert record["samples"] == 4 and record["spike_agreement"] == 1.0 and record["class_agreement"] == 1.0
    if backend == "lava-fixed":
        assert record["fixed_ref_seconds"] > 0 and "accuracy_fixed_ref" in record
    chip = record["chip"]  # what a chip executes, from this backend's own spikes
    assert chip["synaptic_events_per_sample"] == sum(chip["connections"].values()) + sum(chip["attentions"].values())
    assert list(chip["attentions"]) == ["block0.attn"] and chip["connections"]["stem.embed->block0.in"] > 0
    assert chip["spikes_per_sample"]["block0.in"] > 0


@pytest.mark.backend
def test_validate_brian2_bio_reports_drift(loihi_run):
    assert main(["validate", str(loihi_run), "--backend", "brian2-bio", "--samples", "4", "--quiet"]) == 0
    record = json.loads((loihi_run / "validate-brian2-bio.json").read_text())
    assert SPEC_KEYS <= set(record) and record["backend"] == "brian2-bio"
    assert record["build_seconds"] > 0 and record["run_seconds"] > 0
    assert -1.0 <= record["spike_train_correlation"] <= 1.0 and "spike_count_correlation" in record


@pytest.fixture(scope="module")
def language_run(tmp_path_factory):
    """A tiny Shakespeare language model with aligned Loihi timing (causal, exportable)."""
    folder = tmp_path_factory.mktemp("lm")
    (folder / "cfg.toml").write_text('task = "shakespeare"\nmode = "causal"\ncontext = 80\ntrain_size = 64\n'
                                     'dim = 16\nheads = 2\nhead_dim = 8\ndepth = 2\nsteps_per_token = 1\n'
                                     'delays = "aligned"\nepochs = 1\nbatch_size = 32\nnum_threads = 1\n')
    assert main(["train", "--config", str(folder / "cfg.toml"), "--out", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


@pytest.mark.backend
@pytest.mark.parametrize("backend", ["lava-float", "lava-fixed", "brian2"])
def test_validate_a_language_model_on_windows_of_64_characters(language_run, backend):
    """The state carries over the 64 characters of each window; every character's prediction is
    compared (aligned skips: connections of delay up to 9 on Lava's synapses)."""
    assert main(["validate", str(language_run), "--backend", backend, "--samples", "2", "--quiet"]) == 0
    record = json.loads((language_run / f"validate-{backend}.json").read_text())
    assert SPEC_KEYS <= set(record) and record["characters_per_window"] == 64
    assert record["samples"] == 2 and record["spike_agreement"] == 1.0 and record["class_agreement"] == 1.0
    assert record["steps_per_sample"] == 64 + record["latency_steps"] == 64 + 10


def test_validate_rejects_a_run_without_loihi_delays(tmp_path):
    run = _train_tiny(tmp_path, 'epochs = 1\ndim = 16\nheads = 2\nhead_dim = 8\ndepth = 1\n')
    # as a user runs it (python -m spikeformer, the plugin commands found by entry point); the rest in-process
    _one_line_error(_cli("validate", str(run), "--backend", "lava-float", subprocess_run=True), "delays")
    _one_line_error(_cli("export", str(run), "--to", "ir", "--out", str(tmp_path / "x")), "delays")


def test_validate_bad_samples_and_missing_run(loihi_run, tmp_path):
    _one_line_error(_cli("validate", str(loihi_run), "--backend", "lava-float", "--samples", "0"), "--samples")
    _one_line_error(_cli("validate", str(tmp_path / "none"), "--backend", "lava-float"))
    _one_line_error(_cli("validate", str(loihi_run), "--backend", "lava-float", "--codegen", "cython"), "Brian2")


def test_validate_brian2_reports_its_codegen_target(loihi_run):
    assert main(["validate", str(loihi_run), "--backend", "brian2", "--samples", "2", "--codegen", "numpy",
                 "--quiet"]) == 0
    record = json.loads((loihi_run / "validate-brian2.json").read_text())
    assert record["codegen"] == "numpy" and record["build_seconds"] > 0 and record["run_seconds"] > 0


@pytest.fixture(scope="module")
def feedforward_run(tmp_path_factory):
    return _train_tiny(tmp_path_factory.mktemp("feedforward"), 'epochs = 2\ndelays = "loihi"\ndim = 32\ndepth = 0\ntime_steps = 3\n')


@pytest.mark.backend
def test_export_nir_and_validate_norse(feedforward_run, tmp_path):
    import nir

    assert main(["export", str(feedforward_run), "--to", "nir", "--out", str(tmp_path / "model.nir")]) == 0
    assert len(nir.read(str(tmp_path / "model.nir")).nodes) > 3
    assert main(["validate", str(feedforward_run), "--backend", "norse", "--samples", "20", "--quiet"]) == 0
    record = json.loads((feedforward_run / "validate-norse.json").read_text())
    assert SPEC_KEYS <= set(record) and record["samples"] == 20
    assert record["spike_agreement"] == 1.0 and record["class_agreement"] == 1.0


@pytest.mark.backend
def test_nir_refuses_attention_in_one_line(loihi_run, tmp_path):
    _one_line_error(_cli("export", str(loihi_run), "--to", "nir", "--out", str(tmp_path / "m.nir")), "block0.attn")
    _one_line_error(_cli("validate", str(loihi_run), "--backend", "norse", "--samples", "2"), "block0.attn")


LEARN_KEYS = {"backend", "rule", "samples", "spike_agreement", "weight_max_abs_diff", "weight_max_rel_diff",
              "accuracy_before", "accuracy_after_backend", "accuracy_after_torch", "steps_per_second"}


@pytest.mark.backend
# each backend once, each rule at least once (tests/neuromorphic/test_onchip*.py cover every pair on
# small networks; a Lava network build per case is what makes these slow)
@pytest.mark.parametrize("backend, rule", [("lava-float", "three_factor"), ("brian2", "stdp"),
                                           ("lava-fixed", "three_factor")])
def test_validate_learn_writes_the_issue_keys(loihi_run, rule, backend):
    """``validate --learn``: the run's weights learn online on the backend beside the float
    reference (lava-fixed: the integer one, fixed_ref); spikes agree and every plastic weight
    follows after every sample (lava-fixed: equal integers)."""
    assert main(["validate", str(loihi_run), "--backend", backend, "--learn", "--rule", rule, "--samples", "3",
                 "--learn-rate", "0.05", "--quiet"]) == 0
    record = json.loads((loihi_run / f"validate-learn-{backend}.json").read_text())
    assert LEARN_KEYS <= set(record) and record["rule"] == rule and record["samples"] == 3
    assert record["spike_agreement"] == 1.0 and record["weight_max_rel_diff"] <= 1e-9
    if backend == "lava-fixed":
        assert record["reference"] == "fixed_ref" and record["weight_max_abs_diff"] == 0
        assert record["weights_changed"] > 0 and "accuracy_after_fixed_ref" in record
        assert all(r["modulator_gain"] >= 1 and "u0 * t" in r["dt"] for r in record["fixed_rules"].values())
    assert len(record["weight_max_rel_diff_per_sample"]) == 3
    # STDP cannot reach the readout (it does not spike); three_factor trains it, as in training
    assert ("readout->readout" in record["plastic_connections"]) == (rule == "three_factor")
    assert any(name.startswith("stem.") for name in record["frozen_connections"])  # graded input


def test_validate_learn_refuses_in_one_line(loihi_run):
    run = str(loihi_run)
    _one_line_error(_cli("validate", run, "--backend", "lava-float", "--learn", "--samples", "2"),
                    "on-chip learning runs stdp or three_factor")  # the run learnt by bptt
    _one_line_error(_cli("validate", run, "--backend", "lava-float", "--learn", "--rule", "stdp", "--rule-layers",
                         "stem.*"), "can learn by stdp on a chip")
    _one_line_error(_cli("validate", run, "--backend", "lava-fixed", "--learn", "--rule", "three_factor",
                         "--learn-rate", "1e-12", "--samples", "1"), "too small")
    _one_line_error(_cli("validate", run, "--backend", "lava-float", "--rule", "stdp"), "go with --learn")
