"""fixed_ref against Lava's bit-accurate stock models, and the quantiser's rounding rules."""

import numpy as np
import pytest

from neuromorphic.compare import agreement, encode_steps
from neuromorphic.fixed_ref import FixedOps, dense_fixed, run_fixed
from neuromorphic.ir import Connection, Population
from neuromorphic.lower import lower
from neuromorphic.quantize import encode_fixed, quantize, quantize_bias, quantize_weights
from neuromorphic.simulate import run_graph

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
