"""Every Brian2 equation string and statement of the Brian2 reference (``neuromorphic.brian2_ref``).

The models, per-step statements, thresholds, resets and ``on_pre`` code of both modes, and of
the attention memory they share, written here where the reader sees them. The builders
(``brian2_build.Builder`` and its subclasses ``brian2_exact.ExactBuilder`` and
``brian2_bio.BioBuilder``) only fill in the ``{...}`` fields and place each statement in the
schedule. Exact-mode variables are dimensionless; biophysical ones carry units (``Hz`` for
currents), checked by Brian2 when the network is built. The ``*_ZERO`` statements run at each
sample's first step and set a group's state back to zero.
"""

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
EXACT_ATTENTION_CURRENT = "\ncurrent = current + {link}"  # {attention} above: one line per attention read
EXACT_LIF_THRESHOLD = "v > theta"
# with silent steps between samples (Dense delays above one step): spikes in flight land, none start
EXACT_LIF_THRESHOLD_AWAKE = EXACT_LIF_THRESHOLD + " and awake(t) > 0.5"
EXACT_LIF_RESET = "v = 0\ns = 1"
EXACT_LIF_ZERO = "v = 0\nu = 0\nI_dense = 0\ns = 0"  # at each sample's first step (all state back to zero)

EXACT_READOUT = """
y : 1                  # the readout of this step: incoming current + bias
I_dense : 1            # Dense input delivered for this step
bias : 1 (constant)
"""
EXACT_READOUT_STEP = "y = I_dense + bias\nI_dense = 0"
EXACT_READOUT_ZERO = "y = 0\nI_dense = 0"

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
BIO_LIF_ZERO = "v = 0\ng = 0 * Hz\ns = 0"
BIO_LATCH_CLEAR = "s = 0"  # after the attention tick has read the step's latches

BIO_READOUT = """
dq/dt = drive : 1      # perfect integrator: the charge received so far (spikes add w to q)
drive : Hz (constant)  # bias b per step as a constant current b / step
"""
BIO_READOUT_ZERO = "q = 0"

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
KEY_TRACE_ZERO = "x = 0"
VALUE_TRACE = "y : 1  # STDP post-synaptic trace\npost_decay : 1 (constant)"
VALUE_TRACE_DECAY = "y = post_decay * y"  # decayed to this step before the memory reads it
VALUE_TRACE_ADD = "y = y + s"  # this step's values, after the memory used y
VALUE_TRACE_ZERO = "y = 0"

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
ATTENTION_LINK = "{link} : 1 (linked)  # attention current of {name}"  # in the target's model: it reads o
# Order inside a level slot (exact) or the 'attention' slot (biophysical), in execution order
ORDER = {
    "pre_trace": -9,     # stdp: x = d_pre x + k (keys); y = d_post y (values)
    "decay": -9,         # delta: S = lambda S before the recall reads it
    "sums": -8,          # write / gate / recall summed variables (coincidences, k S, |k|)
    "errors": -7,        # delta: err = (v - k S) / max(1, |k|)
    "delta_write": -6,   # delta: sum_n k_n err_n
    "memory": -5,        # S update
    "post_trace": -4,    # stdp: y = y + v (values), after the memory used the decayed y
    "read": -3,          # q S summed into the attention units
    "units": -2,         # o = out_scale * (scale * q S)
    "update": 0, "threshold": 1, "reset": 2,  # the populations of this level (exact)
    "pulse": 10, "latch_clear": 20,          # biophysical: read current into the target, clear latches
}
BIO_ATTENTION_PULSE = "g = g + {link} * charge"  # the read current enters the target as one pulse
PACEMAKER = "fire : 1  # 1 at the start of every awake step until the pacemaker spikes"
PACEMAKER_STEP = "fire = awake(t)"
PACEMAKER_THRESHOLD = "fire > 0.5"
PACEMAKER_RESET = "fire = 0"
PACEMAKER_ON_PRE = "g_post += bias_post * charge_post"  # bias="pulse": b once per step, like a weight
