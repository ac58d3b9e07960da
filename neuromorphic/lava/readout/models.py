"""ProcessModels of ``ReadoutLIF``: Lava's ``PyLifResetModelFloat`` / ``PyLifResetModelBitAcc``
unchanged, then ``v`` sent on ``v_out``."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import PyLifResetModelBitAcc, PyLifResetModelFloat

# absolute import only: Lava executes this file as a top-level module named "models"
from neuromorphic.lava.readout.process import ReadoutLIF


class _SendsV:
    """After the stock LIF step, send ``v``."""

    # the parents implement LIFReset; ``implements`` refuses to overwrite that unless cleared
    implements_process = None

    def run_spk(self) -> None:
        super().run_spk()
        self.v_out.send(self.v)


# tags ("floating_pt"; "bit_accurate_loihi", "fixed_pt") and CPU are inherited (Lava's add up)
@implements(proc=ReadoutLIF, protocol=LoihiProtocol)
class PyReadoutLifModelFloat(_SendsV, PyLifResetModelFloat):
    v_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)


@implements(proc=ReadoutLIF, protocol=LoihiProtocol)
class PyReadoutLifModelFixed(_SendsV, PyLifResetModelBitAcc):
    v_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
