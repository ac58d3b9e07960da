"""The model IR: what every backend runs (SPEC §1), as plain dataclasses + numpy arrays.

A ``Graph`` is a set of neuron populations joined by Dense connections and spiking-attention
nodes. Every population is a ``[tokens, features]`` grid of neurons (flattened token-major,
index ``n * features + f``, when a backend needs a vector).

    input      the encoded model input, real-valued (``graded``) or binary spikes
    lif        LIF neurons, SPEC §2.1: i = alpha i + I_in; v = beta v (1 - s) + i + bias; s = v > threshold
    readout    a perfect integrator of its input current + bias; logits = mean over ``window`` steps

    Connection  Dense synapses source -> target with a delay in steps (1 everywhere, as Lava's
                Dense: SPEC §2.2). ``kind = "tokenwise"``: one ``[F_out, F_in]`` matrix applied to
                each token; ``kind = "full"``: one ``[N_out*F_out, N_in*F_in]`` matrix over the
                flattened grids (the readout, an unrolled convolution; a 2-d one keeps its
                geometry in ``conv`` and its ends their ``image``, for NIR's Conv2d).
    Attention   the event-driven fast-weight memory of SPEC §2.3 per head, reading the spikes of
                its query/key/value populations in the same step (no delay) and sending
                ``out_scale * scale * q S`` (per column of the H*d output) to ``target`` as graded
                current in the same step.

Currents into a population are summed. Fixed-point graphs (``precision = "fixed"``, made by
``neuromorphic.quantize``) carry the integer fields as well (Lava's names: du, dv, vth,
bias_mant, bias_exp, weight_exp, ...). Saved as ``graph.json`` + ``arrays.safetensors`` (no
pickle); ``load_graph`` checks format, version, the arrays' hash, shapes and dtypes and
rejects a bad file with one line.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from spikeformer.checkpoint import atomic_write_bytes, atomic_write_json
from spikeformer.config import short_repr
from spikeformer.errors import SpikeformerError
from spikeformer.fixed_point import BIAS_EXP_MAX, BIAS_MANT_MAX, DECAY_UNITY, MANTISSA_MAX, MANTISSA_MIN, VTH_MAX
from spikeformer.variants import VARIANTS

FORMAT = "spikeformer-ir"
IR_VERSION = 1
GRAPH_FILE = "graph.json"
ARRAYS_FILE = "arrays.safetensors"
POPULATION_KINDS = ("input", "lif", "readout")
CONNECTION_KINDS = ("tokenwise", "full")
PRECISIONS = ("float", "fixed")
MODES = ("global", "causal")
# Bounds on declared sizes, checked before any backend allocates from them (a damaged file
# claiming tokens = 10**12 or delay = 10**9 fails in _validate, in one line)
MAX_NEURONS = 2 ** 26  # per population (tokens * features)
MAX_DELAY = 1024  # steps of a Dense connection (backends keep that many past outputs per population)
MAX_STEPS = 2 ** 24  # meta steps, window and latency
MAX_HEADS = 1024
MAX_EXP = 64  # |weight_exp| of a fixed-point connection


class IRError(SpikeformerError, ValueError):
    """An IR file or graph is malformed."""


class LoweringError(SpikeformerError, ValueError):
    """A model has a layer or setting a backend cannot represent."""


@dataclass
class Population:
    """A ``[tokens, features]`` grid of neurons (see the module docstring for ``kind``)."""

    name: str
    kind: str
    tokens: int
    features: int
    beta: float = 0.0  # membrane decay per step (lif)
    alpha: float = 0.0  # current decay per step (lif)
    threshold: float = 1.0  # lif
    bias: Optional[np.ndarray] = None  # [tokens, features], added to v every step (lif, readout)
    graded: bool = False  # input: real values (True) or binary spikes
    # fixed point (quantize.py), Lava PyLifModelBitAcc names
    du: Optional[int] = None
    dv: Optional[int] = None
    vth: Optional[int] = None
    bias_mant: Optional[np.ndarray] = None  # [tokens, features] int
    bias_exp: Optional[np.ndarray] = None  # [tokens, features] int
    # [height, width, patch]: the grid tiles a height x width image with `features / patch**2`
    # channels; tokens are its patch x patch patches in raster order, features (row, column,
    # channel) within a patch. Set on the ends of a conv connection; NIR writes such grids as
    # [channels, height, width] (``image_order``).
    image: Optional[list] = None

    @property
    def size(self) -> int:
        return self.tokens * self.features

    @property
    def channels(self) -> int:
        """Channels of an image grid (``image`` set)."""
        return self.features // (self.image[2] ** 2)

    def image_order(self) -> np.ndarray:
        """The flat [tokens*features] index of each neuron in [channels, height, width] order
        (C order), for an image grid: ``vector[image_order()]`` is the image, channels first."""
        height, width, patch = self.image
        index = np.arange(self.size).reshape(height // patch, width // patch, patch, patch, self.channels)
        return index.transpose(4, 0, 2, 1, 3).reshape(-1)


@dataclass
class Connection:
    """Dense synapses ``source -> target`` delivered ``delay`` steps later."""

    name: str
    source: str
    target: str
    kind: str
    weight: np.ndarray  # tokenwise [F_out, F_in] | full [N_out*F_out, N_in*F_in]
    delay: int = 1
    # fixed point: effective weight = weight << weight_exp (Lava Dense); weight is then int
    weight_exp: Optional[int] = None
    num_weight_bits: Optional[int] = None
    num_message_bits: int = 0  # 0: binary spikes in; > 0: graded input of that many bits
    # plasticity (docs/backends.md, "On-chip learning"): the local rule the synapses learn by
    # online, its parameters (rules.stdp.STDPParameters / rules.three_factor.ThreeFactorParameters
    # fields) and its trace state: "pre" [source size], "post" [target size], and for
    # three_factor "eligibility" shaped like the weight (None: zero traces). No rule: fixed weights.
    rule: Optional[str] = None
    rule_params: Optional[dict] = None
    traces: Optional[dict] = None
    # a plastic full connection's synapses (bool, shaped like the weight; None: every pair). A
    # tokenwise weight made plastic becomes its per-token copies kron(I_N, W) with this block mask
    # (``plastic_connection``): only existing synapses learn, as on a chip.
    mask: Optional[np.ndarray] = None
    # a full weight that is a 2-d convolution between image grids (``Population.image``):
    # {"kernel": [kh, kw], "stride": [sh, sw], "padding": [ph, pw]}. The weight stays the
    # source of truth; NIR export reads the kernel back from it (and checks it) to write a Conv2d.
    conv: Optional[dict] = None

    def rule_parameters(self) -> Any:
        """The parameters of the connection's learning rule, as its rule's own dataclass."""
        return plastic_rules()[self.rule][0](**self.rule_params)

    def synapses(self) -> np.ndarray:
        """Bool ``[target size, source size]``: which entries of a plastic weight are synapses."""
        return self.mask if self.mask is not None else np.ones(self.weight.shape, bool)

    def full_weight(self, tokens: int) -> np.ndarray:
        """``[N_out*F_out, N_in*F_in]`` over token-major flattened grids: a tokenwise ``[F_out, F_in]``
        weight becomes the block-diagonal ``kron(I_N, W)`` (``tokens`` = N); a full one is itself."""
        if self.kind == "tokenwise":
            return np.kron(np.eye(tokens, dtype=self.weight.dtype), self.weight)  # block n = token n
        return self.weight


@dataclass
class Attention:
    """Spiking attention (SPEC §2.3) between q/k/v populations ``[N, H*d]`` and ``target``."""

    name: str
    query: str
    key: str
    value: str
    target: str
    heads: int
    head_dim: int
    variant: str
    decay: np.ndarray  # lambda per head [H]
    scale: float
    out_scale: np.ndarray  # per output column [H*d] (a folded BatchNorm's gain)
    plasticity: dict[str, np.ndarray] = field(default_factory=dict)  # per head [H]
    modulator: Optional[str] = None  # population [N, H] whose mean spike over tokens is m[t]
    # fixed point (quantize.py): see docs/backends.md
    fixed: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """A lowered model. ``meta`` holds the timing and task facts backends need:
    mode, steps (per sample, latency included), window, latency, classes, encoder, task."""

    populations: list[Population]
    connections: list[Connection]
    attentions: list[Attention]
    meta: dict[str, Any]
    precision: str = "float"
    fixed: dict[str, Any] = field(default_factory=dict)  # global fixed-point facts (input_scale, ...)

    def population(self, name: str) -> Population:
        for pop in self.populations:
            if pop.name == name:
                return pop
        raise IRError(f"IR has no population named {name!r}")

    @property
    def input(self) -> Population:
        return next(p for p in self.populations if p.kind == "input")

    @property
    def readout(self) -> Population:
        return next(p for p in self.populations if p.kind == "readout")

    def incoming(self, name: str) -> list[Connection]:
        return [c for c in self.connections if c.target == name]

    def attention_into(self, name: str) -> list[Attention]:
        return [a for a in self.attentions if a.target == name]

    def step_order(self) -> list[str]:
        """Population names in an order where same-step (attention) inputs come first.

        Dense connections carry a one-step delay, so only attention nodes create same-step
        dependencies: a target comes after the attention's q/k/v (and modulator) populations.
        """
        after: dict[str, set[str]] = {p.name: set() for p in self.populations}
        for att in self.attentions:
            after[att.target] |= {att.query, att.key, att.value} | ({att.modulator} if att.modulator else set())
        order: list[str] = []
        pending = [p.name for p in self.populations]
        while pending:
            ready = [n for n in pending if after[n] <= set(order)]
            if not ready:
                raise IRError(f"IR has a same-step cycle among {pending}")
            order.extend(ready)
            pending = [n for n in pending if n not in ready]
        return order

    def require_frozen(self, backend: str) -> "Graph":
        """IRError (one line) if a connection carries a learning rule: ``backend`` runs fixed
        weights; online learning on the backends is issue 11's next step."""
        plastic = [c.name for c in self.connections if c.rule is not None]
        _need(not plastic, f"{backend} runs fixed weights, but connection {plastic[0] if plastic else ''!r} learns by "
                           f"a rule; running plasticity on {backend} is not built yet")
        return self

    def require_spike_learning(self, backend: str) -> None:
        """What a backend's on-chip learning runs: rules from binary spikes, STDP into LIF
        neurons, three_factor into LIF neurons or the readout (whose post factor is 1 at every
        step: an integrator has no spikes), in float and in fixed point (``fixed_learning``);
        anything else is an IRError (one line)."""
        for conn in self.connections:
            if conn.rule is None:
                continue
            why = learning_refusal(self, conn)
            _need(why is None, f"connection {conn.name!r} learns by {conn.rule}{why}")

    def validate(self) -> "Graph":
        """Check names, kinds, shapes and dtypes; raise IRError with one line on the first problem."""
        _validate(self)
        return self


