"""Vectorised integer reference of the fixed-point network (SPEC §2.4), a whole batch at once.

These are the equations of Lava's bit-accurate models (``PyLifModelBitAcc``,
``PyDenseModelBitAcc``, lava-nc 0.10.0) plus the project's integer spiking attention; the
Lava fixed-point run is tested against this module bit for bit. All arithmetic is int64 (matrix
products run in float64 BLAS where provably exact: "Speed" below).

    decay12(x, d)  = sign(x (4096 - d)) * (|x (4096 - d)| >> 12)     # Lava's sign-magnitude decay
    mul12(x, r)    = sign(x r) * (|x r| >> 12)                        # a 12-bit fraction r / 4096
    Dense          a = (W @ s) << weight_exp   (>> -weight_exp, i.e. floor, when negative)
    LIF            u = decay12(u, du + 1) + (a << 6), wrapped to 24 bits
                   v = clip(decay12(v, dv) + u + (bias_mant << bias_exp), +-(2^23 - 1))
                   s = v > (vth << 6);  v[s] = 0
    readout        the same LIF with dv = 0 that never fires: its v integrates the current

Spiking attention, per head, integer state with ``state_bits`` (saturating, counted); one
coincidence adds ``one`` = 2^frac_bits to S; rates are 12-bit fractions (``mul12``), decays
12-bit decrements (``decay12``):

    hebbian       S = sat(decay12(S, d_lambda) + one * sum_n k_n^T v_n)
    stdp          x = sat(decay12(x, d_pre) + one k) ;  dS = mul12(sum x^T v, A+) - mul12(sum k^T y, A-)
                  S = sat(decay12(S, d_lambda) + dS) ;  y = sat(decay12(y, d_post) + one v)
                  (traces saturate at ``trace_bits``, counted like the state)
    three_factor  e = sat(decay12(e, d_elig) + one * sum k^T v) ;  m = (4096 * gate count) // N
                  S = sat(decay12(S, d_lambda) + mul12(e, m))
    delta         D = decay12(S, d_lambda) ;  err_n = trunc((one v_n - k_n D) / max(1, |k_n|))
                  S = sat(D + mul12(sum_n k_n^T err_n, rate))
    read          a = sign(q S * out_mant) * (|q S * out_mant| >> out_shift)   (graded, per column)

Overflow is never silent: ``FixedOps.saturation_events`` counts clipped attention cells,
clipped membranes and wrapped currents.

Speed: every matrix product (Dense, and the attention's sums over tokens and head dimensions)
runs through float64 BLAS where a bound proves each partial sum below 2^53 in magnitude:
float64 holds every such integer exactly, so the result is the int64 one bit for bit
(``exact_matmul``). The bound is max |a| * max |b| * the inner length: for a Dense, max |w| *
fan-in * 2^max(weight_exp, 0) once per connection (``DensePlan``) times the source's largest
message (spikes: 1, the input: its peak over the run, once per run); for attention, spikes
times the declared ``state_bits``/``trace_bits``. Where it fails, the product stays int64.

Online STDP (``learn_online_fixed``): each plastic connection is a ``fixed_learning.
FixedLearningDense`` (Lava's fixed-point learning engine, integer for integer) whose
activation replaces the connection's Dense, stepped in Lava's order and with Lava's guard
steps between samples (``neuromorphic.lava.run``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .ir import Attention, Connection, Graph, IRError, Population
from .simulate import run_graph, split_heads
from .trace import Trace

# the arithmetic itself is spikeformer.fixed_point's (one definition for export, qat and Lava)
from spikeformer.fixed_point import (ACT_SHIFT, DECAY_SHIFT, UV_BITS, decay12, mul12,  # noqa: F401 (public)
                                     DECAY_UNITY, saturate, shift, shift_array)


EXACT_FLOAT_LIMIT = 2 ** 53  # float64 holds every integer of smaller magnitude exactly
FLOAT_EXP_MIN = -1022  # 2^e * (integer below 2^53) stays exactly representable down to here


def peak_abs(x: np.ndarray) -> int:
    """``max |x|`` as a Python int (no int64 overflow at -2^63); 0 for an empty array."""
    x = np.asarray(x)
    if x.size == 0:
        return 0
    return max(int(x.max()), -int(x.min()))


def message_peak(x: np.ndarray) -> int:
    """The largest |value| of a message: 1 for spikes (bool, no pass over the data), else ``peak_abs``."""
    return 1 if np.asarray(x).dtype == np.bool_ else peak_abs(x)


def exact_matmul(a: np.ndarray, b: np.ndarray, bound: int, blas: bool = True) -> np.ndarray:
    """``a @ b`` (numpy broadcasting) of integer or bool arrays, as int64.

    ``bound`` must bound every |partial sum| (max |a| * max |b| * the inner length does). Below
    2^53 the product runs in float64 BLAS: every operand and partial sum is an integer float64
    represents exactly, in any summation order, so the result equals the int64 one bit for bit.
    Otherwise (or with ``blas=False``) it runs in int64."""
    if blas and bound < EXACT_FLOAT_LIMIT:
        return np.matmul(a, b, dtype=np.float64).astype(np.int64)
    return np.matmul(np.asarray(a, np.int64), np.asarray(b, np.int64))


@dataclass(frozen=True, eq=False)  # eq=False: holds arrays
class DensePlan:
    """One connection's Dense, prepared once: ``a = (W @ s) << weight_exp`` (floor ``>>`` when negative).

    ``unit_bound`` bounds every |partial sum| of ``(W @ s) 2^max(exp, 0)`` per unit of input
    magnitude (max |w| * fan-in * 2^max(exp, 0)); ``scaled`` = ``(W 2^exp)^T [F_in, F_out]`` in
    float64, None where even spikes could pass 2^53 (then only the int64 path is left).
    ``weight`` is the array the plan was made from: learning replaces it, then plan again."""

    weight: np.ndarray
    kind: str
    exp: int
    w_int: np.ndarray  # int64 [F_out, F_in]
    unit_bound: int
    scaled: Optional[np.ndarray]

    def exact(self, input_peak: int) -> bool:
        """Whether inputs with |s| <= ``input_peak`` keep every sum below 2^53 (the BLAS path is exact)."""
        return self.scaled is not None and self.unit_bound * input_peak < EXACT_FLOAT_LIMIT


def plan_dense(conn: Connection) -> DensePlan:
    """The int64 weights, the bound and (where the bound allows) the float64 weights of ``conn``."""
    w = conn.weight.astype(np.int64)
    exp = int(conn.weight_exp)
    unit_bound = (peak_abs(w) * w.shape[1]) << max(exp, 0)  # Python ints: no overflow
    scaled = None
    if unit_bound < EXACT_FLOAT_LIMIT and exp >= FLOAT_EXP_MIN:
        # 2^exp folded into the weights: exact (a power of two), and for exp < 0 floor() below is the >>
        scaled = np.ascontiguousarray((w * 2.0 ** exp).T)
    return DensePlan(conn.weight, conn.kind, exp, w, unit_bound, scaled)


def dense_planned(plan: DensePlan, spikes: np.ndarray, input_peak: int, tokens_out: int,
                  blas: bool = True) -> np.ndarray:
    """``[B, N_in, F_in]`` messages with |s| <= ``input_peak`` -> ``[B, N_out, F_out]`` a_in."""
    b = spikes.shape[0]
    flat = spikes if plan.kind == "tokenwise" else spikes.reshape(b, -1)  # full: [B, N_in*F_in]
    if flat.dtype.kind == "f":  # float messages: truncated to int64 first, as the int64 path does
        flat = flat.astype(np.int64)
    if blas and plan.exact(input_peak):
        acc = np.matmul(flat, plan.scaled, dtype=np.float64)
        if plan.exp < 0:
            np.floor(acc, out=acc)  # Lava's >> -exp rounds toward -inf
        out = acc.astype(np.int64)
    else:
        out = shift(np.asarray(flat, np.int64) @ plan.w_int.T, plan.exp)
    return out if plan.kind == "tokenwise" else out.reshape(b, tokens_out, -1)  # [B, N_out, F_out]


def dense_fixed(conn: Connection, spikes: np.ndarray, tokens_out: int, blas: bool = True) -> np.ndarray:
    """``[B, N_in, F_in]`` integer spikes or graded values -> ``[B, N_out, F_out]`` a_in
    (BLAS where exact, see ``exact_matmul``; ``blas=False``: int64 throughout)."""
    return dense_planned(plan_dense(conn), spikes, message_peak(spikes), tokens_out, blas)


def effective_bias(pop: Population) -> np.ndarray:
    """``bias_mant << bias_exp`` (``>>`` for negative exponents), as ``scale_bias`` in Lava."""
    return shift_array(pop.bias_mant, pop.bias_exp)


class FixedOps:
    """Integer arithmetic of SPEC §2.4 for ``neuromorphic.simulate.run_graph``.

    ``blas=False`` runs every product in int64 (the path the BLAS one is tested against)."""

    def __init__(self, blas: bool = True) -> None:
        self.saturation_events = 0
        self.limit = 2 ** (UV_BITS - 1)
        self.blas = blas
        self.input_peaks: dict[str, int] = {}  # population -> its largest graded message this run
        self.plans: dict[str, DensePlan] = {}  # connection -> its Dense, prepared on first use
        self._biases: dict[str, tuple[Any, Any, np.ndarray]] = {}

    def prepare(self, graph: Graph, x_steps: np.ndarray) -> None:
        """Once per run: the input's largest |message|, so no step has to look for it."""
        self.input_peaks = {graph.input.name: peak_abs(x_steps)}

    def zeros(self, shape: tuple) -> np.ndarray:
        return np.zeros(shape, np.int64)

    def dense(self, conn: Connection, spikes: np.ndarray, target: Population) -> np.ndarray:
        plan = self.plans.get(conn.name)
        if plan is None or plan.weight is not conn.weight:  # first use, or learning replaced the weights
            plan = self.plans[conn.name] = plan_dense(conn)
        if spikes.dtype == np.bool_:
            peak = 1
        elif conn.source in self.input_peaks:
            peak = self.input_peaks[conn.source]
        else:  # a LIF's zeros before its first step (or an unprepared run): look
            peak = peak_abs(spikes)
        return dense_planned(plan, spikes, peak, target.tokens, self.blas)

    def _bias(self, pop: Population) -> np.ndarray:
        """``effective_bias(pop)``, computed once per population (again if its arrays are replaced)."""
        cached = self._biases.get(pop.name)
        if cached is None or cached[0] is not pop.bias_mant or cached[1] is not pop.bias_exp:
            cached = self._biases[pop.name] = (pop.bias_mant, pop.bias_exp, effective_bias(pop))
        return cached[2]

    def _subthreshold(self, pop: Population, a_in: np.ndarray, state: Any) -> tuple[np.ndarray, np.ndarray]:
        u, v = state if state is not None else (np.zeros_like(a_in), np.zeros_like(a_in))
        drive = np.left_shift(np.asarray(a_in, np.int64), ACT_SHIFT)
        # du = 4095 (alpha = 0): decay12 keeps nothing of u, so skip its multiply
        u = drive if np.all(pop.du + 1 == DECAY_UNITY) else decay12(u, pop.du + 1) + drive
        if u.size and (u.max() > self.limit or u.min() <= -self.limit):  # else nothing wraps: skip the copies
            wrapped = np.where(u > self.limit, u - 2 * self.limit, u)
            wrapped = np.where(wrapped <= -self.limit, u + 2 * self.limit, wrapped)  # Lava's wrap, as written
            self.saturation_events += int((wrapped != u).sum())
            u = wrapped
        v = decay12(v, pop.dv) + u + self._bias(pop)
        if v.size and (v.max() > self.limit - 1 or v.min() < -self.limit + 1):
            clipped = np.clip(v, -self.limit + 1, self.limit - 1)
            self.saturation_events += int((clipped != v).sum())
            v = clipped
        return u, v

    def lif(self, pop: Population, current: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        u, v = self._subthreshold(pop, current, state)
        s = v > (np.int64(pop.vth) << ACT_SHIFT)
        v = np.where(s, 0, v)
        return s, (u, v)

    def readout(self, pop: Population, current: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """The integrator's increment this step (v[t] - v[t-1]), so ``Trace.logits`` means the same."""
        previous = state[1] if state is not None else np.zeros_like(current)
        u, v = self._subthreshold(pop, current, state)
        return v - previous, (u, v)

    def attention(self, att: Attention, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  m: Optional[np.ndarray], state: Any) -> tuple[np.ndarray, Any]:
        out, state, clipped = attention_step_fixed(att, q, k, v, m, state, self.blas)
        self.saturation_events += clipped
        return out, state


def attention_initial_state_fixed(att: Attention, batch: int, tokens: int) -> dict[str, np.ndarray]:
    h, d = att.heads, att.head_dim
    state = {"memory": np.zeros((batch, h, d, d), np.int64)}
    if att.variant == "stdp":
        state["pre_trace"] = np.zeros((batch, tokens, h, d), np.int64)
        state["post_trace"] = np.zeros((batch, tokens, h, d), np.int64)
    if att.variant == "three_factor":
        state["eligibility"] = np.zeros((batch, h, d, d), np.int64)
    return state


def token_outer_sum(a: np.ndarray, b: np.ndarray, peak_a: int, peak_b: int, blas: bool = True) -> np.ndarray:
    """``sum_n a_n^T b_n`` per head: ``[B, N, H, d] x [B, N, H, d] -> [B, H, d, d]`` (int64),
    for |a| <= ``peak_a``, |b| <= ``peak_b`` (bound: peak_a peak_b N, see ``exact_matmul``)."""
    a_t = a.transpose(0, 2, 3, 1)  # [B, H, d, N]
    b_t = b.transpose(0, 2, 1, 3)  # [B, H, N, d]
    return exact_matmul(a_t, b_t, peak_a * peak_b * a.shape[1], blas)


def head_read(a: np.ndarray, memory: np.ndarray, peak_a: int, peak_memory: int, blas: bool = True) -> np.ndarray:
    """``a_n S`` per token and head: ``[B, N, H, d] x [B, H, d, d] -> [B, N, H, d]`` (int64),
    for |a| <= ``peak_a``, |S| <= ``peak_memory`` (bound: peak_a peak_memory d)."""
    out = exact_matmul(a.transpose(0, 2, 1, 3), memory, peak_a * peak_memory * a.shape[-1], blas)  # [B, H, N, d]
    return out.transpose(0, 2, 1, 3)  # [B, N, H, d]


def attention_step_fixed(att: Attention, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                         m: Optional[np.ndarray], state: Optional[dict],
                         blas: bool = True) -> tuple[np.ndarray, dict, int]:
    """One integer step (module docstring): spikes ``[B, N, H*d]`` -> a_in ``[B, N, H*d]``,
    new state, number of saturated cells. ``m``: gate spikes ``[B, N, H]`` (three_factor).
    ``state``: None or this function's previous result, whose memory and traces are saturated
    to ``state_bits``/``trace_bits``: the products' bounds rest on those widths (``blas=False``:
    every product in int64)."""
    f = att.fixed
    h = att.heads
    one, bits = int(f["one"]), int(f["state_bits"])
    pq, pk, pv = (message_peak(x) for x in (q, k, v))  # spikes: 1, without a pass over them
    q, k, v = (split_heads(np.asarray(x, np.int64), h) for x in (q, k, v))  # [B, N, H, d]
    state = dict(state) if state is not None else attention_initial_state_fixed(att, q.shape[0], q.shape[1])
    per_head = lambda x: np.asarray(x, np.int64).reshape(1, h, 1, 1)  # noqa: E731
    per_token_head = lambda x: np.asarray(x, np.int64).reshape(1, 1, h, 1)  # noqa: E731
    state_peak = 2 ** (bits - 1) - 1  # saturate()'s limit; decays only shrink it
    memory = decay12(state["memory"], per_head(f["decay"]))
    clipped = 0
    if att.variant == "hebbian":
        memory = memory + one * token_outer_sum(k, v, pk, pv, blas)
    elif att.variant == "stdp":
        trace_bits = int(f.get("trace_bits", bits))  # IR files written before trace_bits: the state's width
        trace_peak = 2 ** (trace_bits - 1) - 1
        pre, c = saturate(decay12(state["pre_trace"], per_token_head(f["pre_decay"])) + one * k, trace_bits)
        clipped += c
        post = decay12(state["post_trace"], per_token_head(f["post_decay"]))  # decayed to this step
        potentiation = mul12(token_outer_sum(pre, v, trace_peak, pv, blas), per_head(f["a_plus"]))
        depression = mul12(token_outer_sum(k, post, pk, trace_peak, blas), per_head(f["a_minus"]))
        memory = memory + potentiation - depression
        state["pre_trace"] = pre
        state["post_trace"], c = saturate(post + one * v, trace_bits)  # this step's values after use
        clipped += c
    elif att.variant == "three_factor":
        coincidences = token_outer_sum(k, v, pk, pv, blas)
        elig = decay12(state["eligibility"], per_head(f["eligibility_decay"])) + one * coincidences
        elig, c = saturate(elig, bits)
        clipped += c
        tokens = m.shape[1]
        m12 = (4096 * np.asarray(m, np.int64).sum(1)) // tokens  # [B, H]: fraction of gates firing
        memory = memory + mul12(elig, m12[:, :, None, None])
        state["eligibility"] = elig
    elif att.variant == "delta":
        recall = head_read(k, memory, pk, state_peak, blas)  # k_n D, rows of active keys only
        error = one * v - recall
        count = np.maximum(k.sum(-1, keepdims=True), 1)
        error = np.sign(error) * (np.abs(error) // count)  # trunc toward zero
        error_peak = one * pv + pk * state_peak * k.shape[-1]  # |one v - k D|; the division only shrinks it
        memory = memory + mul12(token_outer_sum(k, error, pk, error_peak, blas), per_head(f["delta_rate"]))
    else:
        raise IRError(f"attention {att.name!r} has unknown variant {att.variant!r}")
    memory, c = saturate(memory, bits)
    state["memory"] = memory
    read = head_read(q, memory, pq, state_peak, blas).reshape(q.shape[0], q.shape[1], -1)  # [B, N, H*d]
    prod = read * np.asarray(f["out_mant"], np.int64)
    out = np.sign(prod) * (np.abs(prod) >> int(f["out_shift"]))
    return out, state, clipped + c


def run_fixed(graph: Graph, x_steps: np.ndarray, keep: Optional[set[str]] = None) -> Trace:
    """Simulate a fixed-point graph on integer input steps ``[T, B, N, F]`` (see quantize.encode_fixed)."""
    graph.require_frozen("fixed_ref")
    if graph.precision != "fixed":
        raise IRError("run_fixed needs a fixed-point graph; make one with neuromorphic.quantize.quantize")
    return run_graph(graph, np.asarray(x_steps, np.int64), FixedOps(), keep)


class LearningFixedOps(FixedOps):
    """``FixedOps`` with plastic connections: a plastic connection delivers the activation its
    engine computed at the previous step (``sent``, a_in ``[J]``; zero at a sample's first
    step), and while ``guard`` is set every LIF receives the guard current as well."""

    def __init__(self, plastic: set[str], guard_a_in: int) -> None:
        super().__init__()
        self.plastic, self.guard_a_in = plastic, int(guard_a_in)
        self.sent: dict[str, np.ndarray] = {}
        self.guard = False

    def dense(self, conn: Connection, spikes: np.ndarray, target: Population) -> np.ndarray:
        if conn.name not in self.plastic:
            return super().dense(conn, spikes, target)
        if conn.name not in self.sent:
            return np.zeros((spikes.shape[0], target.tokens, target.features), np.int64)
        return self.sent[conn.name].reshape(1, target.tokens, target.features)

    def lif(self, pop: Population, current: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        if not self.guard:
            return super().lif(pop, current, state)
        # the guard's membrane clipping is by design: not counted as an overflow of the sample
        counted = self.saturation_events
        out = super().lif(pop, current + self.guard_a_in, state)
        self.saturation_events = counted
        return out


def learn_online_fixed(graph: Graph, samples: np.ndarray, guard_steps: int = 2,
                       after_sample: Optional[Callable[[int], None]] = None,
                       labels: Optional[np.ndarray] = None,
                       feedback: Optional[dict[str, np.ndarray]] = None) -> list[Trace]:
    """Run integer ``samples [S, T, N, F]`` (``quantize.encode_fixed``) one after another through
    the fixed ``graph`` while its plastic connections learn, exactly as the Lava fixed-point
    network does (``lava.run.run_lava``): one ``FixedLearningDense`` per plastic connection
    (``fixed_learning.connection_engine``), carried over every sample, guard step and random draw.
    A three_factor connection also has its ``FixedRuleInputs`` (the y inputs, the same integer
    code as Lava's ``RuleInputs``), and needs the samples' ``labels [S]`` and its ``feedback``
    ``[C, target size]``.

    Lava's order in each step t: a plastic Dense sends the activation it computed at t - 1 (its
    weights before t - 1's learning), the populations update, then the engine takes the source's
    and the target's spikes of t (pre and bAP; a readout target's bAP is 1) and the y inputs sent
    at t, computes the activation for t + 1 with the weights it holds, updates its traces and
    learns; the y inputs' state then takes the target's spikes and the readout's increment of t.
    Neuron and attention states start at zero for each sample. After the sample's T steps come
    ``guard_steps`` (2 in Lava): the first has silent input, the last step's spikes still arrive
    and neurons may fire and learn; in the others every LIF also receives ``GUARD_A_IN`` (the
    guard neuron's Dense, lava.run), which holds it silent; should one fire anyway this raises
    LoweringError (the Lava network would leak into the next sample). The engines learn in every
    step, including the guard steps.

    Updates the plastic weights of ``graph`` in place (int64, after every sample, before
    ``after_sample(sample)`` runs); fixed-point rule traces are not written to the IR. Returns
    each sample's Trace (its own T steps; saturation counted over the sample and its first guard
    step)."""
    from .fixed_learning import connection_engine, connection_rule
    from .ir import LoweringError
    from .guard import GUARD_EXP, GUARD_MANTISSA

    if graph.precision != "fixed":
        raise IRError("learn_online_fixed needs a fixed-point graph; make one with neuromorphic.quantize.quantize")
    graph.require_spike_learning("fixed_ref")
    if guard_steps < 0:
        raise IRError(f"guard_steps must be >= 0, got {guard_steps}")
    plastic = [c for c in graph.connections if c.rule is not None]
    rules = {c.name: connection_rule(graph, c, (feedback or {}).get(c.name)) for c in plastic}
    engines = {c.name: connection_engine(c, rules[c.name]) for c in plastic}
    inputs = {name: rule.inputs for name, rule in rules.items() if rule.third_factor}
    if inputs and (labels is None or guard_steps < 2):
        raise IRError("a three_factor connection needs the samples' labels and 2 guard steps (its output error "
                      "arrives at the second)")
    states = {name: i.initial_state() for name, i in inputs.items()}
    ops = LearningFixedOps(set(engines), GUARD_MANTISSA << GUARD_EXP)
    lifs = [p.name for p in graph.populations if p.kind == "lif"]
    readout = graph.readout.name
    traces = []
    for index, sample in enumerate(np.asarray(samples, np.int64)):
        steps = len(sample)
        ops.sent, ops.guard = {}, False  # at a sample's first step a Dense sends W @ 0 of the last guard step
        if any(i.steps != steps for i in inputs.values()):
            raise IRError(f"the samples have {steps} steps, the graph {graph.meta['steps']}")

        def after_step(t: int, now: dict[str, np.ndarray]) -> None:
            if t > steps:  # a guarded step
                fired = [name for name in lifs if np.any(now[name])]
                if fired:
                    raise LoweringError(f"population {fired[0]!r} fired through the guard after sample {index}; "
                                        "quantise with a smaller vth")
            for conn in plastic:
                post = now[conn.target].reshape(-1)
                y = None
                if conn.name in inputs:
                    y = inputs[conn.name].send(states[conn.name], t, int(labels[index]))
                    if not inputs[conn.name].spiking:
                        post = np.ones(post.shape, bool)
                ops.sent[conn.name] = engines[conn.name].step(now[conn.source].reshape(-1), post, y)
                if conn.name in inputs:
                    states[conn.name] = inputs[conn.name].receive(states[conn.name], t, post,
                                                                  now[readout].reshape(-1))
            ops.guard = t >= steps  # from the second guard step on

        padded = np.concatenate([sample, np.zeros((guard_steps,) + sample.shape[1:], np.int64)])
        trace = run_graph(graph, padded[:, None], ops, after_step=after_step)
        traces.append(Trace({k: v[:steps] for k, v in trace.spikes.items()}, trace.readout[:steps], trace.window,
                            trace.saturation_events))
        ops.saturation_events = 0
        for conn in plastic:
            conn.weight = engines[conn.name].weights.copy()
        if after_sample is not None:
            after_sample(index)
    return traces
