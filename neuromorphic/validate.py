"""``spikeformer export`` and ``spikeformer validate``: run a trained model on a backend and score it.

Every backend reads the IR lowered from the run's checkpoint. What runs it, the reference it is
scored against (the ``reference`` key of ``validate-<backend>.json``) and its extra keys come
from the registry in ``neuromorphic.backends``; the export targets too.

``accuracy_torch`` is always the float torch model on the same samples.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from spikeformer.checkpoint import atomic_write_json
from spikeformer.errors import SpikeformerError

from .backends import BACKENDS, CALIBRATION_SAMPLES, TARGETS, Job, Outcome, fixed_graph, get_backend, get_target
from .compare import agreement, chip_activity, encode_steps, torch_trace
from .lower import lower

__all__ = ["BACKENDS", "CALIBRATION_SAMPLES", "TARGETS", "export", "fixed_graph", "validate"]


LM_WINDOW = 64  # characters per validation window of a language model


def _load(run: str | Path):
    from spikeformer.train import load_run

    cfg, model, split, meta = load_run(run)
    return cfg, model, split


def _steps(model, x: torch.Tensor, seed: int) -> np.ndarray:
    return encode_steps(model, x, torch.Generator().manual_seed(seed))


def export(run: str | Path, to: str, out: str | Path, fixed_point: bool = False) -> dict[str, Any]:
    """Write the model of ``run`` as an IR folder (``ir``, ``lava``) or a NIR file (``nir``)."""
    target = get_target(to)
    cfg, model, split = _load(run)
    graph = lower(model)
    if fixed_point:
        if target.float_only:
            raise SpikeformerError(target.float_only)
        graph = fixed_graph(model, split, graph)
    from .ir import graph_summary

    summary = {"run": str(run), "to": to, "out": str(out), **graph_summary(graph)}
    summary.update(target.write(graph, Path(out)))
    return summary


def validate(run: str | Path, backend: str, samples: int = 100, progress: bool = True,
             log: Callable[[str], None] = print, codegen: str = "numpy") -> dict[str, Any]:
    """Run ``samples`` test samples on ``backend``; write and return ``RUN/validate-<backend>.json``.
    ``codegen``: Brian2's target, ``numpy`` (no compile step) or ``cython`` (compiled once and cached,
    faster for long runs; build and run seconds are reported apart)."""
    spec = get_backend(backend)
    if samples <= 0:
        raise SpikeformerError(f"--samples must be a positive number, got {samples}")
    if codegen != "numpy" and not backend.startswith("brian2"):
        raise SpikeformerError(f"--codegen {codegen} is for the Brian2 backends, not {backend!r}")
    cfg, model, split = _load(run)
    graph = lower(model)
    count = min(samples, len(split.x_test))
    x, labels = split.x_test[:count], split.y_test[:count].numpy()
    if cfg.every_token:  # a language model: windows of LM_WINDOW characters, a prediction after each
        x, labels = x[:, :LM_WINDOW], labels[:, :LM_WINDOW]
    per_token = {"tokens": x.shape[1], "latency": int(graph.meta["latency"])} if cfg.every_token else {}
    x_steps = _steps(model, x, cfg.seed)
    tick = time.perf_counter()
    torch_ref = replace(torch_trace(model, x_steps), **per_token)
    torch_seconds = time.perf_counter() - tick
    record: dict[str, Any] = {"backend": backend, "run": str(run), "samples": count,
                              "latency_steps": int(graph.meta["latency"]), "steps_per_sample": int(x_steps.shape[0]),
                              "torch_seconds": torch_seconds, "saturation_events": 0}
    if cfg.every_token:
        record["characters_per_window"] = int(x.shape[1])
    job = Job(model, split, graph, x_steps, labels, torch_ref, torch_seconds, progress, codegen)
    reference, ref_seconds = spec.reference_trace(job)
    trace, info = spec.runner(job)
    reference, trace = replace(reference, **per_token), replace(trace, **per_token)
    score = agreement(reference, trace, labels)
    score["accuracy_torch"] = float((torch_ref.logits.argmax(-1) == labels).mean())
    record.update(reference=spec.reference, **info)
    record.update(spec.extra(job, Outcome(reference, ref_seconds, trace, info)))
    record.update(score)
    record.setdefault("steps_per_second", float("nan"))
    ran_graph, ran_inputs = spec.ran(job)
    record["chip"] = chip_activity(ran_graph, trace, ran_inputs)
    atomic_write_json(Path(run) / f"validate-{backend}.json", _jsonable(record))
    what = f"windows of {x.shape[1]} characters" if cfg.every_token else "samples"
    agree = "prediction agreement (per character)" if cfg.every_token else "class agreement"
    log(f"{backend}: {count} {what}, spike agreement {record['spike_agreement']:.6f}, {agree} "
        f"{record['class_agreement']:.4f}, accuracy {record['accuracy_backend']:.4f} (torch "
        f"{record['accuracy_torch']:.4f}), {record['steps_per_second']:.0f} steps/s "
        f"-> {Path(run) / f'validate-{backend}.json'}")
    return record


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
