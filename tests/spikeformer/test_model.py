"""The spiking transformer and its ANN baseline: shapes, gradients, input checks, streaming,
causality, loihi delays and latency, synaptic-event counts, parameter counts, determinism."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from spikeformer.config import Config
from spikeformer.data import make_recall, unpatchify
from spikeformer.errors import ShapeError
from spikeformer.metrics import count_params
from spikeformer.model import (
    ANNTransformer,
    Conv1dStem,
    Conv2dStem,
    Dense,
    LinearStem,
    Probe,
    Spikeformer,
    SpikingAttention,
    SpikingMLP,
    build_model,
    encode,
)

torch.set_num_threads(1)

VARIANTS = ("hebbian", "stdp", "three_factor", "delta")
# (task, tokens, features, classes) for each task with its own input layout
SHAPES = {"digits": (16, 4, 10), "mnist1d": (40, 1, 10), "recall": (5, 32, 16)}


def tiny(**kw) -> Config:
    base = dict(dim=16, heads=2, head_dim=8, depth=1, conv_channels=4)
    base.update(kw)
    if base.get("task") == "recall":
        base.setdefault("mode", "causal")
    return Config(**base)


def make(cfg: Config):
    tokens, features, classes = SHAPES[cfg.task]
    return build_model(cfg, tokens, features, classes), tokens, features, classes


def inputs(cfg: Config, batch: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if cfg.task == "recall":
        x, _ = make_recall(batch, 4, 16, 16, seed)
        return x
    tokens, features, _ = SHAPES[cfg.task]
    return torch.rand(batch, tokens, features, generator=g)


# --------------------------------------------------------------------------------------------
# forward shapes and gradients

CASES = {
    "digits_linear": dict(task="digits"),
    "mnist1d_conv1d": dict(task="mnist1d", stem="conv1d"),
    "digits_conv2d_loihi": dict(task="digits", stem="conv2d", delays="loihi"),
    "recall_causal": dict(task="recall", mode="causal"),
    "stdp": dict(variant="stdp"),
    "three_factor": dict(variant="three_factor"),
    "delta": dict(variant="delta"),
    "poisson": dict(encoder="poisson"),
    "loihi": dict(delays="loihi"),
    "recall_loihi_delta": dict(task="recall", mode="causal", delays="loihi", variant="delta"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_spikeformer_forward_shapes_and_decay_gradient(case):
    cfg = tiny(**CASES[case])
    model, tokens, features, classes = make(cfg)
    assert isinstance(model, Spikeformer)
    x = inputs(cfg, batch=4)
    logits, state = model(x)
    assert logits.shape == (4, classes)
    assert torch.isfinite(logits).all()
    assert isinstance(state, dict) and "stem" in state and "block0" in state
    logits.pow(2).sum().backward()
    grad = model.blocks[0].attn.decay_logit.grad
    assert grad is not None and grad.shape == (cfg.heads,)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_decay_logit_name_is_the_one_in_named_parameters():
    model, *_ = make(tiny())
    assert "blocks.0.attn.decay_logit" in dict(model.named_parameters())


def test_conv1d_stem_halves_the_tokens():
    cfg = tiny(task="mnist1d", stem="conv1d")
    model, *_ = make(cfg)
    assert model.stem.out_tokens == 20
    assert model.readout.linear.in_features == 20 * cfg.dim
    y, _ = model.forward_steps(encode(inputs(cfg, batch=3), cfg))
    assert y.shape == (cfg.time_steps, 3, 10)


def test_causal_encoding_puts_tokens_on_the_time_axis():
    cfg = tiny(task="recall", steps_per_token=3)
    x = inputs(cfg, batch=2)
    x_t = encode(x, cfg)
    assert x_t.shape == (5 * 3, 2, 1, 32)
    for n in range(5):
        for r in range(3):
            assert torch.equal(x_t[3 * n + r, :, 0], x[:, n])


def test_global_encoding_repeats_direct_and_draws_binary_poisson():
    cfg = tiny(time_steps=3)
    x = inputs(cfg, batch=2)
    x_t = encode(x, cfg)
    assert x_t.shape == (3, 2, 16, 4)
    assert all(torch.equal(step, x) for step in x_t)
    pcfg = tiny(time_steps=3, encoder="poisson")
    spikes = encode(torch.cat([torch.zeros(1, 16, 4), torch.ones(1, 16, 4)]), pcfg)
    assert spikes[:, 0].sum() == 0 and torch.all(spikes[:, 1] == 1)


@pytest.mark.parametrize("task,stem", [("digits", "linear"), ("mnist1d", "conv1d"), ("digits", "conv2d"),
                                       ("recall", "linear")])
def test_ann_forward_shapes_and_finite_gradients(task, stem):
    cfg = tiny(task=task, stem=stem, model="ann")
    model, tokens, features, classes = make(cfg)
    assert isinstance(model, ANNTransformer)
    logits, state = model(inputs(cfg, batch=3))
    assert logits.shape == (3, classes) and torch.isfinite(logits).all()
    assert state == {}
    logits.pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


# --------------------------------------------------------------------------------------------
# input checks


@pytest.mark.parametrize("model_kind", ["spikeformer", "ann"])
@pytest.mark.parametrize("shape", [(2, 16, 3), (2, 15, 4), (16, 4), (2, 1, 16, 4)])
def test_wrong_input_shape_raises_shape_error_naming_the_expected_shape(model_kind, shape):
    model, *_ = make(tiny(model=model_kind))
    with pytest.raises(ShapeError, match=r"\[B, 16, 4\]"):
        model(torch.zeros(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_raises_shape_error(bad):
    model, *_ = make(tiny())
    x = torch.rand(2, 16, 4)
    x[1, 3, 2] = bad
    with pytest.raises(ShapeError, match="NaN or infinite"):
        model(x)


def test_ann_rejects_nan_input_like_the_spiking_model():
    model, *_ = make(tiny(model="ann"))
    x = torch.rand(2, 16, 4)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ShapeError):
        model(x)


# --------------------------------------------------------------------------------------------
# streaming and causality (causal mode, eval)


@pytest.mark.parametrize("delays", ["none", "loihi"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_streaming_in_chunks_equals_one_pass(variant, delays):
    cfg = tiny(task="recall", variant=variant, delays=delays)
    model, *_ = make(cfg)
    model.eval()
    x_t = encode(inputs(cfg, batch=6), cfg)  # [10, 6, 1, 32]
    with torch.no_grad():
        whole, whole_state = model.forward_steps(x_t)
        for cut in (3, 4):  # mid-token and on a token boundary
            first, state = model.forward_steps(x_t[:cut])
            second, state = model.forward_steps(x_t[cut:], state)
            torch.testing.assert_close(torch.cat([first, second]), whole, atol=1e-6, rtol=0)
            torch.testing.assert_close(state["lif"].membrane, whole_state["lif"].membrane, atol=1e-6, rtol=0)
    assert whole.abs().sum() > 0


def test_streaming_with_parallel_attention_equals_one_pass():
    cfg = tiny(task="recall", attention_impl="parallel")
    model, *_ = make(cfg)
    model.eval()
    x_t = encode(inputs(cfg, batch=4), cfg)
    with torch.no_grad():
        whole, _ = model.forward_steps(x_t)
        first, state = model.forward_steps(x_t[:5])
        second, _ = model.forward_steps(x_t[5:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("delays", ["none", "loihi"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_readout_does_not_depend_on_later_tokens(variant, delays):
    cfg = tiny(task="recall", variant=variant, delays=delays)
    model, *_ = make(cfg)
    model.eval()
    x = inputs(cfg, batch=6)
    changed = x.clone()
    changed[:, -1] = 1.0 - changed[:, -1]  # a different last (query) token
    # extra zero steps after the sequence let delayed paths reach the readout
    pad = model.latency + 2
    with torch.no_grad():
        x_t, c_t = encode(x, cfg), encode(changed, cfg)
        zeros = x_t.new_zeros(pad, *x_t.shape[1:])
        y, _ = model.forward_steps(torch.cat([x_t, zeros]))
        y2, _ = model.forward_steps(torch.cat([c_t, zeros]))
    last = (x.shape[1] - 1) * cfg.steps_per_token  # first step of the last token
    assert torch.equal(y[:last], y2[:last])
    assert not torch.equal(y[last:], y2[last:])


# --------------------------------------------------------------------------------------------
# loihi delays and latency


def dense_on_longest_path(cfg: Config) -> int:
    stem = 1 if cfg.stem == "linear" else 2  # conv stems: conv1 then conv2
    attention = 2  # q/k/v projection, then output projection
    mlp = 2  # fc1, fc2
    return stem + cfg.depth * (attention + mlp) + 1  # + readout


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("stem,task", [("linear", "digits"), ("conv1d", "mnist1d"), ("conv2d", "digits"),
                                       ("linear", "recall")])
def test_latency_counts_dense_layers_on_the_longest_path(depth, stem, task):
    cfg = tiny(depth=depth, stem=stem, task=task, delays="loihi")
    model, *_ = make(cfg)
    assert model.latency == dense_on_longest_path(cfg)
    none, *_ = make(tiny(depth=depth, stem=stem, task=task))
    assert none.latency == 0


def first_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    """First step (axis 0) where a and b differ; -1 if never."""
    differs = (a != b).flatten(1).any(1).nonzero()
    return int(differs[0]) if len(differs) else -1


def impulse_pair(shape, value=1.0):
    quiet = torch.zeros(shape)
    kick = quiet.clone()
    kick[0] = value
    return quiet, kick


def impulse_delay(layer, shape) -> int:
    """Steps until an input at step 0 changes ``layer``'s output (vs an all-zero input)."""
    quiet, kick = impulse_pair(shape)
    return first_difference(layer(quiet), layer(kick))


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_sublayer_delays_by_exactly_two_steps(variant):
    cfg = tiny(delays="loihi", variant=variant)
    attn = SpikingAttention(cfg).eval()
    with torch.no_grad():
        for dense in attn.proj.values():
            dense.linear.weight.fill_(1.0)  # one input spike drives every q/k/v neuron over threshold
        if variant == "three_factor":
            attn.gate.linear.weight.fill_(1.0)
        attn.out_norm.bn.weight.fill_(100.0)  # any positive attention read fires the output LIF
        assert impulse_delay(lambda x: attn(x, {}, None, "a")[0].total, (6, 1, 2, cfg.dim)) == 2


