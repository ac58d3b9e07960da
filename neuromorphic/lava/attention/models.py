"""ProcessModels of ``SpikingAttention``: ``floating_pt`` (float64) and ``fixed_pt`` (int64).

Both receive q, k, v (and the gate spikes m) in ``run_spk``, update the state and send the
read ``a = out_scale * scale * q S`` in the SAME step: unlike ``Dense`` there is no buffered
output, so the target LIF integrates this step's attention current this step (the IR's
same-step attention edge). This is safe because the process never sits on a cycle of
same-step edges (its inputs come from LIF spikes, its output goes into a LIF's ``a_in``).

Equations: ``floating_pt`` = ``neuromorphic.simulate.attention_step_float`` (to rounding),
``fixed_pt`` = ``neuromorphic.fixed_ref.attention_step_fixed`` bit for bit (its docstring
lists the integer equations; ``decay12``/``mul12`` are imported from there).

Event-driven, per step (``np.nonzero`` index lists of active neurons, no dense einsums):

    hebbian       S[h, i, j] += 1 (one) for each coincidence k_n[h, i] v_n[h, j]
    stdp          potentiation adds the key trace x_n[h, :] to the COLUMN j of each spiking value
                  v_n[h, j]; depression subtracts the (earlier) value trace y_n[h, :] from the
                  ROW i of each spiking key k_n[h, i]; traces gain one at their spiking neurons
    three_factor  e[h, i, j] += 1 per coincidence; only heads whose gate fired (m > 0) add m e
    delta         only rows of active keys: recall k_n D, then S[h, i, :] += rate * error
    read          only rows of active queries: a_n[h, :] = sum_{i: q_n[h, i]} S[h, i, :]

Cost is proportional to the spike counts, except the DECAYS: S, e and the traces are
multiplied by their decay (``decay12`` in fixed point) every step, an O(H d^2 + N H d)
state update as the equations require (a Loihi compartment's decay is also a per-step state
update). A lazy decay (lambda^(t - t_last) applied when a row is touched) would be exact in
float but not in fixed point, where repeated ``decay12`` is not one power, so it is not used.

Sums over tokens that the equations take before a rounding step (``mul12`` of
``sum_n x_n^T v_n``, ...) are accumulated per touched cell first, then rounded, so the
integer result equals the reference's. Saturation clips only touched cells: decays never
increase a magnitude, so untouched cells cannot leave the ``state_bits`` range.
"""

from __future__ import annotations

import sys

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

# absolute imports only: Lava executes this file as a top-level module named "models"
from neuromorphic.lava.attention.process import SpikingAttention
from spikeformer.fixed_point import WIRE_MAX, decay12, mul12  # WIRE_MAX: a_out is int32 on the channel


# ---------------------------------------------------------------------------------------------
# event helpers: index lists of active neurons -> touched cells and their summed contributions


