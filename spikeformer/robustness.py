"""A small corruption suite on token inputs ``[S, N, F]`` (noise and distribution shift).

Corruptions, each at three severities, seeded so runs repeat:
- gaussian_noise: add N(0, sigma^2), sigma in (0.1, 0.2, 0.4) of the input scale
- feature_dropout: zero each input feature with probability p in (0.1, 0.2, 0.4)
- translation: images (digits, mnist) move right by 1, 2, 3 pixels with zero fill; signals
  (MNIST-1D, sequences) roll by 1, 2, 3 tokens
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .config import IMAGE_SIDE, Config
from .data import Split, translate_images
from .metrics import evaluate

SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.1, 0.2, 0.4),
    "feature_dropout": (0.1, 0.2, 0.4),
    "translation": (1, 2, 3),
}


def corrupt(x: Tensor, name: str, severity: float, generator: torch.Generator, patch: int = 0) -> Tensor:
    """Apply one corruption to ``x [S, N, F]``; ``patch > 0`` says the tokens are image patches."""
    if name == "gaussian_noise":
        scale = float(x.std()) if x.numel() > 1 else 1.0
        return x + severity * scale * torch.randn(x.shape, generator=generator)
    if name == "feature_dropout":
        keep = torch.rand(x.shape, generator=generator) >= severity
        return x * keep
    if name == "translation":
        if patch:
            return translate_images(x, patch, int(severity))
        return torch.roll(x, shifts=int(severity), dims=1)
    raise ValueError(f"unknown corruption {name!r}; choose one of {sorted(SEVERITIES)}")


def corruption_suite(model: nn.Module, split: Split, cfg: Config, device: str = "cpu",
                     log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Accuracy on the clean and corrupted test split -> the robustness.json record."""
    gen = torch.Generator().manual_seed(cfg.seed)
    clean = evaluate(model, split.x_test, split.y_test, device=device, generator=gen)["accuracy"]
    record: dict[str, Any] = {"clean_accuracy": clean, "corruptions": {}}
    scores = []
    for name, levels in SEVERITIES.items():
        record["corruptions"][name] = {}
        for level in levels:
            data_gen = torch.Generator().manual_seed(cfg.seed + 17)
            x = corrupt(split.x_test, name, level, data_gen, cfg.patch_size if cfg.task in IMAGE_SIDE else 0)
            acc = evaluate(model, x, split.y_test, device=device, generator=gen)["accuracy"]
            record["corruptions"][name][str(level)] = acc
            scores.append(acc)
            log(f"{name} {level}: {acc:.4f}")
    record["mean_corruption_accuracy"] = sum(scores) / len(scores)
    return record
