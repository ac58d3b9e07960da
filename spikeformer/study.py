"""``spikeformer study``: how learning behaves, per rule and training-set size, over seeds.

One cell = one training run (``train`` with ``rule``, ``train_size`` and ``seed`` set) in
``STUDY/cells/<rule>-n<size>-s<seed>/``, a normal run directory. Cells run in a pool of worker
processes (one torch thread each, so two workers use both cores of a 2-core machine); a cell
whose ``metrics.json`` exists is not rerun, and a cell with only a checkpoint resumes, so an
interrupted study continues where it stopped. ``STUDY/settings.json`` records what the study
was started with: a rerun with other settings is refused in one line. Under torchrun (several
machines sharing STUDY's folder) rank r runs every world-size-th unfinished cell in its own pool,
and rank 0 writes the summary once every rank is done (docs/scaling.md).

``STUDY/study.json`` (SPEC §4): the settings and, per rule and size, the final test accuracy
of every seed, its mean, standard deviation and 95 % interval (Student t over seeds), the
learning curves, wall time, and the per-layer update norms (how far each layer's weights
moved, per epoch). ``STUDY/study.md`` is the same as a Markdown table; ``STUDY/report.html``
plots accuracy against training samples with the interval as a band, and the learning curves.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .checkpoint import atomic_write_bytes, atomic_write_json
from .config import CHOICES, Config, config_from_dict
from . import distributed
from .errors import ConfigError, DistributedError, SpikeformerError

# --quick: 2 seeds x 2 sizes of a tiny model (the test suite runs it)
QUICK = {"dim": 16, "heads": 2, "head_dim": 4, "depth": 1, "mlp_ratio": 2, "time_steps": 2, "epochs": 2,
         "batch_size": 64, "warmup_epochs": 0}
QUICK_SEEDS, QUICK_SIZES = 2, (100, 300)


@dataclass(frozen=True)
class Cell:
    """One training run of the study: a rule, a training-set size (0 = all) and a seed."""

    rule: str
    train_size: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.rule}-n{self.train_size or 'all'}-s{self.seed}"


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"100,300,all"`` -> ``(100, 300, 0)``; ConfigError (one line) for anything else."""
    sizes = []
    for item in text.split(","):
        item = item.strip()
        if item == "all":
            sizes.append(0)
        elif item.isdigit() and int(item) > 0:
            sizes.append(int(item))
        else:
            raise ConfigError(f"--train-sizes takes positive whole numbers or 'all' separated by commas, got {item!r}")
    return tuple(sizes)


def parse_rules(text: str) -> tuple[str, ...]:
    """``"bptt,eprop"`` -> ``("bptt", "eprop")``; ConfigError (one line) for an unknown rule."""
    rules = tuple(r.strip() for r in text.split(",") if r.strip())
    unknown = [r for r in rules if r not in CHOICES["rule"]]
    if not rules or unknown:
        raise ConfigError(f"--rules takes rules from {', '.join(CHOICES['rule'])} separated by commas, "
                          f"got {text!r}")
    return rules


def plan(rules: tuple[str, ...], seeds: int, sizes: tuple[int, ...]) -> list[Cell]:
    """Every cell, sizes and seeds innermost so that early results cover every rule."""
    return [Cell(rule, size, seed) for size in sizes for seed in range(seeds) for rule in rules]


def run_cell(config: dict[str, Any], cell: Cell, folder: str) -> dict[str, Any]:
    """Train one unfinished cell (in a worker process; a half-trained one resumes) and return its metrics."""
    import torch

    from .train import train

    out = Path(folder) / "cells" / cell.name
    torch.set_num_threads(1)
    cfg = config_from_dict({**config, "rule": cell.rule, "seed": cell.seed, "train_size": cell.train_size,
                            "num_threads": 1}, source=f"study cell {cell.name}")
    return train(cfg, out, resume=(out / "checkpoint.json").is_file(), progress=False, log=lambda s: None)


def _one_process_per_cell() -> None:
    """A pool worker trains its cell alone: it must not join the torchrun group of its parent."""
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        os.environ.pop(key, None)