# ---------------------------------------------------------------------------------------------
# validation


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise IRError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    """A finite number: a float, or an int a float holds exactly (|x| < 2**53: torch takes larger
    ints as int64 and fails on them), never a bool."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    if isinstance(value, (int, np.integer)):
        return abs(int(value)) < 2 ** 53
    return math.isfinite(value)


def _int_in(value: Any, low: int, high: int, where: str) -> int:
    _need(_is_int(value) and low <= value <= high, f"{where} must be an integer in {low}..{high}, got {short_repr(value)}")
    return int(value)


def _real(value: Any, where: str) -> float:
    _need(_is_real(value), f"{where} must be a finite number, got {short_repr(value)}")
    return float(value)


def _name(obj: Any, field_name: str = "name") -> str:
    value = getattr(obj, field_name)
    _need(isinstance(value, str), f"IR {type(obj).__name__.lower()} {field_name} must be a string, got {short_repr(value)}")
    return value


def _array(obj: Any, name: str, shape: tuple, integer: bool = False, bounds: Optional[tuple] = None) -> None:
    value = getattr(obj, name)
    where = f"{type(obj).__name__.lower()} {obj.name!r} field {name!r}"
    _need(isinstance(value, np.ndarray), f"{where} must be an array, got {type(value).__name__}")
    _need(value.shape == shape, f"{where} has shape {value.shape}, expected {shape}")
    if integer:
        _need(np.issubdtype(value.dtype, np.integer), f"{where} must be integer, got {value.dtype}")
    else:
        _need(np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer),
              f"{where} must be numeric, got {value.dtype}")
        _need(bool(np.isfinite(value).all()), f"{where} contains NaN or infinite values")
    if bounds is not None and value.size:
        _need(bool(bounds[0] <= value.min() and value.max() <= bounds[1]),
              f"{where} has values outside [{bounds[0]}, {bounds[1]}]")


def _int_list(value: Any, length: int, low: int, high: int, where: str) -> None:
    _need(isinstance(value, list) and len(value) == length and all(_is_int(x) and low <= x <= high for x in value),
          f"{where} must be a list of {length} integers in {low}..{high}")


def _validate_population(p: Population, fixed: bool) -> None:
    _need(isinstance(p.kind, str) and p.kind in POPULATION_KINDS,
          f"population {p.name!r} has unknown kind {short_repr(p.kind)}")
    where = f"population {p.name!r}"
    tokens = _int_in(p.tokens, 1, MAX_NEURONS, f"{where} tokens")
    features = _int_in(p.features, 1, MAX_NEURONS, f"{where} features")
    _need(tokens * features <= MAX_NEURONS, f"{where} has {tokens} x {features} neurons, above the limit {MAX_NEURONS}")
    beta, alpha = _real(p.beta, f"{where} beta"), _real(p.alpha, f"{where} alpha")
    threshold = _real(p.threshold, f"{where} threshold")
    _need(isinstance(p.graded, (bool, np.bool_)), f"{where} field 'graded' must be true or false")
    if p.kind == "lif":
        _need(0.0 <= beta <= 1.0 and 0.0 <= alpha <= 1.0, f"population {p.name!r} has decays outside [0, 1]")
        _need(threshold > 0, f"population {p.name!r} needs a positive threshold")
    if p.kind != "input":
        _array(p, "bias", (p.tokens, p.features))
    if p.image is not None:
        _int_list(p.image, 3, 1, MAX_NEURONS, f"{where} image")
        height, width, patch = p.image
        _need(height % patch == 0 and width % patch == 0 and tokens == (height // patch) * (width // patch)
              and features % (patch * patch) == 0,
              f"{where} image {p.image} (height, width, patch) does not tile its {tokens} x {features} grid")
    if fixed and p.kind != "input":  # Lava's LIF (the readout is a LIF that never fires)
        for key in ("du", "dv", "vth"):
            _need(_is_int(getattr(p, key)), f"fixed-point population {p.name!r} lacks integer {key!r}")
        _int_in(p.du, 0, DECAY_UNITY - 1, f"{where} du")
        _int_in(p.dv, 0, DECAY_UNITY, f"{where} dv")
        _int_in(p.vth, 1, VTH_MAX, f"{where} vth")
        _array(p, "bias_mant", (p.tokens, p.features), integer=True, bounds=(-BIAS_MANT_MAX, BIAS_MANT_MAX))
        _array(p, "bias_exp", (p.tokens, p.features), integer=True, bounds=(0, BIAS_EXP_MAX))


def _validate_connection(c: Connection, pops: dict[str, Population], fixed: bool) -> None:
    _name(c, "source")
    _name(c, "target")
    _need(c.source in pops and c.target in pops, f"connection {c.name!r} joins unknown populations")
    _need(isinstance(c.kind, str) and c.kind in CONNECTION_KINDS,
          f"connection {c.name!r} has unknown kind {short_repr(c.kind)}")
    _need(_is_int(c.delay) and c.delay >= 1,
          f"connection {c.name!r} has delay {short_repr(c.delay)}; Dense connections delay at least one step (SPEC §2.2)")
    _int_in(c.delay, 1, MAX_DELAY, f"connection {c.name!r} delay")
    src, dst = pops[c.source], pops[c.target]
    if c.kind == "tokenwise":
        _need(src.tokens == dst.tokens, f"tokenwise connection {c.name!r} joins grids with different tokens")
        shape = (dst.features, src.features)
    else:
        shape = (dst.size, src.size)
    _array(c, "weight", shape, integer=fixed, bounds=(MANTISSA_MIN, MANTISSA_MAX) if fixed else None)
    for key in ("weight_exp", "num_weight_bits"):
        _need(getattr(c, key) is None or _is_int(getattr(c, key)),
              f"connection {c.name!r} field {key!r} must be an integer or null, got {short_repr(getattr(c, key))}")
    _int_in(c.num_message_bits, 0, 32, f"connection {c.name!r} num_message_bits")
    if fixed:
        _need(isinstance(c.weight_exp, int), f"fixed-point connection {c.name!r} lacks an integer weight_exp")
        _int_in(c.weight_exp, -MAX_EXP, MAX_EXP, f"connection {c.name!r} weight_exp")
    if c.rule is not None or c.rule_params is not None or c.traces is not None or c.mask is not None:
        _validate_plasticity(c, src, dst, fixed)
    if c.conv is not None:
        _validate_conv(c, src, dst)


def _validate_conv(c: Connection, src: Population, dst: Population) -> None:
    where = f"connection {c.name!r}"
    _need(isinstance(c.conv, dict) and set(c.conv) == {"kernel", "stride", "padding"},
          f"{where} conv must be a table of kernel, stride and padding, got {short_repr(c.conv)}")
    for key in ("kernel", "stride"):
        _int_list(c.conv[key], 2, 1, MAX_NEURONS, f"{where} conv {key}")
    _int_list(c.conv["padding"], 2, 0, MAX_NEURONS, f"{where} conv padding")
    _need(c.kind == "full" and src.image is not None and dst.image is not None,
          f"{where} is a convolution, so it needs kind 'full' between image grids (population 'image')")
    for axis in (0, 1):
        size = src.image[axis] + 2 * c.conv["padding"][axis] - c.conv["kernel"][axis]
        _need(size >= 0 and size // c.conv["stride"][axis] + 1 == dst.image[axis],
              f"{where} conv {c.conv} maps a {src.image[:2]} image onto {dst.image[:2]}")


def learning_refusal(graph: Graph, conn: Connection, rule: Optional[str] = None) -> Optional[str]:
    """Why ``conn`` cannot learn by ``rule`` (default: its own) on a backend, as the end of a
    sentence (" from graded input; ..."), or None when it can."""
    rule = rule or conn.rule
    src, dst = graph.population(conn.source), graph.population(conn.target)
    if src.kind == "input" and src.graded:
        return " from graded input; on-chip learning pairs binary spikes (Lava's pre trace takes half a graded payload)"
    if dst.kind == "readout" and rule != "three_factor":
        return (" into the readout, which does not spike; only three_factor reaches it "
                "(its post factor is 1 at every step)")
    if conn.delay != 1:
        return f" with delay {conn.delay}; a plastic connection delays one step"
    return None


def plastic_connection(conn: Connection, tokens: int, rule: str, params: dict) -> Connection:
    """``conn`` learning by ``rule`` with ``params`` (a table of its parameters): a full weight
    as it is; a tokenwise one (shared over ``tokens``) as its per-token copies, the full
    ``kron(I_N, W)`` with the block mask, so that each token's copy learns from its own spikes."""
    weight, mask = conn.weight.copy(), None
    if conn.kind == "tokenwise" and tokens > 1:
        weight = conn.full_weight(tokens)
        mask = np.kron(np.eye(tokens, dtype=bool), np.ones(conn.weight.shape, bool))
    kind = "full" if conn.kind == "tokenwise" and tokens > 1 else conn.kind
    return replace(conn, kind=kind, weight=weight, mask=mask, rule=rule, rule_params=dict(params), traces=None)


