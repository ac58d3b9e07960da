"""Brian2 reference networks for the model IR (SPEC §2; docs/backends.md, section "Brian2").

``run_brian2(graph, x_steps, mode, codegen)`` builds one Brian2 ``Network`` from an IR
``Graph`` (explicit imports, an explicit ``Network``, every equation a string in this file)
and returns the same ``Trace`` as ``neuromorphic.simulate.run_graph``.

mode "exact"        discrete time, one Brian2 time step (dt = 1 ms) = one IR step. The spikes
                    equal ``run_graph`` (float64; only a membrane exactly at threshold within
                    rounding could differ).
mode "biophysical"  continuous time with units (``BioParams``: one step = 1 ms, dt = 0.05 ms):
                    leaky membranes (tau_m = -step / ln beta), exponential current synapses
                    (tau_syn = 0.1 ms) scaled so a weight w lifts v by at most w, the bias as a
                    once-per-step pulse from a pacemaker neuron, real axonal delays (a LIF
                    population's step-t activity sits at t + 1/2 ms, an attention target's at
                    t + 1 ms; each Dense delay is one step plus that phase difference), reset of
                    v (and the rest of the step's synaptic current) to zero. The attention
                    memory runs on the 1 ms step clock: a coincidence is "both fired since the
                    last tick", and the read enters the target as one current pulse.
                    ``drift`` measures how far it moves from the discrete model.

How the IR maps onto Brian2 objects (both modes):

    population "lif"       NeuronGroup of N*F neurons, index n*F + f (token-major)
    population "input"     NeuronGroup reading a TimedArray; it emits one graded event per step
                           where its value is non-zero (the value rides on the event, Loihi style)
    population "readout"   NeuronGroup integrating its input (a perfect integrator)
    Connection (Dense)     Synapses ``w`` on_pre, one synapse per non-zero weight; exact: the
                           current is delivered in the step after the spike (the one-step delay of
                           SPEC §2.2 is where Brian2's 'synapses' slot sits after the updates);
                           biophysical: a real delay of one step
    Attention (SPEC §2.3)  per attention node:
        M  memory group, one neuron per cell (h, i, j) of the d x d state of each head: holds S
        write synapses     key neuron (n, h, i) -> cell (h, i, j): they see the key spike as
                           their presynaptic spike and the value spike of the same token through a
                           linked variable; their summed coincidences k_n[i] v_n[j] (hebbian,
                           three_factor), traces (stdp) or errors (delta) change S
        recall synapses    (delta) key (n, h, i) -> error unit (n, h, j), effective weight S:
                           the read k_n S of the Widrow-Hoff rule
        gate synapses      (three_factor) gate neuron (n, h) -> every cell of head h: the
                           modulator m = mean over tokens of the gate spikes
        read synapses      query neuron (n, h, i) -> attention unit (n, h, j), effective weight
                           S (a variable linked to the memory cell): q S
        A  attention units, one per output column (n, h, j): o = out_scale * (scale * q S),
                           the graded current the target LIF reads (linked variable)

Sample isolation: the B samples of ``x_steps`` run back to back in ONE Brian2 run (one build,
one code generation). At each sample's first step every state variable is set back to zero
(a ``run_regularly`` on a clock whose period is one sample). Biophysical runs add silent
steps between samples so that spikes still in flight land before the reset.

Scheduling (exact): the Network's schedule has one slot per same-step level (a population
fed by an attention node is one level above the node's q/k/v); inside a slot the order is:
attention plasticity and read (negative orders), LIF update (0), threshold (1), reset (2).
All Dense pathways run in the 'synapses' slot after every level, so a spike of step t
reaches its target's update at step t + 1.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .ir import Attention, Connection, Graph, IRError, LoweringError, Population, unique_name
from .simulate import Trace

MODES = ("exact", "biophysical")
CODEGEN_TARGETS = ("numpy", "cython")
VARIANTS = ("hebbian", "stdp", "three_factor", "delta")

# ---------------------------------------------------------------------------------------------
# equations: exact (discrete-time) mode. Each step statement does one operation so that Brian2
# evaluates the float64 arithmetic in the same order as neuromorphic.simulate.FloatOps.

EXACT_LIF = """
v : 1                  # membrane potential
u : 1                  # synaptic current (Lava's u): alpha * u + input of this step
I_dense : 1            # Dense input delivered for this step (source spikes of the last step)
s : 1                  # 1 in the step the neuron spiked (attention synapses read it)
bias : 1 (constant)    # added to v every step
"""
# SPEC §2.1: u = alpha u + I_in; v = beta v (1 - s) + u + bias (the reset zeroes v after a spike)
EXACT_LIF_STEP = """
s = 0
current = I_dense{attention}
u = alpha * u
u = u + current
v = beta * v
v = v + u
v = v + bias
I_dense = 0
"""
EXACT_LIF_THRESHOLD = "v > theta"
EXACT_LIF_RESET = "v = 0\ns = 1"

EXACT_READOUT = """
y : 1                  # the readout of this step: incoming current + bias
I_dense : 1            # Dense input delivered for this step
bias : 1 (constant)
"""
EXACT_READOUT_STEP = "y = I_dense + bias\nI_dense = 0"

# ---------------------------------------------------------------------------------------------
# equations: biophysical (continuous-time) mode

BIO_LIF = """
dv/dt = -v / tau_m + g + drive : 1 (unless refractory)   # leaky membrane
dg/dt = -g / tau_syn : Hz                                # exponential synaptic current
drive : Hz (constant)  # bias="current": b as a constant current, v settles at b / (1 - beta) as in the steps
bias : 1 (constant)    # bias="pulse": b arrives once per step through the synaptic kernel (pacemaker synapses)
s : 1                  # 1 once the neuron spiked since the attention clock last read it
"""
BIO_LIF_THRESHOLD = "v > theta and awake(t) > 0.5"
BIO_LIF_RESET = "v = 0\ns = 1"
BIO_LIF_RESET_CURRENT = "v = 0\ng = 0 * Hz\ns = 1"  # the rest of this step's input is dropped, as in the steps

BIO_READOUT = """
dq/dt = drive : 1      # perfect integrator: the charge received so far (spikes add w to q)
drive : Hz (constant)  # bias b per step as a constant current b / step
"""

INPUT = """
x : 1                  # the encoded input of this step (graded)
fire : 1               # 1 from the step's start until its event is sent
"""
INPUT_STEP = "x = stimulus(t, i)\nfire = int(x != 0)"  # once per step, at its start
INPUT_THRESHOLD = "fire > 0.5"
INPUT_RESET = "fire = 0"

DENSE = "w : 1 (constant)"
DENSE_ON_PRE = {  # (mode, target kind) -> statement; {w} is w, or w times the graded input value
    ("exact", "lif"): "I_dense_post += {w}",
    ("exact", "readout"): "I_dense_post += {w}",
    ("biophysical", "lif"): "g_post += {w} * charge_post",  # a synaptic current pulse
    ("biophysical", "readout"): "q_post += {w}",  # the integrator counts the charge w
}
GRADED_WEIGHT = "w * stimulus(t - delay, i)"  # i: the input neuron; t - delay: when the event left
CHARGE = "charge : Hz (constant, shared)  # synaptic kernel amplitude per unit weight"

# ---------------------------------------------------------------------------------------------
# equations: the attention memory (both modes; biophysical runs them on the step clock)

MEMORY = {
    "hebbian": """
