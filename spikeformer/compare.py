"""Side-by-side comparison of trained runs: ``spikeformer compare RUN_A RUN_B ... --out DIR``.

It reads what the runs already hold and runs nothing. Each run needs its ``metrics.json``;
``robustness.json`` (``eval --corruptions``) and ``validate-<backend>.json`` are shown where
present. It writes ``DIR/compare.json`` (one row per run), ``DIR/compare.md`` (the table),
``DIR/compare.html`` and the plots it shows, in ``DIR/figures/``. The html also gives each
run's per-layer efficiency (metrics.json ``efficiency``) and, per backend it was validated on,
what a Loihi-style chip executes (the ``chip`` block of ``validate-<backend>.json``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from .checkpoint import atomic_write_bytes, atomic_write_json
from .errors import SpikeformerError

# (row key, column title): the columns of the table and the bar plots
COLUMNS: tuple[tuple[str, str], ...] = (
    ("test_accuracy", "clean accuracy"),
    ("mean_corruption_accuracy", "mean corruption accuracy"),
    ("mean_input_corruption_accuracy", "mean input-corruption accuracy"),
    ("attention_params", "learnable attention params"),
    ("params", "params"),
    ("energy_uj_per_sample", "energy uJ/sample (est.)"),
    ("spike_rate", "spike rate"),
    ("latency_steps", "latency (steps)"),
)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpikeformerError(f"cannot read {what} {path}: {exc}") from None


def load_row(run: Path) -> dict[str, Any]:
    """One run's row: its metrics, robustness summary and backend agreement."""
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise SpikeformerError(f"{run} has no metrics.json; compare takes runs whose training finished "
                               "(spikeformer train ... --out RUN)")
    m = _read_json(metrics_path, "metrics")
    energy = m.get("energy_pj_per_sample")
    row: dict[str, Any] = {
        "run": str(run), "name": run.name, "task": m.get("task"), "model": m.get("model"),
        "variant": m.get("variant"), "rule": m.get("rule"),
        "test_accuracy": m.get("test_accuracy"), "params": m.get("params"),
        "attention_params": m.get("attention_params"),
        "energy_uj_per_sample": energy / 1e6 if energy is not None else None,
        "spike_rate": m.get("spike_rate") if m.get("model") != "ann" else None,
        "latency_steps": m.get("latency_steps"),
        "mean_corruption_accuracy": None, "mean_input_corruption_accuracy": None, "relative_robustness": None,
        "robustness": None, "backends": {}, "efficiency": m.get("efficiency"), "chip": chip_records(run),
    }
    robust_path = run / "robustness.json"
    if robust_path.is_file():
        r = _read_json(robust_path, "robustness")
        row["mean_corruption_accuracy"] = r.get("mean_corruption_accuracy")
        row["mean_input_corruption_accuracy"] = r.get("mean_input_corruption_accuracy")
        row["relative_robustness"] = r.get("relative_robustness")
        row["robustness"] = {"clean_accuracy": r.get("clean_accuracy"), "corruptions": r.get("corruptions", {}),
                             "not_applicable": r.get("not_applicable", {})}
    for path in sorted(run.glob("validate-*.json")):
        v = _read_json(path, "validation")
        row["backends"][v.get("backend", path.stem[len("validate-"):])] = {
            k: v.get(k) for k in ("samples", "spike_agreement", "class_agreement", "accuracy_backend",
                                  "accuracy_torch")}
    return row


