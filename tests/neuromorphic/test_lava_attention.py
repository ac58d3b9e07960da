"""The Lava ``SpikingAttention`` process against the numpy references, step by step.

RingBuffer sources feed random q/k/v (and gate) spike trains straight into the process and a
RingBuffer sink records ``a_out``. In lava-nc 0.10.0 the source sends data column t - 1 at
time step t (1-based) and the sink stores what it receives at step t in column t - 1; with no
Dense in between, the process receives and sends in the same step, so sink column c is
compared with reference step c (0-based) with no shift: a one-step delay would fail. Every
variant, float (``neuromorphic.simulate.attention_step_float`` to 1e-12, and the torch
``spiking_attention`` times out_scale) and fixed (``neuromorphic.fixed_ref.attention_step_fixed``
bit for bit, saturation counts included). Marked ``backend``; lava is imported inside the
tests so a missing Lava fails them instead of skipping.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuromorphic.fixed_ref import attention_step_fixed
from neuromorphic.ir import Attention
from neuromorphic.quantize import _quantize_attention
from neuromorphic.simulate import attention_step_float
from spikeformer.attention import spiking_attention

STEPS = 12
HEADS = 2
DIM = 4
RATE = 0.3
VARIANTS = ("hebbian", "stdp", "three_factor", "delta")


def make_attention(variant: str, seed: int, heads: int = HEADS, dim: int = DIM) -> Attention:
    """A float attention node with random per-head parameters (test_fixed_ref.py uses it too)."""
    rng = np.random.default_rng(seed)
    plasticity = {
        "hebbian": {},
        "stdp": {"a_plus": rng.uniform(0.5, 1.0, heads), "a_minus": rng.uniform(0.2, 0.5, heads),
                 "pre_decay": rng.uniform(0.5, 0.9, heads), "post_decay": rng.uniform(0.5, 0.9, heads)},
        "three_factor": {"eligibility_decay": rng.uniform(0.6, 0.9, heads)},
        "delta": {"delta_rate": rng.uniform(0.3, 0.8, heads)},
    }[variant]
    return Attention(name=f"att_{variant}", query="q", key="k", value="v", target="o", heads=heads,
                     head_dim=dim, variant=variant, decay=rng.uniform(0.6, 0.95, heads), scale=0.5,
                     out_scale=rng.uniform(0.5, 1.5, heads * dim), plasticity=plasticity,
                     modulator="m" if variant == "three_factor" else None)


def make_spikes(tokens: int, seed: int) -> dict[str, np.ndarray]:
    """q, k, v ``[T, N, H*d]`` and gates m ``[T, N, H]``, bool."""
    rng = np.random.default_rng(seed)
    out = {x: rng.random((STEPS, tokens, HEADS * DIM)) < RATE for x in "qkv"}
    out["m"] = rng.random((STEPS, tokens, HEADS)) < 0.5
    return out


STATE = ("memory", "pre_trace", "post_trace", "eligibility", "saturation")


def build(att: Attention, spikes: dict[str, np.ndarray], gate: bool, reset: dict | None = None):
    """A SpikingAttention fed by one RingBuffer source per input and recorded by a RingBuffer
    sink; m_in is connected only when ``gate`` (otherwise left unconnected)."""
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    from neuromorphic.lava.attention.process import from_ir

    tokens = spikes["q"].shape[1]
    proc = from_ir(att, tokens, **(reset or {}))
    ports = {"q": proc.q_in, "k": proc.k_in, "v": proc.v_in, "m": proc.m_in}
    for name, port in ports.items():
        if name != "m" or gate:
            data = spikes[name].reshape(STEPS, -1).T.astype(np.int32)  # [neurons, T]: column t = step t
            Source(data=data).s_out.connect(port)
    sink = Sink(shape=(tokens * HEADS * DIM,), buffer=STEPS)
    proc.a_out.connect(sink.a_in)
    return proc, sink


def run_lava(att: Attention, spikes: dict[str, np.ndarray], tag: str, gate: bool | None = None,
             reset: dict | None = None):
    """Run one SpikingAttention for STEPS steps: ``out [T, N, H*d]`` and the final state Vars.
    The gate is connected for three_factor only unless ``gate`` says otherwise."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    proc, sink = build(att, spikes, att.variant == "three_factor" if gate is None else gate, reset)
    try:
        proc.run(condition=RunSteps(num_steps=STEPS), run_cfg=Loihi2SimCfg(select_tag=tag))
        result = {"out": np.asarray(sink.data.get()).T.reshape(STEPS, spikes["q"].shape[1], -1)}
        result.update({name: np.asarray(getattr(proc, name).get()) for name in STATE})
    finally:
        proc.stop()
    return result