def plastic_rules() -> dict[str, tuple[Any, Any]]:
    """The rules a connection may learn by: name -> (its parameters' dataclass, its ``update``)."""
    from rules import stdp, three_factor

    return {"stdp": (stdp.STDPParameters, stdp.update),
            "three_factor": (three_factor.ThreeFactorParameters, three_factor.update)}


def _validate_plasticity(c: Connection, src: Population, dst: Population, fixed: bool) -> None:
    """A plastic connection: a known rule, parameters its rule accepts, traces of the right shapes."""
    from rules.base import RuleError

    kinds = plastic_rules()
    where = f"connection {c.name!r}"
    _need(isinstance(c.rule, str) and c.rule in kinds,
          f"{where} has learning rule {short_repr(c.rule)}; a connection learns by one of {', '.join(kinds)}")
    _need(c.delay == 1, f"{where} learns by {c.rule} with delay {c.delay}; a plastic connection delays one step")
    # a local rule changes each synapse by its own pre and post activity; a weight shared over
    # tokens would need the sum over every token's synapses (non-local), which no chip does
    _need(c.kind == "full" or src.tokens == 1,
          f"{where} learns by {c.rule} but shares its weight over {src.tokens} tokens; a plastic connection must be "
          "full (one weight per synapse) or join one-token populations")
    _need(isinstance(c.rule_params, dict) and all(isinstance(k, str) for k in c.rule_params),
          f"{where} rule_params must be a table of {c.rule} parameters, got {short_repr(c.rule_params)}")
    allowed = {f.name for f in fields(kinds[c.rule][0])}
    unknown = sorted(set(c.rule_params) - allowed)
    _need(not unknown, f"{where} has unknown {c.rule} parameters {unknown}; known: {sorted(allowed)}")
    try:
        c.rule_parameters()
    except RuleError as exc:
        raise IRError(f"{where}: {exc}") from None
    if c.mask is not None:
        _need(c.kind == "full" and isinstance(c.mask, np.ndarray) and c.mask.dtype == np.bool_
              and c.mask.shape == c.weight.shape,
              f"{where} mask must be a bool array shaped like its full weight {c.weight.shape}")
        _need(not np.any(c.weight[~c.mask]), f"{where} has weight outside its mask (synapses that do not exist)")
    if c.traces is None:
        return  # a rule that has not run yet: its traces start at zero
    # the fixed-point engine's traces are 7-bit integers with random-stream state: they start at zero
    _need(not fixed, f"{where} carries float rule traces in a fixed-point graph; fixed-point traces start at zero")
    _need(isinstance(c.traces, dict), f"{where} traces must be a table of arrays, got {short_repr(c.traces)}")
    shapes = {"pre": (src.size,), "post": (dst.size,)}
    if c.rule == "three_factor":
        shapes["eligibility"] = c.weight.shape
    _need(set(c.traces) == set(shapes), f"{where} traces must be {sorted(shapes)}, got {short_repr(sorted(map(str, c.traces)))}")
    for key, shape in shapes.items():
        value = c.traces[key]
        _need(isinstance(value, np.ndarray) and value.shape == shape and np.issubdtype(value.dtype, np.floating)
              and bool(np.isfinite(value).all()),
              f"{where} trace {key!r} must be a finite float array of shape {shape}")


