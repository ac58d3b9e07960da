"""The backends of ``spikeformer validate`` and the targets of ``spikeformer export``, by name.

A small registry, so that ``neuromorphic.cli`` (the argument choices) and ``neuromorphic.validate``
(the runs) both read it and neither imports the other. Light on purpose: the CLI imports it to
build its parser, so Lava, Brian2, NIR, torch and numpy are imported inside the functions only.

Each ``Backend`` is ``name -> (runner, reference, reference_trace, extra)``:

    backend      runner                        scored against (``reference_trace``)
    lava-float   lava.run.run_lava, float      torch, delays = "loihi", float64          (SPEC §2.1-2.3)
    lava-fixed   lava.run.run_lava, fixed      fixed_ref.run_fixed, same quantised graph (SPEC §2.4, bit for bit)
    brian2       brian2_ref, mode "exact"      torch, float64 (discrete-time rebuild, exact)
    brian2-bio   brian2_ref, "biophysical"     torch, float64 (continuous time: agreement is a drift measure)
    norse        nir_io.run_norse              torch via the NIR export (feed-forward models)

``validate`` writes ``reference`` and the runner's facts, then ``extra``'s keys (lava-fixed: the
integer reference's timing, quantisation and accuracy; brian2-bio: the drift), then the scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # annotations only: importing this module imports no numpy, torch or backend
    import numpy as np

    from .ir import Graph
    from .trace import Trace

CALIBRATION_SAMPLES = 256
TORCH_REFERENCE = "torch (delays='loihi', float64)"


def fixed_graph(model, split, graph: Optional[Graph] = None) -> Graph:
    """The quantised graph of a model; the graded-input scale comes from training inputs."""
    import torch

    from .compare import encode_steps
    from .lower import lower
    from .quantize import quantize

    calibration = encode_steps(model, split.x_train[:CALIBRATION_SAMPLES], torch.Generator().manual_seed(0))
    return quantize(graph if graph is not None else lower(model), calibration=calibration)


@dataclass
class Job:
    """One ``validate`` call: what every hook of a ``Backend`` reads.

    ``x_steps [T, B, N, F]`` are the encoded test samples, ``torch_ref`` the float torch model's
    trace on them (timed: ``torch_seconds``); ``fixed()`` quantises once for the hooks that need it.
    """

    model: Any
    split: Any
    graph: Graph
    x_steps: np.ndarray
    labels: np.ndarray
    torch_ref: Trace
    torch_seconds: float
    progress: bool = True
    codegen: str = "numpy"  # Brian2's code generation target (numpy | cython)
    _fixed: Optional[tuple[Graph, np.ndarray, int]] = field(default=None, init=False, repr=False)

    def fixed(self) -> tuple[Graph, np.ndarray, int]:
        """The quantised graph, the integer input steps and how many input values were clipped."""
        if self._fixed is None:
            from .quantize import encode_fixed

            graph = fixed_graph(self.model, self.split, self.graph)
            x_int, clipped = encode_fixed(graph, self.x_steps)
            self._fixed = (graph, x_int, clipped)
        return self._fixed


@dataclass(frozen=True)
class Outcome:
    """A backend's run beside its reference: what ``Backend.extra`` reads."""

    reference: Trace
    reference_seconds: float
    trace: Trace
    info: dict[str, Any]


def _torch_reference(job: Job) -> tuple[Trace, float]:
    return job.torch_ref, job.torch_seconds


def _no_extra(job: Job, out: Outcome) -> dict[str, Any]:
    return {}


def _float_run(job: Job) -> tuple[Graph, np.ndarray]:
    return job.graph, job.x_steps


def _fixed_run(job: Job) -> tuple[Graph, np.ndarray]:
    graph, x_int, _ = job.fixed()
    return graph, x_int


@dataclass(frozen=True)
class Backend:
    """One ``spikeformer validate --backend`` choice.

    ``runner(job) -> (trace, info)`` runs the backend (``info``: timings and versions, written
    as they are); ``reference`` is the JSON ``reference`` value; ``reference_trace(job) ->
    (trace, seconds)`` produces what the run is scored against; ``extra(job, outcome)`` gives the
    backend's own JSON keys (it may also set ``saturation_events``); ``ran(job) -> (graph,
    input steps)`` is what the runner ran (the quantised graph and integer input for fixed point).
    """

    name: str
    runner: Callable[[Job], tuple[Trace, dict[str, Any]]]
    reference: str = TORCH_REFERENCE
    reference_trace: Callable[[Job], tuple[Trace, float]] = _torch_reference
    extra: Callable[[Job, Outcome], dict[str, Any]] = _no_extra
    ran: Callable[[Job], tuple[Graph, np.ndarray]] = _float_run  # the graph and input steps the runner ran