def coincidences(k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (h, i, j) with ``k[n, h, i]`` and ``v[n, h, j]`` for some token n, once per token.

    ``k, v``: bool ``[N, H, d]``. Cost is proportional to the number of coincidences: active
    keys are joined with the active values of the same (token, head) through index lists.
    """
    heads = k.shape[1]
    kn, kh, ki = np.nonzero(k)  # C order: sorted by group (n, h)
    vn, vh, vj = np.nonzero(v)
    groups = k.shape[0] * heads
    v_count = np.bincount(vn * heads + vh, minlength=groups)  # active values per (n, h)
    v_start = np.cumsum(v_count) - v_count
    reps = v_count[kn * heads + kh]  # partners of each active key
    key = np.repeat(np.arange(kn.size), reps)
    offset = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    val = v_start[(kn * heads + kh)[key]] + offset
    return kh[key], ki[key], vj[val]


def scatter_sum(cells: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``values`` that land on the same flat ``cells``; zero contributions are dropped.

    Returns the touched cells (sorted, unique) and their sums, in ``values``' dtype.
    """
    cells, values = cells.reshape(-1), values.reshape(-1)
    keep = values != 0
    cells, values = cells[keep], values[keep]
    touched, where = np.unique(cells, return_inverse=True)
    sums = np.zeros(touched.size, values.dtype)
    np.add.at(sums, where, values)
    return touched, sums


def row_cells(h: np.ndarray, i: np.ndarray, dim: int) -> np.ndarray:
    """Flat indices ``[E, d]`` of the rows ``S[h, i, :]`` of a ``[H, d, d]`` matrix."""
    return ((h * dim + i) * dim)[:, None] + np.arange(dim)[None, :]


def column_cells(h: np.ndarray, j: np.ndarray, dim: int) -> np.ndarray:
    """Flat indices ``[E, d]`` of the columns ``S[h, :, j]`` of a ``[H, d, d]`` matrix."""
    return (h * dim * dim + j)[:, None] + (np.arange(dim) * dim)[None, :]


def group_rows(n: np.ndarray, h: np.ndarray, i: np.ndarray, matrix: np.ndarray, heads: int):
    """``sum_{i active} matrix[h, i, :]`` per active (token, head) group (the read x S).

    Returns the groups' tokens, heads, the row sums ``[G, d]``, the group of each active
    neuron and the number of active neurons per group.
    """
    groups, where = np.unique(n * heads + h, return_inverse=True)
    sums = np.zeros((groups.size, matrix.shape[-1]), matrix.dtype)
    np.add.at(sums, where, matrix[h, i, :])
    return groups // heads, groups % heads, sums, where, np.bincount(where, minlength=groups.size)


# ---------------------------------------------------------------------------------------------
# shared run_spk


class AbstractPySpikingAttentionModel(PyLoihiProcessModel):
    """Receive spikes, reset the state if this is a reset step, update it (``update_<variant>``),
    send the read; all in one step."""

    q_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool, precision=1)
    k_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool, precision=1)
    v_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool, precision=1)
    m_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool, precision=1)
    saturation: np.ndarray = LavaPyType(np.ndarray, np.int64)
    synops: np.ndarray = LavaPyType(np.ndarray, np.int64)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.tokens = int(proc_params["tokens"])
        self.heads = int(proc_params["heads"])
        self.dim = int(proc_params["head_dim"])
        self.variant = proc_params["variant"]
        self.update = getattr(self, f"update_{self.variant}")
        self.reset_interval = int(proc_params["reset_interval"])  # 0: never
        self.reset_offset = int(proc_params["reset_offset"])
        self.layout = proc_params["layout"]  # port -> (size, offset): ports on wider vectors

    def _spikes(self, name: str, width: int) -> np.ndarray:
        """This node's part of the vector received on port ``name`` as bool ``[N, H, width]``
        (non-zero = spike)."""
        offset = self.layout[name][1]
        part = getattr(self, name).recv()[offset:offset + self.tokens * self.heads * width]
        return (part != 0).reshape(self.tokens, self.heads, width)

    def run_spk(self) -> None:
        q = self._spikes("q_in", self.dim)  # [N, H, d]
        k = self._spikes("k_in", self.dim)
        v = self._spikes("v_in", self.dim)
        m = self._spikes("m_in", 1)[..., 0]  # [N, H]
        if self.time_step == 1 and self.variant == "three_factor" and not self.m_in.csp_ports:
            self._warn_no_gate()
        if self.reset_interval and self.time_step % self.reset_interval == self.reset_offset:
            self.reset()
        self.synops[0] += self.update(k, v, m)  # each update returns the operations it issued
        size, offset = self.layout["a_out"]
        out = self.read(q)
        if out.size != size:  # this node's neurons inside a wider target vector
            out = np.concatenate([np.zeros(offset, out.dtype), out, np.zeros(size - offset - out.size, out.dtype)])
        self.a_out.send(out)

    def reset(self) -> None:
        """Zero the state in place before this step's update (as ``LIFReset`` zeroes u and v)."""
        for state in (self.memory, self.pre_trace, self.post_trace, self.eligibility):
            state[:] = 0

    def _warn_no_gate(self) -> None:
        """An unconnected InPort receives zeros (Lava sums over no channels), so the gate would
        be 0 forever. Printed, not raised: an exception in run_spk makes Lava 0.10's runtime raise
        a bare RuntimeError and its stop() then blocks forever; Lava's log console shows only errors."""
        print(f"warning: SpikingAttention {self.proc_params.get('name')!r} (three_factor) has no gate "
              "connected to m_in: its modulator is 0 and its state never grows; connect the gate "
              "spikes to m_in", file=sys.stderr, flush=True)

    def read(self, q: np.ndarray) -> np.ndarray:
        """``[N*H*d]`` output: rows of active queries only; silent tokens/heads send 0."""
        n, h, i = np.nonzero(q)
        self.synops[0] += n.size * self.dim  # a row of S per active query
        gn, gh, rows, _, _ = group_rows(n, h, i, self.memory, self.heads)  # q_n S: [G, d]
        cols = (gh * self.dim)[:, None] + np.arange(self.dim)  # output column h*d + j: [G, d]
        out = np.zeros((self.tokens, self.heads * self.dim), self.out_dtype)
        out[gn[:, None], cols] = self.scale_read(rows, cols)
        return out.reshape(-1)


# ---------------------------------------------------------------------------------------------
# floating point


