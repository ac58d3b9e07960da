"""Small random models with non-trivial activity, shared by the neuromorphic tests (as fixtures:
the folder is not a package, so that ``tests/neuromorphic`` never shadows ``neuromorphic``)."""

from __future__ import annotations

import pytest
import torch

from spikeformer.config import Config
from spikeformer.model import Spikeformer, build_model

SHAPES = {"digits": (4, 16), "recall": (5, 32), "mnist1d": (10, 4)}


def active_model(seed: int = 0, **overrides) -> Spikeformer:
    """A ``delays = "loihi"`` model whose BatchNorms have real statistics and enough gain that
    every population (attention outputs included) spikes; eval mode."""
    torch.manual_seed(seed)
    kw = dict(task="digits", dim=32, heads=2, head_dim=8, depth=1, time_steps=3, delays="loihi")
    kw.update(overrides)
    cfg = Config(**kw)
    tokens, features = SHAPES[cfg.task]
    model = build_model(cfg, tokens, features, 10)
    if model.top_down is not None:  # top-down synapses start at zero: give the feedback weight
        with torch.no_grad():
            for dense in model.top_down:
                dense.linear.weight.normal_(0.0, 3.0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(sample_inputs(cfg.task, 16, seed + 1))
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.weight.uniform_(1.0, 2.5)
                module.bias.uniform_(-0.3, 0.6)
    return model.eval()


def sample_inputs(task: str, count: int, seed: int = 1) -> torch.Tensor:
    """Inputs ``[B, N, F]`` for ``task``: pixels in [0, 1], binary one-hot-like tokens for recall."""
    gen = torch.Generator().manual_seed(seed)
    tokens, features = SHAPES[task]
    x = torch.rand(count, tokens, features, generator=gen)
    return (x > 0.8).float() if task == "recall" else x


@pytest.fixture
def make_model():
    """``make_model(seed=0, **config overrides)`` -> an active eval-mode Spikeformer (loihi delays)."""
    return active_model


@pytest.fixture
def make_inputs():
    """``make_inputs(task, count, seed=1)`` -> inputs ``[B, N, F]``."""
    return sample_inputs
