"""Integer reference of Lava's fixed-point learning engine for one ``LearningDense`` with a
``Loihi2FLearningRule`` (lava-nc 0.10.0, ``select_tag="fixed_pt"`` ->
``PyLearningDenseModelBitApproximate``), and pair STDP (``rules.stdp``) written for it.

This is a re-implementation in int64 numpy written from Lava's source; it calls none of Lava's
learning classes. Paths below are relative to ``site-packages/lava/``; ``conn`` is
``magma/core/model/py/connection.py``, ``applier`` is ``magma/core/learning/learning_rule_applier.py``.
Units: a *weight unit* is one LSB of the integer ``LearningDense.weights`` (the effective weight
is ``w << weight_exp``); a *trace unit* is one LSB of a 7-bit trace; the learning accumulator
counts 1/128 weight units.

One time step (``t_epoch = 1``; LoihiProtocol runs spk, then lrn):

    first step only  w = (w >> k) << k,  k = 8 - num_weight_bits + [sign mode mixed]
                                           (proc/dense/models.py:166-172, utils/weightutils.py:204-247)
    spk              a = (W[:, s_in].sum(1)) << weight_exp  (>> when negative); sent next step
                     tx = s_in, ty = s_bap; both trace generators advance twice (conn:384-414)
    lrn              the weight generator advances (conn:431-433, :795-797)
                     trace  = floor(d x) + (r_decay < frac(d x)),  d = np.exp(-1/tau)  (conn:874-902)
                              (history zero-filled, conn:832-840: a trace with tau == 0 restarts at 0)
                     spiked: trace = clip(trace + floor(I) + (r_imp < round(256 frac(I))), 0, 127)
                                                                                   (conn:649-672, :905-934)
                     acc    = w << 7 ;  per product: dep * prod(clip(f)) * m >> max(0, widths + 4 - 15)
                              << (e + 7), clipped to [-2^15 - 1, 2^15 - 1], summed with the same clip
                                                                                   (applier:243-328)
                     w      = floor(acc / 128) + (r_w < frac(acc / 128)), clipped to 8 bits by sign mode
                                                                                   (conn:936-973, :1028-1141)

Random streams (all numpy ``Generator``s, one scalar per draw, shared by every neuron and synapse):

    x traces  TraceRandom(rng_seed, rng_seed + 1)        (conn:680-686)
    y traces  TraceRandom(rng_seed + 2, rng_seed + 3)    (conn:687-690)
    weights   ConnVarRandom(), seed 2, whatever rng_seed (conn:692, magma/core/learning/random.py:113)

A ``TraceRandom`` holds ``default_rng(a).random(1)[0]`` (decay) and
``default_rng(b).integers(0, 128, size=1, dtype=int)[0]`` (impulse), drawn once at construction
and again at every ``advance`` (random.py:36-95). ``recv_traces`` advances both trace generators
twice per step (after the pre and after the post spikes), so step t (1-based) uses draw 2t of each
trace stream and draw t of the weight stream (draw 0 being the one made at construction). All
of it is reproducible from ``rng_seed``: if a rule is built with ``rng_seed=None`` Lava draws the
seed from the global ``np.random.randint`` (magma/core/learning/learning_rule.py:122-127), and it
can be read back as ``rule.rng_seed``. The weight stream is the same for every LearningDense.

Roundings worth knowing: the decay rounding is unbiased (P(up) = frac), but the impulse rounding
compares a draw in [0, 128) with a fraction in 256ths, so a fractional impulse rounds up with
probability min(1, 2 frac) (biased); ``fixed_stdp_rule_parameters`` therefore uses integer
impulses only. The weight rounding is unbiased. Supported here: ``x0``/``y0``/``u0``
dependencies, trace / dependency / ``d`` (tag_2) / ``t`` (tag_1) factors without constants, a
``dt`` string (the tag learns with the weights' draw) and a 3F rule's y inputs (what pair STDP and
``fixed_three_factor`` need, with a mask).

A plastic connection of a fixed-point IR graph (``neuromorphic.ir``, stdp or three_factor) is realized by
``connection_rule`` alone: the Lava network (``neuromorphic.lava.run``) and the integer network
reference (``neuromorphic.fixed_ref.learn_online_fixed``) both call it. Its mask (the per-token
copies of a tokenwise weight) multiplies every product by ``d``, the synaptic variable tag_2, set
to ``mask_tag(dw)`` on synapses and 0 elsewhere (never learned: no dd string). Lava clips ``d`` to
9 signed bits and shifts the product right by ``max(0, widths + 4 - 15)``, which grows by 5 with
``d`` in an STDP product (7 + 9 + 4 = 20), so ``d = 2^5 = 32`` (inside tag_2's 6-bit precision)
gives ``(x1 m 32) >> 5 = x1 m``: a masked synapse learns exactly as an unmasked one.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from rules.base import RuleError
from rules.stdp import STDPParameters

from .learning_literals import TAG_1_BITS, TAG_1_MAX, TAG_1_MIN, TRACE_BITS, TRACE_MAX, max_impulse  # noqa: F401
from .learning_literals import literal as _literal

if TYPE_CHECKING:  # annotations only
    from .ir import Connection, Graph

# widths and constants of magma/core/learning/constants.py (W_TRACE, W_TRACE_FRACTIONAL_PART,
# W_S_MANT, W_ACCUMULATOR_U/S, W_WEIGHTS_U/S)
IMPULSE_FRACTION_BITS = 8
SCALE_MANTISSA_BITS = 4
ACCUMULATOR_BITS = 15
ACCUMULATOR_MAX = 2 ** ACCUMULATOR_BITS - 1
ACCUMULATOR_MIN = -(2 ** ACCUMULATOR_BITS) - 1  # sic: Lava clips at -(2^15) - 1 (applier:318-326)
WEIGHT_BITS = 8
ACCUMULATOR_SHIFT = (ACCUMULATOR_BITS + 1) - (WEIGHT_BITS + 1)  # w << 7 in the accumulator (conn:948)
WEIGHT_FRACTION = 2 ** (ACCUMULATOR_BITS - WEIGHT_BITS)  # 128 accumulator units per weight unit (conn:1093)
WEIGHT_ROUNDING_SEED = 2  # ConnVarRandom's default seed; LearningDense never passes another (conn:692)
TAG_2_WIDTH = 8 + 1  # W_TAG_2_S: Lava clips a d factor to 9 signed bits (applier:284-287)
TAG_2_PRECISION = 6  # bits of the fixed-point tag_2 Var (conn:599): a mask tag must fit
FACTOR_WIDTH = {"x0": 1, "y0": 1, "x1": TRACE_BITS, "x2": TRACE_BITS, "y1": TRACE_BITS, "y2": TRACE_BITS,
                "y3": TRACE_BITS, "d": TAG_2_WIDTH, "t": TAG_1_BITS + 1}  # constants.py FACTOR_TO_WIDTH_DICT
MAC_LIMIT = 2 ** 31  # the applier multiplies in int32 (applier:265), which wraps silently; refused here
X_TRACES, Y_TRACES = ("x1", "x2"), ("y1", "y2", "y3")
SIGN_MODES = ("mixed", "excitatory", "inhibitory")
# a tau whose one-step decay np.exp(-1/tau) is exactly 0.0: y2 = impulse * s_post[t]
VANISHING_TAU = 1e-4


# ---------------------------------------------------------------------------------------------
# the rule string


@dataclass(frozen=True)
class Product:
    """One product of a dw string as Lava's ProductSeries holds it: ``dependency`` (x0 or y0),
    the scale ``mantissa * 2^(shift - 7)`` (``shift`` is Lava's ``s_exp``, already + 7) and the
    ``factors`` (trace names, or a dependency used as a factor)."""

    dependency: str
    mantissa: int
    shift: int
    factors: tuple[str, ...]


_TOKEN = re.compile(r"\s*(\d+\*2\^[+-]?\d+|2\^[+-]?\d+|\d+|x0|y0|u0|x1|x2|y1|y2|y3|d|t|[+*-])")


def parse_dw(dw: str) -> tuple[Product, ...]:
    """The products of ``dw`` (or ``dt``: a sum of ``literal * dependency * factor ...`` terms),
    with Lava's normalisation of the scale: literals multiply into one mantissa and exponent, an
    even mantissa above 7 is halved while the exponent is below 8, and the result must have a
    mantissa in [-8, 7] and an exponent in [-7, 8] (magma/core/learning/product_series.py:560-741).
    The first x0/y0/u0 of a term is its dependency (u0: ``u``, 1 at every step), a later x0/y0 a
    factor and a later u0 nothing (:576-596)."""
    text, pos, tokens = dw.replace(" ", ""), 0, []
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise RuleError(f"fixed_learning supports literals, x0, y0, u0, traces, d and t only; cannot read {text[pos:]!r}")
        tokens.append(match.group(1))
        pos = match.end()
    products, sign, term = [], 1, []

    def close() -> None:
        if not term:
            raise RuleError(f"empty product in {dw!r}")
        mantissa, exponent, dependency, factors = sign, 0, None, []
        for token in term:
            if token in ("x0", "y0", "u0") and dependency is None:
                dependency = "u" if token == "u0" else token
            elif token == "u0":
                continue
            elif token in FACTOR_WIDTH:
                factors.append(token)
            else:  # a literal: m*2^e, 2^e or m (symbolic_equation.py:687-706)
                m, _, e = token.partition("2^") if "^" in token else (token, "", "0")
                mantissa *= int(m.rstrip("*")) if m else 1
                exponent += int(e)
        while abs(mantissa) > 7 and mantissa % 2 == 0 and exponent < 8:
            mantissa, exponent = mantissa // 2, exponent + 1
        if dependency is None:
            raise RuleError(f"product without x0/y0/u0 dependency in {dw!r}")
        if not (-8 <= mantissa < 8 and -7 <= exponent < 9):
            raise RuleError(f"scale {mantissa}*2^{exponent} of a product in {dw!r} has no 4-bit mantissa form")
        products.append(Product(dependency, mantissa, exponent + 7, tuple(factors)))

    for token in tokens:
        if token in "+-":
            if term:
                close()
                term = []
            sign = -1 if token == "-" else 1
        elif token != "*":
            term.append(token)
    close()
    return tuple(products)


# ---------------------------------------------------------------------------------------------
# pair STDP as a fixed-point rule


def amplitude_form(amplitude: float, impulse_limit: int) -> tuple[int, int, int]:
    """``amplitude`` (weight units, > 0) as ``(impulse, m, e)`` with ``m * 2^e * impulse`` closest
    to it (relative error), ``impulse`` in 1..impulse_limit, m in 1..7, e in -7..8; among equally
    close forms the largest impulse (the finest trace). m is odd unless e is at a bound."""
    if not 0 < amplitude < 2 ** WEIGHT_BITS:
        raise RuleError(f"an STDP amplitude must lie in (0, 256) weight units, got {amplitude}")
    best: Optional[tuple[float, int, int, int]] = None
    for impulse in range(1, min(impulse_limit, TRACE_MAX) + 1):
        for e in range(-7, 9):
            m = min(max(round(amplitude / (impulse * 2.0 ** e)), 1), 7)
            err = abs(m * 2.0 ** e * impulse - amplitude) / amplitude
            if best is None or err < best[0] - 1e-12 or (abs(err - best[0]) <= 1e-12 and impulse > best[1]):
                best = (err, impulse, m, e)
    _, impulse, m, e = best
    while m % 2 == 0 and e < 8:
        m, e = m // 2, e + 1
    return impulse, m, e


def fixed_stdp_rule_parameters(params: STDPParameters, weight_exp: int = 0, rng_seed: int = 0,
                               impulse_limit: Optional[int] = None, weight_scale: float = 1.0) -> dict[str, Any]:
    """Keyword arguments of ``Loihi2FLearningRule`` for additive ``rules.stdp`` in fixed point.

    The amplitudes in weight units are ``a± = lr A± weight_scale 2^-weight_exp`` (``lr A±`` in
    float weight units; ``weight_scale``: a_in units per float weight unit, the factor
    ``neuromorphic.quantize`` multiplied the connection's weights by before writing them as
    integer weight ``* 2^weight_exp``; 1 when the float weights are in a_in units). Each becomes an integer impulse
    ``I±`` (trace units) times a literal ``m± 2^e±`` (weight units per trace unit) in the string
    (``amplitude_form``): Lava's grammar allows only 4-bit mantissas (|m| <= 7 here) and
    exponents -7..8, and a fractional impulse would be rounded up with the biased probability
    min(1, 2 frac), so both are integers and ``m± 2^e± I±`` differs from ``a±`` by the residue of
    that search (``realized_amplitudes``). ``impulse_limit`` (default per trace
    ``max_impulse(tau)``) keeps the trace inside 7 bits when its neuron fires every step: a
    larger impulse is a finer trace, a smaller one saturates later.

    String: ``m+ 2^e+ * y0 * x1 - m- 2^e- * x0 * y1 + m- 2^e- * x0 * y2``. Lava's y1 at a pre
    spike already holds this step's post impulse, while ``rules.stdp`` reads the post trace
    before it (a simultaneous pair only potentiates). y2 has the impulse ``I-`` and
    ``VANISHING_TAU`` (``np.exp(-1e4) == 0``: floor 0, fraction 0), so it is exactly
    ``I- s_post[t]``, and the correction cancels the extra depression exactly, integer for integer
    in the accumulator. The taus stay floats (the model decays by ``np.exp(-1/tau)``; the rule's
    int-typed Vars are only read if set at run time).

    What is lost against the float rule: the amplitude residue; the traces are integers whose
    decay is stochastically rounded (one uniform draw per step shared by all neurons, unbiased,
    +-1 trace unit = ``m 2^e`` weight units) and saturate at 127; each step's dw is
    stochastically rounded to whole weight units (one draw per step for all synapses,
    unbiased); weights saturate at the 8-bit bounds ([-256, 255] in mixed sign mode); a mixed
    LearningDense drops the initial weights' LSB. Multiplicative STDP is refused (its amplitude
    depends on w)."""
    if params.multiplicative:
        raise RuleError("stdp: multiplicative (soft-bound) STDP has no fixed-point Lava rule here; use additive STDP")
    if not (math.isfinite(weight_scale) and weight_scale > 0):
        raise RuleError(f"stdp: the weight scale must be a positive number, got {weight_scale}")
    scale = float(weight_scale) * 2.0 ** -int(weight_exp)
    kwargs: dict[str, Any] = {}
    terms: list[str] = []
    if params.a_plus > 0:
        i_p, m_p, e_p = amplitude_form(params.lr * params.a_plus * scale, impulse_limit or max_impulse(params.tau_pre))
        terms.append(f"+ {_literal(m_p, e_p)} * y0 * x1")
        kwargs.update(x1_impulse=i_p, x1_tau=params.tau_pre)
    if params.a_minus > 0:
        i_m, m_m, e_m = amplitude_form(params.lr * params.a_minus * scale,
                                       impulse_limit or max_impulse(params.tau_post))
        terms += [f"- {_literal(m_m, e_m)} * x0 * y1", f"+ {_literal(m_m, e_m)} * x0 * y2"]
        kwargs.update(y1_impulse=i_m, y1_tau=params.tau_post, y2_impulse=i_m, y2_tau=VANISHING_TAU)
    if not terms:
        raise RuleError("stdp: A+ and A- are both 0; there is nothing to learn")
    dw = " ".join(terms).removeprefix("+ ")
    return dict(dw=dw, **kwargs, t_epoch=1, rng_seed=int(rng_seed))


def realized_amplitudes(rule: Mapping[str, Any], tag_2: int = 0) -> tuple[float, float]:
    """``(A+, A-)`` in weight units that a rule from ``fixed_stdp_rule_parameters`` applies to one
    isolated pair at zero lag, before the traces' and the weight's stochastic rounding
    (``tag_2``: the synapse's ``d`` where the string is ``masked``)."""
    products = parse_dw(rule["dw"])
    out = {"x1": 0.0, "y1": 0.0}
    for p in products:
        if p.factors[0] in out:
            gain = 1.0
            if "d" in p.factors:  # d times the product's extra right shift (exact for mask_tag's d)
                plain = tuple(f for f in p.factors if f != "d")
                gain = tag_2 / 2.0 ** (_product_shift(p.factors) - _product_shift(plain))
            out[p.factors[0]] = gain * abs(p.mantissa) * 2.0 ** (p.shift - 7) * rule.get(f"{p.factors[0]}_impulse", 0)
    return out["x1"], out["y1"]


# ---------------------------------------------------------------------------------------------
# masks and the one realization of an IR connection's rule


def _product_shift(factors: tuple[str, ...]) -> int:
    """The right shift Lava applies to a product with these factors (applier:300-303)."""
    return max(0, SCALE_MANTISSA_BITS + sum(FACTOR_WIDTH[f] for f in factors) - ACCUMULATOR_BITS)


def masked(dw: str) -> str:
    """``dw`` with every product times ``d`` (the float path's ``neuromorphic.lava.learning.masked``)."""
    from .lava.learning import masked as lava_masked

    return lava_masked(dw)


def mask_tag(dw: str) -> int:
    """The tag_2 value of a synapse that makes every product of ``masked(dw)`` equal to the same
    product of ``dw`` (``d = 2^k`` undoes the extra right shift ``k`` that ``d``'s 9 bits cause):
    32 for STDP. RuleError where the products need different tags or the tag leaves tag_2's 6 bits."""
    extra = {_product_shift(p.factors + ("d",)) - _product_shift(p.factors) for p in parse_dw(dw)}
    if any("d" in p.factors for p in parse_dw(dw)) or len(extra) != 1:
        raise RuleError(f"no single tag_2 masks the products of {dw!r} exactly")
    (k,) = extra
    if k >= TAG_2_PRECISION:  # (v 2^k) >> (s + k) == v >> s for any shift s: only the tag's width limits
        raise RuleError(f"masking {dw!r} exactly needs tag_2 = 2^{k}, beyond its {TAG_2_PRECISION} bits")
    return 2 ** k


def rule_seed(conn: "Connection") -> int:
    """The rule's ``rng_seed``: a fixed function of the connection's name (Lava would draw one from
    the global numpy generator), so the Lava network and the reference draw the same streams
    and different connections different ones."""
    return zlib.crc32(conn.name.encode()) % 2 ** 30


@dataclass(frozen=True)
class FixedRule:
    """A fixed-point plastic connection as Lava runs it: ``rule`` (``Loihi2FLearningRule``
    keyword arguments, or ``Loihi3FLearningRule`` ones where ``inputs`` is set; rng_seed
    included), ``tag_2`` (int ``[J, I]``, ``mask_tag`` on synapses, 0 elsewhere; None without a
    mask) and, for three_factor, ``inputs``: the y inputs' integer arithmetic
    (``fixed_three_factor.FixedRuleInputs``)."""

    rule: dict[str, Any]
    tag_2: Optional[np.ndarray]
    inputs: Any = None

    @property
    def third_factor(self) -> bool:
        return self.inputs is not None


def connection_rule(graph: "Graph", conn: "Connection", feedback: Optional[np.ndarray] = None) -> FixedRule:
    """The fixed-point realization of ``conn`` (a plastic connection of the fixed ``graph``): the
    only place it is derived, from the IR's float ``rule_params`` and the connection's quantisation
    (``weight_exp`` and ``quantize.weight_scale``); used by the Lava network and the reference.
    STDP (``fixed_stdp_rule_parameters``) or three_factor (``fixed_three_factor``), which needs
    the connection's ``feedback [C, J]`` (the identity for the readout)."""
    from .quantize import weight_scale

    try:
        if conn.rule == "three_factor":
            return _three_factor_rule(graph, conn, feedback, weight_scale(graph, conn))
        if conn.rule != "stdp":
            raise RuleError(f"it learns by {conn.rule}; fixed-point learning runs stdp and three_factor")
        rule = fixed_stdp_rule_parameters(conn.rule_parameters(), int(conn.weight_exp), rule_seed(conn),
                                          weight_scale=weight_scale(graph, conn))
    except RuleError as exc:
        raise RuleError(f"connection {conn.name!r}: {exc}") from None
    if conn.mask is None:
        return FixedRule(rule, None)
    tag = mask_tag(rule["dw"])
    return FixedRule({**rule, "dw": masked(rule["dw"])}, np.where(conn.mask, tag, 0).astype(np.int64))


def _three_factor_rule(graph: "Graph", conn: "Connection", feedback: Optional[np.ndarray],
                       scale: float) -> FixedRule:
    from spikeformer.fixed_point import shift_array

    from .fixed_three_factor import FixedRuleInputs, fixed_three_factor_rule_parameters, modulator_bound

    target, readout = graph.population(conn.target), graph.readout
    if feedback is None:
        raise RuleError("it learns by three_factor: give its feedback matrix (the output error is its third factor)")
    feedback = np.asarray(feedback, np.float64)
    if feedback.shape != (readout.size, target.size):
        raise RuleError(f"its feedback must be [{readout.size}, {target.size}], got {list(feedback.shape)}")
    params = conn.rule_parameters()
    rule, gains, coincidence = fixed_three_factor_rule_parameters(
        params, int(conn.weight_exp), rule_seed(conn), scale, modulator_bound(feedback), conn.mask is not None)
    bias = shift_array(readout.bias_mant, readout.bias_exp).reshape(-1)  # fixed_ref.effective_bias (no cycle)
    inputs = FixedRuleInputs(gains, feedback, target.kind == "lif", bias,
                             float(graph.fixed["readout_unit"]), int(graph.meta["steps"]), int(graph.meta["window"]))
    if conn.mask is None:
        return FixedRule(rule, None, inputs)
    return FixedRule(rule, np.where(conn.mask, mask_tag(coincidence), 0).astype(np.int64), inputs)


def connection_engine(conn: "Connection", fixed: FixedRule) -> "FixedLearningDense":
    """The reference engine of ``conn`` realized as ``fixed`` (``connection_rule``): its current
    integer weights, ``num_weight_bits`` and ``weight_exp``, mixed sign mode (as a LearningDense
    without one)."""
    return FixedLearningDense(conn.weight, fixed.rule, int(conn.num_weight_bits), int(conn.weight_exp),
                              tag_2=fixed.tag_2, third_factor=fixed.third_factor)


# ---------------------------------------------------------------------------------------------
# the learning engine


class _TraceRandom:
    """The two streams of one Lava ``TraceRandom`` (random.py:36-95), with the same calls."""

    def __init__(self, seed_decay: int, seed_impulse: int) -> None:
        self._decay = np.random.default_rng(seed=seed_decay)
        self._impulse = np.random.default_rng(seed=seed_impulse)
        self.advance()  # the draw made at construction (random.py:48-51)

    def advance(self) -> None:
        self.decay = self._decay.random(1)[0]  # float in [0, 1)
        self.impulse = self._impulse.integers(0, 2 ** TRACE_BITS, size=1, dtype=int)[0]  # int in [0, 128)


def _stochastic_round(floor: np.ndarray, random: float, fraction: np.ndarray) -> np.ndarray:
    """magma/core/learning/utils.py:8-28: add 1 where the (shared) draw is below the fraction."""
    return (floor + (random < fraction).astype(np.int64)).astype(np.int64)


class FixedLearningDense:
    """Lava's ``LearningDense`` (fixed_pt) with a ``Loihi2FLearningRule``, or a
    ``Loihi3FLearningRule`` (``third_factor``: y1, y2, y3 come from its ports every step), with
    ``t_epoch = 1``, binary spikes and ``graded_spike_cfg`` USE_REGULAR_IMPULSE, in int64.

    ``weights [J, I]``: the integer weights given to the LearningDense (weight units);
    ``rule``: the rule's keyword arguments (``fixed_stdp_rule_parameters``,
    ``fixed_three_factor_rule_parameters``, or any dw and dt over x0/y0/u0/x1/x2/y1/y2/y3/d/t with
    literals); ``rng_seed`` must be an integer (read a rule's drawn seed as ``rule.rng_seed``).
    ``tag_2 [J, I]``: the synaptic variable ``d`` (int, never learned; zeros when None, as
    LearningDense's default). ``num_weight_bits``, ``weight_exp``, ``sign_mode`` as passed to the
    LearningDense (its sign mode defaults to mixed: LearningDense leaves it out of proc_params,
    conn:142). ``weight_rounding_seed``: the seed of Lava's weight-rounding stream, fixed at 2 in
    lava-nc 0.10.0 (another value only shows that the stream matters). State after each
    ``step``: ``weights [J, I]`` (weight units), ``tag_1 [J, I]`` (the tag t, learned by ``dt``),
    ``x [2, I]`` (x1, x2) and ``y [3, J]`` (y1, y2, y3) in trace units."""

    def __init__(self, weights: np.ndarray, rule: Mapping[str, Any], num_weight_bits: int = 8,
                 weight_exp: int = 0, sign_mode: str = "mixed",
                 weight_rounding_seed: int = WEIGHT_ROUNDING_SEED, tag_2: Optional[np.ndarray] = None,
                 third_factor: bool = False) -> None:
        if rule.get("rng_seed") is None:
            raise RuleError("the reference needs the rule's integer rng_seed (Lava draws None from np.random)")
        if int(rule.get("t_epoch", 1)) != 1:
            raise RuleError("fixed_learning models t_epoch = 1 only")
        if rule.get("dd") is not None or rule.get("dw") is None:
            raise RuleError("fixed_learning models a dw rule, with or without dt (no dd)")
        if sign_mode not in SIGN_MODES:
            raise RuleError(f"sign_mode must be one of {SIGN_MODES}, got {sign_mode!r}")
        self.weights = np.array(weights, dtype=np.int64)
        # tag_2 (d) is never learned here (no dd string): zero unless given, as in LearningDense
        self.tag_2 = np.zeros_like(self.weights) if tag_2 is None else np.array(tag_2, dtype=np.int64)
        if self.tag_2.shape != self.weights.shape:
            raise RuleError(f"tag_2 must be shaped like the weights {self.weights.shape}, got {self.tag_2.shape}")
        self.tag_1 = np.zeros_like(self.weights)
        self.products = {"weights": parse_dw(rule["dw"])}
        if rule.get("dt") is not None:
            self.products["tag_1"] = parse_dw(rule["dt"])
        self.num_weight_bits, self.weight_exp, self.sign_mode = int(num_weight_bits), int(weight_exp), sign_mode
        self.third_factor = bool(third_factor)
        n_post, n_pre = self.weights.shape
        self.x = np.zeros((len(X_TRACES), n_pre), np.int64)
        self.y = np.zeros((len(Y_TRACES), n_post), np.int64)
        # per trace: tau (float, as the rule holds it) and the impulse split as in conn:649-672
        self._taus = {k: np.array([float(rule.get(f"{n}_tau", 0.0)) for n in names])
                      for k, names in (("x", X_TRACES), ("y", Y_TRACES))}
        self._impulses = {}
        for k, names in (("x", X_TRACES), ("y", Y_TRACES)):
            impulses = np.array([float(rule.get(f"{n}_impulse", 0.0)) for n in names])
            whole = np.floor(impulses)
            self._impulses[k] = (whole.astype(np.int64),
                                 np.round((impulses - whole) * 2 ** IMPULSE_FRACTION_BITS).astype(np.int64))
        seed = int(rule["rng_seed"])
        self._random = {"x": _TraceRandom(seed, seed + 1), "y": _TraceRandom(seed + 2, seed + 3)}
        self._weight_rng = np.random.default_rng(seed=weight_rounding_seed)
        self._weight_random = self._weight_rng.random(1)[0]  # drawn at construction (random.py:116)
        self._truncated = False

    # -- the pieces of one step ---------------------------------------------------------------

    def _truncate(self) -> None:
        """truncate_weights (utils/weightutils.py:204-247), once, at the first run_spk."""
        k = WEIGHT_BITS - self.num_weight_bits + (self.sign_mode == "mixed")
        sign = -1 if self.sign_mode == "inhibitory" else 1
        self.weights = sign * ((sign * self.weights) >> k << k)
        self._truncated = True

    def _trace_update(self, kind: str, traces: np.ndarray, spiked: np.ndarray) -> np.ndarray:
        """conn:799-872 with t_epoch = 1: decay every trace with tau != 0 (others restart at 0),
        then add the impulse to the traces of the neurons that spiked this step (and clip them to
        7 bits: a 3F rule's y input of a neuron with a bAP is clipped too)."""
        taus, random = self._taus[kind], self._random[kind]
        new = np.zeros_like(traces)
        active = taus != 0
        scaled = np.exp(-1 / taus[active][:, np.newaxis]) * traces[active]  # conn:896, same shapes
        new[active] = _stochastic_round(np.floor(scaled), random.decay, scaled % 1)
        whole, fraction = self._impulses[kind]
        added = _stochastic_round(new[:, spiked] + whole[:, np.newaxis], random.impulse, fraction[:, np.newaxis])
        new[:, spiked] = np.clip(added, 0, TRACE_MAX)  # conn:905-934
        return new

    def _factor(self, name: str, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
        """A factor's value (applier:192-231, conn:474-525): a dependency, a synaptic variable, or
        a trace as it is after this step's update (with t_epoch = 1 every spiking neuron's history
        index is 1, and ``u`` reads the last one; where the dependency is 0 the product is 0)."""
        if name == "x0":
            return x0.astype(np.int64)[np.newaxis, :]
        if name == "y0":
            return y0.astype(np.int64)[:, np.newaxis]
        if name == "d":
            return self.tag_2
        if name == "t":
            return self.tag_1
        if name in X_TRACES:
            return self.x[X_TRACES.index(name)][np.newaxis, :]
        return self.y[Y_TRACES.index(name)][:, np.newaxis]

    def _accumulate(self, variable: str, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
        """applier:243-328: the synaptic variable << 7 plus every product of its string, saturating.
        Lava multiplies in int32, which wraps silently: a product beyond it is refused instead."""
        acc = getattr(self, variable) << ACCUMULATOR_SHIFT
        deps = {"x0": x0.astype(np.int64)[np.newaxis, :], "y0": y0.astype(np.int64)[:, np.newaxis], "u": 1}
        for p in self.products[variable]:
            value = np.ones(self.weights.shape, np.int64) * deps[p.dependency]
            width = SCALE_MANTISSA_BITS
            for name in p.factors:
                width += FACTOR_WIDTH[name]
                bound = 2 ** FACTOR_WIDTH[name]
                value = value * np.clip(self._factor(name, x0, y0), -bound, bound - 1)
            value = (value * p.mantissa) >> max(0, width - ACCUMULATOR_BITS) << p.shift
            if value.size and int(np.abs(value).max()) >= MAC_LIMIT:
                raise RuleError(f"a product {p} of the {variable} rule overflows Lava's int32 multiply-accumulate")
            value = np.clip(value, ACCUMULATOR_MIN, ACCUMULATOR_MAX)
            acc = np.clip(acc + value, ACCUMULATOR_MIN, ACCUMULATOR_MAX)
        return acc

    def _round(self, acc: np.ndarray) -> np.ndarray:
        """conn:1073-1111: stochastic rounding to whole units (a float division by 128, exact for
        these integers), with the step's one draw shared by weights and tags."""
        scaled = acc / WEIGHT_FRACTION
        return _stochastic_round(np.floor(scaled), self._weight_random, scaled % 1)

    def _round_and_clip(self, acc: np.ndarray) -> np.ndarray:
        """conn:1028-1141 for the weights: sign-mode saturation of the accumulator, stochastic
        rounding, 8-bit clip by sign mode."""
        if self.sign_mode == "excitatory":
            acc = np.maximum(0, acc)
        elif self.sign_mode == "inhibitory":
            acc = np.minimum(0, acc)
        weights = self._round(acc)
        low = -(2 ** WEIGHT_BITS) if self.sign_mode == "mixed" else 0  # clip_weights, learning_simulation=False
        if self.sign_mode == "inhibitory":
            return -np.clip(-weights, low, 2 ** WEIGHT_BITS - 1)
        return np.clip(weights, low, 2 ** WEIGHT_BITS - 1)

    # -- one step -------------------------------------------------------------------------------

    def step(self, s_in: np.ndarray, s_bap: np.ndarray,
             y: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None) -> np.ndarray:
        """Pre spikes ``s_in [I]`` and post spikes ``s_bap [J]`` (0/1) of one step, and for a
        third-factor rule the y inputs ``(y1, y2, y3)`` (int ``[J]`` each) received this step ->
        the activation ``a [J]`` (integer a_in units) this step computes with the weights before
        its learning, which Lava sends on ``a_out`` at the next step (proc/dense/models.py:161-191).
        Updates the traces, the tag and the weights (``self.weights`` after this step's learning)."""
        s_in, s_bap = np.asarray(s_in).astype(bool), np.asarray(s_bap).astype(bool)
        if self.third_factor == (y is None):
            raise RuleError("a third-factor engine takes y = (y1, y2, y3) at every step, a pair-rule engine none")
        if not self._truncated:
            self._truncate()
        a = self.weights[:, s_in].sum(axis=1)
        a = a << self.weight_exp if self.weight_exp > 0 else a >> -self.weight_exp
        # run_spk -> recv_traces: each trace generator advances after the pre and after the post
        # spikes (conn:384-414, :790-793); a 3F rule's y traces are the received inputs
        for _ in range(2):
            self._random["x"].advance()
            self._random["y"].advance()
        received = None if y is None else np.stack([np.asarray(v, np.int64).reshape(-1) for v in y])
        if received is not None:
            self.y = received
        # run_lrn: weight generator first (conn:431-433), then dependencies, traces, then dw and dt,
        # both from the variables as they were before this step's learning (conn:936-973)
        self._weight_random = self._weight_rng.random(1)[0]
        self.x = self._trace_update("x", self.x, s_in)
        self.y = self._trace_update("y", self.y, s_bap)
        accumulators = {name: self._accumulate(name, s_in, s_bap) for name in self.products}
        if received is not None:  # a 3F rule reads its inputs updated, but keeps them as received (conn:451-467)
            self.y = received
        self.weights = self._round_and_clip(accumulators["weights"])
        if "tag_1" in accumulators:
            self.tag_1 = np.clip(self._round(accumulators["tag_1"]), TAG_1_MIN, TAG_1_MAX)
        return a

    def run(self, pre: np.ndarray, post: np.ndarray,
            y: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """Spike trains ``pre [T, I]``, ``post [T, J]`` (and a 3F rule's inputs ``y [T, 3, J]``) ->
        (weights after every step ``[T, J, I]``, activations ``[T, J]``), in weight and a_in units."""
        weights, acts = [], []
        for t, (s_in, s_bap) in enumerate(zip(np.asarray(pre), np.asarray(post))):
            acts.append(self.step(s_in, s_bap, None if y is None else tuple(np.asarray(y)[t])))
            weights.append(self.weights.copy())
        return np.stack(weights), np.stack(acts)
