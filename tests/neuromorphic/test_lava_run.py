"""Whole networks on Lava: floating point equals the torch model spike for spike, fixed point
equals ``fixed_ref`` bit for bit; samples run back to back stay independent."""

import sys

import numpy as np
import pytest

from neuromorphic.compare import agreement, encode_steps, torch_trace
from neuromorphic.fixed_ref import run_fixed
from neuromorphic.lower import lower
from neuromorphic.quantize import encode_fixed, quantize

pytestmark = pytest.mark.backend

CASES = {
    "feed-forward": dict(depth=0),
    "global-hebbian": dict(),
    "global-three_factor": dict(variant="three_factor"),
    "causal-delta": dict(task="recall", mode="causal", variant="delta", attn_scale=1.0),
    "causal-stdp": dict(task="recall", mode="causal", variant="stdp", attn_scale=0.5),
    "cuba-global-delta": dict(variant="delta", alpha=0.5),
    # skips delayed as long as the sublayers (connections of delay 3 and 5 into later readers)
    "aligned-global-hebbian": dict(delays="aligned", depth=2),
    "aligned-causal-delta": dict(task="recall", mode="causal", variant="delta", attn_scale=1.0, delays="aligned"),
    "cortical-hebbian": dict(attention="cortical", heads=4),  # q/k/v pool tokens: full Dense connections
    # top-down feedback: a bottom-up copy of the layers whose readers feed the gates one step late
    "top_down-block": dict(variant="three_factor", top_down="block", depth=2),
}


@pytest.fixture(params=list(CASES))
def case(request, make_model, make_inputs):
    model = make_model(**CASES[request.param])
    x_steps = encode_steps(model, make_inputs(model.cfg.task, 5))
    return model, lower(model), x_steps


def _assert_exact(reference, trace):
    score = agreement(reference, trace)
    assert score["populations_compared"] == len(reference.spikes) - ("input" in reference.spikes)
    assert score["spike_agreement"] == 1.0, {k: v for k, v in score["per_population"].items() if v < 1}
    assert any(s.any() for s in trace.spikes.values())
    return score


def test_lava_float_matches_torch(case):
    from neuromorphic.lava.run import run_lava

    model, graph, x_steps = case
    trace, info = run_lava(graph, x_steps, progress=False, chunk=2)
    reference = torch_trace(model, x_steps)
    _assert_exact(reference, trace)
    np.testing.assert_allclose(trace.readout, reference.readout, rtol=1e-9, atol=1e-9)
    assert info["steps_per_second"] > 0


def test_lava_fixed_matches_fixed_ref(case):
    from neuromorphic.lava.run import run_lava

    model, graph, x_steps = case
    fixed = quantize(graph, calibration=x_steps)
    x_int, _ = encode_fixed(fixed, x_steps)
    trace, info = run_lava(fixed, x_int, progress=False, chunk=3)
    reference = run_fixed(fixed, x_int)
    _assert_exact(reference, trace)
    np.testing.assert_array_equal(trace.readout, reference.readout)
    assert trace.saturation_events == 0


def test_require_lava_names_the_python_it_needs(monkeypatch):
    from neuromorphic.lava import LavaUnavailable, require_lava

    monkeypatch.setattr(sys, "version_info", (3, 11, 4, "final", 0))
    with pytest.raises(LavaUnavailable, match="needs CPython 3.10.*this is Python 3.11"):
        require_lava()


def test_guard_that_cannot_separate_samples_is_refused(make_model, make_inputs, tmp_path):
    from neuromorphic.ir import LoweringError
    from neuromorphic.lava.run import build_network

    model = make_model(depth=0)
    x_steps = encode_steps(model, make_inputs("digits", 2))
    fixed = quantize(lower(model), calibration=x_steps)
    x_int, _ = encode_fixed(fixed, x_steps)
    build_network(fixed, x_int, tmp_path)  # fits
    fixed.connections[0].weight_exp += 9  # inputs up to 2^9 times larger: could outvote the guard
    with pytest.raises(LoweringError, match="'final'.*guard"):
        build_network(fixed, x_int, tmp_path)


