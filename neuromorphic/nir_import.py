"""NIR import: NIR graph -> IR ``Graph`` (``read_nir``, ``nir_to_graph``, ``source_input``,
``to_source_time``), with the import bounds checked before anything is allocated; the maps are in
``neuromorphic.nir_io``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .ir import MAX_DELAY, Connection, Graph, IRError, LoweringError, Population, unique_name
from .nir_base import (CLOCK, FORMAT, MAX_FILE_VALUES, MAX_GROUP_DEPTH, MAX_MATRIX, MAX_NIR_NEURONS, MAX_WORK,
                       SNNTORCH_DT, _arr, _metadata, _nir, _one_line, conv2d_indices, conv2d_kernel, image_order,
                       tau_to_decay)
from .trace import Trace


# ---------------------------------------------------------------------------------------------
# import: NIR graph -> IR Graph


# what a damaged file may raise inside nir.read: h5py (OSError, RuntimeError), nir's from_dict
# (KeyError, AssertionError), numpy (ValueError, TypeError, OverflowError), deep nesting
READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError, AssertionError,
               OverflowError, ZeroDivisionError, RecursionError)


def read_nir(path: str | Path):
    """``nir.read`` with one-line ``IRError`` for a missing, truncated or malformed file.

    The HDF5 tree is walked first (``_check_hdf5``): a file may declare datasets far larger than
    itself (compressed) or link to other files, and nir.read would load or follow them."""
    nir = _nir()
    path = Path(path)
    if not path.is_file():
        raise IRError(f"{path} is not a file; export one with 'spikeformer export RUN --to nir --out PATH'")
    try:
        _check_global_heaps(path)
        _check_hdf5(path)
        return nir.read(path)
    except IRError:  # from the checks above, already one line (IRError is a ValueError too)
        raise
    except READ_ERRORS as exc:
        raise IRError(f"{path} is not a readable NIR file ({type(exc).__name__}: {_one_line(exc)[:200]}); "
                      "re-export it with nir.write") from None


def _check_hdf5(path: Path) -> None:
    """Refuse, before anything is read, an HDF5 tree nir.read could not load safely: links (soft
    or to other files), groups nested deeper than MAX_GROUP_DEPTH, datasets holding more than
    MAX_FILE_VALUES values in all."""
    import h5py

    total = 0
    with h5py.File(path, "r") as handle:
        pending = [(handle, 0)]
        while pending:
            group, depth = pending.pop()
            if depth > MAX_GROUP_DEPTH:
                raise IRError(f"{path} nests HDF5 groups deeper than {MAX_GROUP_DEPTH}; it is not a NIR file")
            for key in group.keys():
                link = group.get(key, getlink=True)
                if not isinstance(link, h5py.HardLink):
                    raise IRError(f"{path} holds a {type(link).__name__} {key!r}; NIR files hold no links, re-export it")
                item = group[key]
                if isinstance(item, h5py.Group):
                    pending.append((item, depth + 1))
                elif isinstance(item, h5py.Dataset):
                    total += int(item.size or 0) * max(1, item.dtype.itemsize // 8)
                    if total > MAX_FILE_VALUES:
                        raise IRError(f"{path} declares more than {MAX_FILE_VALUES} values; a damaged or foreign "
                                      "file, re-export it with nir.write")


def _check_global_heaps(path: Path) -> None:
    """Refuse a file whose HDF5 global heap (where nir.write's strings live) would send libhdf5
    into an endless loop. libhdf5 (h5py 3.16, H5HG__cache_heap_deserialize) walks a collection's
    objects by their stated sizes in wrapping size_t arithmetic: a collection size changed by one
    byte brings in garbage objects whose sizes overflow or are 0, and the walk never ends (found by
    tests/neuromorphic/test_fuzz_nir.py). Every "GCOL" collection is walked here first; in an
    intact heap the objects tile the collection exactly (the last one is the free space)."""
    data = path.read_bytes()
    start = data.find(b"\x89HDF\r\n\x1a\n")
    if start < 0 or len(data) < start + 16:
        return  # not HDF5: h5py says so
    length = data[start + 14] if data[start + 8] in (0, 1) else data[start + 10]  # superblock: size of lengths
    if length not in (2, 4, 8, 16):
        return  # h5py refuses the superblock
    object_header = 8 + length  # index (2), references (2), reserved (4), size
    at = data.find(b"GCOL")
    while at >= 0:
        if data[at + 4:at + 5] == b"\x01":  # collection version 1, as libhdf5 requires
            end = at + int.from_bytes(data[at + 8:at + 8 + length], "little")
            p = at + 8 + length
            while end - p >= object_header:  # a shorter tail is free space
                index = int.from_bytes(data[p:p + 2], "little")
                size = int.from_bytes(data[p + 8:p + 8 + length], "little")
                step = object_header + (size + 7) // 8 * 8 if index else size  # index 0: free space
                if not 0 < step <= end - p or end > len(data):
                    raise IRError(f"{path} has a damaged HDF5 global heap at byte {at} (objects that do not tile "
                                  "it, which libhdf5 would read forever); re-export it with nir.write")
                p += step
        at = data.find(b"GCOL", at + 1)


@dataclass
class _Term:
    """One delayed linear map of a population's output: ``matrix @ out[source][t - delay]``."""

    source: str
    delay: int
    matrix: np.ndarray | None  # [n, n_source]; None = out[source][columns]
    label: str | None = None  # the Affine/Linear node it went through (the IR connection name)
    kind: str | None = None  # "tokenwise" when our exporter said so
    # without a matrix: which of the source's IR neurons each value is (a [C, H, W] node holds its
    # population in image order); None = all, in order
    columns: np.ndarray | None = None
    # a Conv2d applied straight to the source's output: {"kernel", "stride", "padding"}, kept on the
    # IR connection (``Connection.conv``) when both ends are image grids and the weight is that conv
    conv: dict | None = None

    def explicit(self, where: str) -> "_Term":
        """This term with its columns in its matrix (None = identity)."""
        size = 0 if self.columns is None else self.columns.size
        if self.matrix is not None or self.columns is None or np.array_equal(self.columns, np.arange(size)):
            return replace(self, columns=None)
        _dense(size, size, where)
        matrix = np.zeros((size, size))
        matrix[np.arange(size), self.columns] = 1.0
        return replace(self, matrix=matrix, columns=None)


@dataclass
class _Signal:
    """What flows along a NIR edge: a sum of delayed linear maps of populations plus constant
    biases, each bias switched on at NIR step ``start``."""

    size: int
    terms: list[_Term] = field(default_factory=list)
    biases: list[tuple[int, np.ndarray]] = field(default_factory=list)


def _sum(signals: list[_Signal], where: str) -> _Signal:
    sizes = {s.size for s in signals}
    if len(sizes) != 1:
        raise IRError(f"NIR node {where} receives inputs of different sizes {sorted(sizes)}")
    out = _Signal(sizes.pop())
    for s in signals:
        out.terms += s.terms
        out.biases += s.biases
    return out


def _apply(signal: _Signal, weight: np.ndarray, bias: np.ndarray | None, name: str,
           kind: str | None) -> _Signal:
    """``weight @ signal + bias``; the terms take ``name`` as their connection name."""
    where = repr(name)
    if weight.ndim != 2 or weight.shape[1] != signal.size:
        raise IRError(f"NIR node {where} has weight {weight.shape} but receives {signal.size} values")
    if not 1 <= weight.shape[0] <= MAX_NIR_NEURONS:
        raise IRError(f"NIR node {where} has {weight.shape[0]} outputs; the importer takes 1..{MAX_NIR_NEURONS}")
    for t in signal.terms:
        if t.matrix is not None:  # weight @ t.matrix, composed below
            _dense(weight.shape[0], t.matrix.shape[1], where, work=weight.shape[0] * weight.shape[1] * t.matrix.shape[1])
    terms = [_Term(t.source, t.delay, weight @ t.matrix if t.matrix is not None else
                   weight if t.columns is None else _scatter(weight, t.columns), name, kind)
             for t in signal.terms]
    biases = [(start, weight @ v) for start, v in signal.biases]
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise IRError(f"NIR node {where} has bias {bias.shape}, expected ({weight.shape[0]},)")
        biases.append((0, bias))
    return _Signal(weight.shape[0], terms, biases)


def _scatter(weight: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``weight`` over values ``out[columns]`` as a matrix over ``out`` (``columns`` a permutation)."""
    matrix = np.zeros_like(weight)
    matrix[:, columns] = weight
    return matrix


def _conv2d(node: Any, signal: _Signal, name: str) -> _Signal:
    """A NIR Conv2d as its dense matrix over the flattened [C, H, W] input (C order), applied."""
    where = f"{name!r} (Conv2d)"
    kernel = _arr(node.weight, where)
    shape = np.asarray(node.input_type.get("input") if node.input_type else None, dtype=object).reshape(-1)
    if kernel.ndim != 4 or shape.size != 3 or any(n is None for n in shape):
        raise LoweringError(f"NIR node {where} has no [C, H, W] input shape (input_shape) or a kernel that is not "
                            "[C_out, C_in, kh, kw]; re-export it with input_shape set")
    pairs = {}
    for key in ("stride", "padding", "dilation"):
        value = np.asarray(getattr(node, key))
        if value.dtype.kind not in "iuf" or value.size not in (1, 2) or not np.all(value == np.round(value)):
            raise LoweringError(f"NIR node {where} has {key} {_one_line(getattr(node, key))[:40]}; the importer "
                                "takes whole numbers")
        pairs[key] = [int(v) for v in np.broadcast_to(value.reshape(-1), (2,))]
    groups = np.asarray(node.groups)
    if pairs["dilation"] != [1, 1] or groups.size != 1 or groups.dtype.kind not in "iuf" or float(groups) != 1:
        raise LoweringError(f"NIR node {where} has dilation {pairs['dilation']} or groups {_one_line(node.groups)[:20]}; "
                            "the importer takes plain convolutions (1, 1)")
    c_out, c_in, kh, kw = kernel.shape
    height, width = int(shape[1]), int(shape[2])
    if int(shape[0]) != c_in or c_in * height * width != signal.size:
        raise IRError(f"NIR node {where} takes [{c_in}, {height}, {width}] but receives {signal.size} values")
    conv = {"kernel": [kh, kw], "stride": pairs["stride"], "padding": pairs["padding"]}
    if min(conv["stride"]) < 1 or min(conv["padding"]) < 0 or min(kh, kw, c_out) < 1:
        raise IRError(f"NIR node {where} has stride {conv['stride']}, padding {conv['padding']} or kernel "
                      f"{list(kernel.shape)}: strides and kernel sizes must be >= 1, padding >= 0")
    out_hw = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip((height, width), conv["padding"], (kh, kw),
                                                              conv["stride"])]
    if min(out_hw) < 1:
        raise IRError(f"NIR node {where} has a {kh}x{kw} kernel larger than its padded {height}x{width} input")
    _dense(c_out * out_hw[0] * out_hw[1], signal.size, where)
    rows, cols, i, j = conv2d_indices((c_out, c_in), (height, width), tuple(out_hw), conv)
    matrix = np.zeros((c_out * out_hw[0] * out_hw[1], signal.size))
    matrix[rows, cols] = kernel[:, :, i, j]
    bias = np.repeat(_arr(node.bias, where).reshape(-1), out_hw[0] * out_hw[1]) if node.bias is not None else None
    out = _apply(signal, matrix, bias, name, None)
    out.terms = [replace(t, conv=conv) if s.matrix is None else t for t, s in zip(out.terms, signal.terms)]
    return out


def _to_ir_order(neuron: _Neuron, order: np.ndarray) -> None:
    """A neuron built from a [C, H, W] node (values in image ``order``) rewritten over its IR grid."""
    rows = np.argsort(order)  # IR neuron n is NIR value rows[n]
    neuron.gain, neuron.v_bias = neuron.gain[rows], neuron.v_bias[rows]
    signal = neuron.signal
    signal.terms = [replace(t, matrix=t.matrix[rows], columns=None) if t.matrix is not None else
                    replace(t, columns=(np.arange(rows.size) if t.columns is None else t.columns)[rows])
                    for t in signal.terms]
    signal.biases = [(start, v[rows]) for start, v in signal.biases]


def _steps(delay: np.ndarray, dt: float, where: str) -> int:
    values = np.unique(delay)
    if values.size == 0:
        raise IRError(f"NIR Delay {where} has an empty delay")
    if not abs(float(values[0]) / dt) <= MAX_DELAY:
        raise LoweringError(f"NIR Delay {where} = {float(values[0]):g} s is more than {MAX_DELAY} steps of dt = {dt:g}; "
                            "pass the dt the graph was made with")
    if values.size != 1:
        raise LoweringError(f"NIR Delay {where} has per-neuron delays; the IR needs one delay per connection")
    steps = round(float(values[0]) / dt)
    if steps < 0 or abs(steps * dt - float(values[0])) > 1e-6 * max(dt, abs(float(values[0]))):
        raise LoweringError(f"NIR Delay {where} = {float(values[0])} s is not a whole number of steps of dt = {dt}; "
                            "pass the dt the graph was made with")
    return steps


@dataclass
class _Neuron:
    """An IR lif (or readout) population being built from a NIR node."""

    name: str
    kind: str  # lif | readout
    size: int
    beta: float = 1.0
    alpha: float = 0.0
    threshold: float = 1.0
    gain: np.ndarray | None = None  # [n] multiplies every incoming current (and Affine bias)
    v_bias: np.ndarray | None = None  # [n] constant added to v every step (from v_leak)
    signal: _Signal | None = None
    tokens: int = 1
    features: int = 0
    image: list | None = None  # [height, width, patch] of a [C, H, W] node written by export_nir


def _uniform(values: np.ndarray, what: str, where: str) -> float:
    if values.size == 0:
        raise IRError(f"NIR node {where} has an empty {what}")
    if not np.allclose(values, values.flat[0], rtol=1e-6, atol=0.0):
        raise LoweringError(f"NIR node {where} has a per-neuron {what}; the IR takes one per population")
    return float(values.flat[0])


def _decay(tau: np.ndarray, dt: float, what: str, where: str) -> float:
    decay = _uniform(tau_to_decay(tau, dt), what, where)
    if not -1e-12 <= decay <= 1.0:
        raise LoweringError(
            f"NIR node {where} has {what} time constant {float(np.ravel(tau)[0]):g} s, shorter than dt = {dt:g} s "
            f"(decay {decay:g}); pass the dt the graph was made with (snnTorch: {SNNTORCH_DT:g}; "
            "Norse's to_nir: the square of its dt)")
    return min(max(decay, 0.0), 1.0)


def _neuron_from_node(name: str, node: Any, size: int, dt: float) -> _Neuron:
    """The IR parameters of a NIR neuron node (module docstring: import maps)."""
    nir = _nir()
    where = f"{name!r} ({type(node).__name__})"

    def param(key: str) -> np.ndarray:
        value = _arr(getattr(node, key), where)
        if value.size not in (1, size):
            raise IRError(f"NIR node {where} has {key} of {value.size} values for {size} neurons")
        return np.broadcast_to(value.reshape(-1), (size,)).astype(np.float64)

    v_reset = param("v_reset") if getattr(node, "v_reset", None) is not None else np.zeros(size)
    if np.any(v_reset != 0):
        raise LoweringError(f"NIR node {where} resets to v_reset != 0; the IR (and Lava) reset to zero")
    theta = param("v_threshold")
    if np.any(theta <= 0):
        raise LoweringError(f"NIR node {where} has a threshold <= 0; the IR needs positive thresholds")
    if isinstance(node, nir.LIF):
        k = dt / param("tau")
        out = _Neuron(name, "lif", size, beta=_decay(param("tau"), dt, "membrane", where),
                      gain=param("r") * k, v_bias=k * param("v_leak"))
    elif isinstance(node, nir.CubaLIF):
        k_mem, k_syn = dt / param("tau_mem"), dt / param("tau_syn")
        out = _Neuron(name, "lif", size, beta=_decay(param("tau_mem"), dt, "membrane", where),
                      alpha=_decay(param("tau_syn"), dt, "synaptic", where),
                      gain=k_mem * param("r") * k_syn * param("w_in"), v_bias=k_mem * param("v_leak"))
    elif isinstance(node, nir.IF):
        out = _Neuron(name, "lif", size, beta=1.0, gain=dt * param("r"), v_bias=np.zeros(size))
    else:  # pragma: no cover - callers pass neuron nodes only
        raise LoweringError(f"NIR node {where} is not a neuron")
    if np.allclose(theta, theta[0], rtol=0, atol=0):
        out.threshold = float(theta[0])
    else:  # fold per-neuron thresholds into the inputs: v / theta_n crosses 1 (reset is to 0)
        out.gain, out.v_bias, out.threshold = out.gain / theta, out.v_bias / theta, 1.0
    return out


def _topological(nodes: dict, edges: list[tuple[str, str]]) -> list[str]:
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        if a not in nodes or b not in nodes:
            raise IRError(f"NIR edge ({a!r}, {b!r}) names a node the graph does not have")
        preds[b].append(a)
    order: list[str] = []
    done: set[str] = set()
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(p in done for p in preds[n])]
        if not ready:
            raise LoweringError(f"NIR graph has a cycle through {sorted(pending)}: recurrent graphs "
                                "(e.g. snnTorch RLeaky/RSynaptic) do not import into the IR")
        order += ready
        done |= set(ready)
        pending = [n for n in pending if n not in done]
    return order


def _tokenwise_block(matrix: np.ndarray, tokens: int, f_out: int, f_in: int) -> np.ndarray | None:
    """The ``[F_out, F_in]`` block if ``matrix`` is ``kron(I_tokens, block)``, else None."""
    if matrix.shape != (tokens * f_out, tokens * f_in):
        return None
    blocks = matrix.reshape(tokens, f_out, tokens, f_in)
    first = blocks[0, :, 0, :]
    expected = np.kron(np.eye(tokens), first)
    return first.copy() if np.array_equal(matrix, expected) else None


def nir_to_graph(source: Any, dt: float | None = None, time_steps: int | None = None) -> Graph:
    """A NIR graph (``nir.NIRGraph`` or a path to a ``.nir`` file) -> IR ``Graph``.

    ``dt``: the time step the graph's time constants and delays are read at; default the
    graph's ``metadata["dt"]`` (written by ``export_nir``); graphs from other tools state none,
    so pass it (snnTorch: 1e-4; Norse ``to_nir(..., dt=d)``: ``d ** 2``). ``time_steps``: the
    input length T that sets ``meta["window"]`` and ``meta["steps"]`` for graphs from other
    tools (default 1). Populations keep the NIR node names; IR step ``t + meta["nir_shift"][P]``
    of population ``P`` is NIR step ``t`` (all zero for graphs ``export_nir`` wrote).
    Raises ``IRError`` (malformed graph) or ``LoweringError`` (valid NIR the IR cannot hold),
    each one line naming the node.
    """
    nir = _nir()
    g = read_nir(source) if isinstance(source, (str, Path)) else source
    if not isinstance(g, nir.NIRGraph):
        raise IRError(f"expected a nir.NIRGraph or a path to a .nir file, got {type(g).__name__}")
    gmeta = _metadata(g)
    if dt is None:
        if "dt" not in gmeta:
            raise LoweringError("the NIR graph does not state its time step; pass dt= (snnTorch's export uses "
                                f"{SNNTORCH_DT:g}; Norse's to_nir(dt=d) needs d**2, see docs/backends.md)")
        try:
            dt = float(gmeta["dt"])
        except (TypeError, ValueError, OverflowError):
            raise IRError(f"the NIR graph's metadata dt is {_one_line(gmeta['dt'])[:60]}, not a number of seconds; "
                          "re-export it or pass dt=") from None
    if not (math.isfinite(dt) and dt > 0):
        raise LoweringError(f"dt must be a positive number of seconds, got {dt!r}")
    nodes = dict(g.nodes)
    edges = [(str(a), str(b)) for a, b in g.edges]
    order = _topological(nodes, edges)
    preds = {n: [a for a, b in edges if b == n] for n in nodes}
    succs = {n: [b for a, b in edges if a == n] for n in nodes}
    inputs = [n for n in order if isinstance(nodes[n], nir.Input)]
    outputs = [n for n in order if isinstance(nodes[n], nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise LoweringError(f"the IR needs a NIR graph with one Input and one Output node, this one has "
                            f"{len(inputs)} and {len(outputs)}")
    neurons_types = (nir.LIF, nir.CubaLIF, nir.IF)

    signals: dict[str, _Signal] = {}
    neurons: dict[str, _Neuron] = {}
    input_name = inputs[0]
    try:
        in_shape = np.asarray(nodes[input_name].input_type["input"], np.float64).reshape(-1)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise IRError(f"NIR Input {input_name!r} has no numeric shape; re-export the graph") from None
    if not in_shape.size:
        raise IRError(f"NIR Input {input_name!r} has no shape")
    if not (np.all(np.isfinite(in_shape)) and np.all(in_shape >= 1) and np.all(in_shape == np.round(in_shape))):
        raise IRError(f"NIR Input {input_name!r} has shape {in_shape.tolist()}, not positive whole numbers")
    input_size = math.prod(int(n) for n in in_shape)
    if input_size > MAX_NIR_NEURONS:
        raise IRError(f"NIR Input {input_name!r} declares {input_size} values, above the importer's limit of "
                      f"{MAX_NIR_NEURONS}; a damaged file, re-export it")
    in_meta = _image_meta(nodes[input_name], input_size)
    readout: _Neuron | None = None

    def incoming(name: str) -> _Signal:
        if not preds[name]:
            raise IRError(f"NIR node {name!r} has no input edge")
        for p in preds[name]:
            if p not in signals:
                raise IRError(f"NIR node {p!r} ({type(nodes[p]).__name__}) feeds {name!r} but has no output to feed it")
        return _sum([signals[p] for p in preds[name]], repr(name))

    for name in order:
        node = nodes[name]
        where = f"{name!r} ({type(node).__name__})"
        if name == input_name:
            signals[name] = _Signal(input_size, [_Term(name, 0, None, columns=image_order(in_meta))])
        elif isinstance(node, nir.Delay):
            s = incoming(name)
            k = _steps(_arr(node.delay, where), dt, where)
            signals[name] = _Signal(s.size, [replace(t, delay=t.delay + k) for t in s.terms],
                                    [(start + k, v) for start, v in s.biases])
        elif isinstance(node, (nir.Affine, nir.Linear)):
            kind = _metadata(node).get("kind")
            bias = _arr(node.bias, where).reshape(-1) if isinstance(node, nir.Affine) else None
            signals[name] = _apply(incoming(name), _arr(node.weight, where), bias, name,
                                   kind if isinstance(kind, str) and kind in ("tokenwise", "full") else None)
        elif isinstance(node, nir.Scale):
            s = incoming(name)
            scale = _arr(node.scale, where).reshape(-1)
            if scale.size not in (1, s.size):
                raise IRError(f"NIR node {where} has scale of {scale.size} values for {s.size} inputs")
            _dense(s.size, s.size, where)
            signals[name] = _apply(s, np.diag(np.broadcast_to(scale, (s.size,))), None, name, None)
        elif isinstance(node, nir.Conv2d):
            signals[name] = _conv2d(node, incoming(name), name)
        elif isinstance(node, nir.Flatten):
            signals[name] = incoming(name)  # populations are flat vectors already
        elif isinstance(node, neurons_types):
            s = incoming(name)
            neuron = _neuron_from_node(name, node, s.size, dt)
            neuron.signal = s
            meta = _image_meta(node, s.size)
            neuron.tokens, neuron.features = _grid(meta, s.size)
            in_image = image_order(meta)
            if in_image is not None:
                _to_ir_order(neuron, in_image)
                neuron.image = [int(n) for n in meta["image"]]
            neurons[name] = neuron
            signals[name] = _Signal(s.size, [_Term(name, 0, None, columns=in_image)])
        elif isinstance(node, nir.I):
            if succs[name] != outputs or len(preds[outputs[0]]) != 1:
                raise LoweringError(f"NIR node {where} is an integrator that does not feed the Output alone; "
                                    "the IR has one integrator, the readout")
            s = incoming(name)
            r = _arr(node.r, where).reshape(-1)
            if r.size not in (1, s.size):
                raise IRError(f"NIR node {where} has r of {r.size} values for {s.size} inputs")
            readout = _Neuron(outputs[0], "readout", s.size, gain=dt * np.broadcast_to(r, (s.size,)),
                              v_bias=np.zeros(s.size), signal=s)
        elif isinstance(node, nir.Output):
            if readout is None:
                s = incoming(name)
                readout = _Neuron(name, "readout", s.size, gain=np.ones(s.size), v_bias=np.zeros(s.size), signal=s)
            readout.tokens, readout.features = _grid(_metadata(node), readout.size)
        else:
            raise LoweringError(f"NIR node {where} has no IR equivalent; the importer reads LIF, CubaLIF, IF, "
                                "Affine, Linear, Conv2d, Scale, Delay, Flatten, I (as readout), Input and Output")
    assert readout is not None
    return _build_graph(gmeta, dt, time_steps, input_name, input_size, in_meta, order, neurons, readout)


def _image_meta(node: Any, size: int) -> dict:
    """A node's metadata, with an image grid for a ``[C, H, W]`` node from another tool: one
    token per pixel, its ``C`` values the features (``image`` ``[H, W, 1]``), so the IR keeps the
    geometry (``Population.image``) and a Conv2d on it stays a convolution. ``export_nir``'s
    nodes state their grid (``image``, or flat ``tokens`` x ``features``) and are returned as read."""
    meta = _metadata(node)
    if "image" in meta or "tokens" in meta:
        return meta
    types = getattr(node, "input_type", None)
    try:
        shape = [int(n) for n in np.asarray(types.get("input"), dtype=np.float64).reshape(-1)]
    except (AttributeError, TypeError, ValueError, OverflowError):
        return meta
    if len(shape) != 3 or min(shape) < 1 or math.prod(shape) != size:
        return meta
    channels, height, width = shape
    return {**meta, "tokens": height * width, "features": channels, "image": [height, width, 1]}


def _grid(meta: dict, size: int) -> tuple[int, int]:
    tokens, features = meta.get("tokens"), meta.get("features")
    try:
        tokens, features = int(tokens), int(features)
    except (TypeError, ValueError, OverflowError):
        return 1, size
    return (tokens, features) if tokens > 0 and features > 0 and tokens * features == size else (1, size)


def _merge(terms: list[_Term], size: int) -> list[_Term]:
    """Sum terms that share (source, delay) into one connection (``size``: the target's)."""
    merged: dict[tuple[str, int], _Term] = {}
    for t in terms:
        key = (t.source, t.delay)
        if key not in merged:
            merged[key] = _Term(t.source, t.delay, t.matrix, t.label, t.kind, conv=t.conv)
            continue
        m = merged[key]
        m.conv = None  # a sum of maps is no longer the one convolution
        if m.matrix is None or t.matrix is None:  # an identity term becomes a dense eye(size)
            _dense(size, size, repr(t.label or t.source))
        m.matrix = (np.eye(size) if m.matrix is None else m.matrix) + (np.eye(size) if t.matrix is None else t.matrix)
        m.label = f"{m.label}+{t.label}" if m.label and t.label and t.label != m.label else (m.label or t.label)
        m.kind = m.kind if m.kind == t.kind else None
    return list(merged.values())


def _dense(rows: int, cols: int, where: str, work: int = 0) -> None:
    """Refuse, before it is built, a dense matrix (or product) above MAX_MATRIX values (MAX_WORK steps)."""
    if rows * cols > MAX_MATRIX or work > MAX_WORK:
        raise LoweringError(f"NIR node {where} needs a dense {rows} x {cols} matrix in the IR, above the importer's "
                            f"limit of {MAX_MATRIX} values; import a smaller graph")


def _build_graph(gmeta: dict, dt: float, time_steps: int | None, input_name: str, input_size: int,
                 in_meta: dict, order: list[str], neurons: dict[str, _Neuron], readout: _Neuron) -> Graph:
    in_tokens, in_features = _grid(in_meta, input_size)
    try:
        graded = bool(int(in_meta.get("graded", 1)))  # unknown (other tools): real-valued input
    except (TypeError, ValueError, OverflowError):
        graded = True
    in_image = [int(n) for n in in_meta["image"]] if image_order(in_meta) is not None else None
    populations = [Population(input_name, "input", in_tokens, in_features, graded=graded, image=in_image)]
    grids = {input_name: (in_tokens, in_features)}
    images = {input_name: populations[0]}  # the image grids, as populations (for their geometry)
    built: list[_Neuron] = [neurons[n] for n in order if n in neurons] + [readout]
    for n in built:
        grids[n.name] = (n.tokens, n.features)
        if n.image is not None:
            images[n.name] = Population(n.name, "lif", n.tokens, n.features, image=n.image)
    # a file of ours may hold a clock already (re-exported as an ordinary LIF): a new one gets its own name
    clock = unique_name(CLOCK, set(grids), "#")

    # shift[P]: least steps making every IR delay d + shift[P] - shift[source] >= 1; a synaptic
    # filter (alpha > 0) fed a bias needs shift >= 1 so the clock can deliver it through the filter
    shift = {input_name: 0}
    for n in built:
        terms = n.signal.terms
        need = 1 if (n.alpha > 0 and any(np.any(v != 0) for _, v in n.signal.biases)) else 0
        shift[n.name] = max([need] + [shift[t.source] + 1 - t.delay for t in terms])
    connections: list[Connection] = []
    clock_needed = False
    names: set[str] = set()

    def unique(name: str) -> str:
        return unique_name(name, names, "#")

    for n in built:
        gain = n.gain
        bias_now = np.zeros(n.size)  # reaches v from IR step 0 (pop.bias)
        late: dict[int, np.ndarray] = {}  # IR start step -> bias delivered by the clock
        # biases from Affine nodes travel with the input current (through the synaptic filter)
        for start, v in n.signal.biases:
            step = shift[n.name] + start
            if step == 0 and n.alpha == 0.0:
                bias_now += gain * v
            else:
                late[step] = late.get(step, np.zeros(n.size)) + gain * v
        # v_leak reaches the membrane directly
        if np.any(n.v_bias != 0):
            if shift[n.name] == 0:
                bias_now += n.v_bias
            elif n.alpha == 0.0:
                late[shift[n.name]] = late.get(shift[n.name], np.zeros(n.size)) + n.v_bias
            else:
                raise LoweringError(
                    f"NIR node {n.name!r} has v_leak != 0, a synaptic current and same-step inputs; the IR cannot "
                    "start its leak late without filtering it: add Delay nodes before its inputs or set v_leak = 0")
        for step, v in sorted(late.items()):
            if np.any(v != 0):
                clock_needed = True
                connections.append(Connection(unique(f"{clock}->{n.name}@{step}"), clock, n.name, "full",
                                              v.reshape(-1, 1).copy(), delay=step))
        for t in _merge([t.explicit(repr(n.name)) for t in n.signal.terms], n.size):
            src_tokens, src_features = grids[t.source]
            if t.matrix is None:
                _dense(n.size, n.size, repr(n.name))
            matrix = np.eye(n.size) if t.matrix is None else t.matrix
            if matrix.shape != (n.size, src_tokens * src_features):
                raise IRError(f"NIR path {t.source!r} -> {n.name!r} maps {matrix.shape[1]} values onto {n.size}")
            matrix = gain[:, None] * matrix
            delay = t.delay + shift[n.name] - shift[t.source]
            kind, weight = "full", matrix
            if t.kind == "tokenwise" and src_tokens == n.tokens:
                block = _tokenwise_block(matrix, n.tokens, n.features, src_features)
                if block is not None:
                    kind, weight = "tokenwise", block
            label = t.label or f"{t.source}->{n.name}"
            conv = _convolution(t.conv, images.get(t.source), images.get(n.name), weight) if kind == "full" else None
            connections.append(Connection(unique(label), t.source, n.name, kind, weight, delay=delay, conv=conv))
        populations.append(Population(
            n.name, n.kind, n.tokens, n.features, beta=n.beta if n.kind == "lif" else 0.0,
            alpha=n.alpha, threshold=n.threshold if n.kind == "lif" else 1.0,
            bias=bias_now.reshape(n.tokens, n.features), image=n.image))
    if clock_needed:
        # one neuron, no input, bias 1 > threshold 0.5 and beta 0: fires every step from step 0
        populations.insert(1, Population(clock, "lif", 1, 1, beta=0.0, alpha=0.0, threshold=0.5,
                                         bias=np.ones((1, 1))))
    meta = _graph_meta(gmeta, time_steps, readout, shift)
    meta["nir_shift"] = {k: int(v) for k, v in shift.items()}
    meta["nir_dt"] = float(dt)
    try:
        return Graph(populations, connections, [], meta).validate()
    except IRError as exc:
        raise IRError(f"the NIR graph does not make a valid IR graph: {exc}") from None


def _convolution(conv: dict | None, src: Population | None, dst: Population | None,
                 weight: np.ndarray) -> dict | None:
    """``conv`` for the IR connection ``weight`` (IR order) between image grids ``src -> dst``
    when it still is that convolution (a re-export then writes a Conv2d again), else None."""
    if conv is None or src is None or dst is None:
        return None
    out_hw = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip(src.image[:2], conv["padding"], conv["kernel"],
                                                              conv["stride"])]
    if out_hw != list(dst.image[:2]) or weight.shape != (dst.size, src.size):
        return None
    chw = weight[dst.image_order()][:, src.image_order()]
    return dict(conv) if conv2d_kernel(chw, src, dst, conv) is not None else None


def _graph_meta(gmeta: dict, time_steps: int | None, readout: _Neuron, shift: dict) -> dict:
    if isinstance(gmeta.get("format"), str) and gmeta["format"] == FORMAT and "ir_meta" in gmeta:
        try:
            meta = json.loads(gmeta["ir_meta"])
        except (TypeError, ValueError, RecursionError):
            raise IRError("the NIR graph's metadata 'ir_meta' is not valid JSON; re-export it") from None
        if isinstance(meta, dict):
            if time_steps is not None:
                try:
                    meta.update(window=int(time_steps), steps=int(time_steps) + int(meta.get("latency", 0)))
                except (TypeError, ValueError, OverflowError):
                    raise IRError("the NIR graph's metadata 'ir_meta' has no whole-number latency; re-export it") from None
            return meta
    steps = 1 if time_steps is None else int(time_steps)
    if steps <= 0:
        raise LoweringError(f"time_steps must be positive, got {time_steps}")
    latency = int(shift[readout.name])
    return {"task": "nir", "mode": "global", "encoder": "direct", "classes": readout.size,
            "time_steps": steps, "window": steps, "latency": latency, "steps": steps + latency}


def to_source_time(trace: Trace, graph: Graph, steps: int) -> Trace:
    """Undo the import shift: spikes ``[steps, B, N, F]`` and readout ``[steps, B, C]`` in the
    NIR graph's own time (population ``P`` is read from IR step ``meta["nir_shift"][P]`` on).
    Run the IR with ``steps + max shift`` input steps (pad with zeros) so every window is full."""
    shift = graph.meta.get("nir_shift", {})
    total = trace.readout.shape[0]
    need = max([int(shift.get(n, 0)) for n in trace.spikes] + [int(shift.get(graph.readout.name, 0))]) + steps
    if total < need:
        raise ValueError(f"the trace has {total} steps; aligning {steps} NIR steps needs {need} (pad the input)")
    spikes = {n: s[int(shift.get(n, 0)): int(shift.get(n, 0)) + steps] for n, s in trace.spikes.items()}
    r = int(shift.get(graph.readout.name, 0))
    return Trace(spikes, trace.readout[r:r + steps], trace.window, trace.saturation_events)


def source_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Input in the NIR graph's own layout ``[T, B, *shape]`` (``shape`` its Input node's, C
    order, e.g. ``[C, H, W]``) -> the IR's ``[T, B, N, F]`` for ``run_graph`` (an image input
    is held pixel by pixel, ``Population.image_order``)."""
    pop = graph.input
    x = np.asarray(x)
    if x.ndim < 3 or math.prod(x.shape[2:]) != pop.size:
        raise ValueError(f"the graph's input {pop.name!r} takes {pop.size} values per step and sample, "
                         f"got an input of shape {list(x.shape)} (expected [T, B, ...])")
    flat = x.reshape(*x.shape[:2], pop.size)
    if pop.image is not None:
        ir = np.empty_like(flat)
        ir[..., pop.image_order()] = flat
        flat = ir
    return flat.reshape(*x.shape[:2], pop.tokens, pop.features)
