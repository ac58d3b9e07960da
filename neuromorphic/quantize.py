"""Float IR -> fixed-point IR (SPEC §2.4): every rounding step of the Lava export lives here.

Units. A LIF population with float threshold theta and integer ``vth`` keeps its membrane in
units of ``theta / (64 vth)`` (Lava compares v with ``vth << 6``) and receives ``a_in`` in units
of ``theta / vth`` (Lava adds ``a_in << 6``). So a float current I becomes ``a_in = I vth / theta``:

- Dense weights: ``W vth / theta`` (divided by the input scale for graded input), written as
  an 8-bit mantissa times ``2^weight_exp``. With mixed-sign weights Lava's bit-accurate Dense
  drops the mantissa's least significant bit, so mantissas are even numbers in [-256, 254]
  (then Lava's clip and truncation leave them unchanged, whatever sign mode it detects).
- Bias: ``b 64 vth / theta`` = ``bias_mant << bias_exp`` with a 13-bit signed mantissa and
  the smallest exponent in 0..7 that fits.
- Decays: ``dv = round((1 - beta) 4096)``, ``du = round((1 - alpha) 4096) - 1``: Lava decays u
  by ``du + 1`` (the ``ds_offset`` of ``PyLifModelBitAcc``), so alpha = 0 is ``du = 4095`` and u
  keeps nothing; alpha above 4095.5 / 4096 has no 12-bit form.
- Readout: a LIF with ``dv = 0`` that never fires (``vth`` at its 17-bit maximum) integrates
  the readout current; its ``a_in`` scale is a power of two chosen so the integral of the
  largest possible current over a sample stays inside 23 bits.
- Graded input: ``round(x * input_scale)`` in 8 signed bits (``num_message_bits = 8``), the
  scale a power of two that maps the largest calibration magnitude to <= 127.
- Attention: state in ``state_bits``-bit integers, one coincidence = ``one = 2^frac_bits``,
  decays as 12-bit decrements, rates as 12-bit fractions, the read ``out_scale * scale``
  times ``vth / theta`` of the target as ``out_mant / 2^out_shift`` (16-bit mantissa).
- Plastic connections (docs/backends.md, "On-chip learning") keep ``rule``, the float
  ``rule_params`` and ``mask``; their weights are quantised as any other. The integer rule is
  derived from these and ``weight_scale`` (``fixed_learning.connection_rule``); the float
  rule's ``traces`` are dropped (the fixed-point engine's 7-bit traces start at zero).
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import numpy as np

from spikeformer.fixed_point import (BIAS_MANT_MAX, INPUT_MAX, INPUT_MESSAGE_BITS, VTH_MAX,  # noqa: F401 (public)
                                     WEIGHT_BITS, bias_grid, current_decrement, decrement12, grid_weights, rate12)

from spikeformer.variants import PARAMETERS, VARIANTS

from .ir import Attention, Connection, Graph, LoweringError, Population

VTH = 256  # default integer threshold: a_in resolution theta / 256
STATE_BITS = 24
OUT_MANT_MAX = 2 ** 15 - 1


def quantize_weights(weight: np.ndarray) -> tuple[np.ndarray, int]:
    """Float weights (in a_in units) -> (even int mantissas in [-256, 254], weight_exp), by
    ``spikeformer.fixed_point.grid_weights`` (the grid qat trains on)."""
    mantissa, exp = grid_weights(np.asarray(weight, np.float64))
    return mantissa.astype(np.int64), exp


def quantize_bias(bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer-unit bias -> (13-bit mantissa, exponent 0..7) per neuron, smallest exponent that fits."""
    try:
        return bias_grid(bias)
    except ValueError:
        raise LoweringError("a bias is too large for Lava's 13-bit mantissa and 3-bit exponent; "
                            "lower the integer threshold (quantize(..., vth=...))") from None


def _input_scale(graph: Graph, calibration: Optional[np.ndarray]) -> int:
    if not graph.input.graded:
        return 1
    peak = float(np.abs(calibration).max()) if calibration is not None and calibration.size else 1.0
    return 2 ** int(math.floor(math.log2(INPUT_MAX / max(peak, 1e-12))))


def quantize(graph: Graph, vth: int = VTH, calibration: Optional[np.ndarray] = None,
             state_bits: int = STATE_BITS) -> Graph:
    """A fixed-point copy of a float ``graph`` (module docstring). ``calibration``: encoded
    input steps ``[T, B, N, F]`` whose peak sets the graded-input scale (1.0 when None)."""
    if graph.precision != "float":
        raise LoweringError("quantize expects a float graph")
    if not 1 <= vth <= VTH_MAX:
        raise LoweringError(f"vth must lie in 1..{VTH_MAX}, got {vth}")
    g = copy.deepcopy(graph)
    g.precision = "fixed"
    input_scale = _input_scale(graph, calibration)
    units: dict[str, float] = {}  # a_in per unit of float current, per population
    for pop in g.populations:
        if pop.kind == "lif":
            units[pop.name] = vth / pop.threshold
            pop.du = current_decrement(pop.alpha)  # Lava decays u by du + 1
            if pop.du < 0:
                raise LoweringError(f"population {pop.name!r} has alpha = {pop.alpha}: Lava's 12-bit current "
                                    "decay keeps at most 4095/4096; train with a smaller alpha")
            pop.dv = decrement12(pop.beta)
            pop.vth = int(vth)
    readout = g.readout
    units[readout.name] = _readout_unit(g, readout)
    readout.du, readout.dv, readout.vth = current_decrement(0.0), 0, VTH_MAX
    for pop in g.populations:
        if pop.kind in ("lif", "readout"):
            pop.bias_mant, pop.bias_exp = quantize_bias(pop.bias * units[pop.name] * 64)
    g.fixed = {"input_scale": input_scale, "vth": int(vth), "state_bits": state_bits,
               "readout_unit": units[readout.name], "graded_input": bool(g.input.graded)}
    for conn in g.connections:
        graded = conn.source == g.input.name and g.input.graded
        conn.weight, conn.weight_exp = quantize_weights(conn.weight * weight_scale(g, conn))
        conn.num_weight_bits = WEIGHT_BITS
        conn.num_message_bits = INPUT_MESSAGE_BITS if graded else 0
        conn.traces = None  # a float rule's traces have no fixed-point form (module docstring)
    for att in g.attentions:
        _quantize_attention(att, units[att.target], state_bits, g.population(att.query).tokens)
    return g.validate()


