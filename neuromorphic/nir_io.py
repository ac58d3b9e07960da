"""NIR interchange: IR ``Graph`` <-> NIR graph (neuroir.org), every conversion written out.

NIR nodes are continuous-time ODEs; the IR is discrete (SPEC §2.1, dt = 1 step). A NIR graph
means the IR exactly when a consumer integrates each node with forward Euler at the time step
``dt`` this module writes into the graph's metadata (``metadata["dt"]``, default 1e-3 s, the
default of Norse's importer), with the current updated before the membrane, ``v`` starting at
0, reset to ``v_reset`` in the step that spikes and a strict threshold. With ``k = dt / tau``:

    NIR LIF      tau dv/dt = (v_leak - v) + r I        ->  v[t] = (1 - k) v + k (v_leak + r I)
    NIR CubaLIF  tau_syn dI/dt = -I + w_in S;  tau_mem dv/dt = (v_leak - v) + r I
                 ->  I[t] = (1 - k_syn) I + k_syn w_in S[t];  v[t] = (1 - k_mem) v + k_mem (v_leak + r I[t])
    NIR IF       dv/dt = r I                           ->  v[t] = v + dt r I
    NIR Delay    y(t) = x(t - delay)                    ->  delay / dt whole steps
    IR  LIF      i[t] = alpha i + I_in;  v[t] = beta v (1 - s[t-1]) + i + bias;  s = v > threshold

Export (``graph_to_nir`` / ``export_nir``), per IR population of decay ``beta``:

- lif, alpha = 0, beta < 1: ``LIF(tau = dt / (1 - beta), r = 1, v_leak = 0, v_threshold =
  threshold, v_reset = 0)``; the factor ``1 / (1 - beta)`` that ``k r`` must cancel is folded
  into the incoming ``Affine`` weights, and the bias goes into the ``Affine`` bias (scaled the
  same way, delivered every step). With r = 1 the file means the same to a reader that honours
  ``r`` and to Norse, whose importer ignores ``r`` for LIF nodes.
- lif, beta = 1 (perfect integrator): ``IF(r = 1 / dt)``; weights and bias unscaled.
- lif, alpha > 0: ``CubaLIF(tau_syn = dt / (1 - alpha), tau_mem = dt / (1 - beta),
  w_in = 1 / (1 - alpha), r = 1 / (1 - beta), v_leak = bias / (1 - beta))``; weights unscaled,
  the bias in ``v_leak`` (it must not pass the synaptic filter).
- every Dense connection: ``source -> Delay(delay * dt) -> Affine -> target`` (one Delay node
  per source and delay, shared by its connections). The Delay sits before the Affine, so the
  Affine bias is delivered from step 0, as the IR bias is. A tokenwise ``[F_out, F_in]`` weight
  becomes the block-diagonal ``kron(I_N, W)`` over the token-major flattened grid (NIR neuron
  nodes are flat vectors); ``full`` weights (the readout, unrolled convolutions) go as they are.
- readout: the ``Output`` node receives the readout Affine directly, i.e. the readout current
  per step (``Trace.readout``); logits are the mean of the last ``window`` steps (written in
  ``metadata["ir_meta"]``). No ``I`` node: Norse cannot load one.
- attention: NIR has no node for the fast-weight memory (SPEC §2.3); a graph with an
  ``Attention`` raises ``LoweringError`` naming it. Fixed-point graphs raise too (NIR holds floats).

Import (``nir_to_graph``) reads LIF, CubaLIF, IF, Affine, Linear, Scale, Delay, Flatten, Input
and Output (fed by a neuron, a linear node, or an ``I`` integrator) with the inverse maps:
``beta = 1 - dt / tau``, ``alpha = 1 - dt / tau_syn``, input gain ``r dt / tau`` (LIF),
``(dt / tau_mem) r (dt / tau_syn) w_in`` (CubaLIF), ``dt r`` (IF, I), bias ``(dt / tau) v_leak``
plus the gained Affine biases; ``v_reset`` must be 0 (the IR resets to zero); per-neuron
thresholds fold into the inputs (threshold 1). NIR edges without a Delay deliver in the same
step, which the IR (every Dense has delay >= 1) cannot; the importer shifts each population
``P`` by ``shift[P]`` steps (``meta["nir_shift"]``, the least shift making every delay >= 1):
IR step ``t + shift[P]`` of ``P`` is NIR step ``t``. A bias that must start at a shifted step
(or pass a synaptic filter) is delivered by a ``nir.clock`` population (one neuron firing every
step from step 0) through a connection with that delay. ``to_source_time`` undoes the shift.

Known library facts this module was checked against (installed sources): snnTorch's
``export_to_nir`` writes Leaky as ``LIF(tau = 1e-4 / (1 - beta), r = 1 / (1 - beta))`` with a
hard-coded dt = 1e-4, writes ``v_reset = 0`` even for its default subtractive reset, and needs
per-neuron (vector) beta and threshold or its type inference fails; import its graphs with
``dt=1e-4``; its ``import_from_nir`` has no Delay node, so it cannot load exported files.
Norse's ``to_nir`` writes ``tau = dt / tau_mem_inv`` (= dt * tau, norse/norse#411), so its
graphs are read with ``dt = dt_norse ** 2``; Norse's ``from_nir`` ignores ``r`` for LIF,
defaults dt = 1e-3, starts ``v`` at ``v_leak``, makes every parameter float32 and has no
Delay node (``norse_module`` adds one). docs/backends.md (NIR section) has the derivations.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spikeformer.checkpoint import atomic_write_bytes

from .ir import MAX_DELAY, Connection, Graph, IRError, LoweringError, Population, unique_name
from .trace import Trace

FORMAT = "spikeformer-nir"
NIR_IO_VERSION = 1
DEFAULT_DT = 1e-3  # seconds per IR step written into exported graphs (Norse's importer default)
CLOCK = "nir.clock"  # imported graphs: the always-firing population that delivers shifted biases
SNNTORCH_DT = 1e-4  # the dt snnTorch's export_to_nir / import_from_nir hard-code
# Import bounds, checked before the importer allocates (a damaged file must fail in one line,
# not in the allocator): see read_nir and nir_to_graph
MAX_FILE_VALUES = 2 ** 25  # values in all datasets of one .nir file (256 MiB as float64)
MAX_GROUP_DEPTH = 16  # HDF5 groups nested in a .nir file (nir.write uses 4)
MAX_NIR_NEURONS = 2 ** 20  # neurons (values) of one NIR node's input or output
MAX_MATRIX = 2 ** 25  # values of one dense matrix the importer builds (256 MiB as float64)
MAX_WORK = 2 ** 34  # multiply-adds of one matrix product composing linear nodes (a few seconds)


def _nir():
    try:
        import nir
    except ImportError:  # pragma: no cover - nir is a declared dependency
        raise LoweringError("the 'nir' package is needed for NIR import/export; install it with "
                            "'pip install nir'") from None
    return nir


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------
# scalar conversions (each one written once, used by export and import)


def decay_to_tau(decay: float, dt: float) -> float:
    """Per-step decay ``d`` (beta or alpha) -> time constant ``tau = dt / (1 - d)`` (Euler)."""
    if not 0.0 <= decay < 1.0:
        raise LoweringError(f"decay {decay} has no finite NIR time constant (needs 0 <= decay < 1)")
    return dt / (1.0 - decay)


def tau_to_decay(tau: np.ndarray, dt: float) -> np.ndarray:
    """Time constant -> per-step decay ``1 - dt / tau`` (the inverse of ``decay_to_tau``)."""
    return 1.0 - dt / np.asarray(tau, np.float64)


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
        _check_hdf5(path)
        return nir.read(path)
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


def _arr(value: Any, name: str) -> np.ndarray:
    """NIR parameter (numpy, torch tensor or scalar) -> finite float64 array."""
    if hasattr(value, "detach"):  # Norse writes torch tensors into in-memory graphs
        value = value.detach().cpu().numpy()
    if np.iscomplexobj(value):
        raise IRError(f"NIR node {name} has a complex parameter; NIR parameters are real")
    try:
        out = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise IRError(f"NIR node {name} has a non-numeric parameter") from None
    if not np.isfinite(out).all():
        raise IRError(f"NIR node {name} has NaN or infinite parameters")
    return out


@dataclass
class _Term:
    """One delayed linear map of a population's output: ``matrix @ out[source][t - delay]``."""

    source: str
    delay: int
    matrix: np.ndarray | None  # [n, n_source]; None = identity
    label: str | None = None  # the Affine/Linear node it went through (the IR connection name)
    kind: str | None = None  # "tokenwise" when our exporter said so


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
    terms = [_Term(t.source, t.delay, weight if t.matrix is None else weight @ t.matrix, name, kind)
             for t in signal.terms]
    biases = [(start, weight @ v) for start, v in signal.biases]
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise IRError(f"NIR node {where} has bias {bias.shape}, expected ({weight.shape[0]},)")
        biases.append((0, bias))
    return _Signal(weight.shape[0], terms, biases)


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


