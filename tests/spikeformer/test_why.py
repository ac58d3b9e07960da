"""spikeformer why (spikeformer/why.py): the rows, reuse of finished runs, the table, its errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_runner import assert_one_line_error, run_cli
from spikeformer.cli import main
from spikeformer.config import load_config
from spikeformer.errors import ConfigError
from spikeformer.why import ROWS, parse_rows, row_configs

TINY = ["--set", "dim=16", "--set", "heads=2", "--set", "head_dim=8", "--set", "depth=1", "--set", "epochs=1",
        "--set", "batch_size=256", "--set", "time_steps=2", "--quiet"]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("why") / "cfg.toml"
    path.write_text('task = "digits"\npatch_size = 4\n')
    return path


@pytest.fixture(scope="module")
def study(config) -> Path:
    out = config.parent / "why"
    assert main(["why", "--config", str(config), "--rows", "ann,direct,top_down", "--workers", "2", "--out", str(out),
                 *TINY]) == 0
    return out


def test_why_trains_scores_and_tabulates_each_row(study):
    record = json.loads((study / "why.json").read_text())
    assert [r["row"] for r in record["rows"]] == ["direct", "top_down", "ann"]  # table order, not --rows order
    for r in record["rows"]:
        metrics = json.loads((study / r["row"] / "metrics.json").read_text())
        robust = json.loads((study / r["row"] / "robustness.json").read_text())
        assert r["test_accuracy"] == metrics["test_accuracy"]
        assert r["attention_params"] == metrics["attention_params"]
        assert r["mean_input_corruption_accuracy"] == robust["mean_input_corruption_accuracy"]
        assert len(robust["severities"]) == 5
        assert metrics["config"]["num_threads"] == 1  # one torch thread per worker
    configs = {r["row"]: json.loads((study / r["row"] / "metrics.json").read_text())["config"]
               for r in record["rows"]}
    assert configs["top_down"]["variant"] == "three_factor" and configs["top_down"]["top_down"] == "readout"
    assert configs["ann"]["model"] == "ann" and configs["direct"]["model"] == "spikeformer"
    ann = {r["row"]: r for r in record["rows"]}["ann"]
    assert ann["model_noises"] == ["weight_noise"]  # the spiking-only noises do not apply
    table = (study / "why.md").read_text()
    assert '| top_down | variant = "three_factor", top_down = "readout" |' in table
    assert "| direct | the config as given |" in table
    assert "(weight noise only)" in table and "- ann against direct: clean" in table
    assert "- top_down against three_factor: clean" not in table  # no three_factor row here: direct
    assert "- top_down against direct: clean" in table
    assert (study / "compare" / "compare.html").is_file()


def test_why_rerun_reuses_finished_rows(study, config):
    runs = lambda: {p: p.stat().st_mtime_ns for p in study.glob("*/*.json") if p.parent.name != "compare"}  # noqa: E731
    before = runs()
    assert main(["why", "--config", str(config), "--rows", "direct,ann", "--workers", "1", "--out", str(study),
                 *TINY]) == 0
    assert runs() == before  # nothing retrained, nothing rescored
    record = json.loads((study / "why.json").read_text())
    assert [r["row"] for r in record["rows"]] == ["direct", "ann"]


def test_why_rescores_a_row_whose_robustness_is_stale(study, config):
    robust = study / "ann" / "robustness.json"
    old = json.loads(robust.read_text())
    metrics = study / "ann" / "metrics.json"
    metrics.touch()
    robust.touch()
    os.utime(robust, ns=(metrics.stat().st_mtime_ns - 10**9,) * 2)
    assert main(["why", "--config", str(config), "--rows", "ann", "--workers", "1", "--out", str(study), *TINY]) == 0
    new = json.loads(robust.read_text())
    assert robust.stat().st_mtime_ns >= metrics.stat().st_mtime_ns
    assert new["corruptions"] == old["corruptions"]  # seeded: the same numbers again


def test_why_samples_rescores_on_the_subset_and_notes_it(study, config):
    """``--samples`` asks for another robustness record: the row is rescored, not retrained."""
    metrics = study / "ann" / "metrics.json"
    trained = metrics.stat().st_mtime_ns
    assert main(["why", "--config", str(config), "--rows", "ann", "--workers", "1", "--out", str(study),
                 "--samples", "30", *TINY]) == 0
    robust = json.loads((study / "ann" / "robustness.json").read_text())
    assert robust["samples"] == 30 and robust["subset"] == 30
    assert metrics.stat().st_mtime_ns == trained
    record = json.loads((study / "why.json").read_text())
    assert record["robustness_samples"] == 30
    assert "corruption means over the first 30 test samples" in (study / "why.md").read_text()
    assert main(["why", "--config", str(config), "--rows", "ann", "--workers", "1", "--out", str(study), *TINY]) == 0
    assert json.loads((study / "ann" / "robustness.json").read_text())["subset"] is None  # back to all of them
    assert_one_line_error(run_cli("why", "--config", str(config), "--out", str(study), "--samples", "0", "--quiet"),
                          "--samples must be >= 1")


def test_why_refuses_a_row_folder_of_another_config(study, config):
    result = run_cli("why", "--config", str(config), "--rows", "direct", "--out", str(study), *TINY, "--set", "seed=3")
    assert_one_line_error(result, "holds a run of another config (seed differ)")


def test_row_configs_change_one_thing_each(config):
    base = load_config(config, {"stem": "conv2d"})
    rows = row_configs(base, tuple(ROWS))
    assert set(rows) == set(ROWS)
    changed = {row: {k for k, v in c.to_dict().items() if v != base.to_dict()[k]} for row, c in rows.items()}
    assert changed == {"direct": set(), "retina": {"encoder", "stem"}, "cortical": {"attention"},
                       "three_factor": {"variant"}, "top_down": {"variant", "top_down"}, "ann": {"model"}}
    # a base that already is three_factor: that row repeats direct and is left out
    assert "three_factor" not in row_configs(load_config(config, {"variant": "three_factor"}), tuple(ROWS))


def test_row_configs_takes_the_cortical_twin(config, tmp_path):
    twin = tmp_path / "twin.toml"
    twin.write_text('task = "digits"\npatch_size = 4\nattention = "cortical"\nheads = 8\nhead_dim = 8\n')
    base = load_config(config, {"seed": 4})
    rows = row_configs(base, ("direct", "cortical"), load_config(twin, {}))
    assert rows["cortical"].heads == 8 and rows["cortical"].seed == 4
    with pytest.raises(ConfigError, match="--cortical must be a config of task 'digits'"):
        row_configs(base, ("cortical",), load_config(config, {}))


def test_why_errors_are_one_line(config, tmp_path):
    with pytest.raises(ConfigError, match="unknown row 'retna'"):
        parse_rows("direct,retna")
    bad = [(["--rows", "nope"], "unknown row 'nope'"),
           (["--set", 'model="ann"'], "starts from a spiking model with learned attention"),
           (["--workers", "0"], "--workers must be >= 1")]
    for extra, message in bad:
        assert_one_line_error(run_cli("why", "--config", str(config), "--out", str(tmp_path / "w"), *extra, "--quiet"),
                              message)
    recall = tmp_path / "recall.toml"
    recall.write_text('task = "recall"\nmode = "causal"\n')
    assert_one_line_error(run_cli("why", "--config", str(recall), "--out", str(tmp_path / "w"), "--rows", "cortical",
                                  "--quiet"), "leave the row out with --rows")


def test_why_help_runs():
    result = run_cli("why", "--help")
    assert result.returncode == 0 and "--cortical" in result.stdout


def test_one_row_left_runs_in_process_on_every_thread(config, tmp_path, monkeypatch):
    """Two workers but one row to train (a resume): no pool, and the row keeps the config's threads."""
    from spikeformer import why as why_module

    calls = []

    def record(row_config, folder, threads, samples=None, talk=False):
        calls.append((Path(folder).name, threads))
        raise RuntimeError("recorded")  # a pool would run the real run_row in another process

    monkeypatch.setattr(why_module, "run_row", record)
    cfg = load_config(config, {"num_threads": 2, "epochs": 1})
    with pytest.raises(RuntimeError, match="recorded"):
        why_module.why(cfg, tmp_path / "w", rows=("direct",), workers=2, progress=False)
    assert calls == [("direct", 2)]


def test_why_prints_a_line_per_epoch_and_before_scoring(config, tmp_path, capsys):
    """Rows run for hours: without --quiet each says its epochs and when its scoring starts."""
    tiny = [a for a in TINY if a != "--quiet"]
    tiny[tiny.index("epochs=1")] = "epochs=2"
    out = tmp_path / "talk"
    assert main(["why", "--config", str(config), "--rows", "direct", "--workers", "1", "--samples", "40",
                 "--out", str(out), *tiny]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("why direct:")]
    history = json.loads((out / "direct" / "metrics.json").read_text())["history"]
    assert lines == [f"why direct: epoch {i + 1}/2, test accuracy {row['test_accuracy']:.4f}, "
                     f"{row['seconds']:.0f} s training" for i, row in enumerate(history)] + \
        ["why direct: robustness suite on the first 40 test samples"]
    assert main(["why", "--config", str(config), "--rows", "direct", "--workers", "1", "--samples", "30",
                 "--out", str(out), *tiny, "--quiet"]) == 0  # scored again on 30 samples, quietly
    assert json.loads((out / "direct" / "robustness.json").read_text())["subset"] == 30
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("why direct:")]