def reference(att: Attention, spikes: dict[str, np.ndarray], fixed: bool, steps: int = STEPS):
    """The numpy step on the same spikes (B = 1): ``out [T, N, H*d]``, final state, clipped cells."""
    state, outs, clipped = None, [], 0
    for t in range(steps):
        q, k, v, m = (spikes[x][t][None].astype(np.int64) for x in "qkvm")
        if fixed:
            out, state, c = attention_step_fixed(att, q, k, v, m, state)
            clipped += c
        else:
            out, state = attention_step_float(att, q, k, v, m, state)
        outs.append(out[0])
    return np.stack(outs), {name: x[0] for name, x in state.items()}, clipped


def torch_reference(att: Attention, spikes: dict[str, np.ndarray]) -> np.ndarray:
    """``spiking_attention`` (recurrent, float64) times out_scale: ``[T, N, H*d]``."""
    tokens = spikes["q"].shape[1]
    q, k, v = (torch.tensor(spikes[x], dtype=torch.float64).view(STEPS, 1, tokens, HEADS, DIM) for x in "qkv")
    plasticity = {name: torch.tensor(x, dtype=torch.float64) for name, x in att.plasticity.items()}
    modulator = torch.tensor(spikes["m"], dtype=torch.float64).mean(1).view(STEPS, 1, HEADS) \
        if att.variant == "three_factor" else None
    o, _ = spiking_attention(q, k, v, torch.tensor(att.decay), att.scale, att.variant, "recurrent",
                             plasticity=plasticity, modulator=modulator)
    return o.reshape(STEPS, tokens, HEADS * DIM).numpy() * att.out_scale


CASES = [(variant, tokens) for variant in VARIANTS for tokens in (1, 3)]


@pytest.mark.backend
@pytest.mark.parametrize("variant,tokens", CASES)
def test_float_model_matches_numpy_and_torch_step_by_step(variant, tokens):
    att = make_attention(variant, seed=tokens)
    spikes = make_spikes(tokens, seed=10 + tokens)
    lava = run_lava(att, spikes, "floating_pt")
    ref, state, _ = reference(att, spikes, fixed=False)
    assert np.abs(ref).max() > 0.1 and (ref != 0).mean() > 0.2  # non-trivial output
    np.testing.assert_allclose(lava["out"], ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lava["out"], torch_reference(att, spikes), rtol=0, atol=1e-12)
    for name, value in state.items():
        np.testing.assert_allclose(lava[name], value, rtol=0, atol=1e-12, err_msg=name)
    assert lava["saturation"].sum() == 0


@pytest.mark.backend
@pytest.mark.parametrize("variant,tokens", CASES)
def test_fixed_model_is_bit_identical_to_the_integer_reference(variant, tokens):
    att = make_attention(variant, seed=tokens)
    _quantize_attention(att, target_unit=256.0, state_bits=24, tokens=tokens)
    spikes = make_spikes(tokens, seed=20 + tokens)
    lava = run_lava(att, spikes, "fixed_pt")
    ref, state, clipped = reference(att, spikes, fixed=True)
    assert np.abs(ref).max() > 20 and (ref != 0).mean() > 0.2  # non-trivial output
    np.testing.assert_array_equal(lava["out"], ref)
    for name, value in state.items():
        np.testing.assert_array_equal(lava[name], value, err_msg=name)
    assert clipped == 0 and lava["saturation"].sum() == 0


@pytest.mark.backend
@pytest.mark.parametrize("variant", VARIANTS)
def test_fixed_model_saturates_and_counts_like_the_reference(variant):
    att = make_attention(variant, seed=3)
    _quantize_attention(att, target_unit=256.0, state_bits=24, tokens=3)
    # a few coincidences (delta: half of one) fill the state: saturation every few steps
    att.fixed["state_bits"] = att.fixed["frac_bits"] + (0 if variant == "delta" else 2)
    spikes = make_spikes(3, seed=33)
    lava = run_lava(att, spikes, "fixed_pt")
    ref, state, clipped = reference(att, spikes, fixed=True)
    assert clipped > 10
    assert int(lava["saturation"].sum()) == clipped
    np.testing.assert_array_equal(lava["out"], ref)
    np.testing.assert_array_equal(lava["memory"], state["memory"])
    limit = 2 ** (att.fixed["state_bits"] - 1) - 1
    assert np.abs(lava["memory"]).max() <= limit