def test_mlp_sublayer_delays_by_exactly_two_steps():
    cfg = tiny(delays="loihi")
    mlp = SpikingMLP(cfg).eval()
    with torch.no_grad():
        mlp.fc1.linear.weight.fill_(1.0)
        assert impulse_delay(lambda x: mlp(x, {}, None, "m")[0].total, (6, 1, 2, cfg.dim)) == 2


def test_stems_and_readout_delay_by_their_dense_count():
    cfg = tiny(delays="loihi")
    linear = LinearStem(cfg, 4, 3, binary_input=False).eval()
    conv_cfg = tiny(task="mnist1d", stem="conv1d", delays="loihi")
    conv = Conv1dStem(conv_cfg, 6, 1, binary_input=False).eval()
    readout = Dense(5, 3, norm=False, delay=True).eval()
    with torch.no_grad():
        conv.conv1.weight.fill_(1.0)
        q, k = impulse_pair((5, 1, 4, 3))
        assert first_difference(linear(q, {}, None)[0].total, linear(k, {}, None)[0].total) == 1
        q, k = impulse_pair((5, 1, 6, 1))
        assert first_difference(conv(q, {}, None)[0].total, conv(k, {}, None)[0].total) == 2
        q, k = impulse_pair((5, 1, 5))
        y0, _ = readout(q)
        y1, _ = readout(k)
    assert first_difference(y0.total, y1.total) == 1
    torch.testing.assert_close(y1.total[1], readout.linear(k[0]))


