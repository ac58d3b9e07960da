"""Lava's fixed-point learning engine (LearningDense, fixed_pt) against neuromorphic.fixed_learning,
integer for integer after every step: weights, activations and traces."""

from __future__ import annotations

import numpy as np
import pytest

from neuromorphic.fixed_learning import (VANISHING_TAU, FixedLearningDense, fixed_stdp_rule_parameters, parse_dw,
                                         realized_amplitudes)
from rules import stdp
from rules.base import RuleError

pytestmark = pytest.mark.backend

RECORDED = ("weights", "a_buff", "x1", "x2", "y1", "y2", "y3")


def run_fixed_learning_dense(pre: np.ndarray, post: np.ndarray, w0: np.ndarray, rule,
                             **dense_kwargs) -> dict[str, np.ndarray]:
    """Pre spikes ``[T, I]`` into ``s_in``, post spikes ``[T, J]`` into ``s_in_bap`` (RingBuffers),
    a fixed_pt LearningDense with ``rule`` (a Loihi2FLearningRule or its keyword arguments);
    returns each of ``RECORDED`` after every step (``[T, ...]``, int)."""
    from lava.magma.core.learning.learning_rule import Loihi2FLearningRule
    from lava.proc.dense.process import LearningDense
    from lava.proc.io.source import RingBuffer

    rule = Loihi2FLearningRule(**rule) if isinstance(rule, dict) else rule
    dense = LearningDense(weights=w0.copy(), learning_rule=rule, **dense_kwargs)
    sources = (RingBuffer(data=pre.T.astype(float)), RingBuffer(data=post.T.astype(float)))
    sources[0].s_out.connect(dense.s_in)
    sources[1].s_out.connect(dense.s_in_bap)
    return step_and_record(dense, pre.shape[0], RECORDED)


