"""Train the spiking model and its ANN baseline on each config and tabulate the results.

    python demos/benchmarks.py demos/digits.toml demos/mnist1d.toml --out runs/bench [--seed 0]

For every config: ``spikeformer train --config C --out OUT/<name>-spikeformer`` and the same
with ``--set model="ann"``; finished runs are reused, unfinished ones resumed. Prints a
Markdown table (the one in docs/benchmarks.md) and writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from spikeformer.bench import cpu_name
from spikeformer.checkpoint import atomic_write_json
from spikeformer.config import load_config
from spikeformer.errors import SpikeformerError
from spikeformer.train import train


def run_one(config: Path, model: str, seed: int, out: Path, threads: int) -> dict:
    overrides = {"model": model, "seed": seed}
    if threads:
        overrides["num_threads"] = threads
    cfg = load_config(config, overrides)
    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("config") == cfg.to_dict():
            return metrics
    return train(cfg, out, resume=(out / "checkpoint.json").is_file())


def row(name: str, m: dict) -> str:
    return (f"| {name} | {m['model']} | {m['test_accuracy']:.4f} | {m['best_test_accuracy']:.4f} | "
            f"{m['params']:,} | {m['attention_params']:,} | {m['synops_per_sample']:,.0f} | "
            f"{m['macs_per_sample']:,.0f} | {m['energy_pj_per_sample'] / 1e6:.3f} | {m['train_seconds']:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="spikeformer,ann")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = config/default)")
    args = parser.parse_args()
    results = []
    try:
        for config in args.configs:
            for model in args.models.split(","):
                out = args.out / f"{config.stem}-{model}"
                metrics = run_one(config, model, args.seed, out, args.threads)
                results.append({"config": str(config), "run": str(out), **{k: v for k, v in metrics.items()
                                                                          if k not in ("history", "config")}})
    except SpikeformerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    atomic_write_json(args.out / "summary.json", {"machine": machine, "results": results})
    print(f"\nmachine: {machine}\n")
    print("| config | model | test acc (final) | best epoch | params | attention params | "
          "synops/sample | MACs/sample | energy uJ/sample (est.) | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(row(Path(r["config"]).stem, r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
