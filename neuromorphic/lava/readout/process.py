"""``ReadoutLIF``: the stock ``LIFReset`` plus an OutPort ``v_out`` that sends ``v`` each step.

Why: the readout is a LIF that never fires (``dv = 0``); its membrane is the integrated
readout current. A ``Monitor`` probing ``v`` reads it through a RefPort in the management
phase, and one process asking for that phase makes the runtime run it in EVERY process at
every step (lava-nc 0.10.0 ``LoihiPyRuntimeService``): measured, it halves a network's steps
per second. Sending ``v`` on a port keeps the whole network in the spiking phase; the models
are Lava's own LIF models with one ``send`` added after their step.

Ports: those of ``LIFReset`` and ``v_out`` OutPort ``shape`` (``v`` after this step's update).
"""

from __future__ import annotations

from typing import Any

from lava.magma.core.process.ports.ports import OutPort
from lava.proc.lif.process import LIFReset


class ReadoutLIF(LIFReset):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.v_out = OutPort(shape=self.v.shape)