def interval(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and the 95 % Student-t interval of the mean."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0, mean, mean
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    from scipy.stats import t  # scipy comes with scikit-learn

    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def summarise(cells: list[Cell], results: dict[Cell, dict[str, Any]], rules: tuple[str, ...],
              sizes: tuple[int, ...], train_samples: dict[int, int]) -> list[dict[str, Any]]:
    """The study.json cells: one record per rule and size, over seeds."""
    records = []
    for rule in rules:
        for size in sizes:
            runs = [(c, results[c]) for c in cells if c.rule == rule and c.train_size == size and c in results]
            if not runs:
                continue
            accuracies = [m["test_accuracy"] for _, m in runs]
            mean, std, low, high = interval(accuracies)
            records.append({
                "rule": rule, "train_size": size or "all", "train_samples": train_samples[size],
                "seeds": [c.seed for c, _ in runs], "accuracies": accuracies,
                "mean": mean, "std": std, "ci95_low": low, "ci95_high": high,
                "seconds": sum(m["train_seconds"] for _, m in runs),
                "curves": [[row["test_accuracy"] for row in m["history"]] for _, m in runs],
                "update_norms": [[row.get("update_norms", {}) for row in m["history"]] for _, m in runs],
            })
    return records


def check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Write ``settings.json`` on the first run; refuse a folder started with other settings."""
    path = folder / "settings.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{path} is not readable JSON; remove the study folder or choose another --out") from None
        if saved != settings:
            differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise ConfigError(f"--out {str(folder)!r} holds a study made with other settings ({', '.join(differ)} "
                              "differ); rerun with those settings to continue it, or choose another --out")
        return
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {str(folder)!r} is a file, not a study folder; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)


def study(cfg: Config, rules: tuple[str, ...], seeds: int, sizes: tuple[int, ...], out: str | Path,
          workers: int = 2, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) the study into ``out``; returns the study.json record."""
    from .data import load_task

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    folder = Path(out)
    available = len(load_task(cfg).x_train)
    too_big = [s for s in sizes if s > available]
    if too_big:
        raise ConfigError(f"--train-sizes {too_big[0]} exceeds the {available} training samples of task "
                          f"{cfg.task!r}; use smaller sizes or 'all'")
    config = cfg.to_dict()
    settings = {"config": config, "rules": list(rules), "seeds": seeds, "train_sizes": [s or "all" for s in sizes]}
    check_settings(folder, settings)
    cells = plan(rules, seeds, sizes)
    results: dict[Cell, dict[str, Any]] = {}
    world = distributed.setup("cpu")  # under torchrun: the cells are shared out over the ranks
    bar = None
    if progress and world.main:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(cells), desc=f"study {cfg.task}", unit="cell")
    todo = []
    for cell in cells:  # finished cells are read back here, not rerun
        done = folder / "cells" / cell.name / "metrics.json"
        if done.is_file():
            results[cell] = json.loads(done.read_text())
        else:
            todo.append(cell)
    if bar is not None:
        bar.update(len(results))
    mine = todo[world.rank::world.size]  # under torchrun each rank runs its share of the cells
    failure: Optional[BaseException] = None
    if mine:
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads
        try:
            with ProcessPoolExecutor(max_workers=min(workers, len(mine)), mp_context=context,
                                     initializer=_one_process_per_cell) as pool:
                futures = {pool.submit(run_cell, config, cell, str(folder)): cell for cell in mine}
                for future in as_completed(futures):
                    cell = futures[future]
                    results[cell] = future.result()  # a cell's error (e.g. TrainingDiverged) stops the study
                    if bar is not None:
                        bar.set_postfix(last=f"{cell.name} {results[cell]['test_accuracy']:.3f}")
                        bar.update(1)
        except SpikeformerError as exc:
            failure = exc
    if bar is not None:
        bar.close()
    if not distributed.agree(failure is None, world):
        if failure is not None:
            raise failure
        raise DistributedError(f"rank {world.rank}: a cell failed on another rank (its error says why); "
                               "rerun the study to continue it")
    for cell in todo[:]:  # the other ranks' cells, from the shared run folder
        if cell not in results:
            results[cell] = json.loads((folder / "cells" / cell.name / "metrics.json").read_text())
    distributed.teardown(world)
    if not world.main:
        return {}
    record = {**settings, "cells": summarise(cells, results, rules, sizes,
                                             {s: s or available for s in sizes})}
    atomic_write_json(folder / "study.json", record)
    atomic_write_bytes(folder / "study.md", markdown_table(record).encode())
    write_study_report(record, folder / "report.html")
    best = max(record["cells"], key=lambda c: (c["train_samples"], c["mean"]))
    log(f"study {cfg.task}: {len(cells)} cells; at {best['train_size']} samples the best rule is {best['rule']} "
        f"({best['mean']:.4f} mean over {seeds} seeds) -> {folder / 'study.json'}")
    return record