def _lava_float(job: Job) -> tuple[Trace, dict[str, Any]]:
    from .lava.run import run_lava

    return run_lava(job.graph, job.x_steps, progress=job.progress)


def _lava_fixed(job: Job) -> tuple[Trace, dict[str, Any]]:
    from .lava.run import run_lava

    return run_lava(*_fixed_run(job), progress=job.progress)


def _fixed_reference(job: Job) -> tuple[Trace, float]:
    """``neuromorphic.fixed_ref`` on the quantised graph; only the integer run is timed."""
    from .fixed_ref import run_fixed

    fixed, x_int, _ = job.fixed()
    tick = time.perf_counter()
    reference = run_fixed(fixed, x_int)
    return reference, time.perf_counter() - tick


def _fixed_extra(job: Job, out: Outcome) -> dict[str, Any]:
    from .compare import agreement

    fixed, _, clipped = job.fixed()
    seconds = out.reference_seconds
    vs_float = agreement(job.torch_ref, out.reference)
    return {"fixed_ref_seconds": seconds,
            "fixed_ref_speedup": out.info["run_seconds"] / seconds if seconds else float("nan"),
            "input_clipped": clipped, "saturation_events_fixed_ref": out.reference.saturation_events,
            "fixed_vs_float_spike_agreement": vs_float["spike_agreement"],
            "fixed_vs_float_class_agreement": vs_float["class_agreement"],
            "quantisation": fixed.fixed,
            "saturation_events": int(out.reference.saturation_events),
            "accuracy_fixed_ref": float((out.reference.logits.argmax(-1) == job.labels).mean())}


def _brian2(mode: str) -> Callable[[Job], tuple[Trace, dict[str, Any]]]:
    def run(job: Job) -> tuple[Trace, dict[str, Any]]:
        from .brian2_ref import run_brian2

        return run_brian2(job.graph, job.x_steps, mode=mode, codegen=job.codegen)

    return run


def _drift(job: Job, out: Outcome) -> dict[str, Any]:
    """How far continuous time drifts from the discrete model."""
    from .brian2_ref import drift

    return drift(job.torch_ref, out.trace)


def _norse(job: Job) -> tuple[Trace, dict[str, Any]]:
    from .nir_io import run_norse

    return run_norse(job.graph, job.x_steps)


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("lava-float", _lava_float),
    Backend("lava-fixed", _lava_fixed, reference="neuromorphic.fixed_ref (integer, same quantised graph)",
            reference_trace=_fixed_reference, extra=_fixed_extra, ran=_fixed_run),
    Backend("brian2", _brian2("exact")),
    Backend("brian2-bio", _brian2("biophysical"), extra=_drift),
    Backend("norse", _norse),
)}
BACKENDS = tuple(REGISTRY)


@dataclass(frozen=True)
class Target:
    """One ``spikeformer export --to`` choice: ``write(graph, out) -> extra summary keys``."""

    name: str
    help: str  # what ``--to NAME`` writes, for ``spikeformer export --help``
    write: Callable[[Graph, Path], dict[str, Any]]
    float_only: Optional[str] = None  # the one-line refusal of --fixed-point; None: fixed point is allowed


def _write_ir(graph: Graph, out: Path) -> dict[str, Any]:
    from .ir import save_graph

    save_graph(graph, out)
    return {}


def _write_lava(graph: Graph, out: Path) -> dict[str, Any]:
    """The IR folder, then a check that it builds as Lava processes (Lava has no file format for them)."""
    import tempfile

    import numpy as np

    from .ir import save_graph
    from .lava.run import build_network

    save_graph(graph, out)
    inp = graph.input
    with tempfile.TemporaryDirectory() as folder:
        net = build_network(graph, np.zeros((1, 1, inp.tokens, inp.features),
                                            np.int64 if graph.precision == "fixed" else float), Path(folder))
    return {"lava_processes": net.process_count}


def _write_nir(graph: Graph, out: Path) -> dict[str, Any]:
    from .nir_io import export_nir

    export_nir(graph, out)
    return {}


TARGET_REGISTRY: dict[str, Target] = {t.name: t for t in (
    Target("ir", "graph.json + arrays.safetensors", _write_ir),
    Target("lava", "the same IR, checked to build as Lava processes", _write_lava),
    Target("nir", "a .nir file (float, models without attention)", _write_nir,
           float_only="NIR holds float parameters only; export to nir without --fixed-point"),
)}
TARGETS = tuple(TARGET_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in REGISTRY:
        from spikeformer.errors import SpikeformerError

        raise SpikeformerError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    return REGISTRY[name]


def get_target(name: str) -> Target:
    if name not in TARGET_REGISTRY:
        from spikeformer.errors import SpikeformerError

        raise SpikeformerError(f"unknown export target {name!r}; choose one of {TARGETS}")
    return TARGET_REGISTRY[name]
