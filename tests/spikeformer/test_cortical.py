"""Multi-scale cortical projections (spikeformer/cortical.py): kernels, the projection against its
formula, synapse counts, learnable-parameter counts and the config's checks."""

import dataclasses
import math

import pytest
import torch

from spikeformer.config import Config, ConfigError, load_config
from spikeformer.cortical import SCALES, CorticalProjection, head_kernels, mixing_kernel, token_positions
from spikeformer.metrics import count_params
from spikeformer.model import Dense, Probe, build_model


def test_positions_are_a_grid_for_square_image_tokens_else_a_line():
    assert token_positions(4, grid=True).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert token_positions(3, grid=True).tolist() == [[0, 0], [1, 0], [2, 0]]  # not a square
    assert token_positions(4, grid=False).tolist() == [[0, 0], [1, 0], [2, 0], [3, 0]]


def test_kernels_pool_at_their_scale_with_rows_summing_to_one():
    line = token_positions(5, grid=False)
    for scale in SCALES:
        kernel = mixing_kernel(scale, line)
        torch.testing.assert_close(kernel.sum(1), torch.ones(5, dtype=kernel.dtype))
    window = mixing_kernel("window", line)
    assert window[2].tolist() == [0, 1 / 3, 1 / 3, 1 / 3, 0]  # the token and its two neighbours
    assert window[0].tolist() == [0.5, 0.5, 0, 0, 0]
    assert torch.equal(mixing_kernel("global", line), torch.full((5, 5), 0.2, dtype=torch.float64))
    gauss = mixing_kernel("gauss1", line)[0]
    assert gauss[1] / gauss[0] == pytest.approx(math.exp(-0.5))
    assert mixing_kernel("gauss2", line)[0, 2] / mixing_kernel("gauss2", line)[0, 0] == pytest.approx(math.exp(-0.5))
    grid = mixing_kernel("window", token_positions(9, grid=True))
    assert (grid[4] > 0).all() and (grid[0] > 0).sum() == 4  # centre: all 9; corner: itself and 3
    with pytest.raises(ValueError, match="unknown scale"):
        mixing_kernel("huge", line)


def test_heads_take_the_scales_in_turn():
    kernels = head_kernels(6, 5, grid=False)
    line = token_positions(5, grid=False)
    for h in range(6):
        torch.testing.assert_close(kernels[h], mixing_kernel(SCALES[h % 4], line))


def test_shared_projection_is_the_pooled_shared_kernel():
    torch.manual_seed(0)
    proj = CorticalProjection(dim=6, heads=3, head_dim=2, tokens=4, grid=True, shared=True).double()
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)  # [T, B, N, D]
    y = proj(x).view(2, 3, 4, 3, 2)
    for n in range(4):
        for h in range(3):
            expect = sum(proj.kernels[h, n, m] * (x[:, :, m] @ proj.weight.t()) for m in range(4))
            torch.testing.assert_close(y[:, :, n, h], expect)


def test_value_projection_pools_each_heads_own_slice():
    proj = CorticalProjection(dim=6, heads=3, head_dim=2, tokens=4, grid=False, shared=False).double()
    assert proj.weight is None and not list(proj.parameters())
    x = torch.randn(5, 4, 6, dtype=torch.float64)
    y = proj(x).view(5, 4, 3, 2)
    for n in range(4):
        for h in range(3):
            expect = sum(proj.kernels[h, n, m] * x[:, m, 2 * h:2 * h + 2] for m in range(4))
            torch.testing.assert_close(y[:, n, h], expect)
    with pytest.raises(ValueError, match="must equal dim"):
        CorticalProjection(dim=8, heads=3, head_dim=2, tokens=4, grid=False, shared=False)


@pytest.mark.parametrize("shared", [True, False])
def test_synaptic_events_equal_a_hand_count_on_the_unrolled_matrix(shared):
    torch.manual_seed(1)
    proj = CorticalProjection(dim=4, heads=2, head_dim=2, tokens=3, grid=False, shared=shared).double()
    x = (torch.rand(2, 3, 4) < 0.4).double()  # [B, N, D] spikes
    # the unrolled map [N*H*d, N*D]: column (m, i) reaches the rows where it is nonzero
    units = torch.eye(12, dtype=torch.float64).view(12, 3, 4)
    matrix = proj(units).reshape(12, -1).t()  # [out, in]
    if shared:  # a zero kernel entry of W would hide synapses: make W dense
        assert (proj.weight != 0).all()
    fan_out = (matrix != 0).sum(0).double()  # [N*D]
    expect = float((x.reshape(2, -1) * fan_out).sum())
    assert proj.synaptic_events(x) == expect


