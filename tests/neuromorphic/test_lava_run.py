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
