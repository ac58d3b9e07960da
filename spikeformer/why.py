"""``spikeformer why``: the why-spiking claims tested on one model, in one command.

From one config it trains (or reuses) one run per row, with the same seed and recipe, in
``OUT/<row>/``, scores each with the robustness suite (``eval --corruptions``), and tabulates:

- ``direct``: the config as given (learned attention, direct encoding);
- ``retina``: ``encoder = "retina"`` (and ``stem = "linear"``, which the retina feeds);
- ``cortical``: ``attention = "cortical"``, or the ``--cortical`` config;
- ``three_factor``: ``variant = "three_factor"``, the control for the next row;
- ``top_down``: ``variant = "three_factor"``, ``top_down = "readout"``;
- ``ann``: ``model = "ann"``, the transformer of the same width and depth.

A row whose ``metrics.json`` holds the same config (the thread count aside) is reused, one
with only a checkpoint resumes, and ``robustness.json`` is rerun when older than the run's
metrics, so an interrupted command continues where it stopped. Rows train in a pool of worker
processes, one torch thread each; a single row left to train runs in this process on the
config's threads. Writes ``OUT/why.json``, ``OUT/why.md`` (the table) and the
``compare`` report of the rows (``OUT/compare.html``).
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .checkpoint import atomic_write_bytes, atomic_write_json
from .config import Config, config_from_dict
from .errors import ConfigError, SpikeformerError
from .robustness import MODEL_NOISE

# row -> the keys it sets on the config
ROWS: dict[str, dict[str, Any]] = {
    "direct": {},
    "retina": {"encoder": "retina", "stem": "linear"},
    "cortical": {"attention": "cortical"},
    "three_factor": {"variant": "three_factor"},
    "top_down": {"variant": "three_factor", "top_down": "readout"},
    "ann": {"model": "ann"},
}
CONTROL = {"top_down": "three_factor"}  # the row a row's note compares with (default: direct)
IGNORED = ("num_threads",)  # keys that do not change what a run computes, up to float rounding


def parse_rows(text: str) -> tuple[str, ...]:
    """``--rows a,b`` -> the rows in table order, checked."""
    chosen = [r.strip() for r in text.split(",") if r.strip()]
    for row in chosen:
        if row not in ROWS:
            raise ConfigError(f"unknown row {row!r} for --rows; choose from {', '.join(ROWS)}")
    if not chosen:
        raise ConfigError(f"--rows is empty; choose from {', '.join(ROWS)}")
    return tuple(r for r in ROWS if r in chosen)


def row_configs(cfg: Config, rows: Sequence[str], cortical: Optional[Config] = None) -> dict[str, Config]:
    """The config of each row; a row that repeats an earlier row's config is left out."""
    if cfg.model != "spikeformer" or cfg.attention != "learned" or cfg.encoder == "retina" or cfg.top_down != "none":
        raise ConfigError("spikeformer why starts from a spiking model with learned attention, no top-down and "
                          "direct or Poisson encoding (the rows change those); give such a --config")
    if cortical is not None and (cortical.task != cfg.task or cortical.attention != "cortical"):
        raise ConfigError(f"--cortical must be a config of task {cfg.task!r} with attention = \"cortical\"")
    base = cfg.to_dict()
    configs: dict[str, Config] = {}
    for row in rows:
        if row == "cortical" and cortical is not None:
            values = {**cortical.to_dict(), "seed": cfg.seed}
        else:
            values = {**base, **ROWS[row]}
        try:
            candidate = config_from_dict(values, source=f"row {row!r}")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (leave the row out with --rows)") from None
        if not any(same_run(candidate.to_dict(), c.to_dict()) for c in configs.values()):
            configs[row] = candidate
    return configs


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two config dicts, in ``b``'s order, ``IGNORED`` aside."""
    return [k for k in {**b, **a} if k not in IGNORED and a.get(k) != b.get(k)]


def same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return not differing(a, b)