def _metadata(obj: Any) -> dict:
    meta = getattr(obj, "metadata", None)
    return meta if isinstance(meta, dict) else {}


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
            signals[name] = _Signal(input_size, [_Term(name, 0, None)])
        elif isinstance(node, nir.Delay):
            s = incoming(name)
            k = _steps(_arr(node.delay, where), dt, where)
            signals[name] = _Signal(s.size, [_Term(t.source, t.delay + k, t.matrix, t.label, t.kind) for t in s.terms],
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
        elif isinstance(node, nir.Flatten):
            signals[name] = incoming(name)  # populations are flat vectors already
        elif isinstance(node, neurons_types):
            s = incoming(name)
            neuron = _neuron_from_node(name, node, s.size, dt)
            neuron.signal = s
            meta = _metadata(node)
            neuron.tokens, neuron.features = _grid(meta, s.size)
            neurons[name] = neuron
            signals[name] = _Signal(s.size, [_Term(name, 0, None)])
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
                                "Affine, Linear, Scale, Delay, Flatten, I (as readout), Input and Output")
    assert readout is not None
    return _build_graph(gmeta, dt, time_steps, input_name, input_size, nodes, order, neurons, readout)


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
            merged[key] = _Term(t.source, t.delay, t.matrix, t.label, t.kind)
            continue
        m = merged[key]
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
                 nodes: dict, order: list[str], neurons: dict[str, _Neuron], readout: _Neuron) -> Graph:
    in_meta = _metadata(nodes[input_name])
    in_tokens, in_features = _grid(in_meta, input_size)
    try:
        graded = bool(int(in_meta.get("graded", 1)))  # unknown (other tools): real-valued input
    except (TypeError, ValueError, OverflowError):
        graded = True
    populations = [Population(input_name, "input", in_tokens, in_features, graded=graded)]
    grids = {input_name: (in_tokens, in_features)}
    built: list[_Neuron] = [neurons[n] for n in order if n in neurons] + [readout]
    for n in built:
        grids[n.name] = (n.tokens, n.features)
    if CLOCK in grids:
        raise LoweringError(f"NIR node name {CLOCK!r} is reserved by the importer; rename the node")

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
                connections.append(Connection(unique(f"{CLOCK}->{n.name}@{step}"), CLOCK, n.name, "full",
                                              v.reshape(-1, 1).copy(), delay=step))
        for t in _merge(n.signal.terms, n.size):
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
            connections.append(Connection(unique(label), t.source, n.name, kind, weight, delay=delay))
        populations.append(Population(
            n.name, n.kind, n.tokens, n.features, beta=n.beta if n.kind == "lif" else 0.0,
            alpha=n.alpha, threshold=n.threshold if n.kind == "lif" else 1.0,
            bias=bias_now.reshape(n.tokens, n.features)))
    if clock_needed:
        # one neuron, no input, bias 1 > threshold 0.5 and beta 0: fires every step from step 0
        populations.insert(1, Population(CLOCK, "lif", 1, 1, beta=0.0, alpha=0.0, threshold=0.5,
                                         bias=np.ones((1, 1))))
    meta = _graph_meta(gmeta, time_steps, readout, shift)
    meta["nir_shift"] = {k: int(v) for k, v in shift.items()}
    meta["nir_dt"] = float(dt)
    try:
        return Graph(populations, connections, [], meta).validate()
    except IRError as exc:
        raise IRError(f"the NIR graph does not make a valid IR graph: {exc}") from None


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
        module = _import_norse_module(node, ignore_warnings=True, dt=dt)
        if isinstance(node, nir.CubaLIF):
            _cuba_lif_as_nir_defines(module)
        return module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch.load is what from_nir calls
        module = nirtorch.load(g, model_map)
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
    module.lif.state_fallback = lambda x: LIFBoxFeedForwardState(v=torch.zeros_like(x))  # bound at init


def _set_norse_parameters(sub: Any, node: Any, dtype: Any) -> None:
    """Norse's parameters of one imported node, from the NIR arrays in ``dtype`` (same formulas
    as norse/torch/utils/import_nir.py: tau_mem_inv = 1 / tau, ...)."""
    import torch

    nir = _nir()

    def t(value: Any) -> Any:
        return torch.as_tensor(_arr(value, "node"), dtype=dtype)

    if isinstance(node, (nir.Affine, nir.Linear)) and isinstance(sub, torch.nn.Linear):
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
    spikes = {name: np.zeros((steps, batch, *grid), bool) for name, grid in grids.items()}
    readout, state = [], None
    with torch.no_grad():
        for t in range(steps):
            x_t = torch.from_numpy(np.ascontiguousarray(x_steps[t])).reshape(batch, -1).double()  # [B, N*F]
            out, state = module(x_t, state)
            for name, grid in grids.items():
                spikes[name][t] = state.cache[name.replace(".", "_")].numpy().reshape(batch, *grid) != 0
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