@pytest.mark.backend
@pytest.mark.parametrize("variant", VARIANTS)
def test_synops_count_what_the_event_driven_model_executes(variant):
    """``attention_event_counts`` (the energy estimate) equals the Lava process's own counter."""
    from spikeformer.attention import attention_event_counts

    att = make_attention(variant, seed=5)
    spikes = make_spikes(3, seed=55)
    proc, sink = build(att, spikes, gate=variant == "three_factor")
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    try:
        proc.run(condition=RunSteps(num_steps=STEPS), run_cfg=Loihi2SimCfg(select_tag="floating_pt"))
        synops = int(np.asarray(proc.synops.get()).sum())
    finally:
        proc.stop()
    q, k, v = (torch.tensor(spikes[x], dtype=torch.float64).view(STEPS, 1, 3, HEADS, DIM) for x in "qkv")
    modulator = torch.tensor(spikes["m"], dtype=torch.float64).mean(1).view(STEPS, 1, HEADS)
    counts = attention_event_counts(q, k, v, variant, modulator)
    assert synops == int(counts["update"] + counts["read"]) > 0


@pytest.mark.backend
def test_stdp_traces_have_a_declared_width_and_saturate_counted():
    """SPEC §2.4: the stdp traces are integers of ``trace_bits`` that saturate, never silently."""
    att = make_attention("stdp", seed=4)
    _quantize_attention(att, target_unit=256.0, state_bits=24, tokens=3)
    assert att.fixed["trace_bits"] == 24
    att.fixed["trace_bits"] = att.fixed["frac_bits"] + 2  # four pending key spikes fill a trace
    spikes = make_spikes(3, seed=44)
    lava = run_lava(att, spikes, "fixed_pt")
    ref, state, clipped = reference(att, spikes, fixed=True)
    limit = 2 ** (att.fixed["trace_bits"] - 1) - 1
    assert clipped > 0 and int(lava["saturation"].sum()) == clipped
    for name in ("pre_trace", "post_trace"):
        assert np.abs(state[name]).max() == limit, name  # the reference clipped there
        np.testing.assert_array_equal(lava[name], state[name], err_msg=name)
    np.testing.assert_array_equal(lava["out"], ref)


@pytest.mark.backend
@pytest.mark.parametrize("tag", ["floating_pt", "fixed_pt"])
def test_unconnected_gate_reads_zero_without_blocking_and_warns(tag, capfd):
    att = make_attention("three_factor", seed=1)
    _quantize_attention(att, target_unit=256.0, state_bits=24, tokens=2)
    lava = run_lava(att, make_spikes(2, seed=5), tag, gate=False)
    assert np.all(lava["out"] == 0) and np.all(lava["memory"] == 0)  # m = 0: S never grows
    assert np.abs(lava["eligibility"]).max() > 0  # the coincidences did arrive
    assert "has no gate connected to m_in" in capfd.readouterr().err


@pytest.mark.backend
@pytest.mark.parametrize("variant,tag", [("stdp", "fixed_pt"), ("three_factor", "floating_pt")])
def test_reset_interval_zeroes_the_state_so_samples_run_back_to_back(variant, tag):
    """reset_interval = 6, reset_offset = 1 (as LIFReset): steps 7..12 equal a fresh run."""
    att = make_attention(variant, seed=3)
    _quantize_attention(att, target_unit=256.0, state_bits=24, tokens=3)
    spikes = make_spikes(3, seed=7)
    half = STEPS // 2
    lava = run_lava(att, spikes, tag, reset={"reset_interval": half, "reset_offset": 1})
    fixed = tag == "fixed_pt"
    first, _, _ = reference(att, spikes, fixed, steps=half)
    second, state, _ = reference(att, {x: s[half:] for x, s in spikes.items()}, fixed, steps=STEPS - half)
    joined = np.concatenate([first, second])
    if fixed:
        np.testing.assert_array_equal(lava["out"], joined)
    else:
        np.testing.assert_allclose(lava["out"], joined, rtol=0, atol=1e-12)
    np.testing.assert_allclose(lava["memory"], state["memory"], rtol=0, atol=1e-12)
    assert np.abs(second).max() > 0 and not np.allclose(second, reference(att, spikes, fixed)[0][half:])


