"""spikeformer study: the quick study end to end, resume, the interval, one-line errors."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from cli_runner import assert_one_line_error, run_cli
from spikeformer.study import interval, parse_rules, parse_sizes, plan

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "demos" / "digits-eprop.toml")


def test_quick_study_writes_every_rule_size_and_seed(tmp_path):
    out = tmp_path / "study"
    start = time.perf_counter()
    result = run_cli("study", "--config", CONFIG, "--quick", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - start < 60
    record = json.loads((out / "study.json").read_text())
    assert {"config", "rules", "seeds", "train_sizes", "cells"} <= set(record)
    assert record["rules"] == ["bptt", "eprop", "three_factor", "perturbation", "stdp", "readout_only"]
    assert record["seeds"] == 2 and record["train_sizes"] == [100, 300]
    assert len(record["cells"]) == 12
    for cell in record["cells"]:
        assert {"rule", "train_size", "accuracies", "mean", "std", "ci95_low", "ci95_high", "seconds"} <= set(cell)
        assert len(cell["accuracies"]) == 2 and len(cell["curves"]) == 2
        assert cell["ci95_low"] <= cell["mean"] <= cell["ci95_high"]
        assert cell["update_norms"][0][0]  # per layer, per epoch
    readout_only = next(c for c in record["cells"] if c["rule"] == "readout_only")
    norms = readout_only["update_norms"][0][0]
    assert norms["readout.linear.weight"] > 0 and norms["stem.embed.linear.weight"] == 0  # the control
    assert (out / "report.html").stat().st_size > 1000
    table = (out / "study.md").read_text().splitlines()
    assert table[0] == "| rule | n = 100 | n = 300 | train s (all cells) |" and len(table) == 2 + 6
    bptt = next(c for c in record["cells"] if c["rule"] == "bptt" and c["train_size"] == 100)
    assert table[2].startswith(f"| bptt | {bptt['mean']:.3f} ± {bptt['std']:.3f} [")
    assert len(list((out / "cells").iterdir())) == 24

    # interrupted: one cell lost its metrics; the rerun trains that cell only
    lost = out / "cells" / "eprop-n300-s1"
    (lost / "metrics.json").unlink()
    kept = out / "cells" / "bptt-n100-s0" / "metrics.json"
    stamp = kept.stat().st_mtime_ns
    assert run_cli("study", "--config", CONFIG, "--quick", "--out", str(out), "--quiet").returncode == 0
    assert (lost / "metrics.json").is_file() and kept.stat().st_mtime_ns == stamp

    # another setting in the same folder is refused
    assert_one_line_error(run_cli("study", "--config", CONFIG, "--quick", "--seeds", "3", "--out", str(out)),
                          "other settings", "seeds")


def test_interval_is_the_student_t_interval_of_the_mean():
    mean, std, low, high = interval([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert high - mean == pytest.approx(4.3026527 / math.sqrt(3), rel=1e-7)  # t(0.975, 2 dof) = 4.3026527
    assert interval([0.5]) == (0.5, 0.0, 0.5, 0.5)


def test_plan_and_parsing():
    assert parse_sizes("100, 300,all") == (100, 300, 0)
    assert parse_rules("bptt,eprop") == ("bptt", "eprop")
    cells = plan(("a", "b"), 2, (10, 0))
    assert [c.name for c in cells[:3]] == ["a-n10-s0", "b-n10-s0", "a-n10-s1"] and cells[-1].name == "b-nall-s1"


def test_bad_study_input_is_one_line(tmp_path):
    out = str(tmp_path / "s")
    assert_one_line_error(run_cli("study", "--config", CONFIG, "--rules", "bptt,hebb", "--out", out), "--rules")
    assert_one_line_error(run_cli("study", "--config", CONFIG, "--train-sizes", "100,-3", "--out", out), "-3")
    assert_one_line_error(run_cli("study", "--config", CONFIG, "--train-sizes", "5000", "--out", out),
                          "exceeds the 1347 training samples")
    assert not (tmp_path / "s").exists()
