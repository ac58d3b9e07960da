"""On-chip learning: rules.stdp and rules.three_factor as Lava's float learning engine
(neuromorphic/lava/learning.py) and as Brian2 plastic synapses, weight for weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuromorphic.lava.learning import (STDP_DW, THREE_FACTOR_DT, THREE_FACTOR_DW, VANISHING_TAU, learning_rule, masked,
                                        stdp_rule_parameters, three_factor_inputs, three_factor_rule_parameters)
from rules import stdp, three_factor
from rules.base import RuleError, decay

pytestmark = pytest.mark.backend


def run_learning_dense(pre: np.ndarray, post: np.ndarray, w0: np.ndarray, rule, y_inputs=None) -> np.ndarray:
    """Pre spikes ``[T, I]`` into ``s_in``, post spikes ``[T, J]`` into ``s_in_bap`` (and, for a
    three-factor rule, ``y_inputs[k] [T, J]`` into ``s_in_yk``), from RingBuffers; returns the
    weights ``[T, J, I]`` after every step (float model)."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import LearningDense
    from lava.proc.io.source import RingBuffer

    sources = {"s_in": RingBuffer(data=pre.T.astype(float)), "s_in_bap": RingBuffer(data=post.T.astype(float))}
    for k, v in (y_inputs or {}).items():
        sources[f"s_in_{k}"] = RingBuffer(data=v.T.astype(float))
    dense = LearningDense(weights=w0.copy(), learning_rule=rule)
    for port, source in sources.items():
        source.s_out.connect(getattr(dense, port))
    weights = []
    try:
        for _ in range(pre.shape[0]):
            dense.run(condition=RunSteps(num_steps=1), run_cfg=Loihi2SimCfg(select_tag="floating_pt"))
            weights.append(np.array(dense.weights.get(), dtype=float))
    finally:
        dense.stop()
    return np.stack(weights)


def torch_weights(update, pre: np.ndarray, post: np.ndarray, w0: np.ndarray, params, modulator=None) -> np.ndarray:
    """``w0`` plus the rule's cumulative dw after every step ``[T, J, I]`` (float64, batch of one)."""
    traces, w, out = None, torch.tensor(w0), []
    for t in range(pre.shape[0]):
        m = None if modulator is None else torch.tensor(modulator[t:t + 1])
        dw, traces = update(torch.tensor(pre[t:t + 1]), torch.tensor(post[t:t + 1]), traces, params, m)
        w = w + dw
        out.append(w.numpy().copy())
    return np.stack(out)


def test_generated_learning_rules_are_the_hand_written_ones():
    params = stdp.STDPParameters(lr=0.5, a_plus=0.8, a_minus=0.6, tau_pre=3.0, tau_post=5.0)
    assert stdp_rule_parameters(params) == dict(
        dw="y0 * x1 - x0 * y1 + x0 * y2", x1_impulse=0.4, x1_tau=3.0, y1_impulse=0.3, y1_tau=5.0,
        y2_impulse=0.3, y2_tau=1e-4, t_epoch=1)
    assert STDP_DW == "y0 * x1 - x0 * y1 + x0 * y2" and np.exp(-1 / VANISHING_TAU) == 0.0
    tf = three_factor.ThreeFactorParameters(lr=0.1, a_plus=1.5, a_minus=0.5, tau_pre=2.0, tau_post=4.0,
                                            tau_eligibility=8.0)
    assert three_factor_rule_parameters(tf) == dict(
        dt="y0 * x1 - x0 * y1 + u0 * t * y3 - u0 * t", dw="u0 * t * y2 * y3 + y0 * x1 * y2 - x0 * y1 * y2",
        x1_impulse=1.5, x1_tau=2.0, t_epoch=1)
    assert (THREE_FACTOR_DT, THREE_FACTOR_DW) == (three_factor_rule_parameters(tf)["dt"],
                                                  three_factor_rule_parameters(tf)["dw"])
    inputs = three_factor_inputs(np.array([2.0, 0.0]), np.array([0.5, -1.0]), tf)
    np.testing.assert_allclose(inputs["y1"], [0.5 * decay(4.0) * 2.0, 0.0])
    np.testing.assert_allclose(inputs["y2"], [0.05, -0.1])
    np.testing.assert_allclose(inputs["y3"], [decay(8.0)] * 2)
    # per-token copies: every product times d, the mask held in tag_2
    assert masked(STDP_DW) == "y0 * x1 * d - x0 * y1 * d + x0 * y2 * d"
    assert masked(THREE_FACTOR_DW) == "u0 * t * y2 * y3 * d + y0 * x1 * y2 * d - x0 * y1 * y2 * d"
    with pytest.raises(RuleError, match="multiplicative"):
        stdp_rule_parameters(stdp.STDPParameters(multiplicative=True))
    with pytest.raises(RuleError, match="'eprop' has no Lava learning rule"):
        learning_rule("eprop", None)