@pytest.mark.backend
def test_event_helpers_match_dense_sums():
    """The index-list joins of models.py against dense einsums (no Lava run needed)."""
    from neuromorphic.lava.attention.models import (
        coincidences,
        column_cells,
        group_rows,
        row_cells,
        scatter_sum,
    )

    rng = np.random.default_rng(0)
    tokens, d = 5, DIM
    k, v, q = (rng.random((tokens, HEADS, d)) < 0.4 for _ in range(3))
    h, i, j = coincidences(k, v)
    counts = np.zeros((HEADS, d, d), np.int64)
    np.add.at(counts, (h, i, j), 1)
    np.testing.assert_array_equal(counts, np.einsum("nhi,nhj->hij", k.astype(np.int64), v.astype(np.int64)))
    trace = rng.integers(-50, 50, (tokens, HEADS, d))
    n, hv, jv = np.nonzero(v)
    cells, sums = scatter_sum(column_cells(hv, jv, d), trace[n, hv, :])
    dense = np.zeros(HEADS * d * d, np.int64)
    dense[cells] = sums
    np.testing.assert_array_equal(dense.reshape(HEADS, d, d), np.einsum("nhi,nhj->hij", trace, v.astype(np.int64)))
    n, hk, ik = np.nonzero(k)
    cells, sums = scatter_sum(row_cells(hk, ik, d), trace[n, hk, :])
    dense[:] = 0
    dense[cells] = sums
    np.testing.assert_array_equal(dense.reshape(HEADS, d, d), np.einsum("nhi,nhj->hij", k.astype(np.int64), trace))
    memory = rng.integers(-9, 9, (HEADS, d, d))
    n, hq, iq = np.nonzero(q)
    gn, gh, rows, _, count = group_rows(n, hq, iq, memory, HEADS)
    read = np.einsum("nhi,hij->nhj", q.astype(np.int64), memory)
    np.testing.assert_array_equal(rows, read[gn, gh])
    np.testing.assert_array_equal(count, q.sum(-1)[gn, gh])
    assert set(zip(gn, gh)) == set(zip(*np.nonzero(q.any(-1))))


@pytest.mark.backend
def test_process_rejects_bad_arguments_with_a_sentence():
    from neuromorphic.lava.attention.process import SpikingAttention

    good = {"tokens": 2, "heads": HEADS, "head_dim": DIM, "variant": "hebbian", "decay": [0.9, 0.8],
            "scale": 1.0, "out_scale": np.ones(HEADS * DIM)}
    for change, words in (({"variant": "softmax"}, "variant must be one of"),
                          ({"decay": [0.9]}, "decay must have one value per head"),
                          ({"out_scale": np.ones(3)}, "out_scale must have shape"),
                          ({"variant": "stdp"}, "needs plasticity parameters"),
                          ({"tokens": 0}, "tokens must be a positive integer"),
                          ({"fixed": {"one": 1}}, "fixed parameters lack"),
                          ({"reset_interval": 0}, "reset_interval must be a positive integer"),
                          ({"layout": {"q_in": (7, 0)}}, "layout of q_in must be"),
                          ({"layout": {"x_in": (8, 0)}}, "unknown ports")):
        with pytest.raises(ValueError, match=words):
            SpikingAttention(**{**good, **change})


@pytest.mark.backend
@pytest.mark.parametrize("tag", ["floating_pt", "fixed_pt"])
def test_layout_reads_and_writes_slices_of_wider_vectors(tag):
    """``layout``: q, k, v (and m) sit at offsets inside wider vectors whose other entries spike at
    random (and must be ignored); the output lands at its offset of a wider a_out, zeros around."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    from neuromorphic.lava.attention.process import from_ir

    tokens, rng = 3, np.random.default_rng(8)
    att = make_attention("three_factor", seed=6)
    _quantize_attention(att, target_unit=256.0, state_bits=24, tokens=tokens)
    spikes = make_spikes(tokens, seed=61)
    offsets = {"q_in": 5, "k_in": 0, "v_in": 17, "m_in": 2, "a_out": 9}
    layout, width = {}, {}
    for port, name in zip(offsets, "qkvmo"):
        width[port] = tokens * HEADS * (1 if name == "m" else DIM)
        layout[port] = (width[port] + offsets[port] + 4, offsets[port])
    proc = from_ir(att, tokens, layout=layout)
    for port, name in zip(("q_in", "k_in", "v_in", "m_in"), "qkvm"):
        size, offset = layout[port]
        data = (rng.random((size, STEPS)) < 0.5).astype(np.int32)  # noise outside the slice
        data[offset:offset + width[port]] = spikes[name].reshape(STEPS, -1).T
        Source(data=data).s_out.connect(getattr(proc, port))
    sink = Sink(shape=(layout["a_out"][0],), buffer=STEPS)
    proc.a_out.connect(sink.a_in)
    try:
        proc.run(condition=RunSteps(num_steps=STEPS), run_cfg=Loihi2SimCfg(select_tag=tag))
        out = np.asarray(sink.data.get()).T  # [T, size]
    finally:
        proc.stop()
    ref, _, _ = reference(att, spikes, fixed=tag == "fixed_pt")
    start = offsets["a_out"]
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(out[:, start:start + width["a_out"]], ref.reshape(STEPS, -1), rtol=0, atol=1e-12)
    assert not out[:, :start].any() and not out[:, start + width["a_out"]:].any()