S : 1                  # fast-weight memory cell S[h, i, j]
lam : 1 (constant)     # decay lambda of the cell's head
kv : 1                 # sum over tokens of k_n[i] v_n[j] in this step (write synapses)
""",
    "stdp": """
S : 1
lam : 1 (constant)
a_plus : 1 (constant)  # potentiation amplitude A+ of the head
a_minus : 1 (constant) # depression amplitude A- of the head
pot : 1                # sum_n x_n[i] v_n[j]: pre-trace x value-spike coincidences
dep : 1                # sum_n k_n[i] y_n[j]: key-spike post-trace y coincidences
""",
    "three_factor": """
S : 1
lam : 1 (constant)
elig_decay : 1 (constant)  # eligibility decay of the head
elig : 1               # eligibility trace
kv : 1                 # sum_n k_n[i] v_n[j] in this step
gate : 1               # gate spikes of the head in this step (gate synapses)
tokens : 1 (constant)  # N: the modulator is the mean over tokens
""",
    "delta": """
S : 1
lam : 1 (constant)
rate : 1 (constant)    # Widrow-Hoff rate beta of the head
ke : 1                 # sum_n k_n[i] err_n[j]: key spikes times the error of the same token
""",
}
# S[t] = lambda S[t-1] + dS[t] (SPEC §2.3), one float operation per statement
MEMORY_UPDATE = {
    "hebbian": "S = lam * S\nS = S + kv",
    "stdp": "S = lam * S\ndp = a_plus * pot\nS = S + dp\ndd = a_minus * dep\nS = S - dd",
    "three_factor": "elig = elig_decay * elig\nelig = elig + kv\nm = gate / tokens\nme = m * elig\nS = lam * S\nS = S + me",
    "delta": "dS = rate * ke\nS = S + dS",  # after MEMORY_DECAY and the error units
}
MEMORY_DECAY = "S = lam * S"  # delta: the recall k S reads the decayed state
MEMORY_RESET = {"hebbian": "S = 0", "stdp": "S = 0", "three_factor": "S = 0\nelig = 0", "delta": "S = 0"}

WRITE = {  # synapses key (n, h, i) -> memory cell (h, i, j); vidx = value neuron (n, h, j)
    "hebbian": "vidx : integer (constant)\nv_s : 1 (linked)\nkv_post = s_pre * v_s : 1 (summed)",
    "three_factor": "vidx : integer (constant)\nv_s : 1 (linked)\nkv_post = s_pre * v_s : 1 (summed)",
    "stdp": "vidx : integer (constant)\nv_s : 1 (linked)\nv_y : 1 (linked)\n"
            "pot_post = x_pre * v_s : 1 (summed)\ndep_post = s_pre * v_y : 1 (summed)",
    "delta": "vidx : integer (constant)\nerr_v : 1 (linked)\nke_post = s_pre * err_v : 1 (summed)",
}
KEY_TRACE = "x : 1  # STDP pre-synaptic trace\npre_decay : 1 (constant)"
KEY_TRACE_STEP = "x = pre_decay * x\nx = x + s"  # x = d_pre x + k (includes this step's key)
VALUE_TRACE = "y : 1  # STDP post-synaptic trace\npost_decay : 1 (constant)"
VALUE_TRACE_STEP = "y = post_decay * y\ny = y + s"  # after the memory used the previous y

RECALL = "cell : integer (constant)\nS_m : 1 (linked)\nr_post = s_pre * S_m : 1 (summed)\nkc_post = s_pre : 1 (summed)"
ERROR_UNITS = """
r : 1                  # recall k_n S (decayed) of this step
kc : 1                 # active keys of this token and head
err : 1                # error (v_n - k_n S) / max(1, |k_n|)
v_s : 1 (linked)       # the value neuron's spike
"""
ERROR_STEP = "err = v_s - r\nerr = err / clip(kc, 1, inf)"

GATE = "gate_post = s_pre : 1 (summed)"

READ = "cell : integer (constant)\nS_m : 1 (linked)\nqS_post = s_pre * S_m : 1 (summed)"
ATTENTION_UNITS = """
qS : 1                 # q_n S of this step (read synapses)
o : 1                  # current into the target: out_scale * (scale * q_n S)
gain : 1 (constant)    # out_scale of the column
"""
ATTENTION_STEP = "o = scale * qS\no = o * gain"
# Order inside a level slot (exact) or the 'attention' slot (biophysical), in execution order
ORDER = {
    "pre_trace": -9,     # stdp: x = d_pre x + k (keys)
    "decay": -9,         # delta: S = lambda S before the recall reads it
    "sums": -8,          # write / gate / recall summed variables (coincidences, k S, |k|)
    "errors": -7,        # delta: err = (v - k S) / max(1, |k|)
    "delta_write": -6,   # delta: sum_n k_n err_n
    "memory": -5,        # S update
    "post_trace": -4,    # stdp: y = d_post y + v (values), after the memory used the old y
    "read": -3,          # q S summed into the attention units
    "units": -2,         # o = out_scale * (scale * q S)
    "update": 0, "threshold": 1, "reset": 2,  # the populations of this level (exact)
    "pulse": 10, "latch_clear": 20,          # biophysical: read current into the target, clear latches
}
BIO_ATTENTION_PULSE = "g = g + {link} * charge"  # the read current enters the target as one pulse
PACEMAKER = "fire : 1  # 1 at the start of every awake step until the pacemaker spikes"
PACEMAKER_STEP = "fire = awake(t)"
PACEMAKER_ON_PRE = "g_post += bias_post * charge_post"  # bias="pulse": b once per step, like a weight


@dataclass(frozen=True)
class BioParams:
    """Physical constants of the biophysical mode (milliseconds).

    step_ms: wall time of one IR step; dt_ms: integration step; tau_syn_ms: synaptic current
    decay (used when the population's alpha is 0, else -step / ln alpha); refractory_ms: dead
    time after a spike; reset_current: a spike also drops the rest of the synaptic current of
    that step (the discrete model's reset discards it too); kernel: "peak" scales the synaptic
    kernel so a weight w raises v by at most w (threshold crossings as in the steps), "tail" so
    that long after the pulse v carries w beta^(t / step) (memory as in the steps); bias:
    "pulse" delivers b once per step through the synaptic kernel from a pacemaker neuron (as
    the steps add it), "current" as a constant current b / ((1 - beta) tau_m) (same resting
    level; a neuron with a large bias then fires several times per step).
    """

    step_ms: float = 1.0
    dt_ms: float = 0.05
    tau_syn_ms: float = 0.1
    refractory_ms: float = 0.0
    reset_current: bool = True
    kernel: str = "peak"
    bias: str = "pulse"
    gap_steps: int = 3  # silent steps between samples (in-flight spikes land before the reset)

    def __post_init__(self) -> None:
        if self.kernel not in ("peak", "tail"):
            raise LoweringError(f"BioParams kernel {self.kernel!r} is unknown; choose 'peak' or 'tail'")
        if self.bias not in ("pulse", "current"):
            raise LoweringError(f"BioParams bias {self.bias!r} is unknown; choose 'pulse' or 'current'")
        if not (self.step_ms > 0 and self.dt_ms > 0 and self.tau_syn_ms > 0 and self.refractory_ms >= 0):
            raise LoweringError("BioParams step_ms, dt_ms and tau_syn_ms must be > 0 and refractory_ms >= 0")
        half = self.step_ms / (2 * self.dt_ms)  # delays of half a step must be whole dt
        if abs(half - round(half)) > 1e-9 or half < 1:
            raise LoweringError(f"BioParams dt_ms = {self.dt_ms} must divide half a step ({self.step_ms / 2} ms); "
                                "try 0.1, 0.05 or 0.025")


# ---------------------------------------------------------------------------------------------
# public API


def run_brian2(graph: Graph, x_steps: np.ndarray, mode: str = "exact", codegen: str = "numpy",
               bio: BioParams | None = None) -> tuple[Trace, dict[str, Any]]:
    """Simulate ``graph`` on encoded input ``x_steps [T, B, N, F]`` in Brian2.

    Returns a ``Trace`` (spikes ``[T, B, N, F]`` bool per population, the input included as
    ``x != 0``; readout ``[T, B, C]``) and ``info``: build_seconds (network construction and
    code generation/compilation), run_seconds, steps_per_second (IR steps), neurons, synapses,
    brian2 version, mode, codegen and, for biophysical runs, the physical constants.
    Each of the B samples starts from zero state. Raises ``LoweringError`` (one line) for what
    the chosen mode cannot run.
    """
    if mode not in MODES:
        raise LoweringError(f"Brian2 mode {mode!r} is unknown; choose one of {list(MODES)}")
    if codegen not in CODEGEN_TARGETS:
        raise LoweringError(f"Brian2 codegen target {codegen!r} is unknown; choose one of {list(CODEGEN_TARGETS)}")
    if graph.precision != "float":
        raise LoweringError("the Brian2 reference runs float IR graphs; pass the graph from neuromorphic.lower.lower, "
                            "not a quantized one")
    graph.validate()
    inp = graph.input
    x_steps = np.asarray(x_steps, dtype=np.float64)
    if x_steps.ndim != 4 or x_steps.shape[2:] != (inp.tokens, inp.features):
        raise IRError(f"input steps must be [T, B, {inp.tokens}, {inp.features}], got {x_steps.shape}")
    if x_steps.shape[0] == 0 or x_steps.shape[1] == 0 or not np.isfinite(x_steps).all():
        raise IRError(f"input steps {x_steps.shape} must hold at least one step and one sample, all finite")
    _check_supported(graph, mode)
    try:
        import brian2
    except ImportError:
        raise LoweringError("the Brian2 backend needs brian2: pip install 'spikeformer[brian2]'") from None
    saved = {key: brian2.prefs[key] for key in ("codegen.target", "codegen.loop_invariant_optimisations")}
    brian2.prefs["codegen.target"] = codegen
    # no sympy rewriting of the step statements: keeps float64 operations in the written order
    brian2.prefs["codegen.loop_invariant_optimisations"] = False
    try:
        builder = _Builder(graph, x_steps, mode, bio or BioParams())
        start = time.perf_counter()
        builder.build()
        marks: list[float] = []  # Brian2 reports once after code generation, before the first step

        def report(*_: Any) -> None:
            marks.append(time.perf_counter())

        # one run for all samples; namespace={}: nothing is resolved from the caller's variables
        builder.net.run(builder.duration, namespace={}, report=report, report_period=1e9 * brian2.second)
        end = time.perf_counter()
        build_seconds, run_seconds = marks[0] - start, end - marks[0]
        trace = builder.trace()
    finally:
        for key, value in saved.items():
            brian2.prefs[key] = value
    steps, batch = x_steps.shape[:2]
    info = {
        "mode": mode, "codegen": codegen, "brian2_version": brian2.__version__,
        "samples": batch, "steps": steps, "build_seconds": build_seconds, "run_seconds": run_seconds,
        "steps_per_second": steps * batch / run_seconds if run_seconds > 0 else float("inf"),
        "neurons": builder.neurons, "synapses": builder.synapses, "objects": len(builder.net.objects),
        "sample_isolation": "one run, all state zeroed at each sample's first step"
                            + (f", {builder.gap} silent steps between samples" if builder.gap else ""),
    }
    if mode == "biophysical":
        info["bio"] = asdict(bio or BioParams())
    return trace, info


def drift(reference: Trace, trace: Trace) -> dict[str, Any]:
    """How far a (biophysical) trace is from the discrete reference: spike agreement, class
    agreement, binned spike-train correlation (Pearson over every neuron-step of every shared
    population), per-neuron spike-count correlation, per-population count correlation and the
    readout correlation."""
    names = sorted(set(reference.spikes) & set(trace.spikes) - {"input"})
    a = np.concatenate([reference.spikes[n].reshape(-1) for n in names]).astype(np.float64)
    b = np.concatenate([trace.spikes[n].reshape(-1) for n in names]).astype(np.float64)
    counts_a = np.concatenate([reference.spikes[n].sum(0).reshape(-1) for n in names]).astype(np.float64)
    counts_b = np.concatenate([trace.spikes[n].sum(0).reshape(-1) for n in names]).astype(np.float64)
    per_population = {n: _pearson(reference.spikes[n].sum(0).reshape(-1), trace.spikes[n].sum(0).reshape(-1))
                      for n in names}
    return {
        "spike_agreement": float((a == b).mean()),
        "class_agreement": float((reference.logits.argmax(-1) == trace.logits.argmax(-1)).mean()),
        "spike_train_correlation": _pearson(a, b),
        "spike_count_correlation": _pearson(counts_a, counts_b),
        "readout_correlation": _pearson(reference.readout.reshape(-1), trace.readout.reshape(-1)),
        "spike_rate_reference": float(a.mean()),
        "spike_rate_backend": float(b.mean()),
        "per_population_count_correlation": per_population,
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------------
# checks


def _levels(graph: Graph) -> dict[str, int]:
    """Same-step depth of each population: 0, or 1 + the deepest q/k/v/modulator of an
    attention node feeding it (``Graph.step_order`` guarantees this terminates)."""
    level: dict[str, int] = {}
    for name in graph.step_order():
        feeds = [a for a in graph.attentions if a.target == name]
        level[name] = 1 + max(level[p] for a in feeds for p in _attention_sources(a)) if feeds else 0
    return level


def _attention_sources(att: Attention) -> list[str]:
    return [att.query, att.key, att.value] + ([att.modulator] if att.modulator else [])


def _check_supported(graph: Graph, mode: str) -> None:
    for att in graph.attentions:
        if att.variant not in VARIANTS:
            raise LoweringError(f"attention {att.name!r} has variant {att.variant!r}, which the Brian2 reference "
                                f"does not build; use one of {list(VARIANTS)}")
        roles = {"query": att.query, "key": att.key, "value": att.value, "target": att.target, "modulator": att.modulator}
        for role, name in roles.items():
            if name is not None and graph.population(name).kind != "lif":
                raise LoweringError(f"attention {att.name!r} has a {graph.population(name).kind} population as its "
                                    f"{role}; the Brian2 reference needs LIF populations there")
        if att.variant == "three_factor" and att.modulator is None:
            raise LoweringError(f"attention {att.name!r} (three_factor) has no modulator population; the Brian2 "
                                "reference takes m from a gate population")
    traced: set[str] = set()
    for att in graph.attentions:
        if att.variant != "stdp":
            continue
        for pop in (att.key, att.value):
            if pop in traced:
                raise LoweringError(f"population {pop!r} carries the STDP trace of more than one attention node; "
                                    "the Brian2 reference keeps one trace per neuron")
            traced.add(pop)
    for conn in graph.connections:
        if conn.delay < 1:
            raise LoweringError(f"connection {conn.name!r} has delay {conn.delay}; Dense connections need a delay "
                                "of at least one step (SPEC §2.2)")
    for pop in graph.populations:
        if pop.kind == "lif" and mode == "biophysical" and not 0.0 < pop.beta <= 1.0:
            raise LoweringError(f"population {pop.name!r} has beta = {pop.beta}, which has no membrane time "
                                "constant; run it in mode 'exact'")
        if pop.kind == "lif" and mode == "biophysical" and pop.alpha >= 1.0:
            raise LoweringError(f"population {pop.name!r} has alpha = 1 (a current that never decays); "
                                "run it in mode 'exact'")
    if mode == "biophysical" and any(level > 1 for level in _levels(graph).values()):
        raise LoweringError("the biophysical Brian2 network reads attention once per step, so an attention "
                            "target cannot feed another attention in the same step; run it in mode 'exact'")


# ---------------------------------------------------------------------------------------------
# network construction


def _brian_name(name: str, used: set[str]) -> str:
    """A valid, unique Brian2 object name for an IR name ('block0.attn.q' -> 'p_block0_attn_q')."""
    return unique_name("p_" + re.sub(r"\W", "_", name), used)


def _token_major(tokens: int, f_out: int, f_in: int, weight: np.ndarray, kind: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pre index, post index, weight) of every non-zero entry of a Dense connection."""
    if kind == "tokenwise":
        post_f, pre_f = np.nonzero(weight)  # [F_out, F_in]
        w = weight[post_f, pre_f]
        n = np.repeat(np.arange(tokens), len(w))
        pre = n * f_in + np.tile(pre_f, tokens)
        post = n * f_out + np.tile(post_f, tokens)
        w = np.tile(w, tokens)
    else:  # full [N_out*F_out, N_in*F_in]
        post, pre = np.nonzero(weight)
        w = weight[post, pre]
    order = np.lexsort((post, pre))  # pre-major: a spike's synapses are contiguous
    return pre[order], post[order], w[order]


class _Builder:
    """Builds the Brian2 objects of one graph (see the module docstring for the mapping)."""

    def __init__(self, graph: Graph, x_steps: np.ndarray, mode: str, bio: BioParams) -> None:
        import brian2 as b2

        self.b2 = b2
        self.graph, self.x_steps, self.mode, self.bio = graph, x_steps, mode, bio
        self.exact = mode == "exact"
        self.steps, self.batch = x_steps.shape[:2]
        self.pops = {p.name: p for p in graph.populations}
        self.level = _levels(graph)
        self.step = (1.0 if self.exact else bio.step_ms) * b2.ms
        max_delay = max([c.delay for c in graph.connections] + [1])
        # exact: a spike is delivered delay - 1 steps after the step that follows it; biophysical: the
        # longest axonal delay plus the phase shift must land inside the silent gap
        self.gap = max_delay - 1 if self.exact else max(bio.gap_steps, max_delay + 2)
        self.sample_steps = self.steps + self.gap
        self.duration = self.batch * self.sample_steps * self.step
        self.names: set[str] = set()
        self.groups: dict[str, Any] = {}
        self.objects: list[Any] = []
        self.spike_monitors: dict[str, Any] = {}
        self.neurons = 0
        self.synapses = 0
        self.extra: dict[str, list[str]] = {p: [] for p in self.pops}  # extra model lines (traces, links)
        self.attention_links: dict[str, list[str]] = {p: [] for p in self.pops}
        self.traces: dict[str, str] = {}
        self.link_of: dict[str, str] = {}  # attention name -> the linked variable its target reads
        for att in graph.attentions:
            if att.variant == "stdp":
                self.extra[att.key].append(KEY_TRACE)
                self.extra[att.value].append(VALUE_TRACE)
                self.traces[att.key], self.traces[att.value] = "key", "value"
            link = f"o_{len(self.attention_links[att.target])}"
            self.attention_links[att.target].append(link)
            self.link_of[att.name] = link
            self.extra[att.target].append(f"{link} : 1 (linked)  # attention current of {att.name}")

    # --- clocks, schedule, slots --------------------------------------------------------------

    def build(self) -> None:
        b2 = self.b2
        self.clock = b2.Clock(dt=self.step, name=_brian_name("steps", self.names))  # one IR step
        self.fine = self.clock if self.exact else b2.Clock(dt=self.bio.dt_ms * b2.ms, name=_brian_name("fine", self.names))
        self.sample_clock = b2.Clock(dt=self.sample_steps * self.step, name=_brian_name("samples", self.names))
        awake = np.zeros(self.batch * self.sample_steps)
        awake.reshape(self.batch, self.sample_steps)[:, :self.steps] = 1.0
        self.awake = b2.TimedArray(awake, dt=self.step, name=_brian_name("awake", self.names))
        for pop in self.graph.populations:
            {"input": self._input, "lif": self._lif, "readout": self._readout}[pop.kind](pop)
        for att in self.graph.attentions:
            self._attention(att)
        for conn in self.graph.connections:
            self._dense(conn)
        self.net = b2.Network(*self.objects, name=_brian_name("net", self.names))
        top = max(self.level.values())
        if self.exact:
            self.net.schedule = (["start"] + [f"level{k}" for k in range(top + 1)]
                                 + ["groups", "thresholds", "synapses", "resets", "end"])
        else:
            self.net.schedule = ["start", "groups", "thresholds", "synapses", "resets", "attention", "end"]

    def _slot(self, obj: Any, when: str, order: int) -> Any:
        obj.when, obj.order = when, order
        return obj

    def _group(self, pop: Population, model: str, **kw) -> Any:
        group = self.b2.NeuronGroup(pop.size, model, name=_brian_name(pop.name, self.names), **kw)
        self.groups[pop.name] = group
        self.objects.append(group)
        self.neurons += pop.size
        return group

    def _on_sample_start(self, group: Any, code: str) -> None:
        """Every sample starts from zero state: ``code`` runs at each sample's first step."""
        self.objects.append(group.run_regularly(code, clock=self.sample_clock, when="start", order=0,
                                                name=group.name + "_sample_reset"))

    def _regularly(self, group: Any, code: str, when: str, order: int, tag: str) -> None:
        """``code`` once per IR step (the step clock), in slot ``when`` at ``order``."""
        self.objects.append(group.run_regularly(code, clock=self.clock, when=when, order=order,
                                                name=group.name + "_" + tag))

    # --- populations -------------------------------------------------------------------------------

    def _input(self, pop: Population) -> None:
        b2 = self.b2
        values = np.zeros((self.batch, self.sample_steps, pop.size))
        values[:, :self.steps] = self.x_steps.transpose(1, 0, 2, 3).reshape(self.batch, self.steps, pop.size)
        self.stimulus = b2.TimedArray(values.reshape(-1, pop.size), dt=self.step,
                                      name=_brian_name("stimulus", self.names))
        group = self._group(pop, INPUT, threshold=INPUT_THRESHOLD, reset=INPUT_RESET, clock=self.fine,
                            namespace={"stimulus": self.stimulus})
        if self.exact:
            self._regularly(group, INPUT_STEP, "level0", ORDER["update"], "step")
            self._slot(group.thresholder["spike"], "level0", ORDER["threshold"])
            self._slot(group.resetter["spike"], "level0", ORDER["reset"])
        else:  # the event leaves at the step's tick on the fine clock: delays keep dt resolution
            self._regularly(group, INPUT_STEP, "groups", -1, "step")

    def _lif(self, pop: Population) -> None:
        b2 = self.b2
        links = self.attention_links[pop.name]
        extra = "\n".join(self.extra[pop.name])
        if self.exact:
            slot = f"level{self.level[pop.name]}"
            # delays above one step: silent steps between samples, so spikes in flight land before the reset
            threshold = EXACT_LIF_THRESHOLD + (" and awake(t) > 0.5" if self.gap else "")
            group = self._group(pop, EXACT_LIF + extra, threshold=threshold, reset=EXACT_LIF_RESET, clock=self.clock,
                                namespace={"beta": pop.beta, "alpha": pop.alpha, "theta": pop.threshold,
                                           "awake": self.awake})
            attention = "".join(f"\ncurrent = current + {link}" for link in links)
            self._regularly(group, EXACT_LIF_STEP.format(attention=attention), slot, ORDER["update"], "step")
            self._slot(group.thresholder["spike"], slot, ORDER["threshold"])
            self._slot(group.resetter["spike"], slot, ORDER["reset"])
            reset = "v = 0\nu = 0\nI_dense = 0\ns = 0"
        else:
            tau_m, tau_syn, charge = self._bio_constants(pop.beta, pop.alpha)
            drive = (pop.bias.reshape(-1) / ((1.0 - pop.beta) * tau_m / self.step) if pop.beta < 1.0
                     else pop.bias.reshape(-1)) / self.step
            group = self._group(pop, BIO_LIF + CHARGE + "\n" + extra, threshold=BIO_LIF_THRESHOLD,
                                reset=BIO_LIF_RESET_CURRENT if self.bio.reset_current else BIO_LIF_RESET,
                                refractory=self.bio.refractory_ms * b2.ms, method="exact", clock=self.fine,
                                namespace={"tau_m": tau_m, "tau_syn": tau_syn, "theta": pop.threshold,
                                           "awake": self.awake})
            if self.bio.bias == "current":
                group.drive = drive
            else:
                group.bias = pop.bias.reshape(-1)
                self._pacemaker_synapses(pop, group)
            group.charge = charge
            for link in links:  # the attention read arrives once per step as a current pulse
                self._regularly(group, BIO_ATTENTION_PULSE.format(link=link), "attention", ORDER["pulse"],
                                "attention_" + link)
            reset = "v = 0\ng = 0 * Hz\ns = 0"
        if pop.name in self.traces:
            reset += "\nx = 0" if self.traces[pop.name] == "key" else "\ny = 0"
        if self.exact:
            group.bias = pop.bias.reshape(-1)
        self._on_sample_start(group, reset)
        self._spike_monitor(pop, group)

    def _pacemaker_synapses(self, pop: Population, group: Any) -> None:
        """bias="pulse": one neuron spiking at every awake step's start drives each neuron of
        ``group`` through a synapse of weight b, arriving with the population's phase."""
        b2 = self.b2
        if not hasattr(self, "pacemaker"):
            self.pacemaker = b2.NeuronGroup(1, PACEMAKER, threshold="fire > 0.5", reset="fire = 0", clock=self.fine,
                                            namespace={"awake": self.awake}, name=_brian_name("pacemaker", self.names))
            self._regularly(self.pacemaker, PACEMAKER_STEP, "groups", -1, "step")
            self.objects.append(self.pacemaker)
        syn = b2.Synapses(self.pacemaker, group, on_pre=PACEMAKER_ON_PRE, clock=self.fine,
                          delay=self._phase(pop) * self.step, name=_brian_name(pop.name + ".bias", self.names))
        syn.connect(i=0, j=np.arange(pop.size))
        self.objects.append(syn)

    def _bio_constants(self, beta: float, alpha: float) -> tuple[Any, Any, Any]:
        """(tau_m, tau_syn, charge) for a population: tau_m = -step / ln beta, kernel amplitude per unit weight."""
        b2 = self.b2
        step_ms = self.bio.step_ms
        tau_m = -step_ms / math.log(beta) if beta < 1.0 else 1e9 * step_ms  # beta = 1: no leak
        tau_syn = -step_ms / math.log(alpha) if alpha > 0.0 else self.bio.tau_syn_ms
        if abs(tau_m - tau_syn) < 1e-9 * tau_m:
            tau_syn *= 0.999  # the kernel below needs tau_m != tau_syn
        # membrane response to g += c: c tau_m tau_s / (tau_m - tau_s) (exp(-t / tau_m) - exp(-t / tau_s))
        tail = tau_m * tau_syn / (tau_m - tau_syn)  # [ms] factor of the exp(-t / tau_m) tail
        if self.bio.kernel == "tail":
            amplitude = 1.0 / tail
        elif self.bio.kernel == "peak":
            t_peak = tail * math.log(tau_m / tau_syn)
            amplitude = 1.0 / (tail * (math.exp(-t_peak / tau_m) - math.exp(-t_peak / tau_syn)))
        else:  # BioParams checked the name
            raise AssertionError(self.bio.kernel)
        return tau_m * b2.ms, tau_syn * b2.ms, amplitude / b2.ms

    def _readout(self, pop: Population) -> None:
        b2 = self.b2
        if self.exact:
            group = self._group(pop, EXACT_READOUT, clock=self.clock)
            self._regularly(group, EXACT_READOUT_STEP, "level0", ORDER["update"], "step")
            group.bias = pop.bias.reshape(-1)
            self._on_sample_start(group, "y = 0\nI_dense = 0")
            self.readout_monitor = b2.StateMonitor(group, "y", record=True, clock=self.clock, when="end",
                                                   name=group.name + "_monitor")
        else:
            group = self._group(pop, BIO_READOUT, method="euler", clock=self.fine)  # exact for dq/dt = constant
            group.drive = pop.bias.reshape(-1) / self.step
            self._on_sample_start(group, "q = 0")
            self.readout_monitor = b2.StateMonitor(group, "q", record=True, clock=self.clock, when="start",
                                                   order=1, name=group.name + "_monitor")
        self.objects.append(self.readout_monitor)

    def _spike_monitor(self, pop: Population, group: Any) -> None:
        monitor = self.b2.SpikeMonitor(group, name=group.name + "_spikes")
        monitor.when, monitor.order = "end", 0  # the spike space holds the step's spikes until the next threshold
        self.spike_monitors[pop.name] = monitor
        self.objects.append(monitor)

    # --- Dense connections ----------------------------------------------------------------------

    def _dense(self, conn: Connection) -> None:
        b2 = self.b2
        src, dst = self.pops[conn.source], self.pops[conn.target]
        # a graded event carries the input value of the step it left in, even when it arrives later
        weight = GRADED_WEIGHT if src.kind == "input" else "w"
        syn = b2.Synapses(self.groups[conn.source], self.groups[conn.target], DENSE,
                          on_pre=DENSE_ON_PRE[(self.mode, dst.kind)].format(w=weight), clock=self.fine,
                          namespace={"stimulus": self.stimulus}, name=_brian_name(conn.name, self.names))
        pre, post, w = _token_major(dst.tokens, dst.features, src.features, conn.weight, conn.kind)
        syn.connect(i=pre, j=post)
        syn.w = w
        if self.exact:
            syn.delay = (conn.delay - 1) * self.step  # the 'synapses' slot already delays by one step
        else:
            syn.delay = (conn.delay + self._phase(dst) - self._phase(src)) * self.step
        syn.pre.when, syn.pre.order = "synapses", 0
        self.synapses += len(w)
        self.objects.append(syn)

    def _phase(self, pop: Population) -> float:
        """Biophysical: where in time (in steps, modulo the step) a population's step-t activity
        sits. Input events are at t; a LIF driven by Dense spikes fires shortly after its input
        arrives at t + 1/2; an attention target fires after the attention clock tick at t + 1."""
        if pop.kind == "input":
            return 0.0
        return 0.5 + 0.5 * self.level[pop.name]

    # --- attention ------------------------------------------------------------------------------

    def _attention(self, att: Attention) -> None:
        b2 = self.b2
        h, d = att.heads, att.head_dim
        q, v = self.pops[att.query], self.pops[att.value]
        tokens = q.tokens
        gq, gk, gv = (self.groups[n] for n in (att.query, att.key, att.value))
        slot = f"level{self.level[att.target]}" if self.exact else "attention"

        def part(role: str) -> str:
            return _brian_name(f"{att.name}.{role}", self.names)

        # memory cells (h, i, j), index c = (h * d + i) * d + j
        cells = np.arange(h * d * d)
        head_of_cell = cells // (d * d)
        memory = b2.NeuronGroup(h * d * d, MEMORY[att.variant], clock=self.clock, name=part("memory"))
        memory.lam = att.decay[head_of_cell]
        p = att.plasticity
        if att.variant == "stdp":
            memory.a_plus, memory.a_minus = p["a_plus"][head_of_cell], p["a_minus"][head_of_cell]
            gk.pre_decay = np.tile(np.repeat(p["pre_decay"], d), tokens)
            gv.post_decay = np.tile(np.repeat(p["post_decay"], d), tokens)
            self._regularly(gk, KEY_TRACE_STEP, slot, ORDER["pre_trace"], "pre_trace")
            self._regularly(gv, VALUE_TRACE_STEP, slot, ORDER["post_trace"], "post_trace")
        elif att.variant == "three_factor":
            memory.elig_decay = p["eligibility_decay"][head_of_cell]
            memory.tokens = float(self.pops[att.modulator].tokens)
        elif att.variant == "delta":
            memory.rate = p["delta_rate"][head_of_cell]
            self._regularly(memory, MEMORY_DECAY, slot, ORDER["decay"], "decay")
        self._regularly(memory, MEMORY_UPDATE[att.variant], slot, ORDER["memory"], "update")
        self._on_sample_start(memory, MEMORY_RESET[att.variant])
        self.objects.append(memory)
        self.neurons += h * d * d

        # index arrays: one row per (token n, head, i, j)
        n_, h_, i_, j_ = np.meshgrid(np.arange(tokens), np.arange(h), np.arange(d), np.arange(d), indexing="ij")
        n_, h_, i_, j_ = (a.reshape(-1) for a in (n_, h_, i_, j_))
        row = n_ * h * d + h_ * d + i_  # neuron (n, h, i) of a [N, H*d] population
        col = n_ * h * d + h_ * d + j_  # neuron (n, h, j)
        cell = (h_ * d + i_) * d + j_

        errors = None
        if att.variant == "delta":  # error units, and recall synapses key (n, h, i) -> unit (n, h, j) reading S
            errors = b2.NeuronGroup(v.size, ERROR_UNITS, clock=self.clock, name=part("errors"))
            errors.v_s = b2.linked_var(gv, "s")
            recall = b2.Synapses(gk, errors, RECALL, clock=self.clock, name=part("recall"))
            recall.connect(i=row, j=col)
            recall.cell = cell
            recall.S_m = b2.linked_var(memory, "S", index="cell")
            for name in ("r_post", "kc_post"):
                self._slot(recall.summed_updaters[name], slot, ORDER["sums"])
            self._regularly(errors, ERROR_STEP, slot, ORDER["errors"], "step")
            self.objects += [errors, recall]
            self.neurons += v.size
            self.synapses += len(row)
        # write synapses: key (n, h, i) -> cell (h, i, j), the same token's value (n, h, j) linked
        write = b2.Synapses(gk, memory, WRITE[att.variant], clock=self.clock, name=part("write"))
        order = np.lexsort((n_, cell))  # per cell, tokens in order (the float sum over n)
        write.connect(i=row[order], j=cell[order])
        write.vidx = col[order]
        if att.variant == "delta":
            write.err_v = b2.linked_var(errors, "err", index="vidx")
        else:
            write.v_s = b2.linked_var(gv, "s", index="vidx")
        if att.variant == "stdp":
            write.v_y = b2.linked_var(gv, "y", index="vidx")
        for updater in write.summed_updaters.values():
            self._slot(updater, slot, ORDER["delta_write" if att.variant == "delta" else "sums"])
        self.objects.append(write)
        self.synapses += len(row)

        if att.variant == "three_factor":
            gate_pop = self.pops[att.modulator]
            gate_rows = np.repeat(np.arange(gate_pop.size), d * d)  # gate (n, h) -> every cell of head h
            gate_cells = (np.arange(gate_pop.size) % h)[:, None] * d * d + np.arange(d * d)[None, :]
            gate = b2.Synapses(self.groups[att.modulator], memory, GATE, clock=self.clock, name=part("gate"))
            gate.connect(i=gate_rows, j=gate_cells.reshape(-1))
            self._slot(gate.summed_updaters["gate_post"], slot, ORDER["sums"])
            self.objects.append(gate)
            self.synapses += len(gate_rows)

        # read synapses: query (n, h, i) -> attention unit (n, h, j), effective weight S[h, i, j]
        units = b2.NeuronGroup(q.size, ATTENTION_UNITS, clock=self.clock, name=part("units"),
                               namespace={"scale": att.scale})
        units.gain = np.tile(att.out_scale, tokens)
        read = b2.Synapses(gq, units, READ, clock=self.clock, name=part("read"))
        order = np.lexsort((i_, col))  # per unit, rows i in order (the float sum over i)
        read.connect(i=row[order], j=col[order])
        read.cell = cell[order]
        read.S_m = b2.linked_var(memory, "S", index="cell")
        self._slot(read.summed_updaters["qS_post"], slot, ORDER["read"])
        self._regularly(units, ATTENTION_STEP, slot, ORDER["units"], "step")
        setattr(self.groups[att.target], self.link_of[att.name], b2.linked_var(units, "o"))  # the target reads o_k
        self.objects += [units, read]
        self.neurons += q.size
        self.synapses += len(row)
        if not self.exact:  # the step's latches have been read: clear them for the next step
            for name in _attention_sources(att):
                self._regularly(self.groups[name], "s = 0", "attention", ORDER["latch_clear"],
                                f"latch_clear_{att.name}".replace(".", "_"))

    # --- results --------------------------------------------------------------------------------

    def trace(self) -> Trace:
        b2 = self.b2
        T, B = self.steps, self.batch
        spikes: dict[str, np.ndarray] = {"input": self.x_steps != 0}
        for name, monitor in self.spike_monitors.items():
            pop = self.pops[name]
            times = np.asarray(monitor.t / self.step)  # in steps
            index = np.asarray(monitor.i)
            if self.exact:
                global_step = np.rint(times).astype(np.int64)
            else:  # the step whose activity this spike represents (see _phase)
                global_step = np.floor(times - self._phase(pop) + 1e-9).astype(np.int64)
            sample, local = np.divmod(global_step, self.sample_steps)
            keep = (local >= 0) & (local < T) & (sample >= 0) & (sample < B)
            grid = np.zeros((T, B, pop.size), bool)
            grid[local[keep], sample[keep], index[keep]] = True
            spikes[name] = grid.reshape(T, B, pop.tokens, pop.features)
        if self.exact:
            y = np.asarray(self.readout_monitor.y)  # [C, B * sample_steps]
            y = y.reshape(-1, B, self.sample_steps)[:, :, :T]
        else:  # the charge received during each step [t, t + 1) of the readout's phase
            q = np.asarray(self.readout_monitor.q).reshape(-1, B, self.sample_steps)
            y = q[:, :, 1:T + 1] - q[:, :, :T]
        readout = y.transpose(2, 1, 0)  # [C, B, T] -> [T, B, C]
        del b2
        return Trace(spikes, np.ascontiguousarray(readout), int(self.graph.meta["window"]))