def finished(folder: Path, cfg: Config) -> bool:
    """Whether ``folder`` holds this config's finished run; refuses one of another config."""
    path = folder / "metrics.json"
    if not path.is_file():
        return False
    try:
        saved = config_from_dict(json.loads(path.read_text())["config"], source=str(path)).to_dict()
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"{path} is not a readable run; remove {folder} or choose another --out") from None
    differ = differing(saved, cfg.to_dict())
    if differ:
        raise ConfigError(f"{folder} holds a run of another config ({', '.join(sorted(differ))} differ); remove it or "
                          "choose another --out")
    return True


def robustness_current(folder: Path, samples: Optional[int] = None) -> bool:
    """Whether ``robustness.json`` scores the finished run on the asked test samples (None: all)."""
    path = folder / "robustness.json"
    if not path.is_file() or path.stat().st_mtime < (folder / "metrics.json").stat().st_mtime:
        return False
    try:
        return json.loads(path.read_text()).get("subset") == samples
    except (OSError, ValueError):
        return False  # unreadable: score it again


def _say(text: str) -> None:
    """One line of a row's progress, above the row bar when this process draws one."""
    from tqdm.auto import tqdm

    tqdm.write(text)


def run_row(config: dict[str, Any], folder: str, threads: int = 1, samples: Optional[int] = None,
            talk: bool = False) -> str:
    """Train (or resume) one row and score it with the robustness suite; in a worker process.
    ``talk``: a line per finished epoch and one when the scoring starts (rows run for hours)."""
    import torch

    from .robustness import write_robustness
    from .train import load_run, train

    out = Path(folder)
    if threads:
        torch.set_num_threads(threads)
    cfg = config_from_dict({**config, **({"num_threads": threads} if threads else {})}, source=f"row {out.name}")

    def epoch_done(row: dict[str, Any]) -> None:
        _say(f"why {out.name}: epoch {row['epoch'] + 1}/{cfg.epochs}, test accuracy {row['test_accuracy']:.4f}, "
             f"{row['seconds']:.0f} s training")

    if not finished(out, cfg):
        train(cfg, out, resume=(out / "checkpoint.json").is_file(), progress=False, log=lambda s: None,
              epoch_log=epoch_done if talk else None)
    if not robustness_current(out, samples):
        if talk:
            _say(f"why {out.name}: robustness suite on {'all' if samples is None else f'the first {samples}'} "
                 "test samples")
        saved, model, split, _ = load_run(out)
        write_robustness(out, model, split, saved, samples=samples)
    return out.name


def _mean_last(history: list[dict[str, Any]], n: int = 10) -> Optional[float]:
    scores = [h["test_accuracy"] for h in history[-n:] if "test_accuracy" in h]
    return sum(scores) / len(scores) if scores else None


def change(base: Config, cfg: Config) -> str:
    """What ``cfg`` sets differently from ``base``, as TOML (the table's second column)."""
    b = cfg.to_dict()
    return ", ".join(f"{k} = {json.dumps(b[k])}" for k in differing(base.to_dict(), b)) or "the config as given"