@pytest.mark.parametrize("depth", [1, 2])
def test_measured_sublayer_delays_add_up_to_latency(depth):
    # the per-module delays measured above, composed along the longest path
    for stem, measured_stem in (("linear", 1), ("conv1d", 2)):
        task = "mnist1d" if stem == "conv1d" else "digits"
        cfg = tiny(depth=depth, stem=stem, task=task, delays="loihi")
        model, *_ = make(cfg)
        assert model.latency == measured_stem + depth * (2 + 2) + 1


@pytest.mark.parametrize("stem,task", [("linear", "digits"), ("conv1d", "mnist1d"), ("conv2d", "digits")])
def test_impulse_reaches_readout_no_earlier_than_the_shortest_delayed_path(stem, task):
    """With delays, an input at step 0 leaves the readout untouched until it has crossed the
    stem and the readout (the residual shortcut is the shortest path); ``latency`` is the
    longest path, so the full effect needs ``latency`` steps (forward pads that many)."""
    base = tiny(stem=stem, task=task)
    plain, tokens, features, _ = make(base)
    delayed, *_ = make(tiny(stem=stem, task=task, delays="loihi"))
    delayed.load_state_dict(plain.state_dict())  # delays add no parameters
    delayed.eval()
    g = torch.Generator().manual_seed(1)
    quiet = torch.zeros(delayed.latency + 6, 3, tokens, features)
    kick = quiet.clone()
    kick[0] = 5.0 * torch.randn(3, tokens, features, generator=g)
    with torch.no_grad():
        y0, _ = delayed.forward_steps(quiet)
        y1, _ = delayed.forward_steps(kick)
    shortest = (1 if stem == "linear" else 2) + 1
    first = first_difference(y0, y1)
    assert first == shortest
    assert not torch.equal(y0[delayed.latency:], y1[delayed.latency:])


