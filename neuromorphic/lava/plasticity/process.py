"""Processes of on-chip learning (docs/backends.md, "On-chip learning").

``RuleInputs`` feeds a three_factor ``LearningDense`` its y inputs at every step t (the strings
of ``neuromorphic.lava.learning``): y1 = A- d_post y_post[t-1] (the target's post trace before
this step's spike; lava-nc 0.10.0's LearningLIF sends no traces), y3 = d_e, and y2 = lr m: zero
except at the first guard step after each sample, where m is the output error sent back
(``neuromorphic.reward``). It computes m itself from the readout's current, which it receives
beside the readout (so nothing is read from the host), and the sample's label. For a readout
target it also sends the post factor 1 as the bAP at every step.

Ports: ``s_post`` (the target LIF's spikes; unconnected for the readout), ``readout_in`` (the
readout's input current), out: ``y1``, ``y2``, ``y3``, ``bap``.

In fixed point (``fixed``: a ``neuromorphic.fixed_three_factor.FixedRuleInputs``) the model
calls that object's integer ``send`` and ``receive``, the same code ``fixed_ref`` runs: y1 is the
decayed 7-bit post trace, and the signed output error arrives at the second guard step as two
non-negative halves, y2 and y3 (the eligibility decay is a literal of the rule's dt).

``RecordingLearningDense``: the stock LearningDense, plus ``path`` (an ``.npy`` file ``[samples,
synapses]`` the caller created), ``period`` (steps per sample) and ``mask`` (bool, shaped like
the weight): after the last step of every sample the weight of each synapse (row-major over the
mask) is written there. Reading a Var back costs one message per element in lava-nc 0.10.0.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.proc.dense.process import LearningDense


class RuleInputs(AbstractProcess):
    def __init__(self, *, size: int, classes: int, labels: np.ndarray, steps: int, period: int,
                 spiking: bool = True, a_minus: float = 0.0, post_decay: float = 0.0,
                 eligibility_decay: float = 0.0, lr: float = 0.0, feedback: Optional[np.ndarray] = None,
                 readout_bias: Optional[np.ndarray] = None, window: int = 1, fixed: Any = None,
                 name: str | None = None) -> None:
        super().__init__(size=size, classes=classes, spiking=spiking, a_minus=a_minus, post_decay=post_decay,
                         eligibility_decay=eligibility_decay, lr=lr, feedback=feedback, labels=labels,
                         readout_bias=readout_bias, steps=steps, period=period, window=window, fixed=fixed,
                         name=name)
        self.s_post = InPort(shape=(size,))
        self.readout_in = InPort(shape=(classes,))
        self.y1 = OutPort(shape=(size,))
        self.y2 = OutPort(shape=(size,))
        self.y3 = OutPort(shape=(size,))
        self.bap = OutPort(shape=(size,))
        self.post_trace = Var(shape=(size,), init=0.0)


class RecordingLearningDense(LearningDense):
    def __init__(self, *, path: str, period: int, mask: np.ndarray, **kwargs: Any) -> None:
        super().__init__(path=path, period=period, mask=mask, **kwargs)
