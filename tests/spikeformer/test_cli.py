"""CLI smoke on tiny settings, and one clear line (no traceback) for every user mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_runner import assert_one_line_error, run_cli
from spikeformer.cli import main
TINY = ["--set", "dim=16", "--set", "heads=2", "--set", "head_dim=8", "--set", "depth=1",
        "--set", "batch_size=256", "--set", "num_threads=1", "--quiet"]


def write_config(tmp_path: Path, text: str = 'task = "digits"\nepochs = 1\n') -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = write_config(tmp)
    assert main(["train", "--config", str(cfg), "--out", str(tmp / "run"), *TINY]) == 0
    return tmp / "run"


def test_train_eval_report_smoke(trained_run, capsys):
    assert (trained_run / "metrics.json").is_file()
    assert main(["eval", str(trained_run), "--device", "cpu"]) == 0
    record = json.loads((trained_run / "eval.json").read_text())
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert record["test_accuracy"] == metrics["test_accuracy"]  # reload scores what training scored
    assert record["efficiency"] == metrics["efficiency"]  # and counts what training counted
    assert record["energy_pj_per_sample"] == metrics["energy_pj_per_sample"]
    assert main(["eval", str(trained_run), "--noise", "0.3", "--corruptions", "blur,spike_deletion",
                 "--severities", "1,5", "--quiet"]) == 0
    robust = json.loads((trained_run / "robustness.json").read_text())
    assert {"clean_accuracy", "mean_corruption_accuracy", "corruptions", "relative_robustness"} <= set(robust)
    assert set(robust["corruptions"]) == {"blur", "spike_deletion"} and set(robust["corruptions"]["blur"]) == {"1", "5"}
    assert (trained_run / "robustness.png").stat().st_size > 1000
    assert main(["report", str(trained_run)]) == 0
    assert (trained_run / "report.html").is_file()
    assert "test accuracy" in capsys.readouterr().out


def test_unknown_config_key_is_one_line(tmp_path):
    cfg = write_config(tmp_path, 'task = "digits"\nepoch = 3\n')
    # as a user runs it: python -m spikeformer in its own process (the other tests run main() here)
    assert_one_line_error(run_cli("train", "--config", str(cfg), "--out", str(tmp_path / "r"), subprocess_run=True),
                          "'epoch'", "epochs")
    assert_one_line_error(run_cli("train", "--config", str(cfg), "--out", str(tmp_path / "r")), "'epoch'", "epochs")


def test_missing_config_and_bad_override(tmp_path):
    assert_one_line_error(run_cli("train", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "r")),
                          "does not exist")
    cfg = write_config(tmp_path)
    assert_one_line_error(run_cli("train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--set", "dim=abc"),
                          "'dim'")


def test_missing_run_and_pickle_checkpoint(tmp_path):
    assert_one_line_error(run_cli("eval", str(tmp_path / "no-run")), "does not exist")
    pickle_file = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickle_file)
    assert_one_line_error(run_cli("eval", str(pickle_file)), "pickle")


def test_corrupt_checkpoint_is_one_line(trained_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    weights = broken / "checkpoint.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert_one_line_error(run_cli("eval", str(broken)), "checkpoint")


def test_wrong_input_shape_is_one_line(trained_run, tmp_path):
    """A run whose config no longer fits its weights (edited patch_size) fails cleanly."""
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(trained_run, edited)
    meta_path = edited / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["patch_size"] = 4  # 4 tokens of 16 features: weights no longer fit
    meta_path.write_text(json.dumps(meta))
    assert_one_line_error(run_cli("eval", str(edited)), "do not fit")


def test_out_that_is_a_file_is_one_line_before_training(tmp_path):
    cfg = write_config(tmp_path)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    for out in (a_file, a_file / "run"):  # the path itself, or a parent, is a file
        assert_one_line_error(run_cli("train", "--config", str(cfg), "--out", str(out), *TINY),
                              str(out), "not a run directory", "choose another --out")
    assert a_file.read_text() == "x"
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("checkpoint.json"))


def test_bench_with_an_unavailable_device_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(run_cli("bench", "--device", "cuda", "--out", "bench.json"), "cuda")


@pytest.mark.parametrize("args,needles", [
    (["--corruptions", "smoke"], ["unknown corruption 'smoke'", "gaussian_noise"]),
    (["--corruptions", "blur", "--severities", "6"], ["severity 6 is out of range", "1 to 5"]),
    (["--corruptions", "--severities", "0,1"], ["severity 0 is out of range"]),
    (["--severities", "2"], ["--severities needs --corruptions"]),
    (["--draws", "3"], ["--draws needs --corruptions"]),
    (["--corruptions", "weight_noise", "--draws", "0"], ["--draws must be >= 1, got 0"]),
    (["--robustness-out", "r.json"], ["--robustness-out needs --corruptions"]),
    (["--corruptions", "blur", "--robustness-out", "r.txt"], ["must name a .json file", "r.txt"]),
    (["--samples", "10"], ["--samples needs --corruptions"]),
    (["--corruptions", "blur", "--samples", "0"], ["--samples must be >= 1, got 0"]),
])
def test_eval_corruption_selection_errors_are_one_line(trained_run, args, needles):
    assert_one_line_error(run_cli("eval", str(trained_run), *args), *needles)


def test_eval_robustness_out_keeps_the_runs_own_record(trained_run, tmp_path):
    own = trained_run / "robustness.json"
    before = own.read_bytes() if own.exists() else None
    out = tmp_path / "jitter.json"
    assert main(["eval", str(trained_run), "--corruptions", "threshold_jitter", "--severities", "5", "--draws", "2",
                 "--robustness-out", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    assert record["draws"] == 2 and len(record["draw_accuracies"]["threshold_jitter"]["5"]) == 2
    assert out.with_suffix(".png").stat().st_size > 1000
    assert (own.read_bytes() if own.exists() else None) == before
    assert main(["eval", str(trained_run), "--corruptions", "blur", "--severities", "2", "--samples", "7",
                 "--robustness-out", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    assert record["samples"] == 7 and record["subset"] == 7