def _validate_attention(a: Attention, pops: dict[str, Population], fixed: bool) -> None:
    for role in ("query", "key", "value", "target"):
        _need(isinstance(getattr(a, role), str) and getattr(a, role) in pops,
              f"attention {a.name!r} {role} {short_repr(getattr(a, role))} is not a population")
    heads = _int_in(a.heads, 1, MAX_HEADS, f"attention {a.name!r} heads")
    head_dim = _int_in(a.head_dim, 1, MAX_NEURONS, f"attention {a.name!r} head_dim")
    width = heads * head_dim
    for role in ("query", "key", "value", "target"):
        _need(pops[getattr(a, role)].features == width, f"attention {a.name!r} {role} must have {width} features")
        _need(pops[getattr(a, role)].tokens == pops[a.query].tokens,
              f"attention {a.name!r} {role} must have the query's {pops[a.query].tokens} tokens")
    _need(isinstance(a.variant, str) and a.variant in VARIANTS,
          f"attention {a.name!r} has unknown variant {short_repr(a.variant)}; choose one of {list(VARIANTS)}")
    variant = VARIANTS[a.variant]
    _array(a, "decay", (heads,), bounds=(0.0, 1.0))
    _real(a.scale, f"attention {a.name!r} scale")
    _array(a, "out_scale", (width,))
    _need(isinstance(a.plasticity, dict) and set(a.plasticity) == set(variant.parameter_names),
          f"attention {a.name!r} plasticity must hold {list(variant.parameter_names)} for variant {a.variant!r}")
    for key in a.plasticity:
        value = a.plasticity[key]
        _need(isinstance(value, np.ndarray) and value.shape == (heads,), f"attention {a.name!r} plasticity {key!r} must be [H]")
        _need((np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer))
              and bool(np.isfinite(value).all()), f"attention {a.name!r} plasticity {key!r} must hold finite real numbers")
    if a.modulator is not None:
        _need(isinstance(a.modulator, str) and a.modulator in pops and pops[a.modulator].features == a.heads
              and pops[a.modulator].tokens == pops[a.query].tokens,
              f"attention {a.name!r} modulator must be a population with {a.heads} features")
    _need((a.modulator is not None) == variant.modulated,
          f"attention {a.name!r} of variant {a.variant!r} " + ("needs a modulator population" if variant.modulated
                                                              else "takes no modulator"))
    _need(isinstance(a.fixed, dict), f"attention {a.name!r} field 'fixed' must be a table")
    if fixed:
        f, where = a.fixed, f"fixed-point attention {a.name!r}"
        frac_bits = _int_in(f.get("frac_bits"), 0, 30, f"{where} frac_bits")
        _need(_is_int(f.get("one")) and f.get("one") == 2 ** frac_bits, f"{where} one must be 2 ** frac_bits")
        _int_in(f.get("state_bits"), 2, 32, f"{where} state_bits")
        if "trace_bits" in f:
            _int_in(f["trace_bits"], 2, 32, f"{where} trace_bits")
        _int_list(f.get("decay"), heads, 0, DECAY_UNITY, f"{where} decay")
        for param in variant.parameters:  # decays: 12-bit decrements; amplitudes and rates: fractions of 4096
            _int_list(f.get(param.name), heads, 0, DECAY_UNITY if param.kind == "decay" else 2 ** 20,
                      f"{where} {param.name}")
        _int_in(f.get("out_shift"), 0, 62, f"{where} out_shift")
        _int_list(f.get("out_mant"), width, -(2 ** 31), 2 ** 31, f"{where} out_mant")


