"""Retina encoder: centre-surround ON/OFF responses, sustained and transient channels, spikes."""

from __future__ import annotations

import pytest
import numpy as np
import torch

from spikeformer.config import Config
from spikeformer.data import patchify
from spikeformer.encoders import (CHANNEL_NAMES, CHANNELS, GAIN, LOW_PASS, centre_surround, retina_encode,
                                  temporal_spikes)
from spikeformer.errors import ConfigError
from spikeformer.metrics import evaluate
from spikeformer.model import Probe, build_model

torch.set_num_threads(1)


def image_tokens(images: torch.Tensor, patch: int = 4) -> torch.Tensor:
    return torch.from_numpy(patchify(images.numpy(), patch))


def channel(spikes: torch.Tensor, name: str, patch: int = 4, side: int = 8) -> torch.Tensor:
    """Spike counts over time of one channel as an image ``[B, side, side]``."""
    t, b, n, f = spikes.shape
    grid = side // patch
    per = spikes.sum(0).reshape(b, grid, grid, patch, patch, CHANNELS)[..., CHANNEL_NAMES.index(name)]
    return per.permute(0, 1, 3, 2, 4).reshape(b, side, side)


@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
def test_a_uniform_image_gives_no_response_and_no_spikes(value):
    images = torch.full((2, 8, 8), value)
    assert float(centre_surround(images, 2).abs().max()) < 1e-6
    cfg = Config(task="digits", patch_size=4, encoder="retina", time_steps=20)
    assert not retina_encode(image_tokens(images), cfg).any()


def test_a_bright_spot_gives_on_at_its_centre_and_off_around_it():
    images = torch.zeros(1, 8, 8)
    images[0, 3, 4] = 1.0
    responses = centre_surround(images, 2)[0]  # [8, 8, (on, off) per scale]
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    distance = ((rows - 3) ** 2 + (cols - 4) ** 2).float().sqrt()
    for k in range(2):  # scales 0.5 and 1
        on, off = responses[..., 2 * k], responses[..., 2 * k + 1]
        assert on[3, 4] == on.max() > 0 and off[3, 4] == 0
        assert float(off[(distance > 0) & (distance <= 3)].max()) > 0  # the surround is OFF
        assert float(on[distance > 2].max()) == 0  # ON stays near the spot
    cfg = Config(task="digits", patch_size=4, encoder="retina", time_steps=8)
    spikes = retina_encode(image_tokens(images), cfg)
    assert spikes.shape == (8, 1, 4, 16 * CHANNELS) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    on, off = channel(spikes, "on0.5_sustained")[0], channel(spikes, "off0.5_sustained")[0]
    assert on[3, 4] == on.max() > 0 and on.sum() == on[3, 4]
    assert off[3, 4] == 0 and off.sum() > 0 and float(distance[off > 0].max()) <= 2
    dark = 1.0 - images  # a dark spot on white: the reverse
    spikes = retina_encode(image_tokens(dark), cfg)
    off = channel(spikes, "off0.5_sustained")[0]
    assert off[3, 4] == off.max() > 0 and channel(spikes, "on0.5_sustained")[0, 3, 4] == 0


def test_sustained_rises_and_transient_fires_at_onset():
    response = torch.tensor([0.3])
    spikes = temporal_spikes(response, 12)[:, 0]  # [T, 2]
    sustained, transient = spikes[:, 0], spikes[:, 1]
    assert transient[0] == 1 and transient[4:].sum() == 0  # onset, then silent
    assert sustained[0] == 0 and sustained[1:].sum() == 11  # rises, then fires every step (drive 1.2 > 1)
    weak = temporal_spikes(torch.tensor([0.15]), 12)[:, 0, 0]  # below one spike per step:
    drive = sum((1 - LOW_PASS ** (t + 1)) * 0.15 for t in range(12)) * GAIN
    assert int(weak.sum()) == int(drive + 1e-6)  # the count is the summed drive, rounded down


def test_the_1d_twin_filters_along_the_tokens():
    x = torch.zeros(3, 40, 1)
    x[:, 20, 0] = 2.0
    cfg = Config(task="mnist1d", encoder="retina", time_steps=6, dim=16, heads=2, head_dim=8)
    spikes = retina_encode(x, cfg)
    assert spikes.shape == (6, 3, 40, CHANNELS)
    counts = spikes.sum((0, 1))  # [40, CHANNELS]
    on, off = counts[:, CHANNEL_NAMES.index("on0.5_sustained")], counts[:, CHANNEL_NAMES.index("off0.5_sustained")]
    assert on.argmax() == 20 and on[20] > 0 and off[20] == 0 and off[19] > 0 and off[21] > 0
    assert not retina_encode(torch.full((2, 40, 1), -1.5), cfg).any()


def test_a_retina_model_trains_on_spikes_and_counts_the_encoder():
    cfg = Config(task="digits", patch_size=4, encoder="retina", dim=16, heads=2, head_dim=8, depth=1)
    torch.manual_seed(0)
    model = build_model(cfg, 4, 16, 10)
    assert model.binary_input and model.stem.embed.linear.in_features == 16 * CHANNELS
    x = torch.rand(5, 4, 16)
    logits, _ = model(x)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    probe = Probe()
    evaluate(model, x, torch.zeros(5, dtype=torch.long), probe=probe)
    assert probe.mac > 0 and probe.ac > 0  # the encoder's filtering is MACs; its spikes drive ACs


def test_retina_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="neither.*digits, mnist or mnist1d"):
        Config(task="recall", mode="causal", encoder="retina")
    with pytest.raises(ConfigError, match='set stem = "linear"'):
        Config(task="digits", patch_size=4, encoder="retina", stem="conv2d")


def test_a_retina_model_lowers_with_the_ganglion_spikes_as_its_input():
    from neuromorphic.compare import encode_steps
    from neuromorphic.lower import lower

    cfg = Config(task="digits", patch_size=4, encoder="retina", dim=16, heads=2, head_dim=8, depth=1, delays="loihi")
    model = build_model(cfg, 4, 16, 10).eval()
    graph = lower(model)
    assert (graph.input.tokens, graph.input.features, graph.input.graded) == (4, 16 * CHANNELS, False)
    steps = encode_steps(model, torch.rand(2, 4, 16))
    assert steps.shape[2:] == (4, 16 * CHANNELS) and set(np.unique(steps)) <= {0.0, 1.0}


def test_tokens_keep_patchify_order_pixel_then_channel():
    images = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = Config(task="digits", patch_size=4, encoder="retina", time_steps=3)
    spikes = retina_encode(image_tokens(images), cfg)  # [T, B, N, 16 * C]
    from spikeformer.encoders import centre_surround, temporal_spikes  # noqa: PLC0415

    per_pixel = temporal_spikes(centre_surround(images, 2), 3).flatten(-2)  # [T, B, 8, 8, C]
    for c in range(CHANNELS):
        expected = torch.stack([image_tokens(per_pixel[t, ..., c]) for t in range(3)])
        assert torch.equal(spikes[..., c::CHANNELS], expected)
