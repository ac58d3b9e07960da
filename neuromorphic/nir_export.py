"""NIR export: IR ``Graph`` -> NIR graph (``graph_to_nir``, ``export_nir``); the mapping is in
``neuromorphic.nir_io``'s docstring and docs/backends.md."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from spikeformer.checkpoint import atomic_write_bytes

from .ir import Connection, Graph, LoweringError, Population
from .nir_base import DEFAULT_DT, FORMAT, NIR_IO_VERSION, _nir, _one_line, conv2d_kernel, decay_to_tau


# ---------------------------------------------------------------------------------------------
# export: IR Graph -> NIR graph


def _neuron_node(pop: Population, dt: float, metadata: dict, shape: tuple[int, ...], order: np.ndarray,
                 leak_bias: bool):
    """The NIR node of a lif population (parameters shaped ``shape``, neurons in ``order``), the
    gain folded into its incoming weights, and whether its bias travels in the incoming edges
    (True) or in the node's ``v_leak`` (False: CubaLIF always; LIF when ``leak_bias``)."""
    nir = _nir()
    ones, zeros = np.ones(shape), np.zeros(shape)
    theta = np.full(shape, float(pop.threshold))
    bias = np.asarray(pop.bias, np.float64).reshape(-1)[order].reshape(shape)
    if pop.alpha == 0.0 and pop.beta < 1.0:
        tau = decay_to_tau(pop.beta, dt)
        # v_leak: tau dv/dt = v_leak - v + r I moves v by (1 - beta) v_leak a step, which is the bias
        v_leak = bias / (1.0 - pop.beta) if leak_bias else zeros.copy()
        node = nir.LIF(tau=np.full(shape, tau), r=ones.copy(), v_leak=v_leak, v_threshold=theta,
                       v_reset=zeros.copy(), metadata=metadata)
        return node, 1.0 / (1.0 - pop.beta), not leak_bias
    if pop.alpha == 0.0:  # beta == 1: perfect integrator, v += dt * r * I with r = 1 / dt
        node = nir.IF(r=np.full(shape, 1.0 / dt), v_threshold=theta, v_reset=zeros.copy(), metadata=metadata)
        return node, 1.0, True
    if pop.alpha >= 1.0 or pop.beta >= 1.0:
        raise LoweringError(f"population {pop.name!r} has alpha = {pop.alpha}, beta = {pop.beta}: a CubaLIF "
                            "node needs both decays below 1; retrain with smaller decays")
    node = nir.CubaLIF(
        tau_syn=np.full(shape, decay_to_tau(pop.alpha, dt)), tau_mem=np.full(shape, decay_to_tau(pop.beta, dt)),
        r=np.full(shape, 1.0 / (1.0 - pop.beta)), v_leak=bias / (1.0 - pop.beta), v_threshold=theta,
        v_reset=zeros.copy(), w_in=np.full(shape, 1.0 / (1.0 - pop.alpha)), metadata=metadata)
    return node, 1.0, False


def _delay_name(source: str, delay: int) -> str:
    return f"{source}.delay" if delay == 1 else f"{source}.delay{delay}"


def _per_channel(pop: Population) -> bool:
    """Whether an image population's bias is one value per channel (a Conv2d bias can hold it)."""
    bias = np.asarray(pop.bias, np.float64).reshape(-1)[pop.image_order()].reshape(pop.channels, -1)
    return bool(np.all(bias == bias[:, :1]))


def _conv2d_connections(graph: Graph) -> set[str]:
    """The connections written as NIR ``Conv2d``: 2-d convolutions into LIF populations, from a LIF
    population or from the input when every connection from it is one (NIR has no reshape, so an
    Affine reader keeps the input flat; the zero-weight bias edges of ``_bias_edges`` do not count,
    they read an image input through a Flatten). An IF target must take its bias per channel
    (no v_leak)."""
    convs = set()
    for c in graph.connections:
        target = graph.population(c.target)
        if c.conv is None or target.kind != "lif":
            continue
        if target.alpha == 0.0 and target.beta == 1.0 and not _per_channel(target):
            continue
        convs.add(c.name)
    source = graph.input.name
    if any(c.source == source and c.name not in convs and not _is_bias_edge(c) for c in graph.connections):
        convs = {c.name for c in graph.connections if c.name in convs and c.source != source}
    # an Affine cannot write into a [C, H, W] node (NIR has no unflatten): a population that also
    # takes a non-convolution input (say the importer's nir.clock) stays flat, and so do the
    # convolutions into and out of it, until no such population is left
    while True:
        flat = {c.target for c in graph.connections if c.name not in convs}
        demoted = {c.name for c in graph.connections if c.name in convs and (c.target in flat or c.source in flat)}
        if not demoted:
            return convs
        convs -= demoted


def _kernel(weight: np.ndarray, conv: dict, src: Population, dst: Population, where: str) -> np.ndarray:
    """The ``[C_out, C_in, kh, kw]`` kernel of a full weight ``[C_out*H'*W', C_in*H*W]`` (image
    order), after checking that every entry is that kernel's (the IR weight is the source of
    truth; this proves it is the convolution ``conv`` says)."""
    kernel = conv2d_kernel(weight, src, dst, conv)
    if kernel is None:
        raise LoweringError(f"connection {where} is marked as a convolution {conv}, but its weight is not one "
                            "(shared kernel entries differ, or weights lie outside the windows)")
    return kernel


def _bias_edge_name(source: str, target: str) -> str:
    return f"{source}->{target}.bias"


def _is_bias_edge(conn: Connection) -> bool:
    return conn.name == _bias_edge_name(conn.source, conn.target) and not np.any(conn.weight)


