"""fixed_ref against Lava's bit-accurate stock models, the quantiser's rounding rules, and
fixed_ref's float64 BLAS path against its int64 path (bit for bit, near the 2^53 bound and past it)."""

import numpy as np
import pytest
import torch

from neuromorphic.compare import agreement, encode_steps
from neuromorphic.fixed_ref import (EXACT_FLOAT_LIMIT, FixedOps, attention_step_fixed, dense_fixed, exact_matmul,
                                    head_read, plan_dense, run_fixed, token_outer_sum)
from neuromorphic.ir import Attention, Connection, Population
from neuromorphic.lower import lower
from neuromorphic.quantize import _quantize_attention, encode_fixed, quantize, quantize_bias, quantize_weights
from neuromorphic.simulate import run_graph
from test_lava_attention import make_attention  # same dir, on sys.path under pytest

pytestmark = pytest.mark.backend


def _run_stock(make_procs, steps):
    """Run Lava fixed_pt processes for ``steps`` and return monitored vars ``{name: [T, n]}``."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.monitor.models import PyMonitorModel
    from lava.proc.monitor.process import Monitor

    root, probes = make_procs()
    monitors = {}
    for name, var in probes.items():
        monitors[name] = Monitor()
        monitors[name].probe(var, steps)
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={Monitor: PyMonitorModel})
    root.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
    out = {name: np.asarray(next(iter(m.get_data().values()))[var.name]) for (name, var), m
           in zip(probes.items(), monitors.values())}
    root.stop()
    return out


@pytest.mark.parametrize("du,dv", [(4095, 2048), (100, 300), (0, 0), (4095, 0)])
def test_stock_lif_fixed_matches_fixed_ref(du, dv):
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIF

    rng = np.random.default_rng(du + dv)
    n, steps = 12, 40
    a_in = rng.integers(-3000, 9000, size=(n, steps))
    a_in[0] = 120000  # drives u past 24 bits: Lava wraps it, fixed_ref must wrap it the same way
    a_in[1] = -120000
    bias_mant = rng.integers(-4096, 4096, size=n)
    bias_exp = rng.integers(0, 8, size=n)
    vth = 900
    lif_box = {}

    def make():
        source = RingBuffer(data=a_in.astype(np.int32))
        lif = LIF(shape=(n,), du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=bias_exp)
        source.s_out.connect(lif.a_in)
        lif_box["lif"] = lif
        return source, {"u": lif.u, "v": lif.v}

    lava = _run_stock(make, steps)
    pop = Population("p", "lif", 1, n, bias=np.zeros((1, n)), du=du, dv=dv, vth=vth,
                     bias_mant=bias_mant.reshape(1, n), bias_exp=bias_exp.reshape(1, n))
    ops, state = FixedOps(), None
    fired = 0
    for t in range(steps):
        s, state = ops.lif(pop, a_in[:, t].reshape(1, 1, n).astype(np.int64), state)
        fired += int(s.sum())
        np.testing.assert_array_equal(state[0].reshape(-1), lava["u"][t].reshape(-1), err_msg=f"u at step {t}")
        np.testing.assert_array_equal(state[1].reshape(-1), lava["v"][t].reshape(-1), err_msg=f"v at step {t}")
    assert fired > 0 and ops.saturation_events > 0  # spikes, wraps and clips all happened


@pytest.mark.parametrize("graded,weight_exp", [(False, 0), (False, -3), (True, 2), (True, -5)])
def test_stock_dense_fixed_matches_fixed_ref(graded, weight_exp):
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    rng = np.random.default_rng(7)
    n_in, n_out, steps = 9, 5, 10
    weights, _ = quantize_weights(rng.normal(size=(n_out, n_in)) * 100)
    x = rng.integers(-100, 128, size=(n_in, steps)) if graded else rng.integers(0, 2, size=(n_in, steps))
    source = Source(data=x.astype(np.int32))
    dense = Dense(weights=weights, weight_exp=weight_exp, num_weight_bits=8, num_message_bits=8 if graded else 0)
    sink = Sink(shape=(n_out,), buffer=steps)
    source.s_out.connect(dense.s_in)
    dense.a_out.connect(sink.a_in)
    source.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    lava = np.asarray(sink.data.get())
    source.stop()
    conn = Connection("c", "a", "b", "full", weights, weight_exp=weight_exp)
    ref = np.stack([dense_fixed(conn, x[:, t].reshape(1, 1, -1), 1).reshape(-1) for t in range(steps)], 1)
    # Lava's Dense delivers one step later (SPEC §2.2)
    np.testing.assert_array_equal(lava[:, 1:], ref[:, :-1])
    assert np.abs(ref).max() > 0


def test_quantised_weights_survive_lavas_clip_and_truncate():
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    rng = np.random.default_rng(3)
    for weight in (rng.normal(size=(20, 30)), np.abs(rng.normal(size=(4, 4))), -np.abs(rng.normal(size=(4, 4))),
                   np.full((2, 2), 1e-6), rng.normal(size=(3, 3)) * 1e4):
        mant, exp = quantize_weights(weight)
        mode = determine_sign_mode(mant)
        lava = truncate_weights(clip_weights(mant, mode, num_bits=8), mode, 8)
        np.testing.assert_array_equal(lava, mant)
        assert mant.min() >= -256 and mant.max() <= 254 and (mant % 2 == 0).all()
        # the rounding error is at most one LSB (2 << exp) of the mantissa grid
        assert np.abs(mant * 2.0 ** exp - weight).max() <= 2.0 ** exp + 1e-12


def test_quantised_bias_fits_lavas_fields():
    bias = np.array([0.0, 1.4, -4096.0, 4095.4, 8190.0, -300000.0, 500000.0])
    mant, exp = quantize_bias(bias)
    assert (np.abs(mant) <= 4095).all() and (exp >= 0).all() and (exp <= 7).all()
    np.testing.assert_allclose(mant * 2.0 ** exp, bias, atol=2.0 ** exp.max())
    assert exp[0] == 0 and exp[1] == 0 and exp[4] == 1


@pytest.mark.parametrize("overrides", [dict(), dict(variant="delta"),
                                       dict(task="recall", mode="causal", variant="delta", attn_scale=1.0)])
def test_fixed_point_stays_close_to_float(overrides, make_model, make_inputs):
    model = make_model(**overrides)
    x_steps = encode_steps(model, make_inputs(model.cfg.task, 32))
    graph = lower(model)
    fixed = quantize(graph, calibration=x_steps)
    x_int, clipped = encode_fixed(fixed, x_steps)
    assert clipped == 0
    float_trace, fixed_trace = run_graph(graph, x_steps), run_fixed(fixed, x_int)
    assert agreement(float_trace, fixed_trace)["spike_agreement"] > 0.98
    # logits in float units: the integrator's increment is 64 * readout_unit per unit current
    logits = fixed_trace.logits / (64 * fixed.fixed["readout_unit"])
    assert np.corrcoef(logits.ravel(), float_trace.logits.ravel())[0, 1] > 0.95


# ---------------------------------------------------------------------------------------------
# the float64 BLAS path (exact below 2^53) against the int64 path


def _odd_near(limit: int, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Odd int64 values of magnitude up to ``limit`` (odd: float64 rounding would show in the last bit)."""
    x = rng.integers(-limit, limit + 1, size=shape)
    return np.clip(x | 1, -limit, limit)


