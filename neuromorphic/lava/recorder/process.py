"""``SpikeRecorder``: a sink that writes what each of its ports receives each step into a ``.npy`` file.

Why not ``lava.proc.io.sink.RingBuffer``: reading a Var back from a running Lava network sends
it one element per message (lava-nc 0.10.0, ``PyLoihiProcessModel._get_var``), which takes
seconds for the spike trains of one sample. The recorder's model writes each step's vector
into a memory-mapped file the caller created, so reading the spikes back costs nothing.
One recorder takes up to ``MAX_PORTS`` vectors (one Lava process per recorder: in lava-nc
0.10.0 every process costs time at every step).

Ports: ``a_in0 .. a_in{MAX_PORTS-1}`` InPorts; port i of the ``sizes`` given has shape
``(sizes[i],)`` and writes ``paths[i]``, an existing ``.npy`` file of shape ``[steps, sizes[i]]``
(row ``t - 1`` receives step t, cast to the file's dtype). A Lava ProcessModel must declare a
type for every port of its Process and no other, so the unused ports exist with shape (1,),
unconnected and never read.
"""

from __future__ import annotations

from typing import Sequence

from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess

MAX_PORTS = 16


class SpikeRecorder(AbstractProcess):
    def __init__(self, *, sizes: Sequence[int], steps: int, paths: Sequence[str], name: str | None = None) -> None:
        sizes, paths = tuple(int(s) for s in sizes), tuple(str(p) for p in paths)
        if not 1 <= len(sizes) <= MAX_PORTS or len(paths) != len(sizes):
            self._runtime = None  # Lava's __del__ calls stop(), which reads it, on this half-built object
            raise ValueError(f"SpikeRecorder takes 1..{MAX_PORTS} sizes and as many paths, got {len(sizes)} "
                             f"and {len(paths)}")
        super().__init__(sizes=sizes, steps=steps, paths=paths, name=name)
        for i in range(MAX_PORTS):
            setattr(self, f"a_in{i}", InPort(shape=(sizes[i] if i < len(sizes) else 1,)))

    def in_port(self, index: int) -> InPort:
        return getattr(self, f"a_in{index}")