def weight_scale(graph: Graph, conn: Connection) -> float:
    """a_in units per unit of float weight of ``conn`` in the fixed ``graph`` (``graph.fixed`` set):
    ``vth / threshold`` of a LIF target, the readout unit of the readout, divided by the input
    scale for graded input. ``quantize`` multiplies the float weights by it; a plastic
    connection's rule maps its float dw the same way (``fixed_learning.connection_rule``)."""
    target = graph.population(conn.target)
    unit = graph.fixed["readout_unit"] if target.kind == "readout" else target.vth / target.threshold
    if conn.source == graph.input.name and graph.input.graded:
        unit /= graph.fixed["input_scale"]
    return float(unit)


def _readout_unit(g: Graph, readout: Population) -> float:
    """a_in per unit readout current: a power of two keeping the sample's integral in 23 bits."""
    bound = float(np.abs(readout.bias).max())
    for conn in g.incoming(readout.name):
        bound += float(np.abs(conn.weight).sum(1).max())  # every source neuron firing
    steps = int(g.meta["steps"])
    budget = 2 ** 22 / (64 * steps * max(bound, 1e-12))
    return float(2 ** min(int(math.floor(math.log2(budget))), 12))


def _attention_bound(att: Attention, tokens: int) -> float:
    """A bound on |S| in coincidence units, used to pick ``one``."""
    lam = float(att.decay.max())
    per_step = float(tokens * att.head_dim)
    p = att.plasticity
    if att.variant == "stdp":
        pre = 1.0 / max(1.0 - float(p["pre_decay"].max()), 1e-3)
        post = 1.0 / max(1.0 - float(p["post_decay"].max()), 1e-3)
        per_step *= float(p["a_plus"].max()) * pre + float(p["a_minus"].max()) * post
    elif att.variant == "three_factor":
        per_step /= max(1.0 - float(p["eligibility_decay"].max()), 1e-3)
    elif att.variant == "delta":
        return 4.0  # the delta rule drives S toward values of order one
    return per_step / max(1.0 - lam, 1e-3)


def _quantize_attention(att: Attention, target_unit: float, state_bits: int, tokens: int) -> None:
    frac_bits = int(math.floor(math.log2((2 ** (state_bits - 2)) / _attention_bound(att, tokens))))
    frac_bits = max(0, min(frac_bits, 16))
    one = 2 ** frac_bits
    fixed = {"one": one, "frac_bits": frac_bits, "state_bits": state_bits,
             "decay": [decrement12(x) for x in att.decay]}
    if VARIANTS[att.variant].traces:  # a trace holds at most one / (1 - decay): far inside the state's width
        fixed["trace_bits"] = state_bits
    for name, values in att.plasticity.items():  # by the kind in spikeformer/variants.py
        if PARAMETERS[name].kind == "decay":
            fixed[name] = [decrement12(x) for x in values]
        else:  # amplitudes and rates: 12-bit fractions
            fixed[name] = [rate12(x) for x in values]
    ratio = att.out_scale * att.scale * target_unit / one  # a_in per unit of q S_int
    peak = float(np.abs(ratio).max()) or 1.0
    out_shift = max(0, int(math.floor(math.log2(OUT_MANT_MAX / peak))))
    fixed["out_shift"] = out_shift
    fixed["out_mant"] = [int(x) for x in np.round(ratio * 2 ** out_shift)]
    att.fixed = fixed


def encode_fixed(graph: Graph, x_steps: np.ndarray) -> tuple[np.ndarray, int]:
    """Float input steps -> integer messages for a fixed graph, and how many were clipped."""
    if not graph.input.graded:
        return (np.asarray(x_steps) != 0).astype(np.int64), 0
    scaled = np.round(np.asarray(x_steps, np.float64) * graph.fixed["input_scale"])
    clipped = np.clip(scaled, -INPUT_MAX, INPUT_MAX)
    return clipped.astype(np.int64), int((clipped != scaled).sum())


def dequantize_weights(conn: Connection) -> np.ndarray:
    """The float value of a fixed connection's weights, ``mantissa * 2^weight_exp`` (a_in units)."""
    return conn.weight.astype(np.float64) * 2.0 ** int(conn.weight_exp)