def _random_blocks(rng: np.random.Generator, fixed: bool):
    """Blocks over two inputs (graded [3 x 5 + 4], spikes [6]) and two outputs ([3 x 4 + 2], [5]):
    tokenwise and full, graded and binary, exponents of both signs, every sign mode, fewer
    weight bits, and two blocks into the same rows (summed after each one's own shift)."""
    from neuromorphic.lava.synapses.process import Block

    def weight(shape, sign=0):
        if not fixed:
            w = rng.normal(0, 1, shape)
        else:
            w = 2 * rng.integers(-128, 128, shape)  # even mantissas in [-256, 254]
        return np.abs(w) if sign > 0 else -np.abs(w) if sign < 0 else w

    exp = (lambda e: e) if fixed else (lambda e: 0)
    return [
        Block(0, 0, 0, 0, 3, weight((4, 5)), graded=True, weight_exp=exp(-3), name="tokenwise graded"),
        Block(1, 0, 0, 0, 3, weight((4, 2)), weight_exp=exp(1), name="tokenwise spikes, same rows"),
        Block(0, 15, 0, 12, 1, weight((2, 4), sign=1), graded=True, weight_exp=exp(-1), name="excitatory"),
        Block(1, 2, 1, 0, 1, weight((5, 4), sign=-1), weight_exp=exp(2), name="inhibitory"),
        Block(0, 0, 1, 0, 1, weight((5, 19)), graded=True, weight_exp=exp(-6), num_weight_bits=6 if fixed else 8,
              name="full, 6 weight bits"),
    ]


