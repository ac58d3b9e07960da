"""Process models of ``SpikeRecorder`` (floating and fixed point: it only copies values)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from neuromorphic.lava.recorder.process import MAX_PORTS, SpikeRecorder  # absolute: Lava loads this file by path


class _Recorder(PyLoihiProcessModel):
    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._files = None

    def run_spk(self) -> None:
        paths = self.proc_params["paths"]
        data = [getattr(self, f"a_in{i}").recv() for i in range(len(paths))]
        if self._files is None:  # opened in the model's own OS process, on first use
            self._files = [np.load(path, mmap_mode="r+") for path in paths]
        steps = self.proc_params["steps"]
        row = (self.time_step - 1) % steps
        for file, vector in zip(self._files, data):
            file[row] = vector
            if row == steps - 1:
                file.flush()

    def _stop(self) -> None:
        for file in self._files or ():
            file.flush()
        super()._stop()


def _declare_ports(model: type, make) -> type:
    """Give ``model`` the type of every port of ``SpikeRecorder``."""
    for i in range(MAX_PORTS):
        setattr(model, f"a_in{i}", make())
    return model


@implements(proc=SpikeRecorder, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeRecorderFloat(_Recorder):
    pass


@implements(proc=SpikeRecorder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeRecorderFixed(_Recorder):
    pass


_declare_ports(PySpikeRecorderFloat, lambda: LavaPyType(PyInPort.VEC_DENSE, float))
_declare_ports(PySpikeRecorderFixed, lambda: LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24))
