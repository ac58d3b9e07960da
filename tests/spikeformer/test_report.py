"""Report of a trained run: html, PNG figures, and the step-by-step attention state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from spikeformer.config import Config
from spikeformer.errors import CheckpointError, ConfigError
from spikeformer.report import attention_trace, encoded_input, write_report
from spikeformer.train import load_run, train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPIKE_FIGURES = ("spike_raster.png", "membrane_traces.png", "attention_state.png", "spike_rates.png")


def _tiny_run(root: Path, name: str, **overrides) -> Path:
    cfg = Config(**{**dict(task="digits", epochs=1, dim=16, heads=2, head_dim=8, depth=1, batch_size=128),
                    **overrides})
    train(cfg, root / name, progress=False, log=lambda s: None)
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    try:  # one thread: tiny tensors gain nothing from more, and the machine may be shared
        return {"spiking": _tiny_run(root, "spiking", num_threads=1),
                "ann": _tiny_run(root, "ann", model="ann", num_threads=1)}
    finally:
        torch.set_num_threads(threads)  # train() sets it process-wide; leave other tests unaffected


def _images(html: str) -> list[str]:
    return re.findall(r"<img src='([^']+)'", html)


def _check_report(run: Path) -> list[str]:
    """Asserts the html exists, every <img> points to a valid PNG and every PNG is referenced."""
    out = write_report(run)
    assert out == run / "report.html" and out.is_file()
    text = out.read_text()
    images = _images(text)
    assert images, "report shows no figure"
    for rel in images:
        assert not Path(rel).is_absolute()
        assert (run / rel).read_bytes()[:8] == PNG_SIGNATURE
    on_disk = {f"figures/{p.name}" for p in (run / "figures").glob("*.png")}
    assert on_disk == set(images)
    assert "test_accuracy" in text  # metrics table from metrics.json
    return [Path(rel).name for rel in images]


def test_spiking_report_has_all_figures(runs):
    names = _check_report(runs["spiking"])
    assert names == ["training_curves.png", *SPIKE_FIGURES]


def test_ann_report_has_only_training_curves(runs):
    names = _check_report(runs["ann"])
    assert names == ["training_curves.png"]
    assert "attention_state.png" not in (runs["ann"] / "report.html").read_text()
    assert "do not apply" in (runs["ann"] / "report.html").read_text()


def test_step_by_step_state_matches_one_call(runs):
    cfg, model, split, _ = load_run(runs["spiking"])
    x_t = encoded_input(model, cfg, split.x_test[:3])
    trace = attention_trace(model, x_t)  # [T, B, H, d, d]
    assert trace.shape == (cfg.time_steps, 3, cfg.heads, cfg.head_dim, cfg.head_dim)
    with torch.no_grad():
        _, state = model.forward_steps(x_t)
    final = state["block0"]["attn"]["attention"].memory
    assert torch.allclose(trace[-1], final, atol=1e-5)
    assert trace.abs().sum() > 0  # the state actually moved (otherwise the check is vacuous)


def test_depth_zero_report_skips_the_attention_figure(tmp_path):
    threads = torch.get_num_threads()
    try:
        run = _tiny_run(tmp_path, "feedforward", depth=0, num_threads=1)
    finally:
        torch.set_num_threads(threads)
    names = _check_report(run)
    assert names == ["training_curves.png", *(n for n in SPIKE_FIGURES if n != "attention_state.png")]
    assert "depth 0" in (run / "report.html").read_text()
    cfg, model, split, _ = load_run(run)
    with pytest.raises(ConfigError, match="depth-0"):
        attention_trace(model, encoded_input(model, cfg, split.x_test[:1]))


def test_missing_run_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        write_report(tmp_path / "no_such_run")


def test_report_shows_the_per_layer_breakdown_and_chip_counts(runs, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["spiking"], run)
    eff = json.loads((run / "metrics.json").read_text())["efficiency"]
    assert eff["layers"] and eff["neurons"] and eff["synaptic_operations"]["effective_acs"] > 0
    chip = {"synaptic_events_per_sample": 1234.5, "connections": {}, "attentions": {"block0.attn": 34.5},
            "spikes_per_sample": {"block0.in": 77.0}}
    (run / "validate-lava-fixed.json").write_text(json.dumps({"backend": "lava-fixed", "chip": chip}))
    (run / "validate-brian2.json").write_text("{damaged")  # skipped, not fatal
    text = write_report(run).read_text()
    assert "Efficiency (NeuroBench names" in text
    for name in [*eff["layers"], *eff["neurons"]]:
        assert f"<td>{name}</td>" in text, name
    assert "<td>lava-fixed</td><td>1234</td><td>34.5</td><td>77</td>" in text  # 4 significant digits