def test_exact_matmul_is_int64_just_below_the_bound():
    rng = np.random.default_rng(0)
    inner, peak_b = 16, 127
    peak_a = (EXACT_FLOAT_LIMIT - 1) // (inner * peak_b)  # the largest |a| the bound allows
    if peak_a % 2 == 0:
        peak_a -= 1
    bound = peak_a * peak_b * inner
    assert EXACT_FLOAT_LIMIT // 2 < bound < EXACT_FLOAT_LIMIT
    a = _odd_near(peak_a, (6, 40, inner), rng)
    b = _odd_near(peak_b, (6, inner, 30), rng)
    a[:, 0], b[:, :, 0] = peak_a, peak_b  # one sum at the bound itself
    a[:, 1], b[:, :, 1] = -peak_a, peak_b
    want = a @ b
    got = exact_matmul(a, b, bound)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert want[:, 0, 0].max() == bound and want[:, 1, 1].min() == -bound


def test_exact_matmul_falls_back_to_int64_past_the_bound():
    rng = np.random.default_rng(1)
    inner, peak_b = 16, 127
    peak_a = 4 * EXACT_FLOAT_LIMIT // (inner * peak_b) + 1  # sums up to 4 * 2^53: float64 loses their last bits
    a, b = _odd_near(peak_a, (40, inner), rng), _odd_near(peak_b, (inner, 30), rng)
    bound = peak_a * peak_b * inner
    want = a @ b
    in_float = np.matmul(a, b, dtype=np.float64).astype(np.int64)
    assert (in_float != want).any()  # the guard matters: float64 would be wrong here
    np.testing.assert_array_equal(exact_matmul(a, b, bound), want)


