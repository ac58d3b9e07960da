"""Process models of ``neuromorphic.lava.plasticity.process``: float ones, and the fixed-point
recording LearningDense (Lava's bit-approximate engine, ``neuromorphic.fixed_learning``)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.dense.models import PyLearningDenseModelBitApproximate, PyLearningDenseModelFloat

from neuromorphic.lava.plasticity.process import (  # absolute: Lava loads this file by path
    RecordingLearningDense, RuleInputs)
from neuromorphic.reward import modulator


@implements(proc=RuleInputs, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyRuleInputsFloat(PyLoihiProcessModel):
    s_post: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    readout_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    y1: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    y2: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    y3: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    bap: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    post_trace: np.ndarray = LavaPyType(np.ndarray, float)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        p = proc_params
        self.steps, self.period, self.window = p["steps"], p["period"], p["window"]
        self.window_sum = np.zeros(p["classes"])

    def run_spk(self) -> None:
        p = self.proc_params
        local = (self.time_step - 1) % self.period  # the step within the sample (guard steps: >= steps)
        sample = (self.time_step - 1) // self.period
        size = p["size"]
        # sent first, from what arrived before this step: y_post[t-1] and the finished sample's logits
        self.y1.send(p["a_minus"] * p["post_decay"] * self.post_trace)
        m = np.zeros(size)
        if local == self.steps:  # the first guard step: the sample's logits are complete
            m = modulator(self.window_sum / self.window, p["labels"][sample], p["feedback"])
        self.y2.send(p["lr"] * m)
        self.y3.send(np.full(size, p["eligibility_decay"]))
        self.bap.send(np.ones(size))  # used only by a readout target (its post factor)
        spikes = self.s_post.recv() if p["spiking"] else np.ones(size)
        self.post_trace = p["post_decay"] * self.post_trace + spikes
        current = self.readout_in.recv()
        if local == 0:
            self.window_sum[:] = 0.0
        if self.steps - self.window <= local < self.steps:  # the readout's increment: current + bias
            self.window_sum += current + p["readout_bias"]


@implements(proc=RuleInputs, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyRuleInputsFixed(PyLoihiProcessModel):
    s_post: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    readout_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    y1: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=7)
    y2: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=7)
    y3: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=7)
    bap: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, bool, precision=1)
    post_trace: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=7)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.inputs = proc_params["fixed"]  # fixed_three_factor.FixedRuleInputs: the reference's own arithmetic
        self.state = self.inputs.initial_state()

    def run_spk(self) -> None:
        p = self.proc_params
        local = (self.time_step - 1) % p["period"]
        sample = (self.time_step - 1) // p["period"]
        for port, value in zip((self.y1, self.y2, self.y3), self.inputs.send(self.state, local, p["labels"][sample])):
            port.send(value.astype(np.int32))
        self.bap.send(np.ones(p["size"], bool))  # used only by a readout target (its post factor)
        spikes = self.s_post.recv() if p["spiking"] else np.ones(p["size"])
        increment = self.inputs.increment(self.readout_in.recv())
        self.state = self.inputs.receive(self.state, local, spikes, increment)
        self.post_trace = self.state["post"]


class _Recording:  # a mixin before a stock learning model: its run_lrn, then the recording
    """After the last step of every sample, each synapse's weight into row ``sample`` of the file."""

    def run_lrn(self) -> None:
        super().run_lrn()
        if self.time_step % self.proc_params["period"]:
            return
        weights = np.asarray(self.weights)[self.proc_params["mask"]]
        if getattr(self, "_file", None) is None:  # opened in the model's own OS process
            self._file = np.load(self.proc_params["path"], mmap_mode="r+")
        row = self.time_step // self.proc_params["period"] - 1
        if row < len(self._file):
            self._file[row] = weights
            self._file.flush()


class PyRecordingLearningDenseFloat(_Recording, PyLearningDenseModelFloat):
    pass


# tags "bit_approximate_loihi", "fixed_pt", inherited (Lava's tags add up over subclasses)
class PyRecordingLearningDenseFixed(_Recording, PyLearningDenseModelBitApproximate):
    pass


def _register(model: type, process: type) -> None:
    """``@implements`` refuses a subclass of a model that implements another Process: the
    inherited claim is cleared first (the stock model keeps implementing the stock Process)."""
    model.implements_process = None
    model.implements_protocol = None
    implements(proc=process, protocol=LoihiProtocol)(model)


_register(PyRecordingLearningDenseFloat, RecordingLearningDense)
_register(PyRecordingLearningDenseFixed, RecordingLearningDense)
