"""Accuracy, synaptic operations and energy estimates.

Energy is an ESTIMATE: 0.9 pJ per accumulate (AC) and 4.6 pJ per multiply-accumulate (MAC),
32-bit float at 45 nm (Horowitz, ISSCC 2014). Spiking layers cost one AC per spike per
fan-out synapse; real-valued inputs (direct encoding into the first layer) and the attention
state decay cost MACs. The ANN baseline is counted in MACs only. Neuron updates and memory
traffic are not counted, for either model.

``efficiency`` gives the same counts per layer under NeuroBench's metric names (Yik et al.,
"NeuroBench", Nature Communications 2025): footprint, connection sparsity, activation sparsity
and synaptic operations (effective ACs, effective MACs, dense).
"""

from __future__ import annotations

import re
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .model import Probe

PJ_PER_AC = 0.9
PJ_PER_MAC = 4.6
# spiking model: blocks.i.attn.* and the top-down synapses onto the attention gates (top_down.i.*);
# ANN baseline: blocks.i.qkv / blocks.i.out
_ATTENTION = re.compile(r"blocks\.\d+\.(attn|qkv|out)\.|top_down\.\d+\.")
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


NEUROBENCH_NOTE = ("NeuroBench names (Yik et al. 2025): footprint = bytes of parameters and buffers; "
                   "connection_sparsity = zero weights / weights (tensors of 2 or more dims); "
                   "activation_sparsity = 1 - spikes / neuron-steps; synaptic_operations per sample: "
                   "effective_acs (spike-driven), effective_macs (real-valued), dense (every input nonzero)")


def _tensors(module: nn.Module) -> list[Tensor]:
    return list(module.parameters()) + list(module.buffers())


def _weights_summary(tensors: list[Tensor]) -> dict[str, Any]:
    weights = [t for t in tensors if t.dim() >= 2]
    count = sum(t.numel() for t in weights)
    zeros = sum(int((t == 0).sum()) for t in weights)
    return {"footprint_bytes": sum(t.numel() * t.element_size() for t in tensors), "weights": count,
            "connection_sparsity": zeros / count if count else None}


def efficiency(model: nn.Module, probe: Probe, samples: int) -> dict[str, Any]:
    """Per-sample efficiency of the ``samples`` inputs ``probe`` watched, model-wide and per
    layer, in NeuroBench's names (``NEUROBENCH_NOTE``). A layer owns its parameters and buffers
    except those of another counted layer inside it (an attention block's q/k/v/out Dense)."""
    names = {module: name or "model" for name, module in model.named_modules()}
    counted = [layer for layer in probe.layers if isinstance(layer, nn.Module)]
    layers: dict[str, dict[str, Any]] = {}
    for layer, ops in probe.layers.items():
        entry: dict[str, Any] = {"effective_acs": ops["ac"] / samples, "effective_macs": ops["mac"] / samples,
                                 "dense": ops["dense"] / samples}
        if isinstance(layer, nn.Module):
            inner = {id(t) for other in counted if other is not layer and any(other is m for m in layer.modules())
                     for t in _tensors(other)}
            entry.update(_weights_summary([t for t in _tensors(layer) if id(t) not in inner]))
        layers[names.get(layer, str(layer)) if isinstance(layer, nn.Module) else str(layer)] = entry
    neurons = {name: {"activation_sparsity": 1.0 - probe.spike_counts[name] / steps,
                      "spikes_per_sample": probe.spike_counts[name] / samples}
               for name, steps in probe.neuron_steps.items() if steps}
    synapse_weights = list({id(t): t for layer in counted for t in _tensors(layer)}.values())  # each once
    whole = _weights_summary(_tensors(model))
    return {
        "note": NEUROBENCH_NOTE,
        "samples": samples,
        "footprint_bytes": whole["footprint_bytes"],
        "connection_sparsity": _weights_summary(synapse_weights)["connection_sparsity"],
        "activation_sparsity": 1.0 - probe.spike_rate() if probe.neuron_steps else None,
        "synaptic_operations": {"effective_acs": probe.ac / samples, "effective_macs": probe.mac / samples,
                                "dense": sum(ops["dense"] for ops in probe.layers.values()) / samples},
        "layers": layers,
        "neurons": neurons,
    }
