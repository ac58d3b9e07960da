"""``Synapses``: many Dense connections in one Lava Process, each with its own ``weight_exp``.

Why not one stock ``lava.proc.dense.process.Dense`` per connection: in lava-nc 0.10.0 every
Process is an OS process that the runtime synchronises at every step, so a network's speed
falls with its number of processes (a 75-process model ran at ~30 steps/s). Stock processes
cannot be merged: ``Dense`` has one ``weight_exp`` and shifts a row's *sum* (merging two
connections into one row would round once instead of twice), its ports cannot read a slice of
a wider vector, and ``concat_with`` is not implemented (``ConcatPort``). This Process holds
every connection as a ``Block`` and does, per block, exactly what ``PyDenseModelBitAcc`` /
``PyDenseModelFloat`` do for that connection alone (tests/neuromorphic/test_lava_run.py feeds
both the same random inputs); a tokenwise weight is applied per token, never as kron(I_N, W).

Ports: ``s_in0 .. s_in{MAX_PORTS-1}`` InPorts and ``a_out0 ..`` OutPorts. A Lava ProcessModel
must declare a type for every port of its Process and no other, so every Process has all
``MAX_PORTS`` of each; the unused ones have shape (1,) and stay unconnected (an unconnected
InPort receives zeros without blocking). ``in_sizes`` / ``out_sizes`` give the used ones.

Timing as ``Dense``: at step t the process sends what it accumulated at t - 1, then receives
(SPEC §2.2: one step of delay), so it may sit on cycles.
"""

# no ``from __future__ import annotations``: Lava executes this file as a module it does not
# register, and a dataclass with string annotations looks its module up
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess

MAX_PORTS = 16  # per direction; more sources or targets need several Synapses processes


@dataclass(frozen=True)
class Block:
    """One connection: ``weight [F_out, F_in]`` applied to each of ``tokens`` tokens of
    ``s_in{source}[source_start : source_start + tokens*F_in]`` (token-major), added to
    ``a_out{target}[target_start : target_start + tokens*F_out]`` ``delay`` steps later. A full
    matrix is one token. ``graded``: the input values are messages (``num_message_bits > 0``),
    otherwise any non-zero value is one spike. ``weight_exp`` / ``num_weight_bits``: fixed point
    only (``weight`` then holds the integer mantissas)."""

    source: int
    source_start: int
    target: int
    target_start: int
    tokens: int
    weight: np.ndarray
    graded: bool = False
    weight_exp: int = 0
    num_weight_bits: int = 8
    name: str = ""
    delay: int = 1  # steps from the input spike to the output current (Lava's Dense: 1)

    @property
    def source_stop(self) -> int:
        return self.source_start + self.tokens * self.weight.shape[1]

    @property
    def target_stop(self) -> int:
        return self.target_start + self.tokens * self.weight.shape[0]


def check_blocks(blocks: Sequence[Block], in_sizes: Sequence[int], out_sizes: Sequence[int]) -> None:
    """ValueError (one line) if a block reads or writes outside its port, or too many ports."""
    if not 1 <= len(in_sizes) <= MAX_PORTS or not 1 <= len(out_sizes) <= MAX_PORTS:
        raise ValueError(f"Synapses takes 1..{MAX_PORTS} input and output ports, got {len(in_sizes)} and "
                         f"{len(out_sizes)}; split the blocks over several Synapses processes")
    for b in blocks:
        if b.weight.ndim != 2 or b.tokens < 1:
            raise ValueError(f"Synapses block {b.name!r} needs a 2-d weight and tokens >= 1")
        if not (0 <= b.source < len(in_sizes) and 0 <= b.source_start and b.source_stop <= in_sizes[b.source]):
            raise ValueError(f"Synapses block {b.name!r} reads outside input port {b.source}")
        if not (0 <= b.target < len(out_sizes) and 0 <= b.target_start and b.target_stop <= out_sizes[b.target]):
            raise ValueError(f"Synapses block {b.name!r} writes outside output port {b.target}")


class Synapses(AbstractProcess):
    """Blocks of Dense synapses between ``in_sizes`` inputs and ``out_sizes`` outputs (module
    docstring); ``fixed`` must match the model run (the blocks' weights are then integers)."""

    def __init__(self, *, blocks: Sequence[Block], in_sizes: Sequence[int], out_sizes: Sequence[int],
                 name: Optional[str] = None) -> None:
        blocks, in_sizes, out_sizes = tuple(blocks), tuple(int(s) for s in in_sizes), tuple(int(s) for s in out_sizes)
        try:
            check_blocks(blocks, in_sizes, out_sizes)
        except ValueError:
            self._runtime = None  # Lava's __del__ calls stop(), which reads it, on this half-built object
            raise
        super().__init__(blocks=blocks, in_sizes=in_sizes, out_sizes=out_sizes, name=name)
        for i in range(MAX_PORTS):
            setattr(self, f"s_in{i}", InPort(shape=(in_sizes[i] if i < len(in_sizes) else 1,)))
            setattr(self, f"a_out{i}", OutPort(shape=(out_sizes[i] if i < len(out_sizes) else 1,)))

    def in_port(self, index: int) -> InPort:
        return getattr(self, f"s_in{index}")

    def out_port(self, index: int) -> OutPort:
        return getattr(self, f"a_out{index}")
