"""The three-factor rule in Lava's fixed-point learning engine: a fixed_pt LearningDense with a
Loihi3FLearningRule (tag t as eligibility, y inputs from ports) against
``fixed_learning.FixedLearningDense``, integer for integer after every step; the generated strings
and gains; and ``FixedRuleInputs``' integer y inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuromorphic.fixed_learning import FixedLearningDense, mask_tag, parse_dw
from neuromorphic.fixed_three_factor import (FixedRuleInputs, ThreeFactorGains, fixed_three_factor_rule_parameters,
                                             modulator_bound)
from rules.base import RuleError
from rules.three_factor import ThreeFactorParameters
from test_fixed_learning import step_and_record  # tests/neuromorphic on sys.path

pytestmark = pytest.mark.backend

RECORDED = ("weights", "tag_1", "a_buff", "x1")
PARAMS = ThreeFactorParameters(lr=1e-2, a_plus=1.0, a_minus=1.0, tau_pre=2.0, tau_post=2.0, tau_eligibility=20.0)


def run_lava_3f(pre: np.ndarray, post: np.ndarray, y: np.ndarray, w0: np.ndarray, rule_kwargs: dict,
                **dense_kwargs) -> dict[str, np.ndarray]:
    """Pre ``[T, I]``, bAP ``[T, J]`` and y inputs ``[T, 3, J]`` from RingBuffers into a fixed_pt
    LearningDense with a Loihi3FLearningRule; each of ``RECORDED`` after every step."""
    from lava.proc.dense.process import LearningDense
    from lava.proc.io.source import RingBuffer

    from neuromorphic.lava.learning import fixed_learning_rule, hold_y_inputs

    rule = fixed_learning_rule(rule_kwargs, third_factor=True)
    dense = LearningDense(weights=w0.copy(), learning_rule=rule, **dense_kwargs)
    hold_y_inputs(rule)
    RingBuffer(data=pre.T.astype(float)).s_out.connect(dense.s_in)
    RingBuffer(data=post.T.astype(float)).s_out.connect(dense.s_in_bap)
    for i, port in enumerate((dense.s_in_y1, dense.s_in_y2, dense.s_in_y3)):
        RingBuffer(data=y[:, i].T.astype(np.int32)).s_out.connect(port)
    return step_and_record(dense, pre.shape[0], RECORDED)


def reference_3f(pre, post, y, w0, rule_kwargs, **kwargs) -> dict[str, np.ndarray]:
    ref = FixedLearningDense(w0, rule_kwargs, third_factor=True, **kwargs)
    out: dict[str, list] = {k: [] for k in RECORDED}
    for t in range(len(pre)):
        out["a_buff"].append(ref.step(pre[t], post[t], tuple(y[t])))
        out["weights"].append(ref.weights.copy())
        out["tag_1"].append(ref.tag_1.copy())
        out["x1"].append(ref.x[0].copy())
    return {k: np.stack(v) for k, v in out.items()}


def spikes_and_inputs(seed: int, steps: int = 60, n_pre: int = 5, n_post: int = 4, rate: float = 0.35):
    rng = np.random.default_rng(seed)
    pre = (rng.random((steps, n_pre)) < rate).astype(float)
    post = (rng.random((steps, n_post)) < rate).astype(float)
    y = np.zeros((steps, 3, n_post), np.int64)
    y[:, 0] = rng.integers(0, 60, size=(steps, n_post))  # a post trace
    rewarded = rng.random(steps) < 0.2  # the output error arrives now and then, as two halves
    m = np.round(rng.normal(0, 60, size=(steps, n_post))).clip(-127, 127).astype(np.int64) * rewarded[:, None]
    y[:, 1], y[:, 2] = np.maximum(m, 0), np.maximum(-m, 0)
    return rng, pre, post, y


def test_generated_fixed_three_factor_rule_is_the_hand_written_one():
    # tau_e 20: 1 - e^(-1/20) = 0.0488 -> 3*2^-6 (6/128); the tag ceiling 255 * 0.046875 / 127 = 0.094 -> 3*2^-5;
    # I+ = I- = floor(127 (1 - e^(-1/2))) = 49, so E = 3/32 * 49 = 4.59 tag units per unit of eligibility and
    # c- = c+. With S = 1000 and M = 127 (m bound 1): c_w = 32 lr S / (E M) = 0.549 -> 2^-1 (nearest form)
    rule, gains, coincidence = fixed_three_factor_rule_parameters(PARAMS, 0, 9, 1000.0, 1.0)
    assert rule == dict(dt="3*2^-5 * y0 * x1 - 3*2^-5 * x0 * y1 - 3*2^-6 * u0 * t",
                        dw="2^-1 * u0 * t * y2 - 2^-1 * u0 * t * y3", x1_impulse=49, x1_tau=2.0,
                        y1_tau=math.inf, y2_tau=math.inf, y3_tau=math.inf, t_epoch=1, rng_seed=9)
    assert coincidence == "3*2^-5 * y0 * x1 - 3*2^-5 * x0 * y1"
    assert gains.post_impulse == 49 and gains.post_decay == round(4096 * math.exp(-0.5)) and gains.modulator_gain == 127
    assert gains.realized["a_minus_realized_over_wanted"] == 1.0
    assert gains.realized["lr"] == pytest.approx(PARAMS.lr * 0.5 / 0.549, rel=1e-2)
    # masked: only the coincidences carry d, and their tag is STDP's 32
    masked, _, masked_coincidence = fixed_three_factor_rule_parameters(PARAMS, 0, 9, 1000.0, 1.0, mask=True)
    assert masked["dt"] == "3*2^-5 * y0 * x1 * d - 3*2^-5 * x0 * y1 * d - 3*2^-6 * u0 * t" and masked["dw"] == rule["dw"]
    assert mask_tag(coincidence) == 32 and masked_coincidence == coincidence  # the part mask_tag reads: no d
    # a rate too small for the smallest literal lowers M; smaller still is refused in one line
    _, small, _ = fixed_three_factor_rule_parameters(PARAMS, 0, 9, 10.0, 1.0)
    assert 1 <= small.modulator_gain < 127
    with pytest.raises(RuleError, match="too small"):
        fixed_three_factor_rule_parameters(ThreeFactorParameters(lr=1e-6), 0, 9, 1.0, 1.0)
    assert modulator_bound(np.eye(3)) == 1.0 and modulator_bound(np.array([[0.5, 2.0], [-0.5, 1.0]])) == 3.0

    # Lava reads both strings as our parser does
    from lava.magma.core.learning.learning_rule import Loihi3FLearningRule

    lava = Loihi3FLearningRule(dt=masked["dt"], dw=masked["dw"])
    for ours, theirs in ((masked["dt"], lava.dt), (masked["dw"], lava.dw)):
        assert [(p.dependency, p.s_mantissa, p.s_exp, tuple(f.state_var for f in p.factors)) for p in theirs.products] \
            == [(p.dependency, p.mantissa, p.shift, p.factors) for p in parse_dw(ours)]


@pytest.mark.parametrize("seed", [0, 1])
def test_lava_fixed_point_three_factor_equals_the_reference_after_every_step(seed):
    """Random spikes, a post trace in y1 and a signed third factor in y2/y3 now and then: weights,
    tags, activations and the pre trace equal the reference after every step; tags and weights
    move (and the tag reaches its 9-bit bound with this large coincidence scale)."""
    rng, pre, post, y = spikes_and_inputs(seed)
    w0 = rng.integers(-120, 121, size=(4, 5)) * 2
    rule, _, _ = fixed_three_factor_rule_parameters(PARAMS, 0, 40 + seed, 3000.0, 1.0)
    lava = run_lava_3f(pre, post, y, w0, rule)
    ours = reference_3f(pre, post, y, w0, rule)
    for k in RECORDED:
        bad = np.nonzero((lava[k] != ours[k]).reshape(len(pre), -1).any(1))[0]
        assert bad.size == 0, f"{k} differs first after step {bad[0] + 1 if bad.size else None}"
    assert np.abs(ours["weights"][-1] - w0).max() >= 5 and np.abs(ours["tag_1"]).max() >= 20


def test_lava_fixed_point_three_factor_with_a_mask_and_a_general_rule():
    """A masked rule (tag_2 = 32 on two tokens' blocks): synapses outside the mask keep t = 0 and
    never learn; and a hand-written rule with y factors under x0, a y0 factor under u and 6 weight
    bits: Lava equals the reference after every step."""
    rng, pre, post, y = spikes_and_inputs(3, n_pre=6)
    mask = np.kron(np.eye(2, dtype=bool), np.ones((2, 3), bool))
    w0 = np.where(mask, rng.integers(-120, 121, size=mask.shape) * 2, 0)
    rule, _, coincidence = fixed_three_factor_rule_parameters(PARAMS, 0, 77, 3000.0, 1.0, mask=True)
    tag_2 = np.where(mask, mask_tag(coincidence), 0)
    lava = run_lava_3f(pre, post, y, w0, rule, tag_2=tag_2)
    ours = reference_3f(pre, post, y, w0, rule, tag_2=tag_2)
    for k in RECORDED:
        assert (lava[k] == ours[k]).all(), k
    assert not ours["tag_1"][:, ~mask].any() and not (ours["weights"][:, ~mask]).any()
    assert (ours["weights"][-1][mask] != w0[mask]).any()

    general = dict(dt="2^-2 * y0 * x1 - x0 * y1 * y3 + 2^-3 * u0 * y0 * y2 - 2^-4 * u0 * t",
                   dw="3*2^-4 * u0 * t * y2 - x0 * y3 + 2^-2 * y0 * x1 * y1", x1_impulse=20.5, x1_tau=3.0,
                   y1_tau=math.inf, y2_tau=math.inf, y3_tau=math.inf, t_epoch=1, rng_seed=5)
    w1 = rng.integers(-30, 31, size=(4, 6)) * 4
    lava = run_lava_3f(pre, post, y // 4, w1, general, num_weight_bits=6)
    ours = reference_3f(pre, post, y // 4, w1, general, num_weight_bits=6)
    for k in RECORDED:
        assert (lava[k] == ours[k]).all(), k


def test_fixed_rule_inputs_send_the_post_trace_and_the_error_halves():
    """y1 is the post trace decayed one step; y2/y3 are zero but at the second guard step, where
    they carry round(M m) split by sign; a readout target's post factor is 1 at every step."""
    gains = ThreeFactorGains(post_impulse=49, post_decay=2484, modulator_gain=100, realized={})
    inputs = FixedRuleInputs(gains, np.eye(3), True, np.zeros(3, np.int64), 1.0, steps=4, window=2)
    state = inputs.initial_state()
    sent = []
    for local, fired in enumerate([1, 0, 1, 0, 0, 0]):  # 4 steps, 2 guard steps
        sent.append(inputs.send(state, local, label=2))
        current = np.array([0, 0, 5]) if local in (2, 3) else np.zeros(3, np.int64)  # class 2 wins the window
        state = inputs.receive(state, local, np.array([fired] * 3), inputs.increment(current))
    y1 = [s[0][0] for s in sent]
    assert y1 == [0, (49 * 2484) >> 12, (((49 * 2484) >> 12) * 2484) >> 12,
                  ((((((49 * 2484) >> 12) * 2484) >> 12) + 49) * 2484) >> 12, y1[4], y1[5]]
    assert all(not s[1].any() and not s[2].any() for i, s in enumerate(sent) if i != 5)
    logits = np.array([0.0, 0.0, 5 * 64 * 2 / (64 * 2)])  # window sum over 2 steps, 64ths of a_in
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    m = (np.eye(3)[2] - p) * 100
    np.testing.assert_array_equal(sent[5][1], np.round(np.maximum(m, 0)))
    np.testing.assert_array_equal(sent[5][2], np.round(np.maximum(-m, 0)))
    readout = FixedRuleInputs(gains, np.eye(3), False, np.zeros(3, np.int64), 1.0, steps=4, window=2)
    after = readout.receive(readout.initial_state(), 0, np.zeros(3), np.zeros(3, np.int64))
    assert (after["post"] == 49).all()  # no spikes, yet the readout's post factor counts
