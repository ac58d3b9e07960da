"""The backends' stock LIF neurons against the shared step ``spikeformer.neurons.lif_step``.

These are the first backend agreement tests (SPEC §2.1): a constant bias drives one LIF
population in Lava (floating point, CPU) and in Brian2 (discrete-time update, numpy target);
spikes must equal the torch step exactly and membranes must agree to float precision.
Marked ``backend``: under SPIKEFORMER_REQUIRE_BACKENDS=1 (CI) a skip here is a failure.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikeformer.neurons import LIFState, lif_step

STEPS = 30
BETA = 0.8
BIASES = np.array([0.15, 0.3, 0.45, 0.7, 1.2])
THRESHOLD = 1.0


def torch_reference() -> tuple[np.ndarray, np.ndarray]:
    """Spikes and membranes ``[STEPS, n]`` of the shared LIF step with a constant input = bias."""
    bias = torch.tensor(BIASES, dtype=torch.float64)
    state = LIFState(torch.zeros_like(bias), torch.zeros_like(bias), torch.zeros_like(bias))
    spikes, membranes = [], []
    for _ in range(STEPS):
        s, state = lif_step(bias, state, BETA, 0.0, THRESHOLD, lambda x: (x > 0).to(x.dtype))
        spikes.append(s.numpy())
        membranes.append(state.membrane.numpy())
    return np.array(spikes), np.array(membranes)


@pytest.mark.backend
def test_lava_float_lif_matches_shared_step():
    pytest.importorskip("lava", reason="lava-nc 0.10.0 (Python 3.10) is needed")
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.lif.process import LIF
    from lava.proc.monitor.process import Monitor

    # du = 1: no current state (alpha = 0); dv = 1 - beta; the bias enters v every step
    lif = LIF(shape=(len(BIASES),), du=1.0, dv=1.0 - BETA, vth=THRESHOLD, bias_mant=BIASES, bias_exp=0)
    monitor_v, monitor_s = Monitor(), Monitor()
    monitor_v.probe(lif.v, STEPS)
    monitor_s.probe(lif.s_out, STEPS)
    try:
        lif.run(condition=RunSteps(num_steps=STEPS), run_cfg=Loihi2SimCfg(select_tag="floating_pt"))
        v = monitor_v.get_data()[lif.name]["v"]
        s = monitor_s.get_data()[lif.name]["s_out"]
    finally:
        lif.stop()
    spikes, membranes = torch_reference()
    np.testing.assert_array_equal(s, spikes)
    # Lava zeroes v in the spiking step itself; the shared step zeroes it in the next one.
    # Both give the same next step, so compare the membrane wherever no spike happened.
    quiet = spikes == 0
    np.testing.assert_allclose(v[quiet], membranes[quiet], rtol=0, atol=1e-12)
    assert spikes.sum() > 0 and quiet.sum() > 0  # both regimes were exercised


@pytest.mark.backend
def test_brian2_discrete_lif_matches_shared_step():
    brian2 = pytest.importorskip("brian2", reason="brian2 is needed")
    from brian2 import Network, NeuronGroup, SpikeMonitor, StateMonitor, defaultclock, ms

    brian2.prefs.codegen.target = "numpy"  # no compile step: keeps the test fast
    defaultclock.dt = 1 * ms  # one algorithmic step per dt
    # the discrete-time LIF of SPEC §2.1 with alpha = 0, written where the reader sees it
    group = NeuronGroup(
        len(BIASES),
        "v : 1\nb : 1\nbeta : 1 (shared)",
        threshold=f"v > {THRESHOLD}",
        reset="v = 0",
        method="euler",
    )
    group.run_regularly("v = beta * v + b", when="before_thresholds")
    group.b = BIASES
    group.beta = BETA
    state = StateMonitor(group, "v", record=True, when="after_thresholds")
    spikes_mon = SpikeMonitor(group)
    net = Network(group, state, spikes_mon)
    net.run(STEPS * ms)
    spikes, membranes = torch_reference()
    got = np.zeros_like(spikes)
    steps = np.round(np.asarray(spikes_mon.t / ms)).astype(int)
    got[steps, np.asarray(spikes_mon.i)] = 1
    np.testing.assert_array_equal(got, spikes)
    v = np.asarray(state.v).T  # [STEPS, n], recorded after threshold, before reset
    quiet = spikes == 0
    np.testing.assert_allclose(v[quiet], membranes[quiet], rtol=0, atol=1e-12)


def cuba_graph(seed: int = 0):
    """input [1, n] graded -> lif (alpha > 0, a bias per neuron) through a random Dense -> readout:
    random currents into the one LIF equation every backend restates."""
    from neuromorphic.ir import Connection, Graph, Population

    rng = np.random.default_rng(seed)
    n = 12
    pops = [Population("input", "input", 1, n, graded=True),
            Population("cells", "lif", 1, n, beta=0.8, alpha=0.6, threshold=1.0, bias=rng.uniform(-0.1, 0.3, (1, n))),
            Population("readout", "readout", 1, 2, bias=np.zeros((1, 2)))]
    conns = [Connection("drive", "input", "cells", "tokenwise", rng.normal(0.1, 0.5, (n, n))),
             Connection("out", "cells", "readout", "full", rng.normal(0, 1, (2, n)))]
    meta = {"mode": "global", "steps": STEPS, "window": STEPS, "latency": 2, "classes": 2}
    return Graph(pops, conns, [], meta).validate(), rng.uniform(0, 1, (STEPS, 4, 1, n))


def shared_step_spikes(graph, x_steps: np.ndarray) -> np.ndarray:
    """The ``cells`` spikes by ``lif_step`` itself, fed the Dense currents (one step late)."""
    pop, conn = graph.population("cells"), graph.connections[0]
    current = np.concatenate([np.zeros_like(x_steps[:1]), x_steps[:-1]]) @ conn.weight.T  # [T, B, 1, n]
    x = torch.from_numpy(current)
    state = LIFState(torch.zeros_like(x[0]), torch.zeros_like(x[0]), torch.zeros_like(x[0]))
    out = []
    for t in range(len(x)):
        s, state = lif_step(x[t], state, pop.beta, pop.alpha, pop.threshold, lambda v: (v > 0).to(v.dtype),
                            torch.from_numpy(pop.bias))
        out.append(s.numpy() != 0)
    return np.stack(out)


@pytest.mark.backend
def test_every_backend_restating_the_lif_step_agrees_with_it_on_random_currents(tmp_path):
    """SPEC §2.1 with a synaptic current and a membrane bias: the Brian2 exact strings, Lava's stock
    LIF (float), run_graph and, in fixed point, Lava's bit-accurate LIF against fixed_ref."""
    from neuromorphic.brian2_ref import run_brian2
    from neuromorphic.fixed_ref import run_fixed
    from neuromorphic.lava.run import run_lava
    from neuromorphic.quantize import encode_fixed, quantize
    from neuromorphic.simulate import run_graph

    graph, x_steps = cuba_graph()
    expected = shared_step_spikes(graph, x_steps)
    assert 0.1 < expected.mean() < 0.9  # both regimes
    for name, trace in {"run_graph": run_graph(graph, x_steps),
                        "brian2": run_brian2(graph, x_steps, mode="exact")[0],
                        "lava-float": run_lava(graph, x_steps, progress=False)[0]}.items():
        np.testing.assert_array_equal(trace.spikes["cells"], expected, err_msg=name)
    fixed = quantize(graph, calibration=x_steps)
    x_int, _ = encode_fixed(fixed, x_steps)
    reference = run_fixed(fixed, x_int)
    lava = run_lava(fixed, x_int, progress=False)[0]
    np.testing.assert_array_equal(lava.spikes["cells"], reference.spikes["cells"])
    np.testing.assert_array_equal(lava.readout, reference.readout)
    assert (reference.spikes["cells"] == expected).mean() > 0.95  # fixed point stays close to float