@implements(proc=SpikingAttention, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikingAttentionModelFloat(AbstractPySpikingAttentionModel):
    """float64 model, equal to ``neuromorphic.simulate.attention_step_float`` to rounding."""

    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    memory: np.ndarray = LavaPyType(np.ndarray, float)
    pre_trace: np.ndarray = LavaPyType(np.ndarray, float)
    post_trace: np.ndarray = LavaPyType(np.ndarray, float)
    eligibility: np.ndarray = LavaPyType(np.ndarray, float)
    out_dtype = np.float64

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self.lam = np.asarray(proc_params["decay"], np.float64)[:, None, None]  # [H, 1, 1]
        self.scale = float(proc_params["scale"])
        self.out_scale = np.asarray(proc_params["out_scale"], np.float64)
        self.p = {name: np.asarray(x, np.float64) for name, x in proc_params["plasticity"].items()}

    def scale_read(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.scale * rows * self.out_scale[cols]

    def _add(self, cells: np.ndarray, sums: np.ndarray, rate: np.ndarray | None = None) -> None:
        flat = self.memory.reshape(-1)  # a view: memory is C-contiguous
        flat[cells] += sums if rate is None else rate[cells // (self.dim * self.dim)] * sums

    def update_hebbian(self, k, v, m) -> None:
        self.memory *= self.lam
        h, i, j = coincidences(k, v)
        cells, counts = np.unique((h * self.dim + i) * self.dim + j, return_counts=True)
        self._add(cells, counts.astype(np.float64))
        return h.size  # one per coincidence

    def update_stdp(self, k, v, m) -> None:
        d = self.dim
        self.pre_trace *= self.p["pre_decay"][None, :, None]
        self.pre_trace[k] += 1.0  # the pre trace includes this step's key
        vn, vh, vj = np.nonzero(v)  # potentiation: columns of spiking values
        pot = scatter_sum(column_cells(vh, vj, d), self.pre_trace[vn, vh, :])
        self.post_trace *= self.p["post_decay"][None, :, None]  # decayed to this step before use
        kn, kh, ki = np.nonzero(k)  # depression: rows of spiking keys, earlier value spikes' trace
        dep = scatter_sum(row_cells(kh, ki, d), self.post_trace[kn, kh, :])
        self.memory *= self.lam
        self._add(*pot, self.p["a_plus"])
        self._add(dep[0], -dep[1], self.p["a_minus"])
        self.post_trace[v] += 1.0  # this step's values, after the depression read the trace
        return (vn.size + kn.size) * d  # a trace column per value spike, a trace row per key spike

    def update_three_factor(self, k, v, m) -> None:
        d = self.dim
        self.eligibility *= self.p["eligibility_decay"][:, None, None]
        h, i, j = coincidences(k, v)
        cells, counts = np.unique((h * d + i) * d + j, return_counts=True)
        self.eligibility.reshape(-1)[cells] += counts
        self.memory *= self.lam
        gate = m.sum(0) / self.tokens  # [H]: mean gate spike over tokens
        heads = np.nonzero(gate)[0]
        for head in heads:  # only heads whose gate fired
            self.memory[head] += gate[head] * self.eligibility[head]
        return h.size + heads.size * d * d  # coincidences into e, then m e over each gated head

    def update_delta(self, k, v, m) -> None:
        self.memory *= self.lam  # D: recall reads the decayed state
        kn, kh, ki = np.nonzero(k)
        gn, gh, recall, where, count = group_rows(kn, kh, ki, self.memory, self.heads)  # k_n D
        error = (v[gn, gh, :] - recall) / count[:, None]  # [G, d]
        cells, sums = scatter_sum(row_cells(kh, ki, self.dim), error[where])  # rows of active keys
        self._add(cells, sums, self.p["delta_rate"])
        return 2 * kn.size * self.dim  # the recall reads and the write of a row per active key


# ---------------------------------------------------------------------------------------------
# fixed point


@implements(proc=SpikingAttention, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikingAttentionModelFixed(AbstractPySpikingAttentionModel):
    """int64 model, bit-identical to ``neuromorphic.fixed_ref.attention_step_fixed``."""

    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)
    memory: np.ndarray = LavaPyType(np.ndarray, np.int64)
    pre_trace: np.ndarray = LavaPyType(np.ndarray, np.int64)
    post_trace: np.ndarray = LavaPyType(np.ndarray, np.int64)
    eligibility: np.ndarray = LavaPyType(np.ndarray, np.int64)
    out_dtype = np.int64

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        f = proc_params["fixed"]
        if f is None:
            raise ValueError(f"SpikingAttention {proc_params.get('name')!r} has no fixed-point parameters; "
                             "build it with fixed=att.fixed from neuromorphic.quantize to run fixed_pt")
        self.f = f
        self.one = int(f["one"])
        self.limit = 2 ** (int(f["state_bits"]) - 1) - 1
        self.trace_limit = 2 ** (int(f.get("trace_bits", f["state_bits"])) - 1) - 1

    def scale_read(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        prod = rows * self.f["out_mant"][cols]
        out = np.sign(prod) * (np.abs(prod) >> self.f["out_shift"])
        wire = np.clip(out, -WIRE_MAX, WIRE_MAX)  # never silent: a clipped output is counted
        self.saturation[0] += int((wire != out).sum())
        return wire

    def _saturate(self, matrix: np.ndarray, cells: np.ndarray, limit: int | None = None) -> None:
        """Clip the touched ``cells`` of ``matrix`` to ``state_bits`` (or ``limit``) and count them."""
        limit = self.limit if limit is None else limit
        flat = matrix.reshape(-1)
        values = flat[cells]
        clipped = np.clip(values, -limit, limit)
        self.saturation[0] += int((clipped != values).sum())
        flat[cells] = clipped

    def _add(self, cells: np.ndarray, sums: np.ndarray, rate: np.ndarray) -> None:
        """``S[cells] += mul12(sums, rate of the cell's head)``."""
        self.memory.reshape(-1)[cells] += mul12(sums, rate[cells // (self.dim * self.dim)])

    def _decay_memory(self) -> None:
        self.memory[:] = decay12(self.memory, self.f["decay"][:, None, None])

    def update_hebbian(self, k, v, m) -> None:
        self._decay_memory()
        h, i, j = coincidences(k, v)
        cells, counts = np.unique((h * self.dim + i) * self.dim + j, return_counts=True)
        self.memory.reshape(-1)[cells] += self.one * counts
        self._saturate(self.memory, cells)
        return h.size

    def update_stdp(self, k, v, m) -> None:
        d, f = self.dim, self.f
        self.pre_trace[:] = decay12(self.pre_trace, f["pre_decay"][None, :, None])
        self.pre_trace[k] += self.one
        self._saturate(self.pre_trace, np.flatnonzero(k), self.trace_limit)  # decays never grow a trace
        vn, vh, vj = np.nonzero(v)
        pot_cells, pot = scatter_sum(column_cells(vh, vj, d), self.pre_trace[vn, vh, :])
        self.post_trace[:] = decay12(self.post_trace, f["post_decay"][None, :, None])  # decayed before use
        kn, kh, ki = np.nonzero(k)
        dep_cells, dep = scatter_sum(row_cells(kh, ki, d), self.post_trace[kn, kh, :])
        self._decay_memory()
        self._add(pot_cells, pot, f["a_plus"])
        self._add(dep_cells, -dep, f["a_minus"])  # mul12 is odd: -mul12(x, r) == mul12(-x, r)
        self._saturate(self.memory, np.union1d(pot_cells, dep_cells))
        self.post_trace[v] += self.one
        self._saturate(self.post_trace, np.flatnonzero(v), self.trace_limit)
        return (vn.size + kn.size) * d

    def update_three_factor(self, k, v, m) -> None:
        d, f = self.dim, self.f
        self.eligibility[:] = decay12(self.eligibility, f["eligibility_decay"][:, None, None])
        h, i, j = coincidences(k, v)
        cells, counts = np.unique((h * d + i) * d + j, return_counts=True)
        self.eligibility.reshape(-1)[cells] += self.one * counts
        self._saturate(self.eligibility, cells)
        self._decay_memory()
        m12 = (4096 * m.sum(0).astype(np.int64)) // self.tokens  # [H]: fraction of gates firing
        heads = np.nonzero(m.sum(0))[0]
        for head in heads:  # only heads whose gate fired
            self.memory[head] += mul12(self.eligibility[head], m12[head])
            head_cells = head * d * d + np.arange(d * d)
            self._saturate(self.memory, head_cells)
        return h.size + heads.size * d * d

    def update_delta(self, k, v, m) -> None:
        self._decay_memory()  # D
        kn, kh, ki = np.nonzero(k)
        gn, gh, recall, where, count = group_rows(kn, kh, ki, self.memory, self.heads)  # k_n D
        error = self.one * v[gn, gh, :].astype(np.int64) - recall
        error = np.sign(error) * (np.abs(error) // count[:, None])  # trunc toward zero
        cells, sums = scatter_sum(row_cells(kh, ki, self.dim), error[where])
        self._add(cells, sums, self.f["delta_rate"])
        self._saturate(self.memory, cells)
        return 2 * kn.size * self.dim
