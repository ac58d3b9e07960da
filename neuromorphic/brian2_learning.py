"""Local rules as Brian2 plastic synapses: ``rules.stdp`` as event-driven trace STDP.

The textbook form (Brian2's examples/synapses/STDP.py): the traces decay exactly between events,
and within a step the pre pathway (``on_pre``, order -1) runs before the post pathway
(``on_post``, order 1), so a simultaneous pair potentiates only, as in ``rules.stdp``:

    dApre/dt  = -Apre / tau_pre     (event-driven)      on_pre:  Apre += 1;  w -= lr A- Apost
    dApost/dt = -Apost / tau_post   (event-driven)      on_post: Apost += 1; w += lr A+ Apre

With time in steps of ``dt`` the decay between two steps is exp(-1/tau), the d of
``rules.base.decay``; tests/rules/test_stdp.py runs the two on random spike trains (1e-9).
"""

from __future__ import annotations

from typing import Any

from rules.base import RuleError
from rules.stdp import STDPParameters

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


def stdp_synapses(source: Any, target: Any, params: STDPParameters, dt: Any) -> Any:
    """``brian2.Synapses`` from ``source`` to ``target`` learning by additive ``rules.stdp``; time
    constants in steps of ``dt`` (a Brian2 quantity). Connect them and set ``w`` before running."""
    import brian2 as b2

    if params.multiplicative:
        raise RuleError("stdp: the Brian2 synapses implement additive STDP; multiplicative is not built yet")
    namespace = dict(tau_pre=params.tau_pre * dt, tau_post=params.tau_post * dt, lr=params.lr,
                     a_plus=params.a_plus, a_minus=params.a_minus)
    return b2.Synapses(source, target, model=STDP_MODEL, on_pre=STDP_ON_PRE, on_post=STDP_ON_POST,
                       namespace=namespace, dt=dt)