def test_a_spike_pair_changes_the_weight_alike_in_torch_lava_and_brian2():
    """Five synapses i -> i, each with one pre and one post spike Delta = t_post - t_pre steps
    apart (-2..2), plus the cross synapses they drive: the whole weight change of the protocol."""
    import brian2 as b2

    b2.prefs.codegen.target = "numpy"
    params = stdp.STDPParameters(lr=1.0, a_plus=0.8, a_minus=0.6, tau_pre=3.0, tau_post=5.0)
    deltas = [-2, -1, 0, 1, 2]
    steps, n = 12, len(deltas)
    pre, post = np.zeros((steps, n)), np.zeros((steps, n))
    for i, delta in enumerate(deltas):
        pre[4, i] = 1.0
        post[4 + delta, i] = 1.0
    w0 = np.zeros((n, n))
    ours = torch_weights(stdp.update, pre, post, w0, params)[-1]
    expected = [params.a_plus * decay(params.tau_pre) ** d if d >= 0 else -params.a_minus * decay(params.tau_post) ** -d
                for d in deltas]
    np.testing.assert_allclose(np.diag(ours), expected, rtol=0, atol=1e-15)

    lava = run_learning_dense(pre, post, w0, learning_rule("stdp", params))[-1]
    np.testing.assert_allclose(lava, ours, rtol=0, atol=1e-12)

    dt = 1 * b2.ms
    source = b2.SpikeGeneratorGroup(n, np.nonzero(pre)[1], np.nonzero(pre)[0] * dt, dt=dt)
    target = b2.SpikeGeneratorGroup(n, np.nonzero(post)[1], np.nonzero(post)[0] * dt, dt=dt)
    from neuromorphic.brian2_learning import stdp_synapses

    synapses = stdp_synapses(source, target, params, dt)
    synapses.connect()
    synapses.w = 0.0
    b2.Network(source, target, synapses).run(steps * dt)
    brian = np.zeros_like(w0)
    brian[synapses.j[:], synapses.i[:]] = synapses.w[:]
    np.testing.assert_allclose(brian, ours, rtol=0, atol=1e-12)


def test_lava_float_stdp_follows_rules_stdp_after_every_step():
    rng = np.random.default_rng(0)
    steps, n_pre, n_post = 30, 4, 3
    pre = (rng.random((steps, n_pre)) < 0.4).astype(float)
    post = (rng.random((steps, n_post)) < 0.4).astype(float)
    w0 = rng.uniform(-0.5, 0.5, (n_post, n_pre))
    params = stdp.STDPParameters(lr=0.05, a_plus=1.3, a_minus=0.7, tau_pre=2.5, tau_post=4.0)
    ours = torch_weights(stdp.update, pre, post, w0, params)
    lava = run_learning_dense(pre, post, w0, learning_rule("stdp", params))
    assert np.abs(ours[-1] - w0).max() > 0.05  # the trains did change the weights
    np.testing.assert_allclose(lava, ours, rtol=0, atol=1e-12)
    # without x0 * y2 a simultaneous pair also depresses: the correction is needed
    from lava.magma.core.learning.learning_rule import Loihi2FLearningRule

    naive = {**stdp_rule_parameters(params), "dw": "y0 * x1 - x0 * y1"}
    assert np.abs(run_learning_dense(pre, post, w0, Loihi2FLearningRule(**naive))[-1] - ours[-1]).max() > 1e-3


THREE_FACTOR = three_factor.ThreeFactorParameters(lr=0.2, a_plus=1.0, a_minus=0.6, tau_pre=2.0, tau_post=3.0,
                                                  tau_eligibility=5.0)


def three_factor_trains(seed: int, steps: int, n_pre: int, n_post: int, rate: float):
    """Random pre and post spikes ``[T, I]``, ``[T, J]``, a sparse per-neuron modulator ``[T, J]``
    (zero at most steps) and initial weights ``[J, I]``."""
    rng = np.random.default_rng(seed)
    pre = (rng.random((steps, n_pre)) < rate).astype(float)
    post = (rng.random((steps, n_post)) < rate).astype(float)
    modulator = np.where(rng.random((steps, n_post)) < 0.2, rng.normal(size=(steps, n_post)), 0.0)
    return pre, post, modulator, rng.uniform(-0.5, 0.5, (n_post, n_pre))


