"""Accuracy, synaptic operations and energy estimates.

Energy is an ESTIMATE: 0.9 pJ per accumulate (AC) and 4.6 pJ per multiply-accumulate (MAC),
32-bit float at 45 nm (Horowitz, ISSCC 2014). Spiking layers cost one AC per spike per
fan-out synapse; real-valued inputs (direct encoding into the first layer) and the attention
state decay cost MACs. The ANN baseline is counted in MACs only. Neuron updates and memory
traffic are not counted, for either model.
"""

from __future__ import annotations

import re
from typing import Optional

import torch
from torch import Tensor, nn

from .model import Probe

PJ_PER_AC = 0.9
PJ_PER_MAC = 4.6
# spiking model: blocks.i.attn.*; ANN baseline: blocks.i.qkv / blocks.i.out
_ATTENTION = re.compile(r"blocks\.\d+\.(attn|qkv|out)\.")
ENERGY_NOTE = "estimate: 0.9 pJ/AC, 4.6 pJ/MAC (45 nm, Horowitz 2014); synaptic ops only"


def energy_pj(ac: float, mac: float) -> float:
    return PJ_PER_AC * ac + PJ_PER_MAC * mac


def token_loss(logits: Tensor, y: Tensor, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy (nats) of logits ``[B, C]`` against labels ``[B]``, or of a language
    model's ``[B, N, C]`` against ``[B, N]`` (every token counts once)."""
    return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                       reduction=reduction, label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256, device: str = "cpu",
             probe: Optional[Probe] = None, noise: float = 0.0,
             generator: Optional[torch.Generator] = None) -> dict[str, float]:
    """Accuracy and mean loss of ``model`` on ``x [S, N, F]``, ``y [S]`` in eval mode (a
    language model's ``y [S, N]``: per token, the loss in nats per character).

    ``noise``: standard deviation of Gaussian noise added to the inputs (robustness checks).
    """
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
        if noise > 0:
            xb = xb + noise * torch.randn(xb.shape, generator=generator).to(device)
        logits, _ = model(xb, probe=probe, generator=generator)
        loss_sum += float(token_loss(logits, yb, reduction="sum"))
        correct += int((logits.argmax(-1) == yb).sum())
    model.train(was_training)
    return {"accuracy": correct / y.numel(), "loss": loss_sum / y.numel()}


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all trainable parameters, those inside attention layers)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    attention = sum(p.numel() for name, p in model.named_parameters()
                    if p.requires_grad and _ATTENTION.match(name))
    return total, attention
