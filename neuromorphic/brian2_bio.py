"""The biophysical (continuous-time, with units) Brian2 network of ``neuromorphic.brian2_ref``.

``BioParams`` holds its physical constants; ``BioBuilder`` maps each population onto leaky
membranes with exponential current synapses integrated every ``dt_ms``, the bias onto a
pacemaker's once-per-step pulses (or a constant current), and each Dense delay onto a real
axonal delay with the populations' phases; the attention memory runs on the step clock in an
'attention' slot after the resets. ``drift`` in ``brian2_ref`` measures how far it moves from
the discrete model; docs/backends.md ("Biophysical mode") derives the constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .brian2_build import Builder, _attention_sources, _brian_name, _levels
from .brian2_equations import (BIO_ATTENTION_PULSE, BIO_LATCH_CLEAR, BIO_LIF, BIO_LIF_RESET, BIO_LIF_RESET_CURRENT,
                               BIO_LIF_THRESHOLD, BIO_LIF_ZERO, BIO_READOUT, BIO_READOUT_ZERO, CHARGE, INPUT_STEP,
                               ORDER, PACEMAKER, PACEMAKER_ON_PRE, PACEMAKER_RESET, PACEMAKER_STEP,
                               PACEMAKER_THRESHOLD)
from .ir import Attention, Connection, Graph, LoweringError, Population


@dataclass(frozen=True)
class BioParams:
    """Physical constants of the biophysical mode (milliseconds).

    step_ms: wall time of one IR step; dt_ms: integration step; tau_syn_ms: synaptic current
    decay (used when the population's alpha is 0, else -step / ln alpha); refractory_ms: dead
    time after a spike; reset_current: a spike also drops the rest of the synaptic current of
    that step (the discrete model's reset discards it too); kernel: "peak" scales the synaptic
    kernel so a weight w raises v by at most w (threshold crossings as in the steps), "tail" so
    that long after the pulse v carries w beta^(t / step) (memory as in the steps); bias:
    "pulse" delivers b once per step through the synaptic kernel from a pacemaker neuron (as
    the steps add it), "current" as a constant current b / ((1 - beta) tau_m) (same resting
    level; a neuron with a large bias then fires several times per step).
    """

    step_ms: float = 1.0
    dt_ms: float = 0.05
    tau_syn_ms: float = 0.1
    refractory_ms: float = 0.0
    reset_current: bool = True
    kernel: str = "peak"
    bias: str = "pulse"
    gap_steps: int = 3  # silent steps between samples (in-flight spikes land before the reset)

    def __post_init__(self) -> None:
        if self.kernel not in ("peak", "tail"):
            raise LoweringError(f"BioParams kernel {self.kernel!r} is unknown; choose 'peak' or 'tail'")
        if self.bias not in ("pulse", "current"):
            raise LoweringError(f"BioParams bias {self.bias!r} is unknown; choose 'pulse' or 'current'")
        if not (self.step_ms > 0 and self.dt_ms > 0 and self.tau_syn_ms > 0 and self.refractory_ms >= 0):
            raise LoweringError("BioParams step_ms, dt_ms and tau_syn_ms must be > 0 and refractory_ms >= 0")
        half = self.step_ms / (2 * self.dt_ms)  # delays of half a step must be whole dt
        if abs(half - round(half)) > 1e-9 or half < 1:
            raise LoweringError(f"BioParams dt_ms = {self.dt_ms} must divide half a step ({self.step_ms / 2} ms); "
                                "try 0.1, 0.05 or 0.025")


def check_biophysical(graph: Graph) -> None:
    """Raise ``LoweringError`` (one line) for what only the discrete mode can run."""
    for pop in graph.populations:
        if pop.kind == "lif" and not 0.0 < pop.beta <= 1.0:
            raise LoweringError(f"population {pop.name!r} has beta = {pop.beta}, which has no membrane time "
                                "constant; run it in mode 'exact'")
        if pop.kind == "lif" and pop.alpha >= 1.0:
            raise LoweringError(f"population {pop.name!r} has alpha = 1 (a current that never decays); "
                                "run it in mode 'exact'")
    if any(level > 1 for level in _levels(graph).values()):
        raise LoweringError("the biophysical Brian2 network reads attention once per step, so an attention "
                            "target cannot feed another attention in the same step; run it in mode 'exact'")


class BioBuilder(Builder):
    """Continuous time with units: populations and synapses on a fine clock (``dt_ms``), the
    attention memory once per step."""

    mode = "biophysical"
    lif_zero = BIO_LIF_ZERO

    def __init__(self, graph: Graph, x_steps: np.ndarray, bio: BioParams) -> None:
        self.bio = bio
        self.step_ms = bio.step_ms
        super().__init__(graph, x_steps)

    def _gap(self, max_delay: int) -> int:
        # the longest axonal delay plus the phase shift must land inside the silent gap
        return max(self.bio.gap_steps, max_delay + 2)

    def _fine_clock(self) -> Any:
        return self.b2.Clock(dt=self.bio.dt_ms * self.b2.ms, name=_brian_name("fine", self.names))

    def _schedule(self) -> list[str]:
        return ["start", "groups", "thresholds", "synapses", "resets", "attention", "end"]

    def _schedule_input(self, group: Any) -> None:
        # the event leaves at the step's tick on the fine clock: delays keep dt resolution
        self._regularly(group, INPUT_STEP, "groups", -1, "step")

    def _phase(self, pop: Population) -> float:
        """Where in time (in steps, modulo the step) a population's step-t activity sits. Input
        events are at t; a LIF driven by Dense spikes fires shortly after its input arrives at
        t + 1/2; an attention target fires after the attention clock tick at t + 1."""
        if pop.kind == "input":
            return 0.0
        return 0.5 + 0.5 * self.level[pop.name]

    # --- populations -------------------------------------------------------------------------------

    def _lif_group(self, pop: Population, links: list[str], extra: str) -> Any:
        b2 = self.b2
        tau_m, tau_syn, charge = self._bio_constants(pop.beta, pop.alpha)
        drive = (pop.bias.reshape(-1) / ((1.0 - pop.beta) * tau_m / self.step) if pop.beta < 1.0
                 else pop.bias.reshape(-1)) / self.step
        group = self._group(pop, BIO_LIF + CHARGE + "\n" + extra, threshold=BIO_LIF_THRESHOLD,
                            reset=BIO_LIF_RESET_CURRENT if self.bio.reset_current else BIO_LIF_RESET,
                            refractory=self.bio.refractory_ms * b2.ms, method="exact", clock=self.fine,
                            namespace={"tau_m": tau_m, "tau_syn": tau_syn, "theta": pop.threshold,
                                       "awake": self.awake})
        if self.bio.bias == "current":
            group.drive = drive
        else:
            group.bias = pop.bias.reshape(-1)
            self._pacemaker_synapses(pop, group)
        group.charge = charge
        for link in links:  # the attention read arrives once per step as a current pulse
            self._regularly(group, BIO_ATTENTION_PULSE.format(link=link), "attention", ORDER["pulse"],
                            "attention_" + link)
        return group

    def _pacemaker_synapses(self, pop: Population, group: Any) -> None:
        """bias="pulse": one neuron spiking at every awake step's start drives each neuron of
        ``group`` through a synapse of weight b, arriving with the population's phase."""
        b2 = self.b2
        if not hasattr(self, "pacemaker"):
            self.pacemaker = b2.NeuronGroup(1, PACEMAKER, threshold=PACEMAKER_THRESHOLD, reset=PACEMAKER_RESET,
                                            clock=self.fine, namespace={"awake": self.awake},
                                            name=_brian_name("pacemaker", self.names))
            self._regularly(self.pacemaker, PACEMAKER_STEP, "groups", -1, "step")
            self.objects.append(self.pacemaker)
        syn = b2.Synapses(self.pacemaker, group, on_pre=PACEMAKER_ON_PRE, clock=self.fine,
                          delay=self._phase(pop) * self.step, name=_brian_name(pop.name + ".bias", self.names))
        syn.connect(i=0, j=np.arange(pop.size))
        self.objects.append(syn)

    def _bio_constants(self, beta: float, alpha: float) -> tuple[Any, Any, Any]:
        """(tau_m, tau_syn, charge) for a population: tau_m = -step / ln beta, kernel amplitude per unit weight."""
        b2 = self.b2
        step_ms = self.bio.step_ms
        tau_m = -step_ms / math.log(beta) if beta < 1.0 else 1e9 * step_ms  # beta = 1: no leak
        tau_syn = -step_ms / math.log(alpha) if alpha > 0.0 else self.bio.tau_syn_ms
        if abs(tau_m - tau_syn) < 1e-9 * tau_m:
            tau_syn *= 0.999  # the kernel below needs tau_m != tau_syn
        # membrane response to g += c: c tau_m tau_s / (tau_m - tau_s) (exp(-t / tau_m) - exp(-t / tau_s))
        tail = tau_m * tau_syn / (tau_m - tau_syn)  # [ms] factor of the exp(-t / tau_m) tail
        if self.bio.kernel == "tail":
            amplitude = 1.0 / tail
        elif self.bio.kernel == "peak":
            t_peak = tail * math.log(tau_m / tau_syn)
            amplitude = 1.0 / (tail * (math.exp(-t_peak / tau_m) - math.exp(-t_peak / tau_syn)))
        else:  # BioParams checked the name
            raise AssertionError(self.bio.kernel)
        return tau_m * b2.ms, tau_syn * b2.ms, amplitude / b2.ms

    def _readout(self, pop: Population) -> None:
        group = self._group(pop, BIO_READOUT, method="euler", clock=self.fine)  # exact for dq/dt = constant
        group.drive = pop.bias.reshape(-1) / self.step
        self._on_sample_start(group, BIO_READOUT_ZERO)
        self.readout_monitor = self.b2.StateMonitor(group, "q", record=True, clock=self.clock, when="start",
                                                    order=1, name=group.name + "_monitor")
        self.objects.append(self.readout_monitor)

    # --- connections and attention --------------------------------------------------------------

    def _dense_delay(self, conn: Connection, src: Population, dst: Population) -> Any:
        return (conn.delay + self._phase(dst) - self._phase(src)) * self.step

    def _attention_slot(self, att: Attention) -> str:
        return "attention"

    def _attention(self, att: Attention) -> None:
        super()._attention(att)
        for name in _attention_sources(att):  # the step's latches have been read: clear them for the next step
            self._regularly(self.groups[name], BIO_LATCH_CLEAR, "attention", ORDER["latch_clear"],
                            f"latch_clear_{att.name}".replace(".", "_"))

    # --- results --------------------------------------------------------------------------------

    def _spike_steps(self, times: np.ndarray, pop: Population) -> np.ndarray:
        return np.floor(times - self._phase(pop) + 1e-9).astype(np.int64)  # the step whose activity it represents

    def _readout_steps(self) -> np.ndarray:
        # the charge received during each step [t, t + 1) of the readout's phase
        q = np.asarray(self.readout_monitor.q).reshape(-1, self.batch, self.sample_steps)
        return q[:, :, 1:self.steps + 1] - q[:, :, :self.steps]
