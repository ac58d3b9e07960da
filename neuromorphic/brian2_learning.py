"""Local rules as Brian2 plastic synapses: ``rules.stdp`` as event-driven trace STDP, and
``rules.three_factor`` as the same coincidences kept in an eligibility ``e`` that a modulator
turns into weight.

The textbook form (Brian2's examples/synapses/STDP.py): the traces decay exactly between events,
and within a step the pre pathway (``on_pre``, order -1) runs before the post pathway
(``on_post``, order 1), so a simultaneous pair potentiates only, as in ``rules.stdp``:

    dApre/dt  = -Apre / tau_pre     (event-driven)      on_pre:  Apre += 1;  w -= lr A- Apost
    dApost/dt = -Apost / tau_post   (event-driven)      on_post: Apost += 1; w += lr A+ Apre

With time in steps of ``dt`` the decay between two steps is exp(-1/tau), the d of
``rules.base.decay``; tests/rules/test_stdp.py runs the two on random spike trains (1e-9).

Three-factor: the pathways add the coincidence to the eligibility ``elig`` instead of ``w`` (``e``
is Brian2's Euler number); it decays exactly between steps (``method="exact"``: elig <-
exp(-dt/tau_e) elig at the start of each step, before the pathways add this step's
coincidence), and at the end of every step

    w += lr m[t, j] elig                  m: the modulator of post neuron j (a TimedArray)

which is ``rules.three_factor``: e = d_e e + c[t], dw = lr m[t] e[t]
(tests/neuromorphic/test_lava_learning.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rules.base import RuleError
from rules.stdp import STDPParameters
from rules.three_factor import ThreeFactorParameters

STDP_MODEL = """
w : 1
dApre/dt = -Apre / tau_pre : 1 (event-driven)
dApost/dt = -Apost / tau_post : 1 (event-driven)
"""
STDP_ON_PRE = """
Apre += 1
w = w - lr * a_minus * Apost
"""
STDP_ON_POST = """
Apost += 1
w = w + lr * a_plus * Apre
"""


THREE_FACTOR_MODEL = """
w : 1
delig/dt = -elig / tau_eligibility : 1 (clock-driven)
dApre/dt = -Apre / tau_pre : 1 (event-driven)
dApost/dt = -Apost / tau_post : 1 (event-driven)
"""
THREE_FACTOR_ON_PRE = """
Apre += 1
elig = elig - a_minus * Apost
"""
THREE_FACTOR_ON_POST = """
Apost += 1
elig = elig + a_plus * Apre
"""
THREE_FACTOR_EVERY_STEP = "w = w + lr * modulator(t, j) * elig"


def stdp_namespace(params: STDPParameters, dt: Any) -> dict[str, Any]:
    """The constants of ``STDP_MODEL`` and its pathways: time constants in steps of ``dt``."""
    if params.multiplicative:
        raise RuleError("stdp: the Brian2 synapses implement additive STDP; multiplicative is not built yet")
    return dict(tau_pre=params.tau_pre * dt, tau_post=params.tau_post * dt, lr=params.lr,
                a_plus=params.a_plus, a_minus=params.a_minus)


def stdp_synapses(source: Any, target: Any, params: STDPParameters, dt: Any) -> Any:
    """``brian2.Synapses`` from ``source`` to ``target`` learning by additive ``rules.stdp``; time
    constants in steps of ``dt`` (a Brian2 quantity). Connect them and set ``w`` before running."""
    import brian2 as b2

    return b2.Synapses(source, target, model=STDP_MODEL, on_pre=STDP_ON_PRE, on_post=STDP_ON_POST,
                       namespace=stdp_namespace(params, dt), dt=dt)


def three_factor_synapses(source: Any, target: Any, params: ThreeFactorParameters, dt: Any,
                          modulator: np.ndarray) -> Any:
    """``brian2.Synapses`` learning by ``rules.three_factor``; ``modulator [T, J]`` is each step's
    modulator per post neuron (0 where none arrives). Connect them and set ``w`` before running."""
    import brian2 as b2

    namespace = dict(tau_pre=params.tau_pre * dt, tau_post=params.tau_post * dt,
                     tau_eligibility=params.tau_eligibility * dt, lr=params.lr, a_plus=params.a_plus,
                     a_minus=params.a_minus, modulator=b2.TimedArray(np.asarray(modulator, dtype=float), dt=dt))
    synapses = b2.Synapses(source, target, model=THREE_FACTOR_MODEL, on_pre=THREE_FACTOR_ON_PRE,
                           on_post=THREE_FACTOR_ON_POST, namespace=namespace, dt=dt, method="exact")
    synapses.run_regularly(THREE_FACTOR_EVERY_STEP, dt=dt, when="end")
    return synapses