def markdown_table(record: dict[str, Any]) -> str:
    """study.json as a Markdown table: one row per rule, one column per training-set size, each
    cell ``mean ± std [95 % interval]`` over seeds (written to ``STUDY/study.md``)."""
    sizes = record["train_sizes"]
    rows = ["| rule | " + " | ".join(f"n = {s}" for s in sizes) + " | train s (all cells) |",
            "|---|" + "---|" * len(sizes) + "---|"]
    for rule in record["rules"]:
        cells = {c["train_size"]: c for c in record["cells"] if c["rule"] == rule}
        text = [f"{c['mean']:.3f} ± {c['std']:.3f} [{c['ci95_low']:.3f}, {c['ci95_high']:.3f}]" if c else "-"
                for c in (cells.get(s) for s in sizes)]
        seconds = sum(c["seconds"] for c in cells.values())
        rows.append(f"| {rule} | " + " | ".join(text) + f" | {seconds:.0f} |")
    return "\n".join(rows) + "\n"


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def write_study_report(record: dict[str, Any], path: Path) -> None:
    """``report.html``: accuracy vs training samples (mean and 95 % band) and learning curves per rule."""
    from matplotlib.figure import Figure

    rules = record["rules"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for rule in rules:
        rows = sorted((c for c in record["cells"] if c["rule"] == rule), key=lambda c: c["train_samples"])
        x = [c["train_samples"] for c in rows]
        ax.plot(x, [c["mean"] for c in rows], marker="o", label=rule)
        ax.fill_between(x, [c["ci95_low"] for c in rows], [c["ci95_high"] for c in rows], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training samples")
    ax.set_ylabel("test accuracy (mean, 95 % interval)")
    ax.legend(fontsize=8)
    figures = [("Accuracy against training samples", _png(fig))]
    largest = max(c["train_samples"] for c in record["cells"])
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, rule in enumerate(rules):
        for row in (c for c in record["cells"] if c["rule"] == rule and c["train_samples"] == largest):
            for j, curve in enumerate(row["curves"]):
                ax.plot(range(1, len(curve) + 1), curve, color=f"C{i}", alpha=0.6, label=rule if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"learning curves at {largest} training samples, one line per seed", fontsize=9)
    ax.legend(fontsize=8)
    figures.append(("Learning curves", _png(fig)))
    table = "".join(
        f"<tr><td>{html.escape(c['rule'])}</td><td>{c['train_size']}</td><td>{c['mean']:.4f}</td><td>{c['std']:.4f}</td>"
        f"<td>[{c['ci95_low']:.4f}, {c['ci95_high']:.4f}]</td><td>{len(c['accuracies'])}</td><td>{c['seconds']:.0f}</td></tr>"
        for c in record["cells"])
    body = "".join(f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{data}'>" for t, data in figures)
    page = (f"<!doctype html><meta charset='utf-8'><title>spikeformer study</title><h1>Study: "
            f"{html.escape(str(record['config'].get('task')))}</h1>"
            "<table border=1 cellpadding=4><tr><th>rule</th><th>train size</th><th>mean</th><th>std</th>"
            f"<th>95 % interval</th><th>seeds</th><th>train s</th></tr>{table}</table>{body}")
    atomic_write_bytes(path, page.encode())


def quick_config(cfg: Config) -> Config:
    """``cfg`` shrunk to the --quick model (a few seconds per cell)."""
    return config_from_dict({**cfg.to_dict(), **QUICK}, source="study --quick")