def test_forward_pads_latency_zero_steps_and_averages_the_shifted_window():
    cfg = tiny(delays="loihi")
    model, *_ = make(cfg)
    model.eval()
    x = inputs(cfg, batch=3)
    with torch.no_grad():
        logits, _ = model(x)
        x_t = encode(x, cfg)
        padded = torch.cat([x_t, x_t.new_zeros(model.latency, *x_t.shape[1:])])
        y, _ = model.forward_steps(padded)
    assert y.shape[0] == cfg.time_steps + model.latency
    torch.testing.assert_close(logits, y[-cfg.time_steps:].mean(0))


# --------------------------------------------------------------------------------------------
# synaptic event counts


def test_probe_counts_dense_accumulates_per_spike_and_fan_out():
    layer = Dense(4, 3)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(5, 2, 6, 4, generator=g) < 0.4).float()
    spikes = int(x.sum())
    assert spikes > 0
    probe = Probe()
    layer(x, probe=probe)
    assert probe.ac == spikes * 3 and probe.mac == 0
    real = Dense(4, 3, binary_input=False)
    probe = Probe()
    real(x, probe=probe)
    assert probe.mac == x.numel() * 3 and probe.ac == 0


def test_probe_counts_a_hand_checked_case():
    layer = Dense(4, 3)
    x = torch.zeros(1, 1, 2, 4)
    x[0, 0, 0, 1] = 1
    x[0, 0, 1, :3] = 1  # four spikes
    probe = Probe()
    layer(x, probe=probe)
    assert probe.ac == 12.0


def brute_force_conv_events(conv: torch.nn.Conv1d, x: torch.Tensor) -> float:
    t, b, n, f = x.shape
    k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    n_out = (n + 2 * pad - k) // stride + 1
    events = 0
    for ti in range(t):
        for bi in range(b):
            for j in range(n_out):
                for tap in range(k):
                    pos = j * stride - pad + tap
                    if 0 <= pos < n:
                        for fi in range(f):
                            if x[ti, bi, pos, fi] != 0:
                                events += conv.out_channels
    return float(events)


@pytest.mark.parametrize("tokens", [7, 8])
def test_conv1d_stem_event_count_matches_a_brute_force_loop(tokens):
    cfg = tiny(task="mnist1d", stem="conv1d", conv_channels=3)
    stem = Conv1dStem(cfg, tokens, 2, binary_input=True)
    g = torch.Generator().manual_seed(tokens)
    x = (torch.rand(2, 2, tokens, 2, generator=g) < 0.5).float()
    assert Conv1dStem._count(stem.conv1, x) == brute_force_conv_events(stem.conv1, x)
    s = (torch.rand(2, 2, tokens, 3, generator=g) < 0.5).float()
    assert Conv1dStem._count(stem.conv2, s) == brute_force_conv_events(stem.conv2, s)


def test_conv1d_stem_probe_total_is_conv1_plus_conv2_events():
    cfg = tiny(task="mnist1d", stem="conv1d", conv_channels=3)
    stem = Conv1dStem(cfg, 8, 1, binary_input=True)
    x = (torch.rand(3, 2, 8, 1) < 0.5).float()
    probe = Probe(keep_traces=True)
    stem(x, {}, probe)
    s = probe.spikes["stem.conv1"]
    expected = brute_force_conv_events(stem.conv1, x) + brute_force_conv_events(stem.conv2, s)
    assert probe.ac == expected and probe.mac == 0


