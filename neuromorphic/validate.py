"""``spikeformer export`` and ``spikeformer validate``: run a trained model on a backend and score it.

Every backend reads the IR lowered from the run's checkpoint. The reference it is scored
against (the ``reference`` key of ``validate-<backend>.json``):

    lava-float   torch, delays = "loihi", float64                     (SPEC §2.1-2.3)
    lava-fixed   neuromorphic.fixed_ref on the same quantised graph    (SPEC §2.4, bit for bit)
    brian2       torch, float64 (discrete-time rebuild, exact)
    brian2-bio   torch, float64 (continuous time: agreement is a drift measure)
    norse        torch via the NIR export (feed-forward models)

``accuracy_torch`` is always the float torch model on the same samples.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from spikeformer.checkpoint import atomic_write_json
from spikeformer.errors import SpikeformerError

from .cli import BACKENDS, TARGETS
from .compare import agreement, encode_steps, torch_trace
from .ir import Graph, save_graph
from .lower import lower

CALIBRATION_SAMPLES = 256


def _load(run: str | Path):
    from spikeformer.train import load_run

    cfg, model, split, meta = load_run(run)
    return cfg, model, split


def _steps(model, x: torch.Tensor, seed: int) -> np.ndarray:
    return encode_steps(model, x, torch.Generator().manual_seed(seed))


def fixed_graph(model, split, graph: Optional[Graph] = None) -> Graph:
    """The quantised graph of a model; the graded-input scale comes from training inputs."""
    from .quantize import quantize

    calibration = _steps(model, split.x_train[:CALIBRATION_SAMPLES], 0)
    return quantize(graph if graph is not None else lower(model), calibration=calibration)


def export(run: str | Path, to: str, out: str | Path, fixed_point: bool = False) -> dict[str, Any]:
    """Write the model of ``run`` as an IR folder (``ir``, ``lava``) or a NIR file (``nir``)."""
    if to not in TARGETS:
        raise SpikeformerError(f"unknown export target {to!r}; choose one of {TARGETS}")
    cfg, model, split = _load(run)
    graph = lower(model)
    if fixed_point:
        if to == "nir":
            raise SpikeformerError("NIR holds float parameters only; export to nir without --fixed-point")
        graph = fixed_graph(model, split, graph)
    from .ir import graph_summary

    summary = {"run": str(run), "to": to, "out": str(out), **graph_summary(graph)}
    if to == "nir":
        from .nir_io import export_nir

        export_nir(graph, out)
        return summary
    save_graph(graph, out)
    if to == "lava":  # Lava has no file format for process graphs: check the IR builds as processes
        import tempfile

        from .lava.run import build_network

        inp = graph.input
        with tempfile.TemporaryDirectory() as folder:
            net = build_network(graph, np.zeros((1, 1, inp.tokens, inp.features), np.int64 if fixed_point else float),
                                Path(folder))
        summary["lava_processes"] = net.process_count
    return summary


def validate(run: str | Path, backend: str, samples: int = 100, progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``samples`` test samples on ``backend``; write and return ``RUN/validate-<backend>.json``."""
    if backend not in BACKENDS:
        raise SpikeformerError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if samples <= 0:
        raise SpikeformerError(f"--samples must be a positive number, got {samples}")
    cfg, model, split = _load(run)
    graph = lower(model)
    count = min(samples, len(split.x_test))
    x, labels = split.x_test[:count], split.y_test[:count].numpy()
    x_steps = _steps(model, x, cfg.seed)
    tick = time.perf_counter()
    torch_ref = torch_trace(model, x_steps)
    torch_seconds = time.perf_counter() - tick
    record: dict[str, Any] = {"backend": backend, "run": str(run), "samples": count,
                              "latency_steps": int(graph.meta["latency"]), "steps_per_sample": int(x_steps.shape[0]),
                              "torch_seconds": torch_seconds, "saturation_events": 0}
    if backend == "lava-float":
        from .lava.run import run_lava

        trace, info = run_lava(graph, x_steps, progress=progress)
        score = agreement(torch_ref, trace, labels)
        record.update(reference="torch (delays='loihi', float64)", **info)
    elif backend == "lava-fixed":
        from .fixed_ref import run_fixed
        from .lava.run import run_lava
        from .quantize import encode_fixed

        fixed = fixed_graph(model, split, graph)
        x_int, clipped = encode_fixed(fixed, x_steps)
        tick = time.perf_counter()
        reference = run_fixed(fixed, x_int)
        ref_seconds = time.perf_counter() - tick
        trace, info = run_lava(fixed, x_int, progress=progress)
        score = agreement(reference, trace, labels)
        score["accuracy_torch"] = float((torch_ref.logits.argmax(-1) == labels).mean())
        score["accuracy_fixed_ref"] = float((reference.logits.argmax(-1) == labels).mean())
        vs_float = agreement(torch_ref, reference)
        record.update(reference="neuromorphic.fixed_ref (integer, same quantised graph)", **info,
                      fixed_ref_seconds=ref_seconds,
                      fixed_ref_speedup=info["run_seconds"] / ref_seconds if ref_seconds else float("nan"),
                      input_clipped=clipped, saturation_events_fixed_ref=reference.saturation_events,
                      fixed_vs_float_spike_agreement=vs_float["spike_agreement"],
                      fixed_vs_float_class_agreement=vs_float["class_agreement"],
                      quantisation=fixed.fixed)
        record["saturation_events"] = int(reference.saturation_events)
    elif backend in ("brian2", "brian2-bio"):
        from .brian2_ref import drift, run_brian2

        mode = "exact" if backend == "brian2" else "biophysical"
        trace, info = run_brian2(graph, x_steps, mode=mode)
        score = agreement(torch_ref, trace, labels)
        record.update(reference="torch (delays='loihi', float64)", **info)
        if mode == "biophysical":  # how far continuous time drifts from the discrete model
            record.update(drift(torch_ref, trace))
    else:  # norse
        from .nir_io import run_norse

        trace, info = run_norse(graph, x_steps)
        score = agreement(torch_ref, trace, labels)
        record.update(reference="torch (delays='loihi', float64)", **info)
    record.update(score)
    record.setdefault("steps_per_second", float("nan"))
    atomic_write_json(Path(run) / f"validate-{backend}.json", _jsonable(record))
    log(f"{backend}: {count} samples, spike agreement {record['spike_agreement']:.6f}, class agreement "
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
