"""``SpikeRecorder``: a sink that writes what it receives each step into a ``.npy`` file.

Why not ``lava.proc.io.sink.RingBuffer``: reading a Var back from a running Lava network sends
it one element per message (lava-nc 0.10.0, ``PyLoihiProcessModel._get_var``), which takes
seconds for the spike trains of one sample. The recorder's model writes each step's vector
into a memory-mapped file the caller created, so reading the spikes back costs nothing.

Ports: ``a_in`` InPort ``(size,)``. Parameters: ``path`` of an existing ``.npy`` file of
shape ``[steps, size]`` (row ``t - 1`` receives step t), ``steps``.
"""

from __future__ import annotations

from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess


class SpikeRecorder(AbstractProcess):
    def __init__(self, *, size: int, steps: int, path: str, name: str | None = None) -> None:
        super().__init__(size=size, steps=steps, path=path, name=name)
        self.a_in = InPort(shape=(size,))
