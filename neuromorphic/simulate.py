"""Reference simulation of an IR ``Graph`` in numpy, for a whole batch at once.

One time loop (``run_graph``) serves both precisions; the arithmetic comes from an ``Ops``
object: ``FloatOps`` here (float64, SPEC §2.1-2.3, the float reference every backend is
compared with) and ``FixedOps`` in ``neuromorphic.fixed_ref`` (integers, SPEC §2.4).

Per step t, populations are visited in ``graph.step_order()``; each receives

    current = sum over connections c into it:  W_c @ out[source_c][t - delay_c]
            + sum over attention nodes a into it:  a(q[t], k[t], v[t], m[t])   (same step)

and then updates: input -> the given input step; lif -> SPEC §2.1; readout -> current + bias
recorded (the perfect integrator's increment). Logits = mean of the readout over the last
``window`` steps (``Trace.logits``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np

from spikeformer.variants import VARIANTS

from .ir import Attention, Connection, Graph, IRError, Population, plastic_rules
from .trace import Trace  # also public here: ``from neuromorphic.simulate import Trace``


class Ops(Protocol):
    """The arithmetic ``run_graph`` steps with. It also calls ``ops.prepare(graph, x_steps)``
    once before the first step when an Ops has one (per-run work: bounds, cached weights)."""

    def dense(self, conn: Connection, spikes: np.ndarray, target: Population) -> np.ndarray: ...
    def lif(self, pop: Population, current: np.ndarray, state: Any) -> tuple[np.ndarray, Any]: ...
    def readout(self, pop: Population, current: np.ndarray, state: Any) -> tuple[np.ndarray, Any]: ...
    def attention(self, att: Attention, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  m: Optional[np.ndarray], state: Any) -> tuple[np.ndarray, Any]: ...
    def zeros(self, shape: tuple) -> np.ndarray: ...


def dense_float(weight: np.ndarray, kind: str, spikes: np.ndarray, tokens_out: int) -> np.ndarray:
    """``[B, N_in, F_in] -> [B, N_out, F_out]`` through a tokenwise or full weight matrix."""
    if kind == "tokenwise":
        return spikes @ weight.T  # per token: [B, N, F_in] @ [F_in, F_out]
    b = spikes.shape[0]
    return (spikes.reshape(b, -1) @ weight.T).reshape(b, tokens_out, -1)  # [B, N*F] -> [B, N', F']


def heaviside(x):
    """H(x) = 1 if x > 0 (SPEC §2): the forward pass of every surrogate, without a gradient."""
    return (x > 0).to(x.dtype)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block, the caller's setting restored after it.

    One step's tensors are small ([B, N, F]): more threads buy nothing there but barrier waits
    between numpy's BLAS and torch's thread pool, which made the float reference ~10x slower on
    two shared cores (digits-loihi, 50 samples: 0.2 s -> 2-3 s)."""
    import torch

    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class FloatOps:
    """Float64 arithmetic of SPEC §2.1-2.3: the LIF step and the attention step are the torch
    model's own functions (``spikeformer.neurons.lif_step``, ``spikeformer.attention``), run on
    float64 tensors that share memory with the numpy arrays (on one torch thread,
    ``one_torch_thread``); only the Dense matmul is numpy's."""

    def zeros(self, shape: tuple) -> np.ndarray:
        return np.zeros(shape)

    def dense(self, conn: Connection, spikes: np.ndarray, target: Population) -> np.ndarray:
        return dense_float(conn.weight, conn.kind, spikes, target.tokens)

    def lif(self, pop: Population, current: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        import torch

        from spikeformer.neurons import LIFState, lif_initial_state, lif_step

        x = torch.from_numpy(np.asarray(current, np.float64))
        state = state if state is not None else lif_initial_state(x)
        with one_torch_thread():
            s, state = lif_step(x, state, pop.beta, pop.alpha, pop.threshold, heaviside, torch.from_numpy(pop.bias))
        return s.numpy() != 0, state

    def readout(self, pop: Population, current: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return current + pop.bias, None

    def attention(self, att: Attention, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  m: Optional[np.ndarray], state: Any) -> tuple[np.ndarray, Any]:
        with one_torch_thread():
            return attention_step_float(att, q, k, v, m, state)


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """``[B, N, H*d] -> [B, N, H, d]``."""
    b, n, width = x.shape
    return x.reshape(b, n, heads, width // heads)


def attention_initial_state(att: Attention, batch: int, tokens: int, dtype=np.float64) -> dict[str, np.ndarray]:
    """Zero attention state by name: ``memory [B, H, d, d]``, and what the variant keeps beside it
    (``pre_trace``/``post_trace [B, N, H, d]``, ``eligibility [B, H, d, d]``)."""
    h, d = att.heads, att.head_dim
    entry = VARIANTS[att.variant]
    state = {"memory": np.zeros((batch, h, d, d), dtype)}
    if entry.traces:
        state["pre_trace"] = np.zeros((batch, tokens, h, d), dtype)
        state["post_trace"] = np.zeros((batch, tokens, h, d), dtype)
    if entry.eligibility:
        state["eligibility"] = np.zeros((batch, h, d, d), dtype)
    return state


def attention_step_float(att: Attention, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                         m: Optional[np.ndarray], state: Optional[dict]) -> tuple[np.ndarray, dict]:
    """One step of SPEC §2.3 for a batch: spikes ``[B, N, H*d]`` -> current ``[B, N, H*d]``.

    The step is ``spikeformer.attention.spiking_attention`` itself (recurrent, float64) on this
    one step; ``m`` holds the gate spikes ``[B, N, H]`` (three_factor), whose mean over tokens
    is the modulator. The output is ``out_scale * scale * q S`` per column; ``state`` is the
    dict of ``attention_initial_state``.
    """
    import torch

    from spikeformer.attention import AttentionState, spiking_attention

    if att.variant not in VARIANTS:
        raise IRError(f"attention {att.name!r} has unknown variant {att.variant!r}")
    h = att.heads
    state = state if state is not None else attention_initial_state(att, q.shape[0], q.shape[1])
    spikes = [torch.from_numpy(split_heads(np.asarray(x, np.float64), h))[None] for x in (q, k, v)]  # [1, B, N, H, d]
    empty = spikes[0].new_zeros(0)
    initial = AttentionState(*(torch.from_numpy(state[f]) if f in state else empty for f in AttentionState._fields))
    modulator = torch.from_numpy(np.asarray(m, np.float64).mean(1))[None] if VARIANTS[att.variant].modulated else None
    plasticity = {name: torch.from_numpy(np.asarray(x, np.float64)) for name, x in att.plasticity.items()}
    o, final = spiking_attention(*spikes, torch.from_numpy(np.asarray(att.decay, np.float64)), att.scale,
                                 att.variant, "recurrent", initial, plasticity, modulator)
    out = o[0].numpy()  # [B, N, H, d]
    new = {f: getattr(final, f).numpy() for f in state}
    return out.reshape(out.shape[0], out.shape[1], -1) * att.out_scale, new


def run_graph(graph: Graph, x_steps: np.ndarray, ops: Optional[Ops] = None,
              keep: Optional[set[str]] = None,
              after_step: Optional[Callable[[int, dict[str, np.ndarray]], None]] = None) -> Trace:
    """Simulate ``graph`` on encoded input ``x_steps [T, B, N, F]`` (one sample per batch row,
    every state starting at zero). ``keep``: population names whose spikes to return (all
    when None). ``after_step(t, outputs)``, if given, runs at the end of every step with each
    population's output of step t (the readout's: its value); it may change connection weights (online learning,
    ``learn_online``), which the next step then uses."""
    if after_step is None:
        graph.require_frozen("numpy reference")
    ops = ops or FloatOps()
    inp = graph.input
    if x_steps.ndim != 4 or x_steps.shape[2:] != (inp.tokens, inp.features):
        raise IRError(f"input steps must be [T, B, {inp.tokens}, {inp.features}], got {x_steps.shape}")
    prepare = getattr(ops, "prepare", None)  # optional: per-run work, done once rather than every step
    if prepare is not None:
        prepare(graph, x_steps)
    steps, batch = x_steps.shape[:2]
    order = graph.step_order()
    pops = {p.name: p for p in graph.populations}
    max_delay = max([c.delay for c in graph.connections] + [1])  # graph.validate() ensures delays >= 1
    # history[name][d - 1] = output d steps ago
    history = {n: [ops.zeros((batch, p.tokens, p.features)) for _ in range(max_delay)] for n, p in pops.items()}
    incoming = {n: graph.incoming(n) for n in pops}
    att_into = {n: graph.attention_into(n) for n in pops}
    states: dict[str, Any] = {n: None for n in pops}
    att_states: dict[str, Any] = {a.name: None for a in graph.attentions}
    wanted = set(pops) if keep is None else set(keep)
    spikes = {n: np.zeros((steps, batch, pops[n].tokens, pops[n].features), bool)
              for n in wanted if pops[n].kind != "readout"}
    readout = []
    for t in range(steps):
        now: dict[str, np.ndarray] = {}
        for name in order:
            pop = pops[name]
            if pop.kind == "input":
                now[name] = x_steps[t]
            else:
                current = ops.zeros((batch, pop.tokens, pop.features))  # summed in place: no copy per input
                for conn in incoming[name]:
                    current += ops.dense(conn, history[conn.source][conn.delay - 1], pop)
                for att in att_into[name]:
                    mod = now[att.modulator] if att.modulator else None
                    out, att_states[att.name] = ops.attention(
                        att, now[att.query], now[att.key], now[att.value], mod, att_states[att.name])
                    current += out
                if pop.kind == "lif":
                    now[name], states[name] = ops.lif(pop, current, states[name])
                else:
                    value, states[name] = ops.readout(pop, current, states[name])
                    readout.append(value.reshape(batch, -1))
                    now[name] = value.reshape(batch, pop.tokens, pop.features)  # for after_step; never sent on
            if name in spikes:
                spikes[name][t] = now[name] != 0
        if after_step is not None:
            after_step(t, now)
        for name, pop in pops.items():
            sent = now[name] if pop.kind != "readout" else ops.zeros((batch, pop.tokens, pop.features))
            history[name] = [sent] + history[name][:-1]
    saturation = int(getattr(ops, "saturation_events", 0))
    return Trace(spikes, np.stack(readout, 0), int(graph.meta["window"]), saturation)


def learn_online(graph: Graph, samples: np.ndarray,
                 modulator: Optional[Callable[[int, int, Connection], np.ndarray]] = None,
                 guard_steps: int = 0,
                 reward: Optional[Callable[[int, np.ndarray, Connection], np.ndarray]] = None,
                 after_sample: Optional[Callable[[int], None]] = None) -> list[Trace]:
    """Run ``samples [S, T, N, F]`` one after another through a float ``graph`` whose plastic
    connections learn online (docs/backends.md, "On-chip learning"): neuron and attention states
    start at zero for every sample, weights and rule traces carry over.

    At the end of step t a plastic connection pairs its source's spikes of step t with its
    target's spikes of step t and computes the rule's dw (only on its synapses, ``mask``). Spikes
    are transmitted with the weight of the step they are sent in, before that step's dw (a
    delay-1 connection delivers them at t + 1), so dw of step t first weighs the spikes of step
    t + 1. This is Lava's order: a LearningDense integrates its input, then learns, and sends the
    current one step later. A three_factor connection into the readout (an integrator, no
    spikes) takes 1 as its post factor at every step.

    The modulator of a three_factor connection per target neuron ``[target size]`` comes from
    ``modulator(sample, t, connection)`` at the sample's steps, and from ``reward(sample,
    logits [C], connection)`` at the first guard step, once the sample's logits are known (the
    output error as a third factor); zero where neither gives one. ``guard_steps`` follow each
    sample as in the Lava network: in the first the input is silent but the last step's spikes
    still arrive (neurons may fire, and learn); in the rest every neuron is held silent and the
    traces only decay. ``after_sample(sample)`` runs after each sample (and its guard steps), when
    the weights hold what that sample taught. Updates ``graph`` in place (weights and
    ``traces``); returns each sample's Trace (its own steps only)."""
    import torch

    plastic = [c for c in graph.connections if c.rule is not None]
    if graph.precision != "float":
        raise IRError("learn_online runs float graphs; a fixed-point graph learns in fixed_ref.learn_online_fixed")
    if reward is not None and guard_steps < 1:
        raise IRError("a reward arrives after the sample: learn_online needs guard_steps >= 1")
    update = {c.name: plastic_rules()[c.rule][1] for c in plastic}
    params = {c.name: c.rule_parameters() for c in plastic}
    rule_traces = {c.name: _rule_traces(c) for c in plastic}
    pending = {c.name: 0.0 for c in plastic}  # dw of the last step, applied after its spikes were sent
    readout = graph.readout.name
    window = int(graph.meta["window"])

    def post_of(conn: Connection, now: dict[str, np.ndarray]) -> np.ndarray:
        if graph.population(conn.target).kind == "readout":  # an integrator: post factor 1
            return np.ones((1, graph.population(conn.target).size))
        return now[conn.target].reshape(1, -1).astype(np.float64)

    traces = []
    for index, sample in enumerate(np.asarray(samples)):
        values: list[np.ndarray] = []  # the readout of each step

        def after_step(t: int, now: dict[str, np.ndarray]) -> None:
            values.append(now[readout].reshape(-1))
            for conn in plastic:
                conn.weight = conn.weight + pending[conn.name]  # step t's spikes went out with the old weight
                # one weight per synapse (full, or one token): the flattened grids [1, N F], batch of one
                pre, post = now[conn.source].reshape(1, -1).astype(np.float64), post_of(conn, now)
                m = None
                if conn.rule == "three_factor":
                    m = np.zeros(post.shape[-1])
                    if t < steps and modulator is not None:
                        m = modulator(index, t, conn)
                    elif t == steps and reward is not None:
                        m = reward(index, np.mean(values[steps - window:steps], 0), conn)
                    m = np.broadcast_to(np.asarray(m, np.float64), (post.shape[-1],))[None]  # [1, J]
                dw, rule_traces[conn.name] = update[conn.name](
                    torch.from_numpy(pre), torch.from_numpy(post),
                    rule_traces[conn.name], params[conn.name], None if m is None else torch.from_numpy(m.copy()))
                pending[conn.name] = dw.numpy() * conn.mask if conn.mask is not None else dw.numpy()
        steps = len(sample)
        if guard_steps:  # the first guard step: no input, but the last step's spikes still arrive
            sample = np.concatenate([sample, np.zeros_like(sample[:1])])
        trace = run_graph(graph, sample[:, None], after_step=after_step)
        traces.append(Trace({k: v[:steps] for k, v in trace.spikes.items()}, trace.readout[:steps], trace.window,
                            trace.saturation_events))
        for conn in plastic:  # the last step's spikes are not transmitted within this sample
            conn.weight, pending[conn.name] = conn.weight + pending[conn.name], 0.0
        for _ in range(guard_steps - 1):  # every LIF held silent: dw = 0, the traces decay
            for conn in plastic:
                pre = torch.zeros(1, graph.population(conn.source).size, dtype=torch.float64)
                post = torch.from_numpy(post_of(conn, {conn.target: np.zeros(graph.population(conn.target).size)}))
                _, rule_traces[conn.name] = update[conn.name](pre, post, rule_traces[conn.name], params[conn.name])
        if after_sample is not None:
            after_sample(index)
    for conn in plastic:
        conn.traces = _ir_traces(conn, rule_traces[conn.name])
    return traces


def _rule_traces(conn: Connection) -> Any:
    """The IR's ``traces`` of a plastic connection as the rule's trace state (a batch of one), or
    None (the rule starts from zero traces)."""
    import torch

    from rules.three_factor import ThreeFactorTraces
    from spikeformer.plasticity import Traces

    if not conn.traces:
        return None
    flat = lambda v: torch.from_numpy(np.asarray(v, np.float64).reshape(1, -1))  # noqa: E731  [1, size]
    spikes = Traces(flat(conn.traces["pre"]), flat(conn.traces["post"]))
    if conn.rule == "three_factor":
        return ThreeFactorTraces(spikes, torch.from_numpy(np.asarray(conn.traces["eligibility"], np.float64)[None]))
    return spikes


def _ir_traces(conn: Connection, state: Any) -> Optional[dict[str, np.ndarray]]:
    """The rule's trace state after learning, as the IR's ``traces`` table."""
    if state is None:
        return conn.traces
    spikes = state.spikes if conn.rule == "three_factor" else state
    out = {"pre": spikes.pre.numpy().reshape(-1), "post": spikes.post.numpy().reshape(-1)}
    if conn.rule == "three_factor":
        out["eligibility"] = state.eligibility.numpy()[0]
    return out
