"""Process models of ``SpikeRecorder`` (floating and fixed point: it only copies values)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from neuromorphic.lava.recorder.process import SpikeRecorder  # absolute: Lava loads this file by path


class _Recorder(PyLoihiProcessModel):
    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._file = None

    def run_spk(self) -> None:
        data = self.a_in.recv()
        if self._file is None:  # opened in the model's own OS process, on first use
            self._file = np.load(self.proc_params["path"], mmap_mode="r+")
        row = (self.time_step - 1) % self.proc_params["steps"]
        self._file[row] = data
        if row == self.proc_params["steps"] - 1:
            self._file.flush()

    def _stop(self) -> None:
        if self._file is not None:
            self._file.flush()
        super()._stop()


@implements(proc=SpikeRecorder, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeRecorderFloat(_Recorder):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)


@implements(proc=SpikeRecorder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeRecorderFixed(_Recorder):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