def _validate(g: Graph) -> None:
    _need(isinstance(g.precision, str) and g.precision in PRECISIONS,
          f"IR precision must be one of {PRECISIONS}, got {short_repr(g.precision)}")
    fixed = g.precision == "fixed"
    for group, cls in ((g.populations, Population), (g.connections, Connection), (g.attentions, Attention)):
        _need(isinstance(group, list) and all(isinstance(x, cls) for x in group),
              f"IR {cls.__name__.lower()}s must be a list of {cls.__name__} records")
    names = [_name(p) for p in g.populations]
    _need(len(set(names)) == len(names), "IR population names must be unique")
    pops = {p.name: p for p in g.populations}
    for p in g.populations:
        _validate_population(p, fixed)
    _need(sum(p.kind == "input" for p in g.populations) == 1, "IR needs exactly one input population")
    _need(sum(p.kind == "readout" for p in g.populations) == 1, "IR needs exactly one readout population")
    _need(isinstance(g.meta, dict), f"IR meta must be a table, got {type(g.meta).__name__}")
    for key in ("mode", "steps", "window", "latency", "classes"):
        _need(key in g.meta, f"IR meta lacks {key!r}")
    _need(isinstance(g.meta["mode"], str) and g.meta["mode"] in MODES, f"IR meta mode must be one of {MODES}, got {short_repr(g.meta['mode'])}")
    steps = _int_in(g.meta["steps"], 1, MAX_STEPS, "IR meta steps")
    _int_in(g.meta["window"], 1, steps, "IR meta window")
    _int_in(g.meta["latency"], 0, steps, "IR meta latency")
    _need(_is_int(g.meta["classes"]) and g.meta["classes"] == g.readout.size,
          f"IR meta classes must equal the readout's {g.readout.size} neurons, got {short_repr(g.meta['classes'])}")
    _need(isinstance(g.fixed, dict), f"IR field 'fixed' must be a table, got {type(g.fixed).__name__}")
    if fixed:
        _need(_is_real(g.fixed.get("input_scale")) and g.fixed["input_scale"] > 0,
              f"fixed-point IR needs a positive input_scale, got {short_repr(g.fixed.get('input_scale'))}")
    for c in g.connections:
        _name(c)
        _validate_connection(c, pops, fixed)
    for a in g.attentions:
        _name(a)
        _validate_attention(a, pops, fixed)
    g.step_order()