def brute_force_conv2d_events(conv: torch.nn.Conv2d, images: torch.Tensor) -> float:
    """``images [S, C_in, H, W]``: per output pixel, the active inputs under its kernel x C_out."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    s, _, h, w = images.shape
    events = 0
    for i in range(s):
        for oy in range((h + 2 * ph - kh) // sh + 1):
            for ox in range((w + 2 * pw - kw) // sw + 1):
                for dy in range(kh):
                    for dx in range(kw):
                        y, x = oy * sh - ph + dy, ox * sw - pw + dx
                        if 0 <= y < h and 0 <= x < w:
                            events += int((images[i, :, y, x] != 0).sum()) * conv.out_channels
    return float(events)


def test_conv2d_stem_event_count_matches_a_brute_force_loop():
    cfg = tiny(task="digits", stem="conv2d", conv_channels=3)  # patch 2: 16 tokens of 4 pixels, 8x8
    stem = Conv2dStem(cfg, 16, 4, binary_input=True)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 2, 16, 4, generator=g) < 0.5).float()
    pixels = unpatchify(x.reshape(4, 16, 4), 2).unsqueeze(1)  # [T*B, 1, 8, 8]
    assert stem._count(stem.conv1, x) == brute_force_conv2d_events(stem.conv1, pixels)
    s = (torch.rand(2, 2, 64, 3, generator=g) < 0.5).float()  # conv1's LIF: 64 pixels x 3 channels, raster
    assert stem._count(stem.conv2, s) == brute_force_conv2d_events(stem.conv2, s.reshape(4, 8, 8, 3).permute(0, 3, 1, 2))


def test_conv2d_stem_reads_pixels_in_raster_order_and_writes_patch_tokens_in_patch_order():
    """conv1 with only its centre tap is the identity on the image the patch tokens tile; conv2
    with all-one p x p kernels sums each patch, so its output token n is patch token n's sum."""
    cfg = tiny(task="digits", stem="conv2d", conv_channels=1)
    stem = Conv2dStem(cfg, 16, 4, binary_input=False)
    x = torch.rand(1, 3, 16, 4)
    with torch.no_grad():
        stem.conv1.weight.zero_()
        stem.conv1.weight[0, 0, 1, 1] = 1.0
        stem.conv2.weight.fill_(1.0)
        pixels = stem._conv(stem.conv1, x)  # [1, 3, 64, 1]
        torch.testing.assert_close(pixels[0, :, :, 0], unpatchify(x[0], 2).reshape(3, 64))
        tokens = stem._conv(stem.conv2, pixels)  # [1, 3, 16, D]
    torch.testing.assert_close(tokens[0, :, :, 0], x[0].sum(-1))
    assert tokens.shape == (1, 3, 16, cfg.dim)


def test_conv2d_stem_refuses_tokens_that_do_not_tile_a_square_image():
    with pytest.raises(ShapeError, match="conv2d stem"):
        Conv2dStem(tiny(task="digits", stem="conv2d"), 16, 9, binary_input=False)


@pytest.mark.parametrize("task,features", [("mnist1d", 1), ("digits", 4)])
def test_conv1d_stem_real_input_macs_scale_with_features(task, features):
    cfg = tiny(task=task, stem="conv1d", conv_channels=3)
    stem = Conv1dStem(cfg, 8, features, binary_input=False)
    probe = Probe()
    stem(torch.randn(3, 2, 8, features), {}, probe)
    assert probe.mac == 3 * 2 * 8 * features * 5 * 3  # T B N F kernel C_out


def test_model_probe_counts_spikes_and_events():
    cfg = tiny(encoder="poisson")
    model, *_ = make(cfg)
    probe = Probe()
    with torch.no_grad():
        model(inputs(cfg, batch=2), probe=probe, generator=torch.Generator().manual_seed(0))
    assert probe.ac > 0 and probe.mac > 0  # mac: attention state decay
    assert 0.0 < probe.spike_rate() < 1.0


# --------------------------------------------------------------------------------------------
# ANN multiply-accumulates


def test_ann_macs_digits_by_hand():
    model, *_ = make(tiny(model="ann"))  # D 16, H*d 16, hidden 32, N 16, F 4, C 10
    stem = 16 * 4 * 16
    per_token = 16 * 48 + 16 * 16 + 16 * 32 + 32 * 16  # qkv, out, fc1, fc2
    products = 2 * (16 * 16) * 16  # q k^T and attn v over all N^2 pairs
    readout = 16 * 16 * 10
    assert model.macs_per_sample() == stem + 16 * per_token + products + readout == 44544


