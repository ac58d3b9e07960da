"""NIR export: IR ``Graph`` -> NIR graph (``graph_to_nir``, ``export_nir``); the mapping is in
``neuromorphic.nir_io``'s docstring and docs/backends.md."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from spikeformer.checkpoint import atomic_write_bytes

from .ir import Connection, Graph, LoweringError, Population
from .nir_base import DEFAULT_DT, FORMAT, NIR_IO_VERSION, _nir, _one_line, decay_to_tau


# ---------------------------------------------------------------------------------------------
# export: IR Graph -> NIR graph


def _full_weight(conn: Connection, dst: Population) -> np.ndarray:
    """``[N_out*F_out, N_in*F_in]`` over token-major flattened grids (tokenwise -> kron(I_N, W))."""
    return np.asarray(conn.full_weight(dst.tokens), np.float64)


def _neuron_node(pop: Population, dt: float, metadata: dict):
    """The NIR node of a lif population, the gain folded into its incoming weights, and whether
    its bias travels in the Affine bias (True) or in the node's ``v_leak`` (False)."""
    nir = _nir()
    n = pop.size
    ones, zeros = np.ones(n), np.zeros(n)
    theta = np.full(n, float(pop.threshold))
    if pop.alpha == 0.0 and pop.beta < 1.0:
        tau = decay_to_tau(pop.beta, dt)
        node = nir.LIF(tau=np.full(n, tau), r=ones.copy(), v_leak=zeros.copy(), v_threshold=theta,
                       v_reset=zeros.copy(), metadata=metadata)
        return node, 1.0 / (1.0 - pop.beta), True
    if pop.alpha == 0.0:  # beta == 1: perfect integrator, v += dt * r * I with r = 1 / dt
        node = nir.IF(r=np.full(n, 1.0 / dt), v_threshold=theta, v_reset=zeros.copy(), metadata=metadata)
        return node, 1.0, True
    if pop.alpha >= 1.0 or pop.beta >= 1.0:
        raise LoweringError(f"population {pop.name!r} has alpha = {pop.alpha}, beta = {pop.beta}: a CubaLIF "
                            "node needs both decays below 1; retrain with smaller decays")
    bias = np.asarray(pop.bias, np.float64).reshape(-1)
    node = nir.CubaLIF(
        tau_syn=np.full(n, decay_to_tau(pop.alpha, dt)), tau_mem=np.full(n, decay_to_tau(pop.beta, dt)),
        r=np.full(n, 1.0 / (1.0 - pop.beta)), v_leak=bias / (1.0 - pop.beta), v_threshold=theta,
        v_reset=zeros.copy(), w_in=np.full(n, 1.0 / (1.0 - pop.alpha)), metadata=metadata)
    return node, 1.0, False


def _delay_name(source: str, delay: int) -> str:
    return f"{source}.delay" if delay == 1 else f"{source}.delay{delay}"


def graph_to_nir(graph: Graph, dt: float = DEFAULT_DT):
    """IR ``Graph`` -> ``nir.NIRGraph`` meaning the same discrete dynamics at time step ``dt``.

    Node names are the IR names: one neuron node per lif population, ``Input``/``Output`` for
    the input and readout populations, one ``Affine`` per connection (named like it), one
    ``Delay`` per (source, delay) named ``<source>.delay[<d>]``. Raises ``LoweringError`` for
    attention nodes, fixed-point graphs and populations without an incoming connection.
    """
    graph.require_frozen("NIR export")
    nir = _nir()
    graph.validate()
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise LoweringError(f"NIR export needs a positive time step dt, got {dt!r}")
    if graph.attentions:
        att = graph.attentions[0]
        raise LoweringError(
            f"attention node {att.name!r} has no NIR equivalent (NIR has no node for the spiking "
            "fast-weight memory of SPEC §2.3); export a depth-0 model to NIR, or use --to lava / --to ir")
    if graph.precision != "float":
        raise LoweringError("NIR holds float parameters; export the float IR graph (without --fixed-point)")
    pops = {p.name: p for p in graph.populations}
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    gains: dict[str, float] = {}
    bias_in_affine: dict[str, bool] = {}

    def add(name: str, node: Any) -> None:
        if name in nodes:
            raise LoweringError(f"IR name {name!r} is used twice once mapped to NIR nodes; rename the connection")
        nodes[name] = node

    for pop in graph.populations:
        meta = {"tokens": pop.tokens, "features": pop.features, "ir_kind": pop.kind}
        if pop.kind == "input":
            add(pop.name, nir.Input(input_type={"input": np.array([pop.size])},
                                    metadata={**meta, "graded": int(pop.graded)}))
            continue
        if not graph.incoming(pop.name):
            raise LoweringError(f"population {pop.name!r} has no incoming connection; a NIR node needs an input")
        if pop.kind == "readout":
            add(pop.name, nir.Output(output_type={"output": np.array([pop.size])}, metadata=meta))
            gains[pop.name], bias_in_affine[pop.name] = 1.0, True
        else:
            node, gains[pop.name], bias_in_affine[pop.name] = _neuron_node(pop, float(dt), meta)
            add(pop.name, node)
    for source, delay in sorted({(c.source, c.delay) for c in graph.connections}):
        if delay > 0:
            name = _delay_name(source, delay)
            add(name, nir.Delay(delay=np.full(pops[source].size, delay * float(dt)),
                                metadata={"steps": delay}))
            edges.append((source, name))
    for pop in graph.populations:
        carried = not bias_in_affine.get(pop.name, True)  # CubaLIF: bias already in v_leak
        for conn in graph.incoming(pop.name):
            gain = gains[pop.name]
            weight = gain * _full_weight(conn, pop)
            bias = np.zeros(pop.size)
            if not carried:
                bias = gain * np.asarray(pop.bias, np.float64).reshape(-1)
                carried = True
            add(conn.name, nir.Affine(weight=weight, bias=bias, metadata={"kind": conn.kind, "steps": conn.delay}))
            edges.append((_delay_name(conn.source, conn.delay) if conn.delay > 0 else conn.source, conn.name))
            edges.append((conn.name, pop.name))
    metadata = {
        "format": FORMAT, "version": NIR_IO_VERSION, "dt": float(dt),
        "ir_meta": json.dumps(graph.meta, sort_keys=True),
        "readout": "Output = readout current per step; logits = its mean over the last ir_meta.window steps",
        "semantics": "forward Euler at dt, current before membrane, v starts at 0, strict threshold",
    }
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)
    except (ValueError, AssertionError) as exc:  # NIR's own type check: a bug here, say it in one line
        raise LoweringError(f"NIR rejected the exported graph: {_one_line(exc)}") from None


def export_nir(graph: Graph, path: str | Path, dt: float = DEFAULT_DT) -> Path:
    """Write ``graph_to_nir(graph, dt)`` to ``path`` with ``nir.write`` (atomically); returns the path."""
    nir = _nir()
    nir_graph = graph_to_nir(graph, dt)
    buffer = io.BytesIO()
    nir.write(buffer, nir_graph)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
