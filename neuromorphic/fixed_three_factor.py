"""The three-factor rule (``rules.three_factor``) in Lava's fixed-point learning engine: a
``Loihi3FLearningRule`` whose tag ``t`` is the eligibility, and the integer y inputs that a
``RuleInputs`` process (and ``fixed_ref.learn_online_fixed``) send it every step.

Lava's y inputs are 7-bit traces and a neuron's are clipped to [0, 127] whenever it spikes, so a
signed third factor travels as two non-negative halves, and the eligibility decay, which the float
rule reads from y3, becomes a literal. Per step (``t_epoch = 1``; units: trace units, tag units,
weight units; ``E`` tag units per unit of float eligibility, ``M`` y units per unit of m):

    x1 += I+ per pre spike, decays by exp(-1/tau_pre)   (Lava's own pre trace, stochastic rounding)
    y1  = (P D) >> 12                                   RuleInputs: its post trace P decayed one step
    P   = min(127, y1 + I- s_post)                      (D = round(4096 exp(-1/tau_post)); a readout
                                                         target's s_post is 1 at every step)
    y2, y3 = min(127, round(M max(+-m, 0)))             at the second guard step, else 0
    dt  = c+ y0 x1 - c- x0 y1 - c_e u0 t                t: the eligibility, in [-257, 255]
    dw  = c_w u0 t y2 - c_w u0 t y3                     with the tag before this step's dt

so ``t ~ E e`` with ``c+ = A+ E / I+``, ``c- = A- E / I-``, ``1 - c_e ~ exp(-1/tau_e)``, and
``dw ~ lr S e m`` (``S`` weight units per float weight unit, ``quantize.weight_scale`` /
``2^weight_exp``) with ``c_w E M / 32 = lr S``: the product ``t y`` is 20 bits wide, which Lava
shifts right by 5 (flooring) before the literal's scale. The output error arrives one step later
than in float (the second guard step, not the first): Lava's dw reads the tag before the step's
dt, so ``t`` there is the float rule's eligibility of the first guard step, the one it multiplies
by m. Every literal is a 4-bit mantissa times a power of two (``fixed_learning.parse_dw``).

With a mask (the per-token copies of a tokenwise weight) only the two coincidence products carry
``d`` (``fixed_learning.mask_tag``, exact): a synapse outside the mask keeps ``t = 0`` and so
never learns.

Gains. ``I+`` and ``I-`` are ``max_impulse`` of their taus (a trace firing every step stays
inside 7 bits). ``c+`` is the largest literal whose eligibility stays inside the tag when a
coincidence comes every step (``127 c+ / c_e <= 255``); that fixes ``E``. ``M = 127 / bound(m)``
(``|m_j| <= min(sum_c |B_cj|, 2 max_c |B_cj|)`` for the output error through ``B``), lowered where
``c_w`` would fall below the smallest literal (2^-7); a rate too small even for ``M = 1`` is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rules.base import RuleError, decay
from rules.three_factor import ThreeFactorParameters

from .learning_literals import TAG_1_MAX, TRACE_MAX, max_impulse
from .learning_literals import literal as _literal
from .reward import modulator

DECAY_BITS = 12  # the post trace decays as (P D) >> 12 in RuleInputs
PRODUCT_SHIFT = 5  # Lava's right shift of u0 * t * y (9 + 7 + 4 bits - 15)
# every literal m 2^e of Lava's grammar with m in 1..7 and e in -7..8 (value, m, e), ascending; of
# equal values the odd mantissa (Lava's normal form)
_FORMS = sorted({m * 2.0 ** e: (m * 2.0 ** e, m, e) for m in range(7, 0, -1) for e in range(8, -8, -1)}.values())


def _nearest_form(value: float) -> tuple[int, int]:
    """(m, e) with m 2^e closest to ``value`` > 0 in relative error (ties: the smaller value)."""
    _, m, e = min(_FORMS, key=lambda f: (abs(f[0] - value) / value, f[0]))
    return m, e


def _largest_form_below(bound: float) -> tuple[int, int]:
    below = [f for f in _FORMS if f[0] <= bound]
    if not below:
        raise RuleError(f"no literal m 2^e (m <= 7, e >= -7) lies below {bound:.3g}")
    _, m, e = below[-1]
    return m, e


def modulator_bound(feedback: np.ndarray) -> float:
    """The largest |m_j| the output error ``onehot - softmax`` (entries in [-1, 1], absolute sum
    at most 2) can give through ``feedback [C, J]``."""
    b = np.abs(np.asarray(feedback, np.float64))
    return float(np.minimum(b.sum(0), 2.0 * b.max(0)).max())


@dataclass(frozen=True)
class ThreeFactorGains:
    """What ``RuleInputs`` needs besides the rule: ``post_impulse`` I- and ``post_decay`` D (12
    bits) of its post trace, ``modulator_gain`` M, and the float rule's ``lr`` as the integer rule
    realises it (``realized_lr``; the amplitudes' residues are in ``realized``)."""

    post_impulse: int
    post_decay: int
    modulator_gain: int
    realized: dict[str, float]


def fixed_three_factor_rule_parameters(params: ThreeFactorParameters, weight_exp: int, rng_seed: int,
                                       weight_scale: float, bound: float, mask: bool = False
                                       ) -> tuple[dict[str, Any], ThreeFactorGains, str]:
    """Keyword arguments of ``Loihi3FLearningRule`` for ``rules.three_factor`` in fixed point (module
    docstring), the gains of its inputs, and the coincidence part of its dt without ``d``
    (``mask``: the dt's coincidence products are times ``d``, and ``fixed_learning.mask_tag`` of
    the returned part is the synapses' tag_2)."""
    if not (math.isfinite(weight_scale) and weight_scale > 0):
        raise RuleError(f"three_factor: the weight scale must be a positive number, got {weight_scale}")
    if not (math.isfinite(bound) and bound > 0):
        raise RuleError(f"three_factor: the feedback gives no third factor (bound {bound})")
    if params.a_plus <= 0 and params.a_minus <= 0:
        raise RuleError("three_factor: A+ and A- are both 0; there is nothing to learn")
    scale = float(weight_scale) * 2.0 ** -int(weight_exp)
    d_e = decay(params.tau_eligibility)
    if 1.0 - d_e < 2.0 ** -8:
        raise RuleError(f"three_factor: tau_eligibility {params.tau_eligibility} is too long for the tag's "
                        "1/128 decay steps in fixed point (at most 256 steps)")
    m_e, e_e = _nearest_form(1.0 - d_e)
    leak = m_e * 2.0 ** e_e
    ceiling = TAG_1_MAX * leak / TRACE_MAX  # c+ (or c-) with a coincidence every step: t <= 255
    i_p, i_m = max_impulse(params.tau_pre), max_impulse(params.tau_post)
    terms: list[str] = []
    if params.a_plus > 0:
        m_p, e_p = _largest_form_below(ceiling)
        gain = m_p * 2.0 ** e_p * i_p / params.a_plus  # E: tag units per unit of float eligibility
        terms.append(f"+ {_literal(m_p, e_p)} * y0 * x1")
    if params.a_minus > 0:
        if params.a_plus > 0:
            m_m, e_m = _nearest_form(params.a_minus * gain / i_m)
        else:
            m_m, e_m = _largest_form_below(ceiling)
            gain = m_m * 2.0 ** e_m * i_m / params.a_minus
        terms.append(f"- {_literal(m_m, e_m)} * x0 * y1")
    coincidence = " ".join(terms).removeprefix("+ ")
    learned = " ".join(f"{t} * d" if mask else t for t in terms).removeprefix("+ ")
    m_gain = max(1, int(math.floor(TRACE_MAX / bound)))
    target = 2 ** PRODUCT_SHIFT * params.lr * scale / gain  # c_w M
    if target / m_gain >= _FORMS[0][0]:
        m_w, e_w = _nearest_form(target / m_gain)
    else:  # the smallest literal, and fewer y units per unit of m
        m_w, e_w = _FORMS[0][1], _FORMS[0][2]
        m_gain = int(round(target / _FORMS[0][0]))
        if m_gain < 1:
            low = _FORMS[0][0] * gain / (2 ** PRODUCT_SHIFT * scale) / 2
            raise RuleError(f"three_factor: rate {params.lr:g} is too small for this connection in fixed point "
                            f"(its smallest is about {low:.1e}); raise --learn-rate")
    if _FORMS[-1][0] < target / m_gain:
        raise RuleError(f"three_factor: rate {params.lr:g} is too large for this connection in fixed point")
    c_w = m_w * 2.0 ** e_w
    rule = dict(dt=f"{learned} - {_literal(m_e, e_e)} * u0 * t",
                dw=f"{_literal(m_w, e_w)} * u0 * t * y2 - {_literal(m_w, e_w)} * u0 * t * y3",
                x1_impulse=i_p if params.a_plus > 0 else 0, x1_tau=params.tau_pre,
                y1_tau=math.inf, y2_tau=math.inf, y3_tau=math.inf, t_epoch=1, rng_seed=int(rng_seed))
    realized = {"lr": c_w * gain * m_gain / (2 ** PRODUCT_SHIFT * scale), "eligibility_decay": 1.0 - leak,
                "tag_units_per_eligibility": gain, "y_units_per_modulator": float(m_gain)}
    if params.a_minus > 0:
        realized["a_minus_realized_over_wanted"] = (m_m * 2.0 ** e_m * i_m / gain) / params.a_minus  # 1: exact
    post_decay = int(round(decay(params.tau_post) * 2 ** DECAY_BITS))
    return rule, ThreeFactorGains(i_m, post_decay, m_gain, realized), coincidence


@dataclass(frozen=True)
class FixedRuleInputs:
    """The y inputs of one fixed-point three_factor connection, computed in integers exactly as
    the Lava ``RuleInputs`` fixed-point model does (it calls these methods): ``feedback [C, J]``,
    ``spiking`` (a LIF target; else the readout, whose post factor is 1), the readout's
    ``readout_bias [C]`` (``bias_mant << bias_exp``, 64ths of a_in) and ``readout_unit`` (a_in per
    float unit of current), ``steps`` per sample and the logits' ``window``.

    State: ``post [J]`` (the post trace P, carried over samples) and ``window_sum [C]`` (the
    readout's increments over the window, 64ths of a_in)."""

    gains: ThreeFactorGains
    feedback: np.ndarray
    spiking: bool
    readout_bias: np.ndarray
    readout_unit: float
    steps: int
    window: int

    def initial_state(self) -> dict[str, np.ndarray]:
        return {"post": np.zeros(self.feedback.shape[1], np.int64),
                "window_sum": np.zeros(self.feedback.shape[0], np.int64)}

    def send(self, state: dict[str, np.ndarray], local: int, label: int) -> tuple[np.ndarray, ...]:
        """(y1, y2, y3) at step ``local`` of a sample (``steps`` and ``steps + 1`` are the guard
        steps), from what arrived before it."""
        y1 = (state["post"] * self.gains.post_decay) >> DECAY_BITS
        y2 = np.zeros_like(y1)
        y3 = np.zeros_like(y1)
        if local == self.steps + 1:  # the second guard step: the sample's logits are complete
            logits = state["window_sum"].astype(np.float64) / (64.0 * self.window * self.readout_unit)
            m = modulator(logits, label, self.feedback) * self.gains.modulator_gain
            y2 = np.minimum(np.round(np.maximum(m, 0.0)), TRACE_MAX).astype(np.int64)
            y3 = np.minimum(np.round(np.maximum(-m, 0.0)), TRACE_MAX).astype(np.int64)
        return y1, y2, y3

    def increment(self, current: np.ndarray) -> np.ndarray:
        """The readout integrator's increment for its input ``current [C]`` (a_in): 64ths of a_in."""
        return (np.asarray(current, np.int64) << 6) + self.readout_bias

    def receive(self, state: dict[str, np.ndarray], local: int, spikes: np.ndarray,
                increment: np.ndarray) -> dict[str, np.ndarray]:
        """The state after step ``local``: the target's ``spikes [J]`` and the readout's
        ``increment [C]`` of this step."""
        post = (state["post"] * self.gains.post_decay) >> DECAY_BITS
        fired = np.asarray(spikes, np.int64).reshape(-1) if self.spiking else np.ones_like(post)
        post = np.minimum(post + self.gains.post_impulse * fired, TRACE_MAX)
        window_sum = np.zeros_like(state["window_sum"]) if local == 0 else state["window_sum"]
        if self.steps - self.window <= local < self.steps:
            window_sum = window_sum + np.asarray(increment, np.int64).reshape(-1)
        return {"post": post, "window_sum": window_sum}
