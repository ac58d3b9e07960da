"""Spiking linear attention (SPEC §2.3): implementations agree exactly, streaming, hand-checked values."""

from __future__ import annotations

import pytest
import torch

from spikeformer.attention import (
    VARIANTS,
    AttentionState,
    attention_event_counts,
    initial_attention_state,
    spiking_attention,
)
from spikeformer.errors import ConfigError, ShapeError

TOL = dict(rtol=1e-10, atol=1e-10)
H = 2
D = 3
B = 2
MODES = {"global": (6, 3), "causal": (12, 1)}  # (T, N)

PLASTICITY_VALUES = {
    "stdp": {"a_plus": [0.9, 0.6], "a_minus": [0.4, 0.7], "pre_decay": [0.5, 0.3], "post_decay": [0.6, 0.2]},
    "three_factor": {"eligibility_decay": [0.7, 0.4]},
    "delta": {"delta_rate": [0.5, 0.8]},
    "hebbian": {},
}


def make_inputs(variant: str, mode: str, seed: int = 0):
    """Binary float64 q, k, v (grad), per-head decay (grad), plasticity (grad), modulator (grad)."""
    steps, tokens = MODES[mode]
    g = torch.Generator().manual_seed(seed)
    shape = (steps, B, tokens, H, D)
    q, k, v = ((torch.rand(shape, generator=g) < 0.5).double().requires_grad_(True) for _ in range(3))
    decay = torch.tensor([0.8, 0.55], dtype=torch.float64, requires_grad=True)
    plasticity = {name: torch.tensor(val, dtype=torch.float64, requires_grad=True)
                  for name, val in PLASTICITY_VALUES[variant].items()}
    modulator = None
    if variant == "three_factor":
        modulator = (torch.rand(steps, B, H, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    return q, k, v, decay, plasticity, modulator


def random_state(q: torch.Tensor, variant: str, seed: int = 5) -> AttentionState:
    g = torch.Generator().manual_seed(seed)
    zero = initial_attention_state(q, variant)
    return AttentionState(*(torch.rand(f.shape, generator=g, dtype=torch.float64) for f in zero))


def leaves(q, k, v, decay, plasticity, modulator):
    names = ["q", "k", "v", "decay"] + [f"plasticity.{n}" for n in plasticity]
    tensors = [q, k, v, decay] + list(plasticity.values())
    if modulator is not None:
        names.append("modulator")
        tensors.append(modulator)
    return names, tensors


def weighted_loss(o: torch.Tensor, state: AttentionState, seed: int = 11) -> torch.Tensor:
    """A random linear functional of outputs and every state field (so all gradients are exercised)."""
    g = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
    for field in state:
        loss = loss + (field * torch.randn(field.shape, generator=g, dtype=field.dtype)).sum()
    return loss


def run_with_grads(impl, variant, inputs, initial_state=None, scale=0.25):
    q, k, v, decay, plasticity, modulator = inputs
    o, state = spiking_attention(q, k, v, decay, scale, variant=variant, impl=impl,
                                 initial_state=initial_state, plasticity=plasticity, modulator=modulator)
    names, tensors = leaves(*inputs)
    grads = torch.autograd.grad(weighted_loss(o, state), tensors, allow_unused=True)
    return o.detach(), AttentionState(*(f.detach() for f in state)), dict(zip(names, grads))


def assert_states_close(a: AttentionState, b: AttentionState):
    for name, x, y in zip(AttentionState._fields, a, b):
        assert x.shape == y.shape, name
        assert torch.allclose(x, y, **TOL), name


def assert_grads_close(ga: dict, gb: dict):
    assert ga.keys() == gb.keys()
    for name in ga:
        a, b = ga[name], gb[name]
        if a is None or b is None:
            # an unused input must be unused in both implementations
            a = torch.zeros(()) if a is None else a
            b = torch.zeros(()) if b is None else b
            assert a.abs().max() == 0 and b.abs().max() == 0, name
            continue
        assert torch.allclose(a, b, **TOL), name


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_naive_and_recurrent_agree_outputs_state_grads(variant, mode):
    inputs = make_inputs(variant, mode)
    o_n, s_n, g_n = run_with_grads("naive", variant, inputs)
    o_r, s_r, g_r = run_with_grads("recurrent", variant, inputs)
    assert o_n.abs().sum() > 0
    assert torch.allclose(o_n, o_r, **TOL)
    assert_states_close(s_n, s_r)
    assert_grads_close(g_n, g_r)
    # every differentiable input actually receives gradient (no silently-dead parameter)
    for name, grad in g_n.items():
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_naive_and_recurrent_agree_with_nonzero_initial_state(variant, mode):
    inputs = make_inputs(variant, mode, seed=3)
    init = random_state(inputs[0], variant)
    o_n, s_n, g_n = run_with_grads("naive", variant, inputs, init)
    o_r, s_r, g_r = run_with_grads("recurrent", variant, inputs, init)
    assert torch.allclose(o_n, o_r, **TOL)
    assert_states_close(s_n, s_r)
    assert_grads_close(g_n, g_r)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_parallel_hebbian_agrees_with_naive(mode, with_state):
    inputs = make_inputs("hebbian", mode, seed=7)
    init = random_state(inputs[0], "hebbian") if with_state else None
    o_n, s_n, g_n = run_with_grads("naive", "hebbian", inputs, init)
    o_p, s_p, g_p = run_with_grads("parallel", "hebbian", inputs, init)
    assert torch.allclose(o_n, o_p, **TOL)
    assert_states_close(s_n, s_p)
    assert_grads_close(g_n, g_p)


def test_initial_state_gradient_matches_between_impls():
    inputs = make_inputs("hebbian", "global", seed=8)
    results = {}
    for impl in ("naive", "recurrent", "parallel"):
        init = random_state(inputs[0], "hebbian")
        memory = init.memory.clone().requires_grad_(True)
        o, state = spiking_attention(*inputs[:4], 0.5, "hebbian", impl, init._replace(memory=memory))
        (g,) = torch.autograd.grad(weighted_loss(o, state), memory)
        results[impl] = g
    assert torch.allclose(results["naive"], results["recurrent"], **TOL)
    assert torch.allclose(results["naive"], results["parallel"], **TOL)


@pytest.mark.parametrize("impl", ["naive", "recurrent"])
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_streaming_two_chunks_equals_one_call(variant, mode, impl):
    q, k, v, decay, plasticity, modulator = make_inputs(variant, mode, seed=4)
    steps = q.shape[0]
    cut = steps // 2 - 1
    o, final = spiking_attention(q, k, v, decay, 0.5, variant, impl, None, plasticity, modulator)
    m1 = modulator[:cut] if modulator is not None else None
    m2 = modulator[cut:] if modulator is not None else None
    o1, mid = spiking_attention(q[:cut], k[:cut], v[:cut], decay, 0.5, variant, impl, None, plasticity, m1)
    o2, end = spiking_attention(q[cut:], k[cut:], v[cut:], decay, 0.5, variant, impl, mid, plasticity, m2)
    assert torch.allclose(torch.cat([o1, o2]), o, **TOL)
    assert_states_close(end, final)


def test_parallel_streaming_two_chunks_equals_one_call():
    q, k, v, decay, _, _ = make_inputs("hebbian", "causal", seed=9)
    o, final = spiking_attention(q, k, v, decay, 0.5, "hebbian", "parallel")
    o1, mid = spiking_attention(q[:5], k[:5], v[:5], decay, 0.5, "hebbian", "parallel")
    o2, end = spiking_attention(q[5:], k[5:], v[5:], decay, 0.5, "hebbian", "parallel", mid)
    assert torch.allclose(torch.cat([o1, o2]), o, **TOL)
    assert_states_close(end, final)


# ---- hand-checked tiny case: B = N = H = 1, d = 2, two steps, lambda = 0.5, scale = 1 ----
#   step 1: k = [1, 0], v = [0, 1], q = [1, 1]
#   step 2: k = [1, 1], v = [1, 0], q = [1, 0]
TINY_K = [[1.0, 0.0], [1.0, 1.0]]
TINY_V = [[0.0, 1.0], [1.0, 0.0]]
TINY_Q = [[1.0, 1.0], [1.0, 0.0]]


def tiny(x):
    return torch.tensor(x, dtype=torch.float64).view(2, 1, 1, 1, 2)


def tiny_run(variant, impl="recurrent", scale=1.0, **kwargs):
    decay = torch.tensor([0.5], dtype=torch.float64)
    plasticity = {n: torch.tensor([val], dtype=torch.float64) for n, val in kwargs.items() if n != "modulator"}
    modulator = kwargs.get("modulator")
    if modulator is not None:
        modulator = torch.tensor(modulator, dtype=torch.float64).view(2, 1, 1)
    o, state = spiking_attention(tiny(TINY_Q), tiny(TINY_K), tiny(TINY_V), decay, scale, variant, impl,
                                 None, plasticity, modulator)
    return o.view(2, 2).tolist(), state.memory.view(2, 2).tolist(), state


@pytest.mark.parametrize("impl", ["naive", "recurrent", "parallel"])
def test_hand_checked_hebbian(impl):
    # S1 = k1^T v1 = [[0, 1], [0, 0]]                    o1 = q1 S1 = row0 + row1 = [0, 1]
    # S2 = 0.5 S1 + k2^T v2 = [[0, .5], [0, 0]] + [[1, 0], [1, 0]] = [[1, .5], [1, 0]]
    #                                                     o2 = q2 S2 = row0 = [1, .5]
    o, memory, _ = tiny_run("hebbian", impl)
    assert o == [[0.0, 1.0], [1.0, 0.5]]
    assert memory == [[1.0, 0.5], [1.0, 0.0]]
    # scale multiplies the read only
    o2, memory2, _ = tiny_run("hebbian", impl, scale=0.5)
    assert o2 == [[0.0, 0.5], [0.5, 0.25]]
    assert memory2 == memory


@pytest.mark.parametrize("impl", ["naive", "recurrent"])
def test_hand_checked_delta(impl):
    # delta_rate 0.5, lambda 0.5; dS = rate * k^T (v - k (lambda S)) / max(1, |k|)
    # step 1: decayed 0, recall 0, |k| = 1, error = [0, 1]; S1 = 0.5 [[0, 1], [0, 0]] = [[0, .5], [0, 0]]
    #         o1 = q1 S1 = [0, .5]
    # step 2: decayed = [[0, .25], [0, 0]], recall = k2 decayed = [0, .25], |k| = 2,
    #         error = ([1, 0] - [0, .25]) / 2 = [.5, -.125]
    #         S2 = decayed + 0.5 [[.5, -.125], [.5, -.125]] = [[.25, .1875], [.25, -.0625]]
    #         o2 = q2 S2 = [.25, .1875]
    o, memory, _ = tiny_run("delta", impl, delta_rate=0.5)
    assert o == [[0.0, 0.5], [0.25, 0.1875]]
    assert memory == [[0.25, 0.1875], [0.25, -0.0625]]


@pytest.mark.parametrize("impl", ["naive", "recurrent"])
def test_hand_checked_stdp(impl):
    # a_plus 1, a_minus 0.5, pre_decay 0.5, post_decay 0.5, lambda 0.5
    # step 1: x = k1 = [1, 0]; pot = x^T v1 = [[0, 1], [0, 0]]; dep = k1^T y0 = 0
    #         S1 = [[0, 1], [0, 0]]; y = v1 = [0, 1]; o1 = q1 S1 = [0, 1]
    # step 2: x = .5 [1, 0] + [1, 1] = [1.5, 1]; pot = x^T v2 = [[1.5, 0], [1, 0]]
    #         y = .5 [0, 1] = [0, .5] (decayed to this step); dep = k2^T y = [[0, .5], [0, .5]]
    #         S2 = .5 S1 + pot - .5 dep = [[0, .5], [0, 0]] + [[1.5, 0], [1, 0]] - [[0, .25], [0, .25]]
    #            = [[1.5, .25], [1, -.25]]; y = [0, .5] + [1, 0] = [1, .5]; o2 = q2 S2 = [1.5, .25]
    o, memory, state = tiny_run("stdp", impl, a_plus=1.0, a_minus=0.5, pre_decay=0.5, post_decay=0.5)
    assert o == [[0.0, 1.0], [1.5, 0.25]]
    assert memory == [[1.5, 0.25], [1.0, -0.25]]
    assert state.pre_trace.view(-1).tolist() == [1.5, 1.0]
    assert state.post_trace.view(-1).tolist() == [1.0, 0.5]


@pytest.mark.parametrize("impl", ["naive", "recurrent"])
def test_hand_checked_three_factor(impl):
    # eligibility_decay 0.5, modulator m = [2, -1], lambda 0.5
    # step 1: e1 = k1^T v1 = [[0, 1], [0, 0]]; S1 = 2 e1 = [[0, 2], [0, 0]]; o1 = q1 S1 = [0, 2]
    # step 2: e2 = .5 e1 + k2^T v2 = [[1, .5], [1, 0]]; S2 = .5 S1 - e2 = [[-1, .5], [-1, 0]]
    #         o2 = q2 S2 = [-1, .5]
    o, memory, state = tiny_run("three_factor", impl, eligibility_decay=0.5, modulator=[2.0, -1.0])
    assert o == [[0.0, 2.0], [-1.0, 0.5]]
    assert memory == [[-1.0, 0.5], [-1.0, 0.0]]
    assert state.eligibility.view(2, 2).tolist() == [[1.0, 0.5], [1.0, 0.0]]


@pytest.mark.parametrize("impl", ["naive", "recurrent"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_stdp_without_depression_and_pre_memory_is_scaled_hebbian(mode, impl):
    q, k, v, decay, _, _ = make_inputs("hebbian", mode, seed=12)
    a_plus = torch.tensor([0.75, 1.5], dtype=torch.float64)
    plasticity = {"a_plus": a_plus, "a_minus": torch.zeros(H, dtype=torch.float64),
                  "pre_decay": torch.zeros(H, dtype=torch.float64),
                  "post_decay": torch.tensor([0.3, 0.9], dtype=torch.float64)}
    o_s, st_s = spiking_attention(q, k, v, decay, 0.5, "stdp", impl, None, plasticity)
    o_h, st_h = spiking_attention(q, k, v, decay, 0.5, "hebbian", impl)
    assert torch.allclose(o_s, a_plus.view(1, 1, 1, H, 1) * o_h, **TOL)
    assert torch.allclose(st_s.memory, a_plus.view(1, H, 1, 1) * st_h.memory, **TOL)


def test_zero_initial_state_shapes():
    q = torch.zeros(4, 2, 3, H, D)
    for variant in VARIANTS:
        st = initial_attention_state(q, variant)
        assert st.memory.shape == (2, H, D, D)
        traces = (2, 3, H, D) if variant == "stdp" else (0,)
        assert st.pre_trace.shape == traces and st.post_trace.shape == traces
        assert st.eligibility.shape == ((2, H, D, D) if variant == "three_factor" else (0,))
        assert all(f.abs().sum() == 0 for f in st)


# ---- errors ----


def _base(steps=3, tokens=2):
    q = torch.zeros(steps, 1, tokens, H, D)
    return q, q.clone(), q.clone(), torch.full((H,), 0.5)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"variant": "softmax"}, ConfigError, "softmax"),
        ({"impl": "flash"}, ConfigError, "flash"),
        ({"variant": "stdp", "impl": "parallel",
          "plasticity": {n: torch.ones(H) for n in PLASTICITY_VALUES["stdp"]}}, ConfigError, "parallel"),
        ({"variant": "delta", "impl": "parallel", "plasticity": {"delta_rate": torch.ones(H)}},
         ConfigError, "parallel"),
        ({"variant": "three_factor", "plasticity": {"eligibility_decay": torch.ones(H)}}, ConfigError,
         "modulator"),
        ({"variant": "three_factor", "plasticity": {"eligibility_decay": torch.ones(H)},
          "modulator": torch.ones(3, 1, H + 1)}, ShapeError, "modulator"),
        ({"variant": "stdp", "plasticity": {"a_plus": torch.ones(H)}}, ConfigError, "a_minus"),
        ({"variant": "delta"}, ConfigError, "delta_rate"),
    ],
)
def test_config_errors(kwargs, error, match):
    q, k, v, decay = _base()
    with pytest.raises(error, match=match):
        spiking_attention(q, k, v, decay, 1.0, **kwargs)


