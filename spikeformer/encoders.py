"""Retina-inspired encoder: ON/OFF centre-surround channels at several scales, sustained and
transient in time, as spikes (docs/equations.md, "Retina encoder").

For an image ``I [H, W]`` (the patch tokens put back together) and each scale ``sigma``:

    D = G_sigma * I - G_{SURROUND sigma} * I          difference of Gaussians (replicate padding)
    ON = max(D, 0),  OFF = max(-D, 0)                  centre brighter / darker than its surround

Every ON or OFF response ``r`` (held while the image is shown, steps t = 0 .. T-1) feeds a
first-order low-pass ``y_t = a y_{t-1} + (1 - a) r`` (y_{-1} = 0) and gives two channels:

    sustained_t = y_t                                  rises to r and stays
    transient_t = r - y_{t-1}                          r at onset, then decays as a^t r

Each channel drives one integrate-and-fire ganglion cell, ``v_t = v_{t-1} + GAIN c_t``, which
spikes when ``v_t >= 1`` and then subtracts 1. The spike count then tracks the response.
Token layout: each pixel's ``CHANNELS`` values follow one another, so an image token of ``p*p``
pixels carries ``p*p*CHANNELS`` features. The 1-D twin (MNIST-1D: one sample per token)
filters along the token axis.

The filters are fixed (no learnable parameters). A uniform input gives D = 0 and so no spikes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import IMAGE_SIDE, Config
from .data import unpatchify

SCALES = (0.5, 1.0)  # centre sigma in pixels (or samples)
SURROUND = 2.0  # surround sigma / centre sigma
LOW_PASS = 0.5  # a: the sustained channel's per-step decay
GAIN = 4.0  # ganglion cell input gain (a response of 0.25 fires every step)
CHANNELS = len(SCALES) * 2 * 2  # scales x (ON, OFF) x (sustained, transient)
CHANNEL_NAMES = tuple(f"{polarity}{scale:g}_{kind}" for scale in SCALES for polarity in ("on", "off")
                      for kind in ("sustained", "transient"))


def _gaussian(sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def smooth(x: Tensor, sigma: float, dims: int, padding: str = "replicate") -> Tensor:
    """Separable Gaussian filter (radius ceil(3 sigma)) of ``x [S, L]`` (dims 1) or ``[S, H, W]``
    (dims 2); ``padding``: "replicate" or "constant" (zeros)."""
    k = _gaussian(sigma)
    r = (len(k) - 1) // 2
    if dims == 1:
        y = nn.functional.pad(x.unsqueeze(1), (r, r), mode=padding)
        return nn.functional.conv1d(y, k.view(1, 1, -1)).squeeze(1)
    y = nn.functional.pad(x.unsqueeze(1), (r, r, 0, 0), mode=padding)
    y = nn.functional.conv2d(y, k.view(1, 1, 1, -1))
    y = nn.functional.pad(y, (0, 0, r, r), mode=padding)
    return nn.functional.conv2d(y, k.view(1, 1, -1, 1)).squeeze(1)


def centre_surround(x: Tensor, dims: int) -> Tensor:
    """ON and OFF responses ``[..., len(SCALES) * 2]`` (scale-major, ON then OFF) of images
    ``[S, H, W]`` or signals ``[S, L]``."""
    out = []
    for sigma in SCALES:
        dog = smooth(x, sigma, dims) - smooth(x, SURROUND * sigma, dims)
        out += [dog.clamp(min=0.0), (-dog).clamp(min=0.0)]
    return torch.stack(out, -1)


def temporal_spikes(response: Tensor, steps: int) -> Tensor:
    """Static responses ``[...]`` -> spikes ``[T, ..., 2]`` (sustained, transient)."""
    low = torch.zeros_like(response)
    potential = torch.zeros(*response.shape, 2, dtype=response.dtype, device=response.device)
    spikes = []
    for _ in range(steps):
        sustained = LOW_PASS * low + (1 - LOW_PASS) * response
        transient = response - low
        low = sustained
        potential = potential + GAIN * torch.stack([sustained, transient], -1)
        fired = (potential >= 1.0).to(response.dtype)
        potential = potential - fired
        spikes.append(fired)
    return torch.stack(spikes, 0)


def retina_encode(x: Tensor, cfg: Config) -> Tensor:
    """Tokens ``[B, N, F]`` -> spikes ``[T, B, N, F * CHANNELS]`` (T = ``cfg.time_steps``)."""
    b, n, f = x.shape
    if cfg.task in IMAGE_SIDE:
        responses = centre_surround(unpatchify(x, cfg.patch_size), 2)  # [B, H, W, 4]
        spikes = temporal_spikes(responses, cfg.time_steps)  # [T, B, H, W, 4, 2]
        t, _, h, w = spikes.shape[:4]
        p = cfg.patch_size
        pixels = spikes.reshape(t, b, h // p, p, w // p, p, CHANNELS)  # per pixel: scale, polarity, kind
        # patchify's order: patches row-major, then the pixels of a patch row-major, then the channels
        return pixels.permute(0, 1, 2, 4, 3, 5, 6).reshape(t, b, n, f * CHANNELS)
    responses = centre_surround(x.transpose(1, 2).reshape(b * f, n), 1)  # [B*F, N, 4]
    spikes = temporal_spikes(responses, cfg.time_steps)  # [T, B*F, N, 4, 2]
    t = spikes.shape[0]
    return spikes.reshape(t, b, f, n, CHANNELS).permute(0, 1, 3, 2, 4).reshape(t, b, n, f * CHANNELS)


def retina_macs_per_sample(cfg: Config, tokens: int, features: int) -> int:
    """Multiply-accumulates of encoding one sample: the Gaussian passes once per sample, then
    per step and channel the low-pass (2) and the ganglion cell (1)."""
    points = tokens * features
    dims = 2 if cfg.task in IMAGE_SIDE else 1
    taps = sum(len(_gaussian(s)) + len(_gaussian(SURROUND * s)) for s in SCALES)
    return points * taps * dims + cfg.time_steps * points * (len(SCALES) * 2) * (2 + 2)
