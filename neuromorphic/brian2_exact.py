"""The exact (discrete-time) Brian2 network of ``neuromorphic.brian2_ref``: one Brian2 time step
(dt = 1 ms) = one IR step, spikes equal to ``neuromorphic.simulate.run_graph``.

Scheduling: the Network's schedule has one slot per same-step level (a population fed by an
attention node is one level above the node's q/k/v); inside a slot the order is: attention
plasticity and read (negative orders), LIF update (0), threshold (1), reset (2). All Dense
pathways run in the 'synapses' slot after every level, so a spike of step t reaches its
target's update at step t + 1; plastic connections learn there too, after every pathway
transmitted (``brian2_learning``), and ``OnlineTeacher`` runs in the 'end' slot.

Between samples: with Dense delays above one step, ``delay - 1`` silent steps (spikes in flight
land, none start). With a plastic connection, ``learn_online``'s guard steps instead
(``neuromorphic.lava.run.GUARD_STEPS``, more if a delay needs them): in the first the input is
silent but the neurons may still fire and learn; in the rest every LIF is held silent (the
``awake`` TimedArray) and the rule traces only decay.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .brian2_build import Builder
from .brian2_equations import (EXACT_ATTENTION_CURRENT, EXACT_LIF, EXACT_LIF_RESET, EXACT_LIF_STEP,
                               EXACT_LIF_THRESHOLD, EXACT_LIF_THRESHOLD_AWAKE, EXACT_LIF_ZERO, EXACT_READOUT,
                               EXACT_READOUT_STEP, EXACT_READOUT_ZERO, INPUT_STEP, ORDER)
from .ir import Attention, Connection, Population


class ExactBuilder(Builder):
    """Discrete time: every statement runs once per 1 ms step in its level's slot."""

    mode = "exact"
    step_ms = 1.0
    lif_zero = EXACT_LIF_ZERO

    def _gap(self, max_delay: int) -> int:
        if self.learns:
            from .guard import GUARD_STEPS

            # spikes of the first guard step (t = T) arrive by T + delay, before the next reset
            return max(GUARD_STEPS, max_delay)
        return max_delay - 1  # a spike is delivered delay - 1 steps after the step that follows it

    def _fine_clock(self) -> Any:
        return self.clock  # one clock: the step

    def _schedule(self) -> list[str]:
        top = max(self.level.values())
        return ["start"] + [f"level{k}" for k in range(top + 1)] + ["groups", "thresholds", "synapses", "resets", "end"]

    def _schedule_input(self, group: Any) -> None:
        self._regularly(group, INPUT_STEP, "level0", ORDER["update"], "step")
        self._slot(group.thresholder["spike"], "level0", ORDER["threshold"])
        self._slot(group.resetter["spike"], "level0", ORDER["reset"])

    def _lif_group(self, pop: Population, links: list[str], extra: str) -> Any:
        slot = f"level{self.level[pop.name]}"
        # delays above one step: silent steps between samples, so spikes in flight land before the reset
        threshold = EXACT_LIF_THRESHOLD_AWAKE if self.gap else EXACT_LIF_THRESHOLD
        group = self._group(pop, EXACT_LIF + extra, threshold=threshold, reset=EXACT_LIF_RESET, clock=self.clock,
                            namespace={"beta": pop.beta, "alpha": pop.alpha, "theta": pop.threshold,
                                       "awake": self.awake})
        attention = "".join(EXACT_ATTENTION_CURRENT.format(link=link) for link in links)
        self._regularly(group, EXACT_LIF_STEP.format(attention=attention), slot, ORDER["update"], "step")
        self._slot(group.thresholder["spike"], slot, ORDER["threshold"])
        self._slot(group.resetter["spike"], slot, ORDER["reset"])
        group.bias = pop.bias.reshape(-1)
        return group

    def _readout(self, pop: Population) -> None:
        group = self._group(pop, EXACT_READOUT + "\n".join(self.extra[pop.name]), clock=self.clock)
        self._regularly(group, EXACT_READOUT_STEP, "level0", ORDER["update"], "step")
        group.bias = pop.bias.reshape(-1)
        self._on_sample_start(group, EXACT_READOUT_ZERO)
        self.readout_monitor = self.b2.StateMonitor(group, "y", record=True, clock=self.clock, when="end",
                                                    name=group.name + "_monitor")
        self.objects.append(self.readout_monitor)

    def _dense_delay(self, conn: Connection, src: Population, dst: Population) -> Any:
        return (conn.delay - 1) * self.step  # the 'synapses' slot already delays by one step

    def _attention_slot(self, att: Attention) -> str:
        return f"level{self.level[att.target]}"  # same step, before the target's update

    def _spike_steps(self, times: np.ndarray, pop: Population) -> np.ndarray:
        return np.rint(times).astype(np.int64)

    def _readout_steps(self) -> np.ndarray:
        y = np.asarray(self.readout_monitor.y)  # [C, B * sample_steps]
        return y.reshape(-1, self.batch, self.sample_steps)[:, :, :self.steps]