def test_shape_errors():
    q, k, v, decay = _base()
    with pytest.raises(ShapeError):
        spiking_attention(q, k[:, :, :1], v, decay, 1.0)  # k has fewer tokens
    with pytest.raises(ShapeError):
        spiking_attention(q, k, v[..., :2], decay, 1.0)  # v has a smaller head dim
    with pytest.raises(ShapeError):
        spiking_attention(q[0], k[0], v[0], decay, 1.0)  # missing time axis
    with pytest.raises(ShapeError):
        spiking_attention(q, k, v, torch.full((H + 1,), 0.5), 1.0)  # decay per head
    with pytest.raises(ShapeError):
        spiking_attention(q, k, v, torch.tensor(0.5), 1.0)  # scalar decay
    assert issubclass(ShapeError, ValueError) and issubclass(ConfigError, ValueError)


# ---- event counts ----


def test_attention_event_counts_hand_count():
    # T = B = H = 1, N = 2 tokens, d = 3
    k = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.float64).view(1, 1, 2, 1, 3)  # |k| = 2, 1
    v = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.float64).view(1, 1, 2, 1, 3)  # |v| = 2, 0
    q = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.float64).view(1, 1, 2, 1, 3)  # |q| = 1, 3
    # hebbian: sum_n |k_n| |v_n| = 2*2 + 1*0 = 4; stdp: sum_n (|k_n| + |v_n|) d = (4 + 1) * 3 = 15;
    # three_factor: 4 + d^2 for the one step and head whose modulator is > 0; delta: 2 (2 + 1) 3 = 18;
    # read: sum_n |q_n| * d = (1 + 3) * 3 = 12
    expected_update = {"hebbian": 4, "three_factor": 4 + 9, "stdp": 15, "delta": 18}
    modulator = torch.full((1, 1, 1), 0.5, dtype=torch.float64)
    for variant, update in expected_update.items():
        counts = attention_event_counts(q, k, v, variant, modulator)
        assert counts["update"].item() == update, variant
        assert counts["read"].item() == 12, variant


def test_attention_event_counts_sum_over_time_and_heads():
    q, k, v, _, _, _ = make_inputs("hebbian", "global", seed=13)
    counts = attention_event_counts(q.detach(), k.detach(), v.detach(), "hebbian")
    update = sum(k[t, b, n, h].sum() * v[t, b, n, h].sum()
                 for t in range(q.shape[0]) for b in range(B) for n in range(q.shape[2]) for h in range(H))
    read = q.detach().sum() * D
    assert counts["update"].item() == update.item()
    assert counts["read"].item() == read.item()


@pytest.mark.parametrize("impl", ["naive", "recurrent"])
def test_wrong_length_modulator_is_not_silently_truncating(impl):
    q, k, v, decay = _base(steps=6)
    try:
        o, _ = spiking_attention(q, k, v, decay, 1.0, "hebbian", impl, modulator=torch.ones(2, 1, H))
    except (ShapeError, ConfigError):
        return
    if o.shape[0] != q.shape[0]:
        pytest.fail(f"output has {o.shape[0]} steps for {q.shape[0]} input steps")
