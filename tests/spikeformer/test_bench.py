"""``spikeformer bench`` machinery on tiny shapes (no real benchmark is run here)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from cli_runner import assert_one_line_error, run_cli
from spikeformer import bench
from spikeformer.bench import SIZES, SPEC_KEYS, make_entry, measure, plan, run_bench, time_callable
from spikeformer.cli import main
from spikeformer.errors import SpikeformerError

TINY = SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny_result():
    return run_bench(sizes="tiny", repeats=1, progress=False)


def _names(result):
    return [e["name"] for e in result["entries"]]


def test_every_entry_has_the_spec_keys_and_its_ratio(tiny_result):
    assert _names(tiny_result) == [name for name, _ in plan(TINY)]
    assert {"lif_neuron_n16_t8", "lif_fwd_bwd_n16_t8", "lif_floor_n16_t8", "attention_l32", "attention_crossover",
            "attention_global_train", "event_rate0.10", "train_batch_digits", "train_batch_digits_loihi"} <= set(_names(tiny_result))
    machine = tiny_result["machine"]
    assert {"cpu", "cores", "torch", "threads", "device", "date"} <= set(machine)
    json.dumps(tiny_result, allow_nan=False)  # plain JSON: no NaN, no tensors
    for e in tiny_result["entries"]:
        assert set(SPEC_KEYS) <= set(e), e["name"]
        assert e["repeats"] == 1
        if e["ours_seconds"] is not None and e["baseline_seconds"] is not None:
            assert e["ratio"] == pytest.approx(e["baseline_seconds"] / e["ours_seconds"])
        else:
            assert e["ratio"] is None
        for peer in e["peers"].values():
            assert ("missing" in peer) != ("seconds" in peer)
    entries = {e["name"]: e for e in tiny_result["entries"]}
    # the core measurements run in this environment (peers may be missing, ours not)
    for name in ("lif_neuron_n16_t8", "lif_fwd_bwd_n16_t8", "attention_l32", "train_batch_digits"):
        assert entries[name]["ours_seconds"] > 0 and entries[name]["ours_peak_mem_mb"] >= 0
    floor = entries["lif_floor_n16_t8"]
    assert floor["ratio"] == 1.0 and floor["ours_seconds"] == entries["lif_fwd_bwd_n16_t8"]["baseline_seconds"]
    assert 0 < entries["lif_neuron_n16_t8"]["spike_rate"] < 1
    cross = entries["attention_crossover"]
    assert "crossover_length" in cross and set(cross["sweep"]) == {str(n) for n in TINY.crossover_lengths}
    loihi = entries["train_batch_digits_loihi"]
    assert loihi["before_issue_ms_per_batch"] == 117 and "before" in loihi["peers"]
    assert "2026-11-30" in loihi["note"]
    # the neuromorphic entries run for real: Lava fixed point beside its integer reference, and Brian2
    lava, fixed = entries["lava_steps_per_s_digits_loihi"], entries["fixed_ref_vs_lava"]
    assert "ours_missing" not in lava, lava.get("ours_missing")
    assert lava["steps_per_second"] > 0 and lava["spike_agreement"] == 1.0 and lava["brian2_spike_agreement"] == 1.0
    assert lava["ours_seconds"] > 0 and lava["baseline_seconds"] > 0
    assert fixed["ratio"] > 0 and fixed["spike_agreement"] == 1.0
    assert fixed["baseline_seconds"] == lava["ours_seconds"]  # the same Lava run


def test_median_of_the_timed_repeats_after_one_warmup():
    calls = []
    ticks = iter([0.0, 1.0, 10.0, 15.0, 20.0, 22.0])  # three timed calls: 1, 5, 2 seconds
    times = time_callable(lambda: calls.append(1), repeats=3, warmup=1, clock=lambda: next(ticks))
    assert times == [1.0, 5.0, 2.0] and len(calls) == 4  # the warm-up call is run, not timed

    seen = []

    def fake_time(fn, repeats, warmup=1, device="cpu"):
        seen.append((repeats, warmup))
        return [3.0, 1.0, 2.0, 9.0, 4.0][:repeats]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "time_callable", fake_time)
        m = measure(lambda: (lambda: None), repeats=5)
    assert seen == [(5, 1)] and m["seconds"] == 3.0 and m["all_seconds"] == [3.0, 1.0, 2.0, 9.0, 4.0]


def test_entry_ratio_and_missing_sides():
    ours, base = {"seconds": 2.0, "peak_mem_mb": 1.0, "all_seconds": [2.0]}, {"seconds": 5.0, "peak_mem_mb": 3.0,
                                                                               "all_seconds": [5.0]}
    e = make_entry("x", {}, ours, "b", base, {"p": {"missing": "ImportError: no"}})
    assert e["ratio"] == 2.5 and e["peers"] == {"p": {"missing": "ImportError: no"}}
    e = make_entry("x", {}, {"missing": "ModuleNotFoundError: event"}, "b", base)
    assert e["ours_seconds"] is None and e["ratio"] is None and e["ours_missing"].startswith("ModuleNotFoundError")


def test_cpu_peak_memory_counts_what_the_call_allocates():
    before = torch.ones(1_000_000)  # 4 MB alive before the call: not counted

    def work():
        a = torch.ones(1_000_000)  # 4 MB
        b = torch.ones(2_000_000)  # + 8 MB alive together: the peak
        del a
        c = torch.ones(500_000)  # 2 MB after a's 4 MB were freed
        return float(b[0] + c[0] + before[0])

    assert bench.peak_memory_mb(work) == pytest.approx(12.0, abs=0.1)


def test_a_peer_that_cannot_be_imported_is_recorded_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "norse", None)  # import norse -> ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "norse.torch", None)
    result = run_bench(sizes="tiny", repeats=1, only="lif_neuron", progress=False)
    (entry,) = result["entries"]
    assert "missing" in entry["peers"]["norse"] and "norse" in entry["peers"]["norse"]["missing"]
    assert "Error" in entry["peers"]["norse"]["missing"] and "\n" not in entry["peers"]["norse"]["missing"]
    assert entry["peers"]["snntorch"]["seconds"] > 0  # the others still run
    assert entry["ours_seconds"] > 0


def test_ours_missing_keeps_going(monkeypatch):
    monkeypatch.setitem(sys.modules, "spikeformer.attention_event", None)  # impl='event' cannot import
    result = run_bench(sizes="tiny", repeats=1, only="event_rate", progress=False)
    (entry,) = result["entries"]
    assert entry["ours_seconds"] is None and entry["ratio"] is None and "Error" in entry["ours_missing"]
    assert entry["baseline_seconds"] > 0 and entry["peers"]["chunked"]["seconds"] > 0


def test_slow_or_huge_attention_baselines_are_skipped(monkeypatch):
    monkeypatch.setattr(bench, "RECURRENT_BUDGET_S", 0.0)
    monkeypatch.setattr(bench, "SOFTMAX_BUDGET_BYTES", 0)
    monkeypatch.setattr(bench, "MEMORY_HEADROOM", 0.0)  # as if the machine could not hold the softmax
    result = run_bench(sizes="tiny", repeats=1, only="attention_l16", progress=False)
    (entry,) = result["entries"]
    assert entry["peers"]["recurrent"]["missing"].startswith("skipped: too slow (estimated")
    assert entry["baseline_missing"].startswith("skipped: needs about") and entry["ratio"] is None
    assert "; available: " in entry["baseline_missing"]
    assert entry["ours_seconds"] > 0 and entry["peers"]["sdpa"]["seconds"] > 0


def test_a_huge_softmax_that_fits_in_memory_runs_once(monkeypatch):
    calls = []
    real = bench.time_callable
    monkeypatch.setattr(bench, "time_callable", lambda fn, repeats, warmup=1, **kw: (
        calls.append((repeats, warmup)), real(fn, repeats, warmup=warmup, **kw))[1])
    monkeypatch.setattr(bench, "SOFTMAX_BUDGET_BYTES", 0)
    result = run_bench(sizes="tiny", repeats=3, only="attention_l16", progress=False)
    (entry,) = result["entries"]
    assert len(entry["baseline_all_seconds"]) == 1 and entry["baseline_peak_mem_mb"] > 0
    assert entry["baseline_note"].startswith("one call, no warm-up") and entry["ratio"] > 0
    assert (1, 0) in calls and len(entry["ours_all_seconds"]) == 3


def test_available_memory_is_read_on_linux():
    free = bench.available_memory_bytes("cpu")
    assert free is None or free > 2 ** 20


def test_only_filters_and_rejects_a_name_that_matches_nothing():
    result = run_bench(sizes="tiny", repeats=1, only="lif_floor", progress=False)
    assert _names(result) == ["lif_floor_n16_t8"]
    with pytest.raises(SpikeformerError, match="matches no benchmark"):
        run_bench(sizes="tiny", repeats=1, only="no_such_bench", progress=False)


def test_markdown_and_plot(tiny_result, tmp_path):
    text = bench.render_markdown(tiny_result)
    for name in _names(tiny_result):
        assert f"| {name} |" in text
    paths = bench.write_outputs(tiny_result, tmp_path / "bench.json")
    assert [p.name for p in paths] == ["bench.json", "bench.md", "bench.png"]
    written = json.loads(paths[0].read_text())  # SPEC §4: a list of entries, each with its machine
    assert isinstance(written, list) and written[0]["name"] == _names(tiny_result)[0]
    assert written[0]["machine"] == tiny_result["machine"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "b.json"
    args = ["bench", "--sizes", "tiny", "--only", "lif_floor", "--repeats", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert [e["name"] for e in data] == ["lif_floor_n16_t8"] and data[0]["repeats"] == 2
    assert len(data[0]["ours_all_seconds"]) == 2 and math.isfinite(data[0]["ours_seconds"])
    assert (tmp_path / "b.md").is_file() and (tmp_path / "b.png").is_file()
    printed = capsys.readouterr().out
    assert "lif_floor_n16_t8" in printed and printed.strip().splitlines()[-1].startswith("bench: 1 entries")


def test_cli_user_mistakes_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_one_line_error(run_cli("bench", "--device", "cuda", "--out", str(tmp_path / "b.json")), "CUDA", "cpu")
    assert_one_line_error(run_cli("bench", "--repeats", "0", "--sizes", "tiny", "--out", str(tmp_path / "b.json")),
                          "--repeats")
    assert_one_line_error(run_cli("bench", "--out", str(tmp_path / "nope" / "b.json")), "does not exist")
    assert not list(tmp_path.iterdir())
