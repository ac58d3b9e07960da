"""Running an exported NIR graph in Norse: its importer plus the Delay node it lacks, and the
mends of its CubaLIF import (``norse_module``, ``norse_trace``, ``run_norse``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .ir import Graph
from .nir_base import DEFAULT_DT, _arr, _metadata, _nir, image_order
from .nir_export import graph_to_nir
from .nir_import import _grid, _steps, read_nir
from .trace import Trace


# ---------------------------------------------------------------------------------------------
# running an exported graph in Norse (its importer plus the Delay node it lacks)


def norse_module(source: Any, dt: float | None = None, dtype: Any = None):
    """A Norse/nirtorch module for a NIR graph: ``norse.torch.from_nir``'s per-node map, plus a
    ``Delay`` node (Norse has none; stock ``from_nir`` fails on one with a KeyError).

    ``dt`` defaults to ``metadata["dt"]``. Norse's importer makes every parameter float32;
    with ``dtype`` (e.g. ``torch.float64``) the same parameters are set again from the NIR
    arrays in that dtype (Norse's equations unchanged). Called once per step:
    ``out, state = module(x_t, state)``; ``state.cache[node]`` holds every node's output of
    that step (node names with '.' -> '_')."""
    import warnings

    import nirtorch
    import torch
    from norse.torch.utils.import_nir import _import_norse_module

    nir = _nir()
    g = read_nir(source) if isinstance(source, (str, Path)) else source
    if dt is None:
        dt = float(_metadata(g).get("dt", DEFAULT_DT))

    class Delay(torch.nn.Module):
        """y[t] = x[t - steps] (zeros before); state = the last ``steps`` inputs."""

        def __init__(self, steps: int) -> None:
            super().__init__()
            self.steps = steps

        def forward(self, x, state=None):
            buffer = list(state) if state is not None else [torch.zeros_like(x)] * self.steps
            buffer.append(x)
            return buffer[0], tuple(buffer[1:])

    def model_map(node):
        if isinstance(node, nir.Delay):
            return Delay(_steps(_arr(node.delay, "Delay"), dt, "Delay"))
        if isinstance(node, nir.Flatten):
            # NIR's dims have no batch axis; Norse hands them to torch.nn.Flatten unchanged (norse 1.1.0)
            return torch.nn.Flatten(node.start_dim + 1, node.end_dim if node.end_dim < 0 else node.end_dim + 1)
        module = _import_norse_module(node, ignore_warnings=True, dt=dt)
        if isinstance(node, nir.CubaLIF):
            _cuba_lif_as_nir_defines(module)
        if isinstance(node, nir.LIF) and np.any(_arr(node.v_leak, "LIF") != 0):
            _start_at_zero(module)
        return module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch.load is what from_nir calls
        module = nirtorch.load(g, model_map)
    module.execution_order = _topological(module.execution_order)
    if dtype is not None:
        module.to(dtype)
        for name, node in g.nodes.items():
            _set_norse_parameters(getattr(module, name.replace(".", "_"), None), node, dtype)
    return module


def _cuba_lif_as_nir_defines(module: Any) -> None:
    """Mend two departures of Norse's CubaLIF import from NIR's CubaLIF (norse 1.1.0): its
    synapse leaks toward the node's ``v_leak`` (NIR: ``tau_syn dI/dt = -I + w_in S``, no leak
    target) and its membrane starts at ``v_leak`` instead of 0. Both matter once a population
    has a bias (``v_leak != 0``); Norse's equations are otherwise used as they are."""
    import torch
    from norse.torch.functional.lif_box import LIFBoxFeedForwardState

    synapse = module.synapse
    synapse.p = synapse.p._replace(v_leak=torch.zeros_like(synapse.p.v_leak))
    _start_at_zero(module.lif)


def _start_at_zero(cell: Any) -> None:
    """NIR's membrane starts at 0; Norse's LIF box cell starts at ``v_leak`` (norse 1.1.0)."""
    import torch
    from norse.torch.functional.lif_box import LIFBoxFeedForwardState

    cell.state_fallback = lambda x: LIFBoxFeedForwardState(v=torch.zeros_like(x))  # bound at init


def _set_norse_parameters(sub: Any, node: Any, dtype: Any) -> None:
    """Norse's parameters of one imported node, from the NIR arrays in ``dtype`` (same formulas
    as norse/torch/utils/import_nir.py: tau_mem_inv = 1 / tau, ...)."""
    import torch

    nir = _nir()

    def t(value: Any) -> Any:
        return torch.as_tensor(_arr(value, "node"), dtype=dtype)

    if isinstance(node, nir.Conv2d) and isinstance(sub, torch.nn.Conv2d):
        sub.weight.data, sub.bias.data = t(node.weight), t(node.bias)
    elif isinstance(node, (nir.Affine, nir.Linear)) and isinstance(sub, torch.nn.Linear):
        sub.weight.data = t(node.weight)
        if isinstance(node, nir.Affine) and sub.bias is not None:
            sub.bias.data = t(node.bias)
    elif isinstance(node, nir.LIF) and hasattr(sub, "p"):
        sub.p = sub.p._replace(tau_mem_inv=1 / t(node.tau), v_th=t(node.v_threshold), v_leak=t(node.v_leak))
    elif isinstance(node, nir.IF) and hasattr(sub, "p"):
        sub.p = sub.p._replace(v_th=t(node.v_threshold))
    elif isinstance(node, nir.CubaLIF) and hasattr(sub, "synapse"):
        sub.w_in, sub.r = t(node.w_in), t(node.r)
        sub.synapse.p = sub.synapse.p._replace(tau_mem_inv=1 / t(node.tau_syn), v_leak=0 * t(node.v_leak))
        sub.lif.p = sub.lif.p._replace(tau_mem_inv=1 / t(node.tau_mem), v_th=t(node.v_threshold),
                                       v_leak=t(node.v_leak))
    for holder in (sub, getattr(sub, "synapse", None), getattr(sub, "lif", None)):
        p = getattr(holder, "p", None)
        if isinstance(p, tuple) and hasattr(p, "_fields"):  # remaining floats (v_reset, ...) in dtype
            holder.p = type(p)(*[v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                                 for v in p])


