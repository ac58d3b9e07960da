"""Run the torch model as the reference and score a backend against it (SPEC §4 keys).

``torch_trace`` runs a ``delays = "loihi"`` model in float64 with a ``Probe`` and returns the
same ``Trace`` the IR simulators return, keyed by the same population names.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch

from spikeformer.attention import attention_event_counts
from spikeformer.model import Probe, Spikeformer
from spikeformer.qat import float_weights

from .ir import Graph
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


def chip_activity(graph: Graph, trace: Trace, inputs: np.ndarray) -> dict[str, Any]:
    """What a Loihi-style chip executes on ``trace`` (a backend's spikes ``[T, B, N, F]`` per
    population) fed ``inputs [T, B, N, F]``, per sample: one synaptic event per spike (or
    nonzero graded input) per nonzero weight in its fan-out, per connection, and for each
    attention the event-driven operations of ``spikeformer.attention.attention_event_counts``
    (what the Lava process's ``synops`` counts); with the spikes of every population."""
    samples = inputs.shape[1]
    sources = {**trace.spikes, graph.input.name: inputs}
    connections = {}
    for c in graph.connections:
        if c.source not in sources:
            continue  # a population the backend does not record
        active = (sources[c.source] != 0).sum((0, 1))  # [N, F]: events out of each neuron
        fan_out = (np.asarray(c.weight) != 0).sum(0)  # per source column: tokenwise [F_in], full [N*F_in]
        per_neuron = np.broadcast_to(fan_out, active.shape) if c.kind == "tokenwise" else fan_out.reshape(active.shape)
        connections[c.name] = float((active * per_neuron).sum()) / samples
    attentions = {}
    for a in graph.attentions:
        q, k, v = (torch.from_numpy(trace.spikes[p].astype(np.float64)) for p in (a.query, a.key, a.value))
        t, b, n, _ = q.shape
        q, k, v = (s.reshape(t, b, n, a.heads, a.head_dim) for s in (q, k, v))
        modulator = torch.from_numpy(trace.spikes[a.modulator].astype(np.float64)).mean(2) if a.modulator else None
        counts = attention_event_counts(q, k, v, a.variant, modulator)
        attentions[a.name] = float(counts["update"] + counts["read"]) / samples
    spikes = {name: float(s.sum()) / samples for name, s in trace.spikes.items()}
    return {"synaptic_events_per_sample": sum(connections.values()) + sum(attentions.values()),
            "connections": connections, "attentions": attentions, "spikes_per_sample": spikes}