def step_and_record(dense, steps: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Run ``dense``'s network one fixed_pt step at a time; each Var in ``names`` after every step."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    out: dict[str, list] = {k: [] for k in names}
    try:
        for _ in range(steps):
            dense.run(condition=RunSteps(num_steps=1), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
            for k in names:
                out[k].append(np.array(getattr(dense, k).get()))
    finally:
        dense.stop()
    return {k: np.stack(v) for k, v in out.items()}


def reference(pre: np.ndarray, post: np.ndarray, w0: np.ndarray, rule_kwargs: dict, **kwargs) -> dict[str, np.ndarray]:
    """The same records from ``FixedLearningDense`` (``a_buff`` is the activation of the step)."""
    ref = FixedLearningDense(w0, rule_kwargs, **kwargs)
    out: dict[str, list] = {k: [] for k in RECORDED}
    for s_in, s_bap in zip(pre, post):
        out["a_buff"].append(ref.step(s_in, s_bap))
        out["weights"].append(ref.weights.copy())
        for i, k in enumerate(("x1", "x2")):
            out[k].append(ref.x[i].copy())
        for i, k in enumerate(("y1", "y2", "y3")):
            out[k].append(ref.y[i].copy())
    return {k: np.stack(v) for k, v in out.items()}


def assert_equal_every_step(lava: dict, ours: dict, note: str = "") -> None:
    for k in RECORDED:
        steps = np.nonzero((lava[k] != ours[k]).reshape(len(lava[k]), -1).any(1))[0]
        assert steps.size == 0, f"{k} differs first after step {steps[0] + 1 if steps.size else None} {note}"


def test_generated_fixed_stdp_rule_is_the_hand_written_one():
    # a± = lr A± 2^-weight_exp = 0.5 * 8 * 2 = 8 and 6 weight units. Impulse limits floor(127 (1 - e^(-1/tau))):
    # 36 for tau 3, 23 for tau 5. The largest exact forms: 8 = 2^-2 * 32, 6 = 3*2^-3 * 16.
    params = stdp.STDPParameters(lr=0.5, a_plus=8.0, a_minus=6.0, tau_pre=3.0, tau_post=5.0)
    kwargs = fixed_stdp_rule_parameters(params, weight_exp=-1, rng_seed=7)
    assert kwargs == dict(dw="2^-2 * y0 * x1 - 3*2^-3 * x0 * y1 + 3*2^-3 * x0 * y2", x1_impulse=32, x1_tau=3.0,
                          y1_impulse=16, y1_tau=5.0, y2_impulse=16, y2_tau=1e-4, t_epoch=1, rng_seed=7)
    assert realized_amplitudes(kwargs) == (8.0, 6.0) and np.exp(-1 / VANISHING_TAU) == 0.0
    # depression only (the string starts with a minus); 9.7 is not representable: 5*2^-4 * 31 = 9.6875
    only_minus = fixed_stdp_rule_parameters(stdp.STDPParameters(lr=1.0, a_plus=0.0, a_minus=9.7, tau_post=3.0))
    assert only_minus["dw"] == "- 5*2^-4 * x0 * y1 + 5*2^-4 * x0 * y2" and only_minus["y1_impulse"] == 31
    assert "x1_impulse" not in only_minus and realized_amplitudes(only_minus) == (0.0, 9.6875)

    # Lava reads the strings as our parser does (dependency, 4-bit mantissa, exponent + 7, factors)
    from lava.magma.core.learning.learning_rule import Loihi2FLearningRule

    for dw in (kwargs["dw"], only_minus["dw"], "16 * x0 * y0 - 2^-5 * y0 * x1 * y1 + 3*2^-3 * x0 * y2 * x2"):
        lava = [(p.dependency, p.s_mantissa, p.s_exp, tuple(f.state_var for f in p.factors))
                for p in Loihi2FLearningRule(dw=dw).dw.products]
        assert lava == [(p.dependency, p.mantissa, p.shift, p.factors) for p in parse_dw(dw)]

    with pytest.raises(RuleError, match="multiplicative"):
        fixed_stdp_rule_parameters(stdp.STDPParameters(multiplicative=True))
    with pytest.raises(RuleError, match="256"):
        fixed_stdp_rule_parameters(stdp.STDPParameters(lr=1.0, a_plus=300.0))
    with pytest.raises(RuleError, match="4-bit mantissa"):
        parse_dw("9 * y0 * x1")


def test_a_simultaneous_pair_only_potentiates_in_the_reference():
    """Pre and post in the same step: +A+ exactly (the x0 * y2 product removes this step's post
    impulse from the depression), whatever the random draws; a pre spike alone a step later
    depresses by about A- d_post."""
    params = stdp.STDPParameters(lr=1.0, a_plus=4.0, a_minus=3.0, tau_pre=3.0, tau_post=5.0)
    kwargs = fixed_stdp_rule_parameters(params)
    assert realized_amplitudes(kwargs) == (4.0, 3.0)
    for seed in range(5):
        ref = FixedLearningDense(np.array([[100]]), {**kwargs, "rng_seed": seed})
        ref.step([1], [1])
        assert ref.weights[0, 0] == 104
        ref.step([1], [0])  # y1 = 16 e^(-1/5) = 13.1 -> 13 or 14 trace units of 3/16
        assert ref.weights[0, 0] in (101, 102)


@pytest.mark.parametrize("seed", [0, 1])
def test_lava_fixed_point_stdp_equals_the_reference_after_every_step(seed):
    """5 pre, 4 post, 60 steps, 0.3 spike probability: the weights move by many units and hit the
    8-bit bounds; every weight, activation and trace equals the reference after every step. With
    the weight-rounding seed or the trace seed changed, the reference no longer matches: the
    random streams are what is reproduced."""
    rng = np.random.default_rng(seed)
    steps, n_pre, n_post = 60, 5, 4
    pre = (rng.random((steps, n_pre)) < 0.3).astype(float)
    post = (rng.random((steps, n_post)) < 0.3).astype(float)
    w0 = rng.integers(-250, 251, size=(n_post, n_pre))
    params = stdp.STDPParameters(lr=0.5, a_plus=19.4, a_minus=14.6, tau_pre=3.0, tau_post=5.0)
    kwargs = fixed_stdp_rule_parameters(params, weight_exp=0, rng_seed=100 + seed)
    assert all(a % 1 for a in realized_amplitudes(kwargs))  # fractional dw: the weight rounding is exercised

    lava = run_fixed_learning_dense(pre, post, w0, kwargs)
    ours = reference(pre, post, w0, kwargs)
    assert_equal_every_step(lava, ours)
    w = ours["weights"]
    assert np.abs(w[-1] - w0).max() >= 50 and ((w == 255) | (w == -256)).any()

    other_weight_stream = FixedLearningDense(w0, kwargs, weight_rounding_seed=3).run(pre, post)[0]
    other_trace_stream = FixedLearningDense(w0, {**kwargs, "rng_seed": 200 + seed}).run(pre, post)[0]
    assert (other_weight_stream != lava["weights"]).any() and (other_trace_stream != lava["weights"]).any()


def test_lava_fixed_point_general_rule_equals_the_reference():
    """A rule beyond STDP: fractional impulses (Lava's biased impulse rounding), a tau-0 trace, a
    dependency and two traces as factors (the product's right shift), 6 weight bits, weight_exp 2
    and the excitatory sign mode. The rule draws its rng_seed from the global numpy generator (a
    different one every run); the reference reads it back."""
    from lava.magma.core.learning.learning_rule import Loihi2FLearningRule
    from lava.utils.weightutils import SignMode

    rng = np.random.default_rng(5)
    steps, n_pre, n_post = 40, 5, 4
    pre = (rng.random((steps, n_pre)) < 0.6).astype(float)
    post = (rng.random((steps, n_post)) < 0.6).astype(float)
    w0 = rng.integers(0, 256, size=(n_post, n_pre))
    traces = dict(x1_impulse=60.3, x1_tau=2.5, y1_impulse=7.75, y1_tau=4.2, y3_impulse=5.5, y3_tau=0.0)
    dw = "3*2^-3 * y0 * x1 - 2^-3 * x0 * y1 * x1 + 2 * x0 * y0 - y0 * y3"
    rule = Loihi2FLearningRule(dw=dw, **traces, t_epoch=1)
    lava = run_fixed_learning_dense(pre, post, w0, rule, num_weight_bits=6, weight_exp=2, sign_mode=SignMode.EXCITATORY)
    kwargs = dict(dw=dw, **traces, t_epoch=1, rng_seed=rule.rng_seed)
    ours = reference(pre, post, w0, kwargs, num_weight_bits=6, weight_exp=2, sign_mode="excitatory")
    assert_equal_every_step(lava, ours, f"rng_seed {rule.rng_seed}")
    assert ours["x1"].max() == 127 and (ours["weights"] == 0).sum() > 50  # saturated traces, weights clipped at 0


def test_a_mask_through_tag_2_learns_exactly_as_the_unmasked_rule():
    """The per-token mask: every product times d = tag_2, 32 on synapses (Lava shifts a product
    with d's 9 bits right by 5 more) and 0 elsewhere. Lava equals the reference after every step;
    on the synapses the weights equal the unmasked rule's, integer for integer; elsewhere they stay 0."""
    from neuromorphic.fixed_learning import mask_tag, masked

    rng = np.random.default_rng(11)
    steps, n_pre, n_post = 50, 6, 4
    pre = (rng.random((steps, n_pre)) < 0.35).astype(float)
    post = (rng.random((steps, n_post)) < 0.35).astype(float)
    mask = np.kron(np.eye(2, dtype=bool), np.ones((2, 3), bool))  # two tokens' blocks
    w0 = np.where(mask, rng.integers(-120, 121, size=mask.shape) * 2, 0)
    params = stdp.STDPParameters(lr=0.5, a_plus=19.4, a_minus=14.6, tau_pre=3.0, tau_post=5.0)
    kwargs = fixed_stdp_rule_parameters(params, weight_exp=0, rng_seed=31)
    tag = mask_tag(kwargs["dw"])
    assert tag == 32 and masked(kwargs["dw"]).count("* d") == 3
    masked_kwargs = {**kwargs, "dw": masked(kwargs["dw"])}
    tag_2 = np.where(mask, tag, 0)
    assert realized_amplitudes(masked_kwargs, tag) == realized_amplitudes(kwargs)

    lava = run_fixed_learning_dense(pre, post, w0, masked_kwargs, tag_2=tag_2)
    ours = reference(pre, post, w0, masked_kwargs, tag_2=tag_2)
    assert_equal_every_step(lava, ours)
    unmasked = FixedLearningDense(w0, kwargs).run(pre, post)[0]
    np.testing.assert_array_equal(ours["weights"][:, mask], unmasked[:, mask])
    assert not ours["weights"][:, ~mask].any() and np.abs(ours["weights"][-1] - w0).max() >= 30
    # d = 1 would shift every product right by 5 bits: the rule would all but stop learning
    weak = FixedLearningDense(w0, masked_kwargs, tag_2=mask.astype(int)).run(pre, post)[0]
    assert np.abs(weak[-1] - w0).max() < np.abs(ours["weights"][-1] - w0).max()
    with pytest.raises(RuleError, match="tag_2"):
        mask_tag("2^-2 * y0 * x1 * x2 * y1")  # 7+7+7+4 bits: d would need 2^9
