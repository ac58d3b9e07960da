"""spikeformer compare (spikeformer/compare.py): the table, the plots, the HTML (parsed, every image present), its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from cli_runner import assert_one_line_error, run_cli
from spikeformer.cli import main
from spikeformer.compare import COLUMNS

TINY = ["--set", "dim=16", "--set", "heads=2", "--set", "head_dim=8", "--set", "depth=1", "--set", "epochs=1",
        "--set", "batch_size=256", "--set", "num_threads=1", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    config = tmp / "cfg.toml"
    config.write_text('task = "digits"\npatch_size = 4\n')
    for model in ("spikeformer", "ann"):
        assert main(["train", "--config", str(config), "--out", str(tmp / model), "--set", f'model="{model}"',
                     *TINY]) == 0
    assert main(["eval", str(tmp / "spikeformer"), "--corruptions", "blur,spike_deletion", "--severities", "1,3",
                 "--quiet"]) == 0
    return tmp


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images, self.tags, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_compare_writes_table_plots_and_html(runs, tmp_path, capsys):
    (runs / "spikeformer" / "validate-lava-float.json").write_text(json.dumps(
        {"backend": "lava-float", "samples": 5, "spike_agreement": 1.0, "class_agreement": 1.0,
         "accuracy_backend": 0.4, "accuracy_torch": 0.4}))
    out = tmp_path / "cmp"
    assert main(["compare", str(runs / "spikeformer"), str(runs / "ann"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| spikeformer | spikeformer |" in printed and "| ann | ann |" in printed
    record = json.loads((out / "compare.json").read_text())
    spiking, ann = record["runs"]
    metrics = json.loads((runs / "spikeformer" / "metrics.json").read_text())
    robust = json.loads((runs / "spikeformer" / "robustness.json").read_text())
    assert spiking["test_accuracy"] == metrics["test_accuracy"]
    assert spiking["attention_params"] == metrics["attention_params"]
    assert spiking["energy_uj_per_sample"] == pytest.approx(metrics["energy_pj_per_sample"] / 1e6)
    assert spiking["mean_corruption_accuracy"] == robust["mean_corruption_accuracy"]
    assert ann["mean_corruption_accuracy"] is None and ann["spike_rate"] is None
    assert spiking["backends"]["lava-float"]["spike_agreement"] == 1.0
    table = (out / "compare.md").read_text().splitlines()
    assert len(table) == 4 and all(title in table[0] for _, title in COLUMNS)
    page = Page()
    page.feed((out / "compare.html").read_text())
    page.close()
    assert page.tags[0] == "html" and "table" in page.tags
    assert page.images == ["figures/columns.png", "figures/robustness.png"]
    for src in page.images:
        assert (out / src).stat().st_size > 1000
    assert "lava-float" in "".join(page.text)
    # each run's per-layer breakdown, and the chip's events where a validation recorded them
    text = "".join(page.text)
    assert "Efficiency by layer: spikeformer" in text and "Efficiency by layer: ann" in text
    assert all(name in text for name in metrics["efficiency"]["layers"])
    assert spiking["efficiency"] == metrics["efficiency"] and spiking["chip"] == {}


def test_compare_rejects_runs_of_different_tasks(runs, tmp_path):
    other = tmp_path / "mnist1d-run"
    shutil.copytree(runs / "ann", other)
    metrics = json.loads((other / "metrics.json").read_text())
    (other / "metrics.json").write_text(json.dumps(dict(metrics, task="mnist1d")))
    assert_one_line_error(run_cli("compare", str(runs / "ann"), str(other), "--out", str(tmp_path / "c")),
                          "one task", "ann: digits", "mnist1d-run: mnist1d")


def test_compare_needs_two_finished_runs(runs, tmp_path):
    assert_one_line_error(run_cli("compare", str(runs / "ann"), "--out", str(tmp_path / "c")), "two runs or more")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("compare", str(runs / "ann"), str(empty), "--out", str(tmp_path / "c")),
                          "no metrics.json")
    assert_one_line_error(run_cli("compare", str(runs / "ann"), str(tmp_path / "nope"), "--out", str(tmp_path / "c")),
                          "does not exist")
    assert not Path(tmp_path / "c").exists()  # nothing written on bad input


BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def headless_browser() -> str:
    """A Chromium-family browser to render pages with (``make setup`` installs one where it can)."""
    path = os.environ.get("SPIKEFORMER_BROWSER") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not path:
        pytest.skip("no headless Chromium (make setup installs chromium-headless-shell; or set SPIKEFORMER_BROWSER)")
    return path


def render(browser: str, page: Path, *args: str) -> subprocess.CompletedProcess:
    # virtual time lets the page's load handler run before the DOM is dumped
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           f"--user-data-dir={page.parent / '.browser-profile'}", *args, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.backend  # CI installs the browser (make setup) and must run this for real
def test_compare_page_renders_in_a_headless_browser(runs, tmp_path):
    browser = headless_browser()
    out = tmp_path / "cmp"
    assert main(["compare", str(runs / "spikeformer"), str(runs / "ann"), "--out", str(out)]) == 0
    page = out / "compare.html"
    dom = render(browser, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the page's own check, run by the browser after load: both figures decoded, none broken
    assert 'data-images-loaded="2"' in dom.stdout and 'data-images-broken="0"' in dom.stdout, dom.stdout[:3000]
    assert '<p id="broken-images"' not in dom.stdout
    shot = tmp_path / "page.png"
    assert render(browser, page, f"--screenshot={shot}", "--window-size=1000,1400").returncode == 0
    pixels = plt.imread(shot)
    assert pixels.shape[:2] == (1400, 1000) and pixels.std() > 0.05  # drawn, not a blank page
    # a figure gone from the folder is caught by the browser and named on the page
    (out / "figures" / "robustness.png").unlink()
    dom = render(browser, page, "--dump-dom")
    assert 'data-images-loaded="1"' in dom.stdout and 'data-images-broken="1"' in dom.stdout
    assert '<p id="broken-images"' in dom.stdout
    assert "1 figure(s) did not load: figures/robustness.png</p>" in dom.stdout
