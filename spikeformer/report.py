"""HTML report of a trained run: training curves and, for spiking models, activity figures.

``write_report(run)`` writes ``RUN/report.html`` and PNGs in ``RUN/figures/``. The activity
figures come from ONE test sample: spike rasters, membrane traces, the attention state S of
head 0 of block 0 over time (fed step by step, so it also exercises streaming; skipped for a
depth-0 model, which has no attention), and the spike rate of every layer.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor, nn

from .checkpoint import atomic_write_bytes
from .compare import chip_records, efficiency_html
from .config import Config
from .errors import ConfigError
from .model import Probe
from .train import load_run

# metrics.json keys shown in the table, in this order (missing keys are skipped)
METRIC_KEYS = ("task", "model", "variant", "mode", "test_accuracy", "best_test_accuracy", "epochs",
               "params", "attention_params", "spike_rate", "synops_per_sample", "macs_per_sample",
               "energy_pj_per_sample", "train_seconds", "device")


def encoded_input(model: nn.Module, cfg: Config, x: Tensor) -> Tensor:
    """Tokens ``[B, N, F]`` -> the steps ``forward`` feeds ``forward_steps`` (seeded: poisson repeats)."""
    return model.encode_input(x, torch.Generator().manual_seed(cfg.seed))


@torch.no_grad()
def attention_trace(model: nn.Module, x_t: Tensor, block: int = 0) -> Tensor:
    """Attention state S of ``block`` after each step: ``x_t [T, B, N, F]`` -> ``[T, B, H, d, d]``.

    The model is fed one step at a time with its explicit state, since a whole-sequence call
    only returns the final S. Raises ``ConfigError`` when the model has no block ``block``.
    """
    depth = len(model.blocks)
    if not 0 <= block < depth:
        raise ConfigError(f"attention_trace: block {block} does not exist in a model with {depth} attention blocks; "
                          f"pass 0 <= block < {depth} (a depth-0 model has no attention state)")
    state: Optional[dict[str, Any]] = None
    memories = []
    for t in range(x_t.shape[0]):
        _, state = model.forward_steps(x_t[t:t + 1], state)
        memories.append(state[f"block{block}"]["attn"]["attention"].memory.detach().cpu())
    return torch.stack(memories, 0)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    fig.clear()  # Figure objects are not tracked by pyplot; clearing frees the artists


def plot_training(history: list[dict[str, float]], path: Path) -> None:
    """Loss and accuracy per epoch (train and test)."""
    fig = Figure(figsize=(9, 3.5))
    epochs = [r["epoch"] for r in history]
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for split in ("train", "test"):
            ax.plot(epochs, [r[f"{split}_{key}"] for r in history], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    _save(fig, path)


def _pick(names: list[str], k: int) -> list[str]:
    """Up to ``k`` names evenly spread over ``names`` (forward order: input side to readout)."""
    if len(names) <= k:
        return names
    return [names[round(i * (len(names) - 1) / (k - 1))] for i in range(k)]


def plot_raster(spikes: dict[str, Tensor], path: Path, layers: int = 4, neurons: int = 64) -> None:
    """Spike raster of a few layers; ``spikes[name]`` is ``[T, B, ...]`` (batch 0 is drawn)."""
    names = _pick(list(spikes), layers)
    fig = Figure(figsize=(9, 2.2 * len(names)))
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        s = spikes[name][:, 0].reshape(spikes[name].shape[0], -1)[:, :neurons]  # [T, neurons]
        t, n = s.nonzero(as_tuple=True)
        ax.scatter(t.numpy(), n.numpy(), marker="|", s=60, color="k")
        ax.set_xlim(-0.5, s.shape[0] - 0.5)
        ax.set_ylim(-0.5, s.shape[1] - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("neuron")
        ax.set_title(f"{name} (first {s.shape[1]} neurons)", fontsize=9)
    axes[-1].set_xlabel("time step")
    _save(fig, path)


def _intermittent(spikes: Tensor) -> Tensor:
    """Per neuron of batch 0, whether it fired on some steps but not all; ``spikes``: ``[T, B, ...]``."""
    counts = spikes[:, 0].reshape(spikes.shape[0], -1).sum(0)  # [neurons]
    return (counts > 0) & (counts < spikes.shape[0])


def plot_membranes(membranes: list[Tensor], spikes: Tensor, name: str, threshold: float, path: Path,
                   k: int = 5) -> None:
    """Membrane of ``k`` neurons of one layer; ``membranes``: T tensors ``[B, ...]``, ``spikes``: ``[T, B, ...]``.

    Neurons that fire on some steps but not all come first (they show integrate, fire and reset),
    then the most variable ones.
    """
    v = torch.stack([m[0].reshape(-1).cpu() for m in membranes], 0)  # [T, neurons]
    var = v.var(0, correction=0)
    score = var + _intermittent(spikes).float() * (float(var.max()) + 1.0)
    idx = score.argsort(descending=True)[:k]
    fig = Figure(figsize=(9, 3.5))
    ax = fig.subplots()
    for i in idx.tolist():
        ax.plot(v[:, i].numpy(), marker=".", label=f"neuron {i}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(threshold, color="gray", linestyle="--", label="threshold (config)")
    ax.set_xlabel("time step")
    ax.set_ylabel("membrane v")
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def plot_attention(memory: Tensor, path: Path, panels: int = 4) -> None:
    """S of head 0 at a few steps and ||S||_F per head over time; ``memory``: ``[T, H, d, d]``."""
    steps = sorted({round(i * (memory.shape[0] - 1) / max(1, panels - 1)) for i in range(panels)})
    fig = Figure(figsize=(3 * (len(steps) + 1), 3.2))
    axes = fig.subplots(1, len(steps) + 1)
    vmax = float(memory[:, 0].abs().max()) or 1.0  # one colour scale so panels compare
    for ax, t in zip(axes, steps):
        im = ax.imshow(memory[t, 0].numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"S head 0, t={t}", fontsize=9)
        ax.set_xlabel("j (value)")
        ax.set_ylabel("i (key)")
    fig.colorbar(im, ax=axes[len(steps) - 1], fraction=0.046)
    norms = memory.flatten(2).norm(dim=-1)  # [T, H]
    for h in range(norms.shape[1]):
        axes[-1].plot(norms[:, h].numpy(), marker=".", label=f"head {h}")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("time step")
    axes[-1].set_title("||S||_F", fontsize=9)
    axes[-1].legend(fontsize=7)
    _save(fig, path)


def plot_rates(probe: Probe, path: Path) -> None:
    """Fraction of neuron-steps with a spike, per layer (horizontal bars: names are long)."""
    names = list(probe.spike_counts)
    rates = [probe.spike_counts[n] / probe.neuron_steps[n] for n in names]
    fig = Figure(figsize=(8, 0.3 * len(names) + 1.2))
    ax = fig.subplots()
    ax.barh(range(len(names)), rates)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()  # forward order top to bottom
    ax.set_xlabel("spike rate (spikes / neuron / step)")
    _save(fig, path)


def write_report(run: str | Path) -> Path:
    """Write ``RUN/report.html`` and ``RUN/figures/*.png``; returns the html path.

    Raises ``CheckpointError`` (from ``load_run``) when ``run`` holds no checkpoint.
    """
    matplotlib.use("Agg")  # headless: no display on servers or CI (set here, not as an import side effect)
    run = Path(run)
    cfg, model, split, meta = load_run(run)
    figures = run / "figures"
    figures.mkdir(exist_ok=True)
    shown: list[tuple[str, str]] = []  # (file name, caption)

    plot_training(meta["history"], figures / "training_curves.png")
    shown.append(("training_curves.png", "Loss and accuracy per epoch, train and test."))
    if cfg.model != "ann":
        x_t = encoded_input(model, cfg, split.x_test[:1])  # one test sample: [T, 1, N', F]
        probe = Probe(keep_traces=True)
        with torch.no_grad():
            model.forward_steps(x_t, None, probe)
        plot_raster(probe.spikes, figures / "spike_raster.png")
        shown.append(("spike_raster.png", "Spike rasters of a few layers for test sample 0."))
        # the layer with the most neurons that fire intermittently: constant-drive layers are flat
        layer = max(probe.membranes, key=lambda n: int(_intermittent(probe.spikes[n]).sum()))
        plot_membranes(probe.membranes[layer], probe.spikes[layer], layer, cfg.threshold,
                       figures / "membrane_traces.png")
        shown.append(("membrane_traces.png", f"Membrane potential of a few neurons of {layer} for test sample 0."))
        if len(model.blocks) > 0:  # depth 0 (feed-forward SNN): no attention state to show
            plot_attention(attention_trace(model, x_t)[:, 0], figures / "attention_state.png")
            shown.append(("attention_state.png", "Attention state S of block 0, head 0, at several steps; "
                                                 "Frobenius norm of S per head over time."))
        plot_rates(probe, figures / "spike_rates.png")
        shown.append(("spike_rates.png", "Spike rate per layer for test sample 0."))

    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>spikeformer report: {html.escape(run.name)}"
             "</title><style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
             "td,th{border:1px solid #ccc;padding:2px 8px}table{border-collapse:collapse}img{max-width:100%}"
             f"</style></head><body><h1>spikeformer report: {html.escape(run.name)}</h1>",
             f"<p>{html.escape(f'{cfg.task} / {cfg.model} / {cfg.variant} / {cfg.mode}')}</p>"]
    if metrics is None:
        parts.append("<p>No metrics.json in this run (training not finished).</p>")
    else:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(metrics[k]))}</td></tr>"
                       for k in METRIC_KEYS if k in metrics)
        parts.append(f"<h2>Metrics</h2><table>{rows}</table>")
        if "energy_note" in metrics:
            parts.append(f"<p><small>Energy: {html.escape(str(metrics['energy_note']))}</small></p>")
        if "efficiency" in metrics:
            parts.append(efficiency_html(metrics["efficiency"], chip_records(run)))
    parts.append("<h2>Figures</h2>")
    for name, caption in shown:
        parts.append(f"<figure><img src='figures/{name}' alt='{html.escape(caption)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if cfg.model != "ann" and len(model.blocks) == 0:
        parts.append("<p>The attention-state figure does not apply: this model has depth 0 (no attention blocks).</p>")
    if cfg.model == "ann":
        parts.append("<p>Spike rasters, membrane traces, attention state and spike rates do not apply: "
                     "this is the ANN (softmax attention) baseline.</p>")
    parts.append("</body></html>\n")
    out = run / "report.html"
    atomic_write_bytes(out, "\n".join(parts).encode())
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
