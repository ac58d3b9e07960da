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

In a network (``brian2_build.Builder._plastic_dense``, exact mode) a plastic connection learns
as ``neuromorphic.simulate.learn_online`` does, step for step: one Synapses object per
connection, with only the synapses of ``Connection.synapses()``, whose pre pathway transmits
with the weight of the step before its dw. The rule runs in the 'synapses' slot after every
pathway, on traces kept per neuron (source ``xtrace<k>``, target ``ytrace<k>``), written as
``spikeformer.plasticity.stdp_step`` writes them, one float operation per statement:

    x = d_pre x + a_pre                       a_pre: source spike s (a LIF), or the input's value
    y = d_post y                              y_post[t-1], decayed to this step
    c = A+ (x b_post) - A- (a_pre y)          b_post: target spike s, or 1 for the readout
    stdp:          w = w + lr c
    three_factor:  e = d_e e + c              (w changes at the first guard step only, below)
    y = y + b_post

The third factor is the output error (``neuromorphic.reward.modulator``): zero at every step but
the first guard step of each sample, where ``OnlineTeacher`` (a Python network operation at the
end of the step, after the rule) computes the sample's logits from the readout and applies
w += lr (m_j e). Rule traces and weights carry over from sample to sample; only neuron state is
zeroed.
"""

from __future__ import annotations

from typing import Any, Optional

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


# ---------------------------------------------------------------------------------------------
# online learning inside the exact network (brian2_build.Builder._plastic_dense)

# per-neuron rule traces of plastic connection k, lines added to its source's / target's model
LEARN_PRE_TRACE = "xtrace{k} : 1  # pre trace of plastic connection {name}\nxdecay{k} : 1 (constant, shared)"
LEARN_POST_TRACE = "ytrace{k} : 1  # post trace of plastic connection {name}\nydecay{k} : 1 (constant, shared)"
LEARN_PRE_STEP = "xtrace{k} = xdecay{k} * xtrace{k}\nxtrace{k} = xtrace{k} + {activity}"  # this step's spike included
LEARN_POST_DECAY = "ytrace{k} = ydecay{k} * ytrace{k}"  # y_post[t-1] decayed: what the depression reads
LEARN_POST_ADD = "ytrace{k} = ytrace{k} + {activity}"  # this step's post factor, after the rule used y
LEARN_MODEL = {"stdp": "w : 1", "three_factor": "w : 1\nelig : 1  # eligibility"}
# the coincidence c = A+ (x_pre b_post) - A- (a_pre y_post) of stdp_step, in its operation order
LEARN_COINCIDENCE = """pot = xtrace{k}_pre * {post}
pot = a_plus * pot
dep = {pre} * ytrace{k}_post
dep = a_minus * dep"""
LEARN_RULE = {
    "stdp": LEARN_COINCIDENCE + "\ndw = pot - dep\ndw = lr * dw\nw = w + dw",
    "three_factor": LEARN_COINCIDENCE + "\nc = pot - dep\nelig = elig_decay * elig\nelig = elig + c",
}
# order inside the 'synapses' slot: every pathway transmits (0) before any rule changes a weight
LEARN_ORDER = {"transmit": 0, "traces": 1, "rule": 2, "post_trace": 3}


def learning_namespace(rule: str, params: Any) -> dict[str, float]:
    """The constants a plastic connection's Synapses read: lr, A+, A- (and d_e for three_factor)."""
    from rules.base import decay

    if rule == "stdp" and params.multiplicative:
        raise RuleError("stdp: the Brian2 synapses implement additive STDP; multiplicative is not built yet")
    out = {"lr": float(params.lr), "a_plus": float(params.a_plus), "a_minus": float(params.a_minus)}
    if rule == "three_factor":
        out["elig_decay"] = decay(params.tau_eligibility)
    return out


class OnlineTeacher:
    """The Python part of online learning in the exact network: ``end_of_step`` runs at the end
    of every step (a ``NetworkOperation`` after the rules) and

      - keeps the readout's value of the last ``window`` steps of the sample (steps T - window .. T - 1),
      - at the first guard step (step T) gives each three_factor connection its third factor
        m = ``neuromorphic.reward.modulator(logits, label, feedback) [target size]`` and applies
        w += lr (m_j e) (the modulator is zero at every other step, where dw = 0),
      - at the sample's last guard step records every plastic connection's weights.

    ``synapses``: connection name -> (its Synapses, the rule, lr); ``feedback`` ``{name: [C, J]}``
    and ``labels [B]`` are needed by three_factor connections only."""

    def __init__(self, readout: Any, synapses: dict[str, tuple[Any, str, float]], steps: int, sample_steps: int,
                 window: int, batch: int, labels: Optional[np.ndarray],
                 feedback: Optional[dict[str, np.ndarray]], step: Any) -> None:
        self.readout, self.synapses = readout, synapses
        self.steps, self.sample_steps, self.window, self.step = steps, sample_steps, window, step
        self.labels = None if labels is None else np.asarray(labels).astype(np.int64)
        self.feedback = {k: np.asarray(v, np.float64) for k, v in (feedback or {}).items()}
        self.modulated = [name for name, (_, rule, _) in synapses.items() if rule == "three_factor"]
        self.values: list[np.ndarray] = []  # the readout of the sample's last window steps [C] each
        self.weights = {name: np.zeros((batch, len(syn))) for name, (syn, _, _) in synapses.items()}
        self._post: dict[str, np.ndarray] = {}  # each synapse's target neuron j
        self._order: dict[str, np.ndarray] = {}  # synapse order -> row-major over Connection.synapses()

    def end_of_step(self, t: Any) -> None:
        sample, local = divmod(int(round(float(t / self.step))), self.sample_steps)
        if not self._post:  # the synapses exist once the network runs
            for name, (syn, _, _) in self.synapses.items():
                self._post[name] = np.asarray(syn.j[:])
                self._order[name] = np.lexsort((np.asarray(syn.i[:]), self._post[name]))
        if self.modulated and self.steps - self.window <= local < self.steps:
            self.values.append(np.array(self.readout.y[:], dtype=np.float64))
        if self.modulated and local == self.steps:  # the first guard step: the sample's logits are complete
            from .reward import modulator

            logits = np.mean(self.values, 0)  # as learn_online: the mean of the window's readout
            self.values = []
            for name in self.modulated:
                syn, _, lr = self.synapses[name]
                m = modulator(logits, int(self.labels[sample]), self.feedback[name])  # [J]
                syn.w[:] = np.asarray(syn.w[:]) + lr * (m[self._post[name]] * np.asarray(syn.elig[:]))
        if local == self.sample_steps - 1 and sample < len(next(iter(self.weights.values()))):
            for name, (syn, _, _) in self.synapses.items():
                self.weights[name][sample] = np.asarray(syn.w[:])[self._order[name]]