@pytest.mark.parametrize("fixed", [False, True], ids=["float", "fixed"])
def test_synapses_equal_one_stock_dense_per_block(fixed):
    """``Synapses`` restates Lava's Dense per block: fed the same random inputs, its outputs equal
    those of one stock ``Dense`` per block (weights placed in full zero-padded matrices, kron(I_N, W)
    for tokenwise ones) summed at a sink, bit for bit in fixed point."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    from neuromorphic.lava.synapses.process import Synapses

    rng = np.random.default_rng(3)
    steps, in_sizes, out_sizes = 8, (19, 6), (14, 5)
    blocks = _random_blocks(rng, fixed)
    graded = rng.integers(-127, 128, (in_sizes[0], steps)) if fixed else rng.normal(0, 1, (in_sizes[0], steps))
    spikes = (rng.random((in_sizes[1], steps)) < 0.5) * (1 + rng.integers(0, 3, (in_sizes[1], steps)))  # non-zero = 1
    dtype = np.int32 if fixed else np.float64
    sources = [Source(data=graded.astype(dtype)), Source(data=spikes.astype(dtype))]
    synapses = Synapses(blocks=blocks, in_sizes=in_sizes, out_sizes=out_sizes)
    ours = [Sink(shape=(size,), buffer=steps) for size in out_sizes]
    stock = [Sink(shape=(size,), buffer=steps) for size in out_sizes]
    for i, source in enumerate(sources):
        source.s_out.connect(synapses.in_port(i))
    for k, sink in enumerate(ours):
        synapses.out_port(k).connect(sink.a_in)
    for b in blocks:
        full = np.zeros((out_sizes[b.target], in_sizes[b.source]), b.weight.dtype)
        full[b.target_start:b.target_stop, b.source_start:b.source_stop] = np.kron(np.eye(b.tokens), b.weight)
        extra = {"weight_exp": b.weight_exp, "num_weight_bits": b.num_weight_bits} if fixed else {}
        dense = Dense(weights=full, num_message_bits=24 if b.graded else 0, **extra)
        sources[b.source].s_out.connect(dense.s_in)
        dense.a_out.connect(stock[b.target].a_in)
    try:
        synapses.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt" if fixed else "floating_pt"))
        got = [np.asarray(sink.data.get()) for sink in ours]
        expected = [np.asarray(sink.data.get()) for sink in stock]
    finally:
        synapses.stop()
    for k in range(len(out_sizes)):
        assert np.abs(expected[k][:, 1:]).max() > 0  # non-trivial (step 1 sends the empty buffer)
        if fixed:
            np.testing.assert_array_equal(got[k], expected[k])
        else:
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-12)


def test_synapses_reject_a_block_outside_its_port():
    from neuromorphic.lava.synapses.process import Block, Synapses

    with pytest.raises(ValueError, match="'wide' reads outside input port 0"):
        Synapses(blocks=[Block(0, 2, 0, 0, 2, np.ones((1, 2)), name="wide")], in_sizes=[5], out_sizes=[2])


def test_network_runs_in_few_processes(make_model, make_inputs, tmp_path):
    """Populations share LIF processes (same parameters, same attention stage), every static
    connection lives in one Synapses process, one recorder takes every group: the process count
    does not grow with the populations or connections (lava-nc 0.10.0 steps every process)."""
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIFReset

    from neuromorphic.lava.attention.process import SpikingAttention
    from neuromorphic.lava.recorder.process import SpikeRecorder
    from neuromorphic.lava.run import build_network, lif_groups
    from neuromorphic.lava.synapses.process import Synapses

    model = make_model()
    graph = lower(model)
    x_steps = encode_steps(model, make_inputs(model.cfg.task, 2))
    net = build_network(graph, x_steps, tmp_path)
    kinds = [type(p) for p in net.processes]
    groups = lif_groups(graph)
    # stage 0 (every LIF the attention does not drive), the attention targets, the readout
    assert [len(g.names) for g in groups] == [len(graph.populations) - 2 - len(graph.attentions),
                                             len(graph.attentions), 1]
    assert kinds.count(RingBuffer) == kinds.count(Synapses) == kinds.count(SpikeRecorder) == 1
    assert kinds.count(SpikingAttention) == len(graph.attentions)
    assert sum(issubclass(k, LIFReset) for k in kinds) == len(groups)
    assert not any(issubclass(k, Dense) for k in kinds)
    assert net.process_count == 3 + len(groups) + len(graph.attentions)


def test_keep_records_only_the_populations_asked_for(make_model, make_inputs):
    from neuromorphic.lava.run import run_lava

    model = make_model()
    graph = lower(model)
    x_steps = encode_steps(model, make_inputs(model.cfg.task, 2))
    wanted = {p.name for p in graph.populations if p.kind == "lif"}
    wanted = {sorted(wanted)[1]}
    trace, _ = run_lava(graph, x_steps, progress=False, keep=wanted)
    reference = torch_trace(model, x_steps)
    assert set(trace.spikes) == wanted
    name = wanted.pop()
    np.testing.assert_array_equal(trace.spikes[name], reference.spikes[name])
    np.testing.assert_allclose(trace.readout, reference.readout, rtol=1e-9, atol=1e-9)


def test_more_vectors_than_a_process_takes_spread_over_several(make_model, make_inputs, monkeypatch):
    """With two vectors per Synapses / SpikeRecorder, the network needs several of each and
    still equals torch spike for spike (the path a graph with more than 16 groups takes)."""
    from neuromorphic.lava import run

    monkeypatch.setattr(run, "PORTS_PER_PROCESS", 2)
    model = make_model()
    graph = lower(model)
    x_steps = encode_steps(model, make_inputs(model.cfg.task, 2))
    trace, info = run.run_lava(graph, x_steps, progress=False)
    assert info["processes"] > 3 + 3 + len(graph.attentions)  # 3 LIF groups: more than one of each
    reference = torch_trace(model, x_steps)
    _assert_exact(reference, trace)
    np.testing.assert_allclose(trace.readout, reference.readout, rtol=1e-9, atol=1e-9)