def _bias_edges(graph: Graph) -> Graph:
    """``graph`` with a zero-weight connection from the input (delay 1) into each LIF population
    that has no incoming connection. Its bias then reaches it from step 0 as before (an Affine's
    bias does not wait for the Delay before it), and the dynamics are unchanged."""
    source = graph.input
    extra = [Connection(_bias_edge_name(source.name, p.name), source.name, p.name, "full",
                        np.zeros((p.size, source.size)), delay=1)
             for p in graph.populations if p.kind == "lif" and not graph.incoming(p.name)]
    return replace(graph, connections=[*graph.connections, *extra]).validate() if extra else graph


def graph_to_nir(graph: Graph, dt: float = DEFAULT_DT):
    """IR ``Graph`` -> ``nir.NIRGraph`` meaning the same discrete dynamics at time step ``dt``.

    Node names are the IR names: one neuron node per lif population, ``Input``/``Output`` for
    the input and readout populations, one ``Affine`` (or ``Conv2d``) per connection (named like
    it), one ``Delay`` per (source, delay) named ``<source>.delay[<d>]``. A 2-d convolution
    (``Connection.conv``) becomes a ``Conv2d`` and its ends ``[C, H, W]`` nodes (metadata
    ``image``; an Affine reading one goes through a ``<node>.flat`` Flatten). A LIF population
    fed by its bias alone (the importer's ``nir.clock``) gets a zero-weight Affine from the
    input, one step late, named ``<input>-><population>.bias``, which carries its bias: NIR
    tools need an input edge into every neuron node. Raises ``LoweringError`` for attention
    nodes, fixed-point graphs and a readout without an incoming connection.
    """
    graph.require_frozen("NIR export")
    nir = _nir()
    graph.validate()
    graph = _bias_edges(graph)
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
    convs = _conv2d_connections(graph)
    imaged = {n for c in graph.connections if c.name in convs for n in (c.source, c.target)}
    # each population's neurons in NIR order, and its NIR shape: [C, H, W] images, else flat
    order = {p.name: p.image_order() if p.name in imaged else np.arange(p.size) for p in graph.populations}
    shape = {p.name: (p.channels, *p.image[:2]) if p.name in imaged else (p.size,) for p in graph.populations}
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    gains: dict[str, float] = {}
    bias_in_edge: dict[str, bool] = {}

    def add(name: str, node: Any) -> None:
        if name in nodes:
            raise LoweringError(f"IR name {name!r} is used twice once mapped to NIR nodes; rename the connection")
        nodes[name] = node

    for pop in graph.populations:
        meta = {"tokens": pop.tokens, "features": pop.features, "ir_kind": pop.kind}
        if pop.name in imaged:
            meta["image"] = list(pop.image)
        if pop.kind == "input":
            add(pop.name, nir.Input(input_type={"input": np.array(shape[pop.name])},
                                    metadata={**meta, "graded": int(pop.graded)}))
            continue
        if not graph.incoming(pop.name):
            raise LoweringError(f"population {pop.name!r} has no incoming connection; a NIR node needs an input")
        if pop.kind == "readout":
            add(pop.name, nir.Output(output_type={"output": np.array([pop.size])}, metadata=meta))
            gains[pop.name], bias_in_edge[pop.name] = 1.0, True
        else:
            # a Conv2d bias is per channel: a bias that varies over pixels goes into v_leak
            first = graph.incoming(pop.name)[0].name
            leak = first in convs and not _per_channel(pop)
            node, gains[pop.name], bias_in_edge[pop.name] = _neuron_node(pop, float(dt), meta, shape[pop.name],
                                                                         order[pop.name], leak)
            add(pop.name, node)
    for source, delay in sorted({(c.source, c.delay) for c in graph.connections}):
        if delay > 0:
            name = _delay_name(source, delay)
            add(name, nir.Delay(delay=np.full(shape[source], delay * float(dt)), metadata={"steps": delay}))
            edges.append((source, name))
    for pop in graph.populations:
        carried = not bias_in_edge.get(pop.name, True)  # already in v_leak
        for conn in graph.incoming(pop.name):
            gain = gains[pop.name]
            weight = gain * np.asarray(conn.full_weight(pop.tokens), np.float64)
            if pop.name in imaged:  # rows and columns in the [C, H, W] order of image nodes
                weight = weight[order[pop.name]]
            if conn.source in imaged:
                weight = weight[:, order[conn.source]]
            bias = np.zeros(pop.size)
            if not carried:
                bias = gain * np.asarray(pop.bias, np.float64).reshape(-1)[order[pop.name]]
                carried = True
            upstream = _delay_name(conn.source, conn.delay) if conn.delay > 0 else conn.source
            meta = {"kind": conn.kind, "steps": conn.delay}
            if conn.name in convs:
                src = pops[conn.source]
                kernel = _kernel(weight, conn.conv, src, pop, repr(conn.name))
                add(conn.name, nir.Conv2d(
                    input_shape=tuple(src.image[:2]), weight=kernel, stride=tuple(conn.conv["stride"]),
                    padding=tuple(conn.conv["padding"]), dilation=(1, 1), groups=1,
                    bias=bias.reshape(pop.channels, -1)[:, 0].copy(), metadata={**meta, "conv": conn.conv}))
            else:
                if conn.source in imaged:  # NIR's Flatten has no batch axis: dims 0..-1 of [C, H, W]
                    flat = f"{upstream}.flat"
                    if flat not in nodes:
                        add(flat, nir.Flatten(input_type={"input": np.array(shape[conn.source])}, start_dim=0,
                                              end_dim=-1))
                        edges.append((upstream, flat))
                    upstream = flat
                add(conn.name, nir.Affine(weight=weight, bias=bias, metadata=meta))
            edges.append((upstream, conn.name))
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