def summary_row(row: str, folder: Path, changed: str) -> dict[str, Any]:
    """One line of the table, from the run's metrics.json and robustness.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    robust = json.loads((folder / "robustness.json").read_text())
    energy = metrics.get("energy_pj_per_sample")
    return {
        "row": row, "change": changed, "run": str(folder), "model": metrics.get("model"),
        "test_accuracy": metrics["test_accuracy"], "last10_mean_accuracy": _mean_last(metrics.get("history", [])),
        "mean_input_corruption_accuracy": robust.get("mean_input_corruption_accuracy"),
        "mean_model_noise_accuracy": robust.get("mean_model_noise_accuracy"),
        "model_noises": sorted(n for n in robust.get("corruptions", {}) if n in MODEL_NOISE),
        "attention_params": metrics.get("attention_params"), "params": metrics.get("params"),
        "energy_uj_per_sample": energy / 1e6 if energy is not None else None,
        "latency_steps": metrics.get("latency_steps"), "train_seconds": metrics.get("train_seconds"),
    }


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def markdown_table(record: dict[str, Any]) -> str:
    """The table of why.md: one line per row, then each row against its control (``CONTROL``, else direct)."""
    lines = ["| row | change | clean accuracy | last 10 epochs | input-corruption mean | model-noise mean | "
             "learnable attention params | energy uJ/sample (est.) | latency (steps) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        noise = _cell(r["mean_model_noise_accuracy"], 3)
        if r["model"] == "ann" and r["mean_model_noise_accuracy"] is not None:
            noise += " (weight noise only)"
        lines.append(f"| {r['row']} | {r['change']} | {_cell(r['test_accuracy'])} | "
                     f"{_cell(r['last10_mean_accuracy'])} | {_cell(r['mean_input_corruption_accuracy'], 3)} | "
                     f"{noise} | {_cell(r['attention_params'])} | {_cell(r['energy_uj_per_sample'], 2)} | "
                     f"{_cell(r['latency_steps'])} |")
    rows = {r["row"]: r for r in record["rows"]}
    notes = []
    for r in record["rows"]:
        against = CONTROL.get(r["row"], "direct")
        against = against if against in rows else "direct"
        base = rows.get(against)
        if base is None or r is base:
            continue
        ratio = (base["attention_params"] / r["attention_params"]
                 if r["attention_params"] and base["attention_params"] else 0)
        fewer = f", {ratio:.1f}x fewer learnable attention params" if ratio >= 2 else ""
        notes.append(f"- {r['row']} against {against}: clean "
                     f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.2f} points, input corruptions "
                     f"{_diff(r, base, 'mean_input_corruption_accuracy')}, energy "
                     f"{_ratio(r, base, 'energy_uj_per_sample')}{fewer}")
    if record.get("robustness_samples"):
        notes.append(f"- corruption means over the first {record['robustness_samples']:,} test samples; clean "
                     "accuracy over all of them")
    return "\n".join(lines + [""] + notes) + "\n"


def _diff(a: dict[str, Any], b: dict[str, Any], key: str) -> str:
    if a[key] is None or b[key] is None:
        return "-"
    return f"{100 * (a[key] - b[key]):+.2f} points"


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> str:
    if not a[key] or not b[key]:
        return "-"
    return f"{a[key] / b[key]:.2f}x"


def why(cfg: Config, out: str | Path, rows: Sequence[str] = tuple(ROWS), cortical: Optional[Config] = None,
        workers: int = 2, progress: bool = True, log: Callable[[str], None] = print,
        samples: Optional[int] = None) -> dict[str, Any]:
    """Train, score and tabulate the rows into ``out``; returns the why.json record. ``samples``:
    score the robustness suite on the first N test samples (None: all)."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if samples is not None and samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {str(folder)!r} is a file; give a folder")
    configs = row_configs(cfg, rows, cortical)
    todo = [row for row, c in configs.items()
            if not (finished(folder / row, c) and robustness_current(folder / row, samples))]
    folder.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc=f"why {cfg.task}", unit="row",
               disable=not progress)
    parallel = min(workers, len(todo))
    threads = 1 if parallel > 1 else cfg.num_threads  # one thread per worker: two workers fill two cores
    if todo and parallel == 1:  # one worker, or one row left (a resume): every core on it
        for row in todo:  # in this process: no start-up cost for a single worker
            run_row(configs[row].to_dict(), str(folder / row), threads, samples, talk=progress)
            bar.update(1)
    elif todo:
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads
        with ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
            futures = [pool.submit(run_row, configs[row].to_dict(), str(folder / row), threads, samples, progress)
                       for row in todo]
            for future in as_completed(futures):
                bar.set_postfix(last=future.result())  # a row's error (e.g. TrainingDiverged) stops the command
                bar.update(1)
    bar.close()
    from .bench import cpu_name
    from .compare import compare

    record = {"task": cfg.task, "seed": cfg.seed, "machine": cpu_name(), "config": cfg.to_dict(),
              "robustness_samples": samples,
              "rows": [summary_row(row, folder / row, change(cfg, c)) for row, c in configs.items()]}
    atomic_write_json(folder / "why.json", record)
    atomic_write_bytes(folder / "why.md", markdown_table(record).encode())
    if len(configs) > 1:
        try:
            _, page = compare([folder / row for row in configs], folder / "compare")
        except SpikeformerError as exc:  # the table stands without the page
            log(f"compare page not written: {exc}")
        else:
            log(f"compare page {page}")
    log(f"why {cfg.task}: {len(configs)} rows -> {folder / 'why.md'}")
    return record