@pytest.mark.parametrize("kind", ["tokenwise", "full"])
@pytest.mark.parametrize("weight_exp", [-7, -1, 0, 3])
@pytest.mark.parametrize("scale", ["lava", "near_bound", "past_bound"])
def test_dense_blas_equals_int64(kind, weight_exp, scale):
    """Random mixed-sign weights and graded inputs; ``near_bound``: max |w| * peak * fan-in *
    2^max(exp, 0) just below 2^53, with one output at the bound; ``past_bound``: twice that."""
    rng = np.random.default_rng(abs(weight_exp) + len(kind) + len(scale))
    tokens, f_in, f_out, peak = 3, 16, 12, 127
    shape = (f_out, f_in) if kind == "tokenwise" else (tokens * f_out, tokens * f_in)
    fan_in = shape[1]
    w_peak = {"lava": 256, "near_bound": EXACT_FLOAT_LIMIT // (peak * fan_in << max(weight_exp, 0)) - 1}.get(scale)
    if w_peak is None:
        w_peak = 2 * EXACT_FLOAT_LIMIT // (peak * fan_in << max(weight_exp, 0))
    weights = _odd_near(w_peak, shape, rng)
    weights[0], weights[1] = w_peak, -w_peak
    x = _odd_near(peak, (5, tokens, f_in), rng)
    x[0] = peak  # sample 0 drives outputs 0 and 1 to +-the bound
    conn = Connection("c", "a", "b", kind, weights, weight_exp=weight_exp)
    plan = plan_dense(conn)
    assert plan.exact(peak) == (scale != "past_bound")
    assert plan.exact(1) or scale == "past_bound"
    want = dense_fixed(conn, x, tokens, blas=False)
    np.testing.assert_array_equal(dense_fixed(conn, x, tokens), want)
    spikes = rng.random((5, tokens, f_in)) < 0.4
    np.testing.assert_array_equal(dense_fixed(conn, spikes, tokens), dense_fixed(conn, spikes, tokens, blas=False))
    if scale != "lava":
        assert np.abs(want).max() > (EXACT_FLOAT_LIMIT >> 2) >> max(-weight_exp, 0)  # the sums reach the bound


def test_fixed_ops_plans_again_when_learning_replaces_weights():
    rng = np.random.default_rng(4)
    conn = Connection("c", "a", "b", "tokenwise", rng.integers(-256, 255, (6, 8)), weight_exp=-1)
    target = Population("b", "lif", 2, 6)
    ops, spikes = FixedOps(), rng.random((3, 2, 8)) < 0.5
    first = ops.dense(conn, spikes, target)
    conn.weight = rng.integers(-256, 255, (6, 8))
    np.testing.assert_array_equal(ops.dense(conn, spikes, target), dense_fixed(conn, spikes, 2, blas=False))
    assert not np.array_equal(first, ops.dense(conn, spikes, target))


@pytest.mark.parametrize("past", [False, True])
def test_attention_products_at_the_bound(past):
    """``token_outer_sum`` (sum over N tokens) and ``head_read`` (sum over d) with the graded
    side at the largest value whose bound stays below 2^53, or 4x past it (then int64, where
    float64 would be wrong)."""
    rng = np.random.default_rng(int(past))
    batch, tokens, heads, dim = 2, 16, 2, 16
    for inner, product in ((tokens, token_outer_sum), (dim, head_read)):
        peak = (4 * EXACT_FLOAT_LIMIT if past else EXACT_FLOAT_LIMIT - 1) // inner
        spikes = rng.random((batch, tokens, heads, dim)) < 0.8
        spikes[0] = True  # one sum over every term
        if product is token_outer_sum:
            graded = _odd_near(peak, (batch, tokens, heads, dim), rng)
            graded[0] = peak - rng.integers(0, 2 ** 20, (tokens, heads, dim))  # sums near inner * peak
            args = (spikes, graded, 1, peak)
            want = np.einsum("bnhi,bnhj->bhij", spikes.astype(np.int64), graded)
        else:
            graded = _odd_near(peak, (batch, heads, dim, dim), rng)
            graded[0] = peak - rng.integers(0, 2 ** 20, (heads, dim, dim))
            args = (spikes, graded, 1, peak)
            want = np.einsum("bnhi,bhij->bnhj", spikes.astype(np.int64), graded)
        got = product(*args)
        np.testing.assert_array_equal(got, want, err_msg=product.__name__)
        np.testing.assert_array_equal(product(*args, blas=False), want, err_msg=product.__name__)
        assert np.abs(want).max() > EXACT_FLOAT_LIMIT // 2 * (4 if past else 1)  # near the bound, or 2x past 2^53
        if past:  # float64 would have rounded these sums
            in_float = product(*args[:3], 1)  # a false bound of 1 forces float64
            assert (in_float != want).any(), product.__name__


def _attention(variant: str, seed: int, heads: int = 2, dim: int = 16, tokens: int = 4) -> Attention:
    att = make_attention(variant, seed, heads, dim)
    _quantize_attention(att, target_unit=256.0, state_bits=24, tokens=tokens)
    return att


@pytest.mark.parametrize("variant", ["hebbian", "stdp", "three_factor", "delta"])
@pytest.mark.parametrize("state_bits", [24, 49, 52])
def test_attention_blas_equals_int64(variant, state_bits):
    """Every variant from a random saturated state: 49 state bits put the read's bound (2^48 *
    d = 2^52) just below 2^53; at 52 the reads reach ~2^55, where float64 would round them, so
    they must run in int64. Outputs are the raw reads (out_mant = 1)."""
    batch, tokens, heads, dim, steps = 3, 4, 2, 16, 6
    att = _attention(variant, state_bits, heads, dim, tokens)
    att.fixed.update(state_bits=state_bits, out_mant=[1] * heads * dim, out_shift=0)
    if "trace_bits" in att.fixed:
        att.fixed["trace_bits"] = state_bits
    rng = np.random.default_rng(state_bits)
    limit = 2 ** (state_bits - 1) - 1
    state = {"memory": rng.integers(-limit, limit + 1, (batch, heads, dim, dim))}
    # a column near the limit, distinct values (equal ones would sum to a multiple of 16): q = 1 reads ~16 * limit
    state["memory"][0, 0, :, 0] = limit - rng.integers(0, 2 ** 20, dim)
    if variant == "stdp":
        state["pre_trace"] = rng.integers(-limit, limit + 1, (batch, tokens, heads, dim))
        state["post_trace"] = rng.integers(-limit, limit + 1, (batch, tokens, heads, dim))
    if variant == "three_factor":
        state["eligibility"] = rng.integers(-limit, limit + 1, (batch, heads, dim, dim))
    states = {True: state, False: state}
    largest = 0
    for t in range(steps):
        q, k, v = (rng.random((batch, tokens, heads * dim)) < (0.9 if t == 0 else 0.4) for _ in range(3))
        q[0] |= t == 0
        m = rng.random((batch, tokens, heads)) < 0.5
        out = {}
        for blas in (True, False):
            out[blas], states[blas], clipped = attention_step_fixed(att, q, k, v, m, states[blas], blas)
            out[blas] = (out[blas], clipped)
        np.testing.assert_array_equal(out[True][0], out[False][0], err_msg=f"output at step {t}")
        assert out[True][1] == out[False][1]
        for name in states[False]:
            np.testing.assert_array_equal(states[True][name], states[False][name], err_msg=f"{name} at step {t}")
        largest = max(largest, int(np.abs(out[False][0]).max()))
    assert largest > 8 * limit  # the reads came near their bound, 16 * limit


@pytest.mark.parametrize("overrides", [dict(), dict(variant="delta"), dict(variant="stdp"),
                                       dict(variant="three_factor"),
                                       dict(task="recall", mode="causal", variant="delta", attn_scale=1.0)])
def test_run_fixed_blas_equals_int64(overrides, make_model, make_inputs):
    model = make_model(**overrides)
    x_steps = encode_steps(model, make_inputs(model.cfg.task, 24))
    fixed = quantize(lower(model), calibration=x_steps)
    x_int, _ = encode_fixed(fixed, x_steps)
    runs = {}
    for blas in (True, False):
        ops = FixedOps(blas)
        runs[blas] = (run_graph(fixed, x_int, ops), ops)
    (fast, ops), (slow, _) = runs[True], runs[False]
    assert all(plan.exact(1) for plan in ops.plans.values())  # every Dense ran through BLAS
    assert set(fast.spikes) == set(slow.spikes)
    for name in slow.spikes:
        np.testing.assert_array_equal(fast.spikes[name], slow.spikes[name], err_msg=name)
    assert fast.readout.dtype == slow.readout.dtype == np.int64
    np.testing.assert_array_equal(fast.readout, slow.readout)
    assert fast.saturation_events == slow.saturation_events
    assert sum(int(s.sum()) for s in slow.spikes.values()) > 0


def test_run_fixed_falls_back_where_the_input_breaks_the_bound(make_model, make_inputs):
    """Graded input scaled until its connections' bound passes 2^53: they run in int64 (still
    the same as the int64 path), the spike-driven connections stay on BLAS."""
    model = make_model()
    x_steps = encode_steps(model, make_inputs("digits", 8))
    fixed = quantize(lower(model), calibration=x_steps)
    x_int, _ = encode_fixed(fixed, x_steps)
    inputs = [c for c in fixed.connections if c.source == fixed.input.name]
    unit = min(plan_dense(c).unit_bound for c in inputs)
    x_big = x_int * (EXACT_FLOAT_LIMIT // (unit * int(np.abs(x_int).max())) + 1)
    ops = FixedOps()
    fast = run_graph(fixed, x_big, ops)
    slow = run_graph(fixed, x_big, FixedOps(blas=False))
    peak = ops.input_peaks[fixed.input.name]
    assert not any(ops.plans[c.name].exact(peak) for c in inputs)
    assert any(plan.exact(1) for name, plan in ops.plans.items() if name not in {c.name for c in inputs})
    for name in slow.spikes:
        np.testing.assert_array_equal(fast.spikes[name], slow.spikes[name], err_msg=name)
    np.testing.assert_array_equal(fast.readout, slow.readout)
    assert fast.saturation_events == slow.saturation_events


def test_float_run_graph_restores_torch_threads(make_model, make_inputs):
    """FloatOps steps torch on one thread (small tensors) and gives the caller's setting back."""
    model = make_model()
    x_steps = encode_steps(model, make_inputs("digits", 4))
    graph = lower(model)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = run_graph(graph, x_steps)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    one = run_graph(graph, x_steps)
    for name in one.spikes:
        np.testing.assert_array_equal(two.spikes[name], one.spikes[name])
    np.testing.assert_array_equal(two.readout, one.readout)