def load_rows(runs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The rows of ``runs``, checked to be at least two runs of one task."""
    if len(runs) < 2:
        raise SpikeformerError("compare takes two runs or more")
    paths = [Path(r) for r in runs]
    for p in paths:
        if not p.is_dir():
            raise SpikeformerError(f"run folder {p} does not exist")
    rows = [load_row(p) for p in paths]
    tasks = {row["task"] for row in rows}
    if len(tasks) > 1:
        which = ", ".join(f"{row['name']}: {row['task']}" for row in rows)
        raise SpikeformerError(f"compare takes runs of one task; these differ ({which})")
    return rows


def _fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if "accuracy" in key or key == "spike_rate" else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The comparison table as text: its head and one row of cells per run."""
    head = ["run", "model"] + [title for _, title in COLUMNS]
    return head, [[row["name"], str(row["model"])] + [_fmt(row[key], key) for key, _ in COLUMNS] for row in rows]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head, body = table(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def _severity_means(row: dict[str, Any]) -> Optional[dict[int, float]]:
    """Mean accuracy over the corruptions at each severity (None without robustness.json)."""
    if not row["robustness"] or not row["robustness"]["corruptions"]:
        return None
    per: dict[int, list[float]] = {}
    for levels in row["robustness"]["corruptions"].values():
        for severity, acc in levels.items():
            per.setdefault(int(severity), []).append(acc)
    return {s: sum(v) / len(v) for s, v in sorted(per.items())}


def plot_columns(rows: list[dict[str, Any]], path: Path) -> list[str]:
    """Bar plots of the numeric columns that any run has; returns their titles."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    shown = [(key, title) for key, title in COLUMNS if any(row[key] is not None for row in rows)]
    cols = min(4, len(shown))
    grid = -(-len(shown) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * grid))
    axes = fig.subplots(grid, cols, squeeze=False).ravel()
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    names = [row["name"] for row in rows]
    for ax, (key, title) in zip(axes, shown):
        values = [row[key] if row[key] is not None else 0.0 for row in rows]
        bars = ax.bar(range(len(rows)), values, color=[f"C{i}" for i in range(len(rows))])
        for bar, row in zip(bars, rows):
            if row[key] is None:
                ax.annotate("n/a", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return [title for _, title in shown]


def plot_robustness_curves(rows: list[dict[str, Any]], path: Path) -> bool:
    """Mean accuracy over corruptions against severity, one line per run; False if no run has it."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    curves = [(row["name"], row["robustness"]["clean_accuracy"] if row["robustness"] else None, _severity_means(row))
              for row in rows]
    if not any(c[2] for c in curves):
        return False
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (name, clean, means) in enumerate(curves):
        if means:
            ax.plot([0, *means], [clean, *means.values()], marker="o", color=f"C{i}", label=name)
    ax.set_xlabel("severity (0: clean)")
    ax.set_ylabel("mean accuracy over corruptions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def _html_table(head: list[str], body: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{th}</tr>{trs}</table>"


# Runs in the reader's browser once the page has loaded: a figure that did not load (moved,
# deleted, unreadable) is named in a visible line at the top, and the counts are left on <body>
# (data-images-loaded, data-images-broken) for the headless-browser test to read.
IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !img.complete || img.naturalWidth === 0; });
  document.body.dataset.imagesLoaded = String(images.length - broken.length);
  document.body.dataset.imagesBroken = String(broken.length);
  if (broken.length) {
    var note = document.createElement("p");
    note.id = "broken-images";
    note.style.color = "#b00";
    note.textContent = broken.length + " figure(s) did not load: " +
      broken.map(function (img) { return img.getAttribute("src"); }).join(", ");
    document.body.insertBefore(note, document.body.firstChild);
  }
});
</script>"""


def write_html(rows: list[dict[str, Any]], out: Path, figures: list[tuple[str, str]]) -> Path:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>spikeformer compare</title>"
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{border:1px solid #ccc;"
             "padding:2px 8px}table{border-collapse:collapse}img{max-width:100%}</style></head><body>",
             f"<h1>spikeformer compare: {html.escape(str(rows[0]['task']))}</h1>"]
    parts.append(_html_table(*table(rows)))
    parts.append("<p><small>Energy is an estimate of synaptic arithmetic (0.9 pJ/AC, 4.6 pJ/MAC, 45 nm); "
                 "mean corruption accuracy comes from each run's robustness.json (spikeformer eval RUN "
                 "--corruptions), '-' where the run has none. It averages every corruption the model can take: "
                 "an ANN skips the spiking-only noise, so compare models on the input-corruption mean."
                 "</small></p>")
    agreement = [[r["name"], backend, _fmt(v.get("samples")), _fmt(v.get("spike_agreement")),
                  _fmt(v.get("class_agreement")), _fmt(v.get("accuracy_backend")), _fmt(v.get("accuracy_torch"))]
                 for r in rows for backend, v in r["backends"].items()]
    parts.append("<h2>Backend agreement</h2>")
    if agreement:
        parts.append(_html_table(["run", "backend", "samples", "spike agreement", "class agreement",
                                  "accuracy (backend)", "accuracy (torch)"], agreement))
    else:
        parts.append("<p>No run holds a validate-*.json (spikeformer validate RUN --backend ...).</p>")
    for r in rows:
        if r["efficiency"]:
            parts.append(efficiency_html(r["efficiency"], r["chip"], f"Efficiency by layer: {r['name']}"))
    parts.append("<h2>Figures</h2>")
    for name, caption in figures:
        parts.append(f"<figure><img src='figures/{html.escape(name)}' alt='{html.escape(caption)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append(IMAGE_CHECK)
    parts.append("</body></html>\n")
    path = out / "compare.html"
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path


def chip_records(run: Path) -> dict[str, dict]:
    """backend -> the ``chip`` block of ``RUN/validate-<backend>.json`` (those that have one)."""
    records = {}
    for path in sorted(run.glob("validate-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a damaged validation file is not this table's to report
        if isinstance(record, dict) and isinstance(record.get("chip"), dict):
            records[str(record.get("backend", path.stem[len("validate-"):]))] = record["chip"]
    return records


def _cells_table(head: list[str], rows: list[list[Any]]) -> str:
    """An HTML table of numbers (floats to 4 significant digits, None as '-') and names."""
    return _html_table(head, [["-" if c is None else f"{c:.4g}" if isinstance(c, float) else str(c) for c in row]
                              for row in rows])


def efficiency_html(eff: dict[str, Any], chips: dict[str, dict], title: str = "Efficiency") -> str:
    """metrics.json's ``efficiency`` (``metrics.efficiency``) as HTML: the model, each synapse
    layer and each neuron population, and what a chip executes per backend (``chips``)."""
    ops = eff.get("synaptic_operations", {})
    layers = eff.get("layers", {})
    parts = [f"<h2>{html.escape(title)} (NeuroBench names, per sample, {eff.get('samples')} test samples)</h2>",
             _cells_table(["footprint bytes", "connection sparsity", "activation sparsity", "effective ACs",
                           "effective MACs", "dense ops"],
                          [[eff.get("footprint_bytes"), eff.get("connection_sparsity"), eff.get("activation_sparsity"),
                            ops.get("effective_acs"), ops.get("effective_macs"), ops.get("dense")]]),
             "<h3>Synapse layers</h3>",
             _cells_table(["layer", "effective ACs", "effective MACs", "dense ops", "weights", "connection sparsity",
                           "footprint bytes"],
                          [[name, v.get("effective_acs"), v.get("effective_macs"), v.get("dense"), v.get("weights"),
                            v.get("connection_sparsity"), v.get("footprint_bytes")] for name, v in layers.items()])]
    if eff.get("neurons"):
        parts += ["<h3>Neuron populations</h3>",
                  _cells_table(["population", "activation sparsity", "spikes per sample"],
                               [[name, v.get("activation_sparsity"), v.get("spikes_per_sample")]
                                for name, v in eff["neurons"].items()])]
    if chips:
        parts += ["<h3>On a Loihi-style chip (from each backend's own spikes, spikeformer validate)</h3>",
                  _cells_table(["backend", "synaptic events per sample", "of which attention", "spikes per sample"],
                               [[backend, c.get("synaptic_events_per_sample"), sum(c.get("attentions", {}).values()),
                                 sum(c.get("spikes_per_sample", {}).values())] for backend, c in chips.items()])]
    parts.append(f"<p><small>{html.escape(str(eff.get('note', '')))}</small></p>")
    return "\n".join(parts)


def compare(runs: Sequence[str | Path], out: str | Path) -> tuple[list[dict[str, Any]], Path]:
    """Compare ``runs`` into folder ``out``; returns the rows and the html path."""
    rows = load_rows(runs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpikeformerError(f"--out {out} is a file; give a folder")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figures = []
    titles = plot_columns(rows, out / "figures" / "columns.png")
    figures.append(("columns.png", "Per run: " + ", ".join(titles) + "."))
    if plot_robustness_curves(rows, out / "figures" / "robustness.png"):
        figures.append(("robustness.png", "Mean accuracy over every corruption of the suite, per severity."))
    atomic_write_json(out / "compare.json", {"task": rows[0]["task"], "runs": rows})
    atomic_write_bytes(out / "compare.md", markdown_table(rows).encode())
    return rows, write_html(rows, out, figures)