# ---------------------------------------------------------------------------------------------
# save / load: graph.json (structure, scalars) + arrays.safetensors (every array), no pickle


def _split(obj: Any, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Dataclass -> JSON dict, moving arrays into ``arrays`` under ``prefix/field``."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            arrays[f"{prefix}/{f.name}"] = value
            out[f.name] = {"array": f"{prefix}/{f.name}"}
        elif isinstance(value, dict) and any(isinstance(v, np.ndarray) for v in value.values()):
            out[f.name] = {}
            for key, item in value.items():
                if isinstance(item, np.ndarray):
                    arrays[f"{prefix}/{f.name}/{key}"] = item
                    out[f.name][key] = {"array": f"{prefix}/{f.name}/{key}"}
                else:
                    out[f.name][key] = item
        else:
            out[f.name] = value
    return out


def _join(record: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"array"}:
            if not isinstance(value["array"], str) or value["array"] not in arrays:
                raise IRError(f"IR arrays file lacks {short_repr(value['array'])}; re-export the model")
            return arrays[value["array"]]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    return {k: resolve(v) for k, v in record.items()}


def _contiguous(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in arrays.items():
        value = np.ascontiguousarray(value)
        if value.dtype == np.bool_:
            value = value.astype(np.uint8)
        out[key] = value
    return out


def save_graph(graph: Graph, path: str | Path) -> Path:
    """Write ``path/graph.json`` + ``path/arrays.safetensors`` atomically (arrays first)."""
    from safetensors.numpy import save

    graph.validate()
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    record = {
        "format": FORMAT, "version": IR_VERSION, "precision": graph.precision,
        "meta": graph.meta, "fixed": graph.fixed,
        "populations": [_split(p, f"pop/{p.name}", arrays) for p in graph.populations],
        "connections": [_split(c, f"conn/{c.name}", arrays) for c in graph.connections],
        "attentions": [_split(a, f"att/{a.name}", arrays) for a in graph.attentions],
    }
    blob = save(_contiguous(arrays)) if arrays else save({"empty": np.zeros(0)})
    record["arrays_sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write_bytes(path / ARRAYS_FILE, blob)
    atomic_write_json(path / GRAPH_FILE, record)
    return path


def load_graph(path: str | Path) -> Graph:
    """Read and validate an IR folder written by ``save_graph``; one-line IRError on any problem."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    if not (path / GRAPH_FILE).is_file() or not (path / ARRAYS_FILE).is_file():
        raise IRError(f"{path} is not an IR folder (needs {GRAPH_FILE} and {ARRAYS_FILE}); "
                      "create one with 'spikeformer export RUN --to ir --out PATH'")
    try:
        record = json.loads((path / GRAPH_FILE).read_bytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit integer, deep nesting
        reason = exc.msg if hasattr(exc, "msg") else "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise IRError(f"{path / GRAPH_FILE} is not valid JSON ({' '.join(str(reason).split())[:200]}); "
                      "re-export the model") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise IRError(f"{path / GRAPH_FILE} is not a spikeformer IR file "
                      f"(format {short_repr(record.get('format') if isinstance(record, dict) else None)})")
    if record.get("version") != IR_VERSION or isinstance(record.get("version"), bool):
        raise IRError(f"{path / GRAPH_FILE} has IR version {short_repr(record.get('version'))}; this spikeformer reads "
                      f"version {IR_VERSION}: re-export the model with this version")
    blob = (path / ARRAYS_FILE).read_bytes()
    if hashlib.sha256(blob).hexdigest() != record.get("arrays_sha256"):
        raise IRError(f"{path / ARRAYS_FILE} does not match {GRAPH_FILE} (truncated or modified); re-export the model")
    try:
        arrays = load(blob)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise IRError(f"{path / ARRAYS_FILE} is not a readable safetensors file ({' '.join(str(exc).split())[:300]}); "
                      "re-export the model") from None
    for key in ("populations", "connections", "attentions"):
        if not isinstance(record.get(key), list) or not all(isinstance(x, dict) for x in record[key]):
            raise IRError(f"{path / GRAPH_FILE} field {key!r} must be a list of records; re-export the model")
    try:
        graph = Graph(
            populations=[Population(**_join(p, arrays)) for p in record["populations"]],
            connections=[_connection(_join(c, arrays)) for c in record["connections"]],
            attentions=[Attention(**_join(a, arrays)) for a in record["attentions"]],
            meta=record["meta"], precision=record["precision"], fixed=record.get("fixed", {}),
        )
    except (KeyError, TypeError) as exc:
        raise IRError(f"{path / GRAPH_FILE} has a missing or unknown field ({' '.join(str(exc).split())[:200]}); "
                      "re-export the model") from None
    except RecursionError:
        raise IRError(f"{path / GRAPH_FILE} nests its records too deeply; re-export the model") from None
    try:
        return graph.validate()
    except IRError as exc:  # name the file and the fix
        raise IRError(f"{path / GRAPH_FILE}: {exc}; re-export the model") from None


def _connection(record: dict[str, Any]) -> Connection:
    """A saved connection; its mask comes back from safetensors as 0/1 bytes."""
    mask = record.get("mask")
    if isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.size and mask.max() <= 1:
        record = {**record, "mask": mask.astype(bool)}
    return Connection(**record)


def unique_name(base: str, used: set[str], sep: str = "_") -> str:
    """``base``, or ``base{sep}2``, ``base{sep}3``, ... : the first not in ``used`` (then added to it)."""
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}{sep}{k}"
    used.add(name)
    return name


def graph_summary(graph: Graph) -> dict[str, Any]:
    """Counts for printing: neurons, synapses, attention heads."""
    neurons = sum(p.size for p in graph.populations if p.kind == "lif")
    synapses = 0
    for c in graph.connections:
        tokens = graph.population(c.target).tokens if c.kind == "tokenwise" else 1
        synapses += int(c.weight.size) * tokens
    return {"neurons": neurons, "synapses": synapses, "populations": len(graph.populations),
            "connections": len(graph.connections), "attention_heads": sum(a.heads for a in graph.attentions),
            "precision": graph.precision}