def _topological(order: list) -> list:
    """nirtorch's nodes (``GraphExecutor.execution_order``) in an order where each node comes after
    every node that feeds it, and the sinks (the graph's output) last.

    nirtorch 2.6 orders them depth first from the input (``graph_utils.trace_execution``), which
    is not topological: a node fed by two branches can run before the second one, and then sums
    that branch's output of the previous step, one step late; and the executor returns the
    output of whichever node came last. Both happen when the input fans out to two paths that
    meet again (a re-exported import with its ``nir.clock``). Ties keep nirtorch's order; a
    cycle's nodes keep nirtorch's order too (there the previous step is what a recurrent edge means)."""
    position = {node: i for i, node in enumerate(order)}
    feeding = {node: [src for src in order if node in src.outgoing_nodes] for node in order}
    done: set = set()
    result: list = []
    pending = list(order)
    while pending:
        ready = [n for n in pending if all(src in done for src in feeding[n])] or pending  # or a cycle
        for node in sorted(ready, key=position.__getitem__):
            done.add(node)
            result.append(node)
        pending = [n for n in pending if n not in done]
    return [n for n in result if n.outgoing_nodes] + [n for n in result if not n.outgoing_nodes]


def norse_trace(source: Any, x_steps: np.ndarray, dt: float | None = None) -> Trace:
    """Run a NIR graph written by ``export_nir`` in Norse (float64) on ``x_steps [T, B, N, F]``:
    the same ``Trace`` as ``run_graph`` (spikes per lif population, readout per step)."""
    import torch

    g = read_nir(source) if isinstance(source, (str, Path)) else source
    return _norse_run(norse_module(g, dt, torch.float64), g, x_steps)


def _norse_run(module: Any, g: Any, x_steps: np.ndarray) -> Trace:
    import torch

    meta = json.loads(_metadata(g).get("ir_meta", "{}"))
    steps, batch = x_steps.shape[:2]
    grids = {name: _grid(_metadata(node), int(np.prod(node.output_type["output"])))
             for name, node in g.nodes.items() if _metadata(node).get("ir_kind") == "lif"}
    # [C, H, W] nodes hold an IR grid's neurons in image order (Population.image_order)
    orders = {name: image_order(_metadata(node)) for name, node in g.nodes.items()}
    to_grid = {name: np.argsort(order) for name, order in orders.items() if order is not None}
    source = next(name for name, node in g.nodes.items() if isinstance(node, _nir().Input))
    in_shape = [int(n) for n in np.asarray(g.nodes[source].input_type["input"]).reshape(-1)]
    spikes = {name: np.zeros((steps, batch, *grid), bool) for name, grid in grids.items()}
    readout, state = [], None
    with torch.no_grad():
        for t in range(steps):
            x_t = np.ascontiguousarray(x_steps[t]).reshape(batch, -1)  # [B, N*F]
            if orders[source] is not None:
                x_t = x_t[:, orders[source]]
            out, state = module(torch.from_numpy(x_t).double().reshape(batch, *in_shape), state)
            for name, grid in grids.items():
                nir_spikes = state.cache[name.replace(".", "_")].numpy().reshape(batch, -1) != 0
                if name in to_grid:
                    nir_spikes = nir_spikes[:, to_grid[name]]
                spikes[name][t] = nir_spikes.reshape(batch, *grid)
            readout.append(out.numpy().reshape(batch, -1))
    return Trace(spikes, np.stack(readout, 0), int(meta.get("window", 1)))


def run_norse(graph: Graph, x_steps: np.ndarray, dt: float = DEFAULT_DT) -> tuple[Trace, dict[str, Any]]:
    """The ``validate --backend norse`` run: ``graph`` -> NIR (in memory, exactly what
    ``export_nir`` writes) -> Norse in float64 on ``x_steps [T, B, N, F]``. Returns the
    ``Trace`` (spikes by population name, readout) and timing/version facts for the JSON."""
    import time
    from importlib.metadata import version

    import torch

    tick = time.perf_counter()
    g = graph_to_nir(graph, dt)
    module = norse_module(g, dt, torch.float64)
    build_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    trace = _norse_run(module, g, x_steps)
    run_seconds = time.perf_counter() - tick
    steps, batch = x_steps.shape[:2]
    info = {
        "norse_version": version("norse"), "nir_version": version("nir"), "nirtorch_version": version("nirtorch"),
        "nir_dt": float(dt), "dtype": "float64", "nir_nodes": len(g.nodes), "steps": int(steps),
        "build_seconds": build_seconds, "run_seconds": run_seconds,
        "steps_per_second": steps * batch / run_seconds if run_seconds > 0 else float("inf"),
        "importer": "norse.torch.utils.import_nir._import_norse_module via nirtorch.load, plus a Delay node",
    }
    return trace, info