def test_ann_macs_conv1d_by_hand():
    model, *_ = make(tiny(model="ann", task="mnist1d", stem="conv1d"))  # C 4, N 40 -> 20
    stem = 40 * 1 * 4 * 5 + 20 * 4 * 16 * 3
    per_token = 16 * 48 + 16 * 16 + 16 * 32 + 32 * 16
    products = 2 * (20 * 20) * 16
    readout = 20 * 16 * 10
    assert model.macs_per_sample() == stem + 20 * per_token + products + readout == 61600


def test_ann_macs_causal_by_hand():
    model, *_ = make(tiny(model="ann", task="recall"))  # N 5, F 32, C 16, last token read
    stem = 5 * 32 * 16
    per_token = 16 * 48 + 16 * 16 + 16 * 32 + 32 * 16
    products = 2 * (5 * 6 // 2) * 16  # causal: pairs (i, j <= i)
    readout = 16 * 16
    assert model.macs_per_sample() == stem + 5 * per_token + products + readout == 13536


def test_ann_macs_conv2d_by_hand():
    model, *_ = make(tiny(model="ann", task="digits", stem="conv2d"))  # 8x8 pixels, C 4, patch 2 -> N 16
    stem = 64 * 4 * 9 + 16 * 4 * 4 * 16  # 3x3 per pixel and channel; 2x2x4 per patch and output
    per_token = 16 * 48 + 16 * 16 + 16 * 32 + 32 * 16
    products = 2 * (16 * 16) * 16
    readout = 16 * 16 * 10
    assert model.macs_per_sample() == stem + 16 * per_token + products + readout == 49920


@pytest.mark.parametrize("task,stem", [("digits", "linear"), ("mnist1d", "conv1d"), ("digits", "conv2d")])
def test_ann_macs_agree_with_torch_flop_counter(task, stem):
    model, tokens, features, _ = make(tiny(model="ann", task=task, stem=stem))
    x = torch.rand(2, tokens, features)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    # weight layers only: the CPU attention kernel is not seen by the flop counter on every build
    weights = sum(v for op, v in counter.get_flop_counts()["Global"].items()
                  if "addmm" in str(op) or "convolution" in str(op) or str(op).endswith(".mm"))
    n = model.body_tokens
    products = model.cfg.depth * 2 * n * n * model.cfg.heads * model.cfg.head_dim
    assert weights == 2 * 2 * (model.macs_per_sample() - products)  # 2 flops per MAC, batch 2


def test_ann_probe_adds_macs_per_sample_times_batch():
    model, *_ = make(tiny(model="ann"))
    probe = Probe()
    model(torch.rand(3, 16, 4), probe=probe)
    assert probe.mac == 3 * model.macs_per_sample() > 0


# --------------------------------------------------------------------------------------------
# parameters and determinism


@pytest.mark.parametrize("model_kind", ["spikeformer", "ann"])
@pytest.mark.parametrize("variant", ["hebbian", "stdp"])
def test_count_params_attention_is_a_proper_part(model_kind, variant):
    model, *_ = make(tiny(model=model_kind, variant=variant))
    params, attention = count_params(model)
    assert 0 < attention < params
    assert params == sum(p.numel() for p in model.parameters())


def test_count_params_spiking_attention_hand_count():
    model, *_ = make(tiny())  # D 16, H 2, d 8 -> inner 16
    _, attention = count_params(model)
    proj = 3 * (16 * 16 + 2 * 16)  # q/k/v: weight + BatchNorm affine (Linear has no bias before a norm)
    out = 16 * 16 + 2 * 16
    out_norm = 2 * 16
    decay = 2
    assert attention == proj + out + out_norm + decay


def test_delays_add_no_parameters():
    plain, *_ = make(tiny(task="recall"))
    delayed, *_ = make(tiny(task="recall", delays="loihi"))
    assert plain.state_dict().keys() == delayed.state_dict().keys()
    delayed.load_state_dict(plain.state_dict(), strict=True)


def test_poisson_encoder_is_deterministic_given_a_generator_seed():
    cfg = tiny(encoder="poisson")
    model, *_ = make(cfg)
    model.eval()
    x = inputs(cfg, batch=4)
    with torch.no_grad():
        a, _ = model(x, generator=torch.Generator().manual_seed(7))
        torch.manual_seed(123)  # the global RNG must not matter
        b, _ = model(x, generator=torch.Generator().manual_seed(7))
        c, _ = model(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_same_seed_builds_the_same_model():
    torch.manual_seed(5)
    a, *_ = make(tiny())
    torch.manual_seed(5)
    b, *_ = make(tiny())
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
