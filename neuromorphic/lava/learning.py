"""Local rules as Lava's learning engine (lava-nc 0.10.0, floating point): the learning-rule
parameters that make a ``LearningDense`` follow ``rules.stdp`` and ``rules.three_factor`` exactly.

What Lava's float learning does with ``t_epoch = 1`` (read from lava/magma/core/model/py/
connection.py and measured, docs/backends.md "On-chip learning"):

    x1 = exp(-1/x1_tau) x1 + x1_impulse s_pre[t]          pre trace, this step's spike included
    y1 = exp(-1/y1_tau) y1 + y1_impulse s_post[t]         post trace, this step's spike included
    w += sum of the dw string's products, read with the traces after this step's impulses

A pre spike (``s_in``) and a post spike (``s_in_bap``) of the same step are paired in that step.
``rules.stdp`` reads the post trace *before* this step's spike (a simultaneous pair potentiates
only), so the string adds ``x0 * y2`` back: y2 is a trace with impulse A- that decays to exactly
0 within one step (``exp(-1/1e-4) == 0.0``), i.e. ``A- s_post[t]``. The amplitudes (times lr) go
into the impulses, so any float value is exact; written as literals in the string they would be
limited to m 2^e with |m| <= 8 (Lava's grammar).

Three-factor (``Loihi3FLearningRule``): the tag ``t`` is the eligibility, and y1, y2, y3 are
read from the ``s_in_y1..3`` ports every step: y1 = A- d_post y_post[t-1] (the post trace
decayed to this step, before its spike), y2 = lr m[t] (the modulator), y3 = d_e. Lava's
LearningLIF in 0.10.0 sends neither back-propagated spikes nor traces, so y1 comes from outside
the Dense. The stock ``STDPLoihi`` and ``RewardModulatedSTDP`` round their parameters to powers
of two, which is why they are not used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rules.base import RuleError, decay
from rules.stdp import STDPParameters
from rules.three_factor import ThreeFactorParameters

# the dw string of pair-based STDP; x0 * y2 cancels the post impulse of this step (see above)
STDP_DW = "y0 * x1 - x0 * y1 + x0 * y2"
# the eligibility e = d_e e + (STDP coincidence) in the tag t; y3 = d_e, y1 = A- d_post y_post[t-1]
THREE_FACTOR_DT = "y0 * x1 - x0 * y1 + u0 * t * y3 - u0 * t"
# w += lr m e[t], with e[t] the tag after this step (dw is applied before dt, on the old tag)
THREE_FACTOR_DW = "u0 * t * y2 * y3 + y0 * x1 * y2 - x0 * y1 * y2"
# a trace time constant (steps) whose one-step decay exp(-1/tau) is exactly 0.0 in float64
VANISHING_TAU = 1e-4


def stdp_rule_parameters(params: STDPParameters) -> dict[str, Any]:
    """Keyword arguments of ``Loihi2FLearningRule`` for ``rules.stdp`` with ``params`` (additive).
    Multiplicative STDP (soft bounds) is refused: its amplitude depends on w, which the impulse
    form cannot carry."""
    if params.multiplicative:
        raise RuleError("stdp: multiplicative (soft-bound) STDP has no exact Lava learning rule; use additive STDP")
    return dict(dw=STDP_DW, x1_impulse=params.lr * params.a_plus, x1_tau=params.tau_pre,
                y1_impulse=params.lr * params.a_minus, y1_tau=params.tau_post,
                y2_impulse=params.lr * params.a_minus, y2_tau=VANISHING_TAU, t_epoch=1)


def three_factor_rule_parameters(params: ThreeFactorParameters) -> dict[str, Any]:
    """Keyword arguments of ``Loihi3FLearningRule`` for ``rules.three_factor`` (the y inputs are
    fed each step, ``three_factor_inputs``)."""
    return dict(dt=THREE_FACTOR_DT, dw=THREE_FACTOR_DW, x1_impulse=params.a_plus, x1_tau=params.tau_pre, t_epoch=1)


def three_factor_inputs(post_trace_before: np.ndarray, modulator: np.ndarray,
                        params: ThreeFactorParameters) -> dict[str, np.ndarray]:
    """The values for ``s_in_y1``, ``s_in_y2``, ``s_in_y3`` at one step: ``post_trace_before`` is
    ``y_post[t-1]`` (undecayed, as ``rules.three_factor`` keeps it), ``modulator`` m[t] per post
    neuron (0 where none arrives)."""
    return dict(y1=params.a_minus * decay(params.tau_post) * np.asarray(post_trace_before, dtype=float),
                y2=params.lr * np.asarray(modulator, dtype=float),
                y3=np.full(np.shape(modulator), decay(params.tau_eligibility)))


def masked(dw: str) -> str:
    """``dw`` with every product times ``d``, the synaptic variable tag_2 (which induces no delay in
    lava-nc 0.10.0): set to a connection's mask (1 where a synapse exists, 0 elsewhere) and never
    changed, it keeps a per-token weight block-diagonal in a LearningDense. (LearningSparse would
    hold only the synapses, but its float model fails on any product with the tag t in 0.10.0.)"""
    terms = dw.replace(" - ", " + -").split(" + ")
    return " + ".join(f"{term} * d" for term in terms).replace(" + -", " - ")


def learning_rule(kind: str, params: Any, mask: bool = False) -> Any:
    """The Lava learning-rule object for ``kind`` ("stdp" or "three_factor"); ``mask``: its dw
    multiplied by ``d`` (``masked``). For three_factor its y traces do not decay (they are set
    from the ports each step): Lava builds them with tau 65535, which would scale every input by
    exp(-1/65535)."""
    from . import require_lava

    require_lava()
    from lava.magma.core.learning.learning_rule import Loihi2FLearningRule, Loihi3FLearningRule

    if kind == "stdp":
        kwargs = stdp_rule_parameters(params)
        return Loihi2FLearningRule(**{**kwargs, "dw": masked(kwargs["dw"]) if mask else kwargs["dw"]})
    if kind == "three_factor":
        kwargs = three_factor_rule_parameters(params)
        rule = Loihi3FLearningRule(**{**kwargs, "dw": masked(kwargs["dw"]) if mask else kwargs["dw"]})
        hold_y_inputs(rule)  # float tau Vars hold inf
        return rule
    raise RuleError(f"rule {kind!r} has no Lava learning rule (e-prop's pseudo-derivative and perturbation's "
                    "noise have no trace form in Lava's learning engine); export stdp or three_factor")


def fixed_learning_rule(kwargs: dict[str, Any], third_factor: bool) -> Any:
    """The Lava rule object of a fixed-point realization (``fixed_learning.connection_rule``):
    a ``Loihi2FLearningRule``, or a ``Loihi3FLearningRule`` built with Lava's default y taus (its
    fixed-point tau Vars are integers and cannot hold inf). Call ``hold_y_inputs`` on a 3F rule
    once its process exists."""
    from . import require_lava

    require_lava()
    from lava.magma.core.learning.learning_rule import Loihi2FLearningRule, Loihi3FLearningRule

    if not third_factor:
        return Loihi2FLearningRule(**kwargs)
    return Loihi3FLearningRule(**{k: v for k, v in kwargs.items() if not k.startswith("y")})


def hold_y_inputs(rule: Any) -> None:
    """The y inputs of a 3F rule arrive whole every step: no decay (the model reads the taus from
    the rule object in its proc_params, not from the process's integer Vars)."""
    rule.y1_tau = rule.y2_tau = rule.y3_tau = math.inf