def _config(**overrides) -> Config:
    kw = dict(task="digits", patch_size=4, dim=32, heads=4, head_dim=8, depth=2, time_steps=2, attention="cortical")
    kw.update(overrides)
    return Config(**kw)


def test_attention_params_are_counted_exactly():
    cfg = _config()
    model = build_model(cfg, 4, 16, 10)
    _, attention = count_params(model)
    d, width, dim, h = cfg.head_dim, cfg.heads * cfg.head_dim, cfg.dim, cfg.heads
    # q, k: a shared [d, D] kernel each; norms of q, k, v, the attention output (H*d) and out (D); decays
    per_block = 2 * d * dim + 4 * 2 * width + 2 * dim + h
    assert attention == cfg.depth * per_block


@pytest.mark.parametrize("config, learned", [("digits-cortical", {}), ("digits-loihi-cortical", {}),
                                             ("mnist1d-cortical", {"heads": 4, "head_dim": 16}), ("mnist-cortical", {})])
def test_cortical_demos_have_over_10x_fewer_attention_params(config, learned):
    """Against the learned twin (demos/digits.toml, digits-loihi.toml, mnist1d.toml, mnist.toml: the
    same but for these keys)."""
    counts = {}
    for attention in ("learned", "cortical"):
        overrides = {"attention": attention, **(learned if attention == "learned" else {})}
        cfg = load_config(f"demos/{config}.toml", overrides)
        tokens, features, classes = cfg.task_shape()
        counts[attention] = count_params(build_model(cfg, tokens, features, classes))[1]
    assert counts["learned"] >= 10 * counts["cortical"], counts


@pytest.mark.parametrize("config, twin", [("digits-cortical", "digits"), ("digits-loihi-cortical", "digits-loihi"),
                                           ("mnist-cortical", "mnist")])
def test_cortical_demo_is_its_learned_twin_but_for_the_attention(config, twin):
    cortical = dataclasses.asdict(load_config(f"demos/{config}.toml"))
    learned = dataclasses.asdict(load_config(f"demos/{twin}.toml"))
    assert {k: (learned[k], v) for k, v in cortical.items() if learned[k] != v} == {"attention": ("learned", "cortical")}


def test_output_projection_is_a_fixed_identity_that_training_leaves_alone():
    torch.manual_seed(0)
    model = build_model(_config(), 4, 16, 10)
    out = model.blocks[0].attn.out.linear.weight
    assert not out.requires_grad and torch.equal(out, torch.eye(32))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    logits, _ = model(torch.rand(8, 4, 16))
    logits.sum().backward()
    optimizer.step()
    assert torch.equal(out, torch.eye(32)) and out.grad is None
    assert model.blocks[0].attn.proj["q"].linear.weight.grad is not None


def test_dense_counts_the_synapses_its_cortical_projection_reaches():
    torch.manual_seed(0)
    dense = Dense(4, 4, delay=True)
    dense.linear = CorticalProjection(dim=4, heads=2, head_dim=2, tokens=3, grid=False, shared=True)
    x = (torch.rand(5, 2, 3, 4) < 0.5).float()  # [T, B, N, D] spikes
    probe = Probe()
    dense(x, None, probe)
    delayed = torch.cat([torch.zeros_like(x[:1]), x[:-1]])  # the Dense delivers one step late
    units = torch.eye(12).view(12, 3, 4)
    fan_out = (dense.linear(units).reshape(12, -1) != 0).sum(1).float()  # per input (m, i)
    assert probe.ac == float((delayed.reshape(5, 2, 12) * fan_out).sum()) > 0


@pytest.mark.parametrize("overrides, message", [
    (dict(heads=3), "heads \\* head_dim = 24 must equal dim = 32"),
    (dict(model="ann"), "model = 'ann'"),
    (dict(rule="eprop"), "rule = 'eprop'"),
    (dict(task="recall", mode="causal"), "mode = 'causal'"),
    (dict(attention="random"), "attention"),
])
def test_config_refuses_what_cortical_attention_cannot_do(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)
