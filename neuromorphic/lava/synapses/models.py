"""ProcessModels of ``Synapses``: ``floating_pt`` (float64) and ``fixed_pt`` (bit-accurate).

Per block, what Lava's Dense models do for that connection alone (lava-nc 0.10.0,
lava/proc/dense/models.py):

    floating_pt   a = W s                       (s: the messages, or 1 per non-zero value)
    fixed_pt      W = truncate_weights(clip_weights(W, sign_mode, 8), sign_mode, num_weight_bits)
                  a = (W s) << weight_exp, or >> -weight_exp (floor)

and each output port sends the sum of its blocks' ``a`` one step later, as Dense does (a block
with ``delay`` d > 1, a skip of ``delays = "aligned"``, d steps later: Lava 0.10's DelayDense
keeps a [F_out, max delay] buffer the same way, but is float only). A tokenwise weight
multiplies the ``[tokens, F_in]`` input grid, which is ``kron(I_N, W) s`` without the N^2 zeros.
The integer products are computed in float64 (BLAS; numpy's integer matmul has none) and cast
back, which is exact while every partial sum stays below 2^53: a block whose largest row of
|W| times the largest message (1 for spikes, 2^31 for an int32 message) could pass that keeps
int64 weights and numpy's integer matmul instead.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

# absolute imports only: Lava executes this file as a top-level module named "models"
from neuromorphic.lava.synapses.process import MAX_PORTS, Synapses
from spikeformer.fixed_point import WEIGHT_BITS, shift

EXACT_FLOAT = 2 ** 53  # integers below this are exact in float64
WIRE_PEAK = 2 ** 31  # the largest |message| an int32 port carries


class _AbstractSynapsesModel(PyLoihiProcessModel):
    """Send the buffered sums, receive the inputs, accumulate every block into its output."""

    out_dtype: type = np.float64

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        prepared = [self.prepare(b) for b in proc_params["blocks"]]
        # by input port: each port's blocks run as soon as it has received (below)
        self.by_source = [[(b, w) for b, w in prepared if b.source == i] for i in range(len(proc_params["in_sizes"]))]
        self.sizes = proc_params["out_sizes"]
        depth = max([b.delay for b, _ in prepared] + [1])
        # pending[k]: the sums each output port sends k + 1 steps from now
        self.pending = [self._empty() for _ in range(depth)]

    def _empty(self) -> list[np.ndarray]:
        return [np.zeros(size, self.out_dtype) for size in self.sizes]

    def prepare(self, block):
        """The block's weight as this model multiplies it (``fixed_pt``: Lava's clipping)."""
        return block, np.asarray(block.weight, np.float64)

    def run_spk(self) -> None:
        for i, buffer in enumerate(self.pending.pop(0)):  # last step's accumulation: the one-step delay
            getattr(self, f"a_out{i}").send(buffer)
        self.pending.append(self._empty())
        # receive port by port (in the order the caller gave, earliest senders first) and work
        # on each port's blocks while later senders are still computing this step
        for i, blocks in enumerate(self.by_source):
            vector = getattr(self, f"s_in{i}").recv()
            for block, weight in blocks:
                s = vector[block.source_start:block.source_stop]
                s = (s if block.graded else s != 0).astype(weight.dtype)
                a = s.reshape(block.tokens, -1) @ weight.T  # [tokens, F_out]: W per token
                slot = self.pending[block.delay - 1][block.target]
                slot[block.target_start:block.target_stop] += self.finish(a.reshape(-1), block)

    def finish(self, a: np.ndarray, block) -> np.ndarray:
        return a


def _declare_ports(model: type, in_type: LavaPyType, out_type: LavaPyType) -> type:
    """Give ``model`` the type of every port of ``Synapses`` (``MAX_PORTS`` each way)."""
    for i in range(MAX_PORTS):
        setattr(model, f"s_in{i}", LavaPyType(in_type.cls, in_type.d_type, precision=in_type.precision))
        setattr(model, f"a_out{i}", LavaPyType(out_type.cls, out_type.d_type, precision=out_type.precision))
    return model


@implements(proc=Synapses, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySynapsesModelFloat(_AbstractSynapsesModel):
    """float64, as ``PyDenseModelFloat`` per block."""


@implements(proc=Synapses, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySynapsesModelFixed(_AbstractSynapsesModel):
    """Integer, as ``PyDenseModelBitAcc`` per block."""

    out_dtype = np.int64

    def prepare(self, block):
        weight = np.asarray(block.weight, np.int64)
        sign_mode = determine_sign_mode(weight)  # of W: kron(I_N, W) only adds zeros, same mode
        weight = clip_weights(weight, sign_mode, num_bits=WEIGHT_BITS)
        weight = truncate_weights(weight, sign_mode, int(block.num_weight_bits))
        peak = int(np.abs(weight).sum(1).max(initial=0)) * (WIRE_PEAK if block.graded else 1)
        return block, weight if peak >= EXACT_FLOAT else np.asarray(weight, np.float64)

    def finish(self, a: np.ndarray, block) -> np.ndarray:
        return shift(a.astype(np.int64), int(block.weight_exp))


_declare_ports(PySynapsesModelFloat, LavaPyType(PyInPort.VEC_DENSE, float), LavaPyType(PyOutPort.VEC_DENSE, float))
_declare_ports(PySynapsesModelFixed, LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24),
               LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32))