def test_lava_float_three_factor_follows_rules_three_factor_after_every_step():
    steps, n_post = 30, 3
    pre, post, modulator, w0 = three_factor_trains(1, steps, 4, n_post, 0.4)
    params = THREE_FACTOR
    ours = torch_weights(three_factor.update, pre, post, w0, params, modulator)
    # the post trace before each step's spike, as rules.three_factor keeps it, for s_in_y1
    trace, before = np.zeros(n_post), []
    for t in range(steps):
        before.append(trace.copy())
        trace = decay(params.tau_post) * trace + post[t]
    inputs = [three_factor_inputs(before[t], modulator[t], params) for t in range(steps)]
    y_inputs = {k: np.stack([step[k] for step in inputs]) for k in ("y1", "y2", "y3")}
    lava = run_learning_dense(pre, post, w0, learning_rule("three_factor", params), y_inputs)
    assert np.abs(ours[-1] - w0).max() > 0.01
    np.testing.assert_allclose(lava, ours, rtol=0, atol=1e-12)


def test_brian2_three_factor_synapses_follow_rules_three_factor():
    import brian2 as b2

    from neuromorphic.brian2_learning import three_factor_synapses

    b2.prefs.codegen.target = "numpy"
    steps, n_pre, n_post = 40, 5, 4
    pre, post, modulator, w0 = three_factor_trains(2, steps, n_pre, n_post, 0.3)
    params = THREE_FACTOR
    ours = torch_weights(three_factor.update, pre, post, w0, params, modulator)[-1]

    dt = 1 * b2.ms
    source = b2.SpikeGeneratorGroup(n_pre, np.nonzero(pre)[1], np.nonzero(pre)[0] * dt, dt=dt)
    target = b2.SpikeGeneratorGroup(n_post, np.nonzero(post)[1], np.nonzero(post)[0] * dt, dt=dt)
    synapses = three_factor_synapses(source, target, params, dt, modulator)
    synapses.connect()
    synapses.w = w0[synapses.j[:], synapses.i[:]]
    b2.Network(source, target, synapses).run(steps * dt)
    brian = np.zeros_like(w0)
    brian[synapses.j[:], synapses.i[:]] = synapses.w[:]
    assert np.abs(ours - w0).max() > 0.01
    np.testing.assert_allclose(brian, ours, rtol=0, atol=1e-9)


def test_lava_learning_sparse_learns_only_the_synapses_that_exist():
    """The way to per-token plastic weights on Lava: a block-diagonal LearningSparse (2 tokens)
    keeps its zero blocks at zero and learns every existing synapse by rules.stdp exactly; the
    token copies of the weight then drift apart (local learning has no weight sharing)."""
    import scipy.sparse

    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.source import RingBuffer
    from lava.proc.sparse.process import LearningSparse

    rng = np.random.default_rng(0)
    steps, tokens, f_in, f_out = 20, 2, 3, 2
    pre = (rng.random((steps, tokens * f_in)) < 0.4).astype(float)
    post = (rng.random((steps, tokens * f_out)) < 0.4).astype(float)
    full = np.kron(np.eye(tokens), rng.uniform(0.1, 0.5, (f_out, f_in)))
    params = stdp.STDPParameters(lr=0.1, a_plus=1.0, a_minus=0.7, tau_pre=2.0, tau_post=3.0)
    source, bap = RingBuffer(data=pre.T), RingBuffer(data=post.T)
    sparse = LearningSparse(weights=scipy.sparse.csr_matrix(full), learning_rule=learning_rule("stdp", params))
    source.s_out.connect(sparse.s_in)
    bap.s_out.connect(sparse.s_in_bap)
    weights = []
    try:
        for _ in range(steps):
            sparse.run(condition=RunSteps(num_steps=1), run_cfg=Loihi2SimCfg(select_tag="floating_pt"))
            weights.append(np.asarray(sparse.weights.get().todense(), dtype=float))
    finally:
        sparse.stop()
    exists = full != 0
    masked = full + (torch_weights(stdp.update, pre, post, np.zeros_like(full), params) * exists)
    np.testing.assert_allclose(np.stack(weights), masked, rtol=0, atol=1e-12)
    assert np.abs(weights[-1][:f_out, :f_in] - weights[-1][f_out:, f_in:]).max() > 0.05
