"""Run the torch model as the reference and score a backend against it (SPEC §4 keys).

``torch_trace`` runs a ``delays = "loihi"`` model in float64 with a ``Probe`` and returns the
same ``Trace`` the IR simulators return, keyed by the same population names.
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch

from spikeformer.model import Probe, Spikeformer
from spikeformer.qat import float_weights

from .trace import Trace


def encode_steps(model: Spikeformer, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> np.ndarray:
    """Tokens ``[B, N, F]`` -> the encoded steps every backend is fed ``[T, B, N', F]`` (latency included)."""
    with torch.no_grad():
        return model.encode_input(x, generator).double().numpy()


@torch.no_grad()
def torch_trace(model: Spikeformer, x_steps: np.ndarray) -> Trace:
    """The torch model on encoded steps ``[T, B, N, F]``, in float64: spikes by population and readout.

    Runs an eval-mode float64 copy: the caller's model (mode, dtype, parameters, buffers) is untouched.
    """
    reference = copy.deepcopy(model).double().eval()
    probe = Probe(keep_traces=True)
    with float_weights(reference):  # a qat model's float weights are what the IR holds
        y, _ = reference.forward_steps(torch.from_numpy(x_steps).double(), probe=probe)
    spikes = {name: s.numpy() != 0 for name, s in probe.spikes.items()}
    return Trace(spikes, y.numpy(), model.window)


def agreement(reference: Trace, backend: Trace, labels: Optional[np.ndarray] = None) -> dict[str, float]:
    """Spike agreement (fraction of equal neuron-steps over every population both traces hold),
    class agreement (argmax of logits) and accuracies when ``labels`` are given."""
    names = sorted(set(reference.spikes) & set(backend.spikes) - {"input"})
    equal = total = 0
    per_population = {}
    for name in names:
        a, b = reference.spikes[name], backend.spikes[name]
        if a.shape != b.shape:
            raise ValueError(f"population {name!r}: reference spikes {a.shape} vs backend {b.shape}")
        same = int((a == b).sum())
        per_population[name] = same / a.size
        equal, total = equal + same, total + a.size
    ref_class = reference.logits.argmax(-1)
    back_class = backend.logits.argmax(-1)
    out = {
        "spike_agreement": equal / total if total else float("nan"),
        "class_agreement": float((ref_class == back_class).mean()),
        "populations_compared": len(names),
        "neuron_steps_compared": total,
        "per_population": per_population,
    }
    if labels is not None:
        out["accuracy_torch"] = float((ref_class == labels).mean())
        out["accuracy_backend"] = float((back_class == labels).mean())
    return out
