"""Model-side noise on the IR references: "noise on the chip", on the numpy float reference
(``neuromorphic.simulate``) and on the integer fixed-point reference (``neuromorphic.fixed_ref``).

The five noises of the torch suite (``spikeformer.robustness.MODEL_NOISE``, docs/robustness.md),
at the same parameters, injected at every ``lif`` population of the graph:
- membrane_noise: ``current + sigma * threshold * z`` at every step; in fixed point rounded to
  the integer input unit, in which the threshold is ``vth``;
- threshold_jitter: current and bias divided by a factor ``1 + sigma * z`` (floored at 0.05),
  one per neuron for the whole run; in fixed point both are rounded back to integers;
- spike_deletion: each spike is lost on its way out with probability p (the neuron resets);
- timing_jitter: each spike is sent one step late with probability p (lost after the last step);
- weight_noise: every synapse's weight ``W + sigma * std(W) * z``, std over the connection's
  synapses (a full connection's zero entries are the absent synapses of an unrolled
  convolution and stay absent); in fixed point on the even 8-bit mantissas, rounded to the
  grid and clipped to it.

At strength 0 each leaves the run bit for bit the clean one (tested). The draws come from one
numpy generator per run, so a run repeats for a seed; they are not torch's draws, so a
reference and the torch model agree in distribution, not spike for spike. Threshold jitter and
weight noise are a device's mismatch, frozen for the run (``FROZEN_NOISE``): ``draws`` scores
them on that many devices and averages, as ``eval --draws`` does on torch.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Optional

import numpy as np

from spikeformer.fixed_point import MANTISSA_MAX, MANTISSA_MIN
from spikeformer.robustness import JITTER_FLOOR, MODEL_NOISE, draw_count, draw_seed

from .ir import Attention, Connection, Graph, IRError, Population
from .simulate import FloatOps, Ops, run_graph
from .trace import Trace


class NoisyOps:
    """Wraps the float or fixed-point ``Ops`` of ``run_graph``, adding one model-side noise at
    strength ``level`` to every lif population (weight noise is applied to the graph instead:
    ``noisy_graph``)."""

    def __init__(self, inner: Ops, name: str, level: float, rng: np.random.Generator, fixed: bool) -> None:
        if name not in MODEL_NOISE:
            raise IRError(f"unknown model noise {name!r}; choose from {', '.join(MODEL_NOISE)}")
        self.inner, self.name, self.level, self.rng, self.fixed = inner, name, level, rng, fixed
        self.jittered: dict[str, tuple[Population, np.ndarray]] = {}  # population -> (jittered twin, factors)

    def __getattr__(self, attr: str) -> Any:  # prepare, saturation_events, ...: the inner Ops'
        return getattr(self.inner, attr)

    def zeros(self, shape: tuple) -> np.ndarray:
        return self.inner.zeros(shape)

    def dense(self, conn: Connection, spikes: np.ndarray, target: Population) -> np.ndarray:
        return self.inner.dense(conn, spikes, target)

    def readout(self, pop: Population, current: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return self.inner.readout(pop, current, state)

    def attention(self, att: Attention, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  m: Optional[np.ndarray], state: Any) -> tuple[np.ndarray, Any]:
        return self.inner.attention(att, q, k, v, m, state)

    def _integer(self, x: np.ndarray) -> np.ndarray:
        return np.rint(x).astype(np.int64) if self.fixed else x

    def _jitter(self, pop: Population) -> tuple[Population, np.ndarray]:
        """The population with its bias divided by per-neuron factors drawn once per run."""
        if pop.name not in self.jittered:
            factors = np.maximum(1.0 + self.level * self.rng.standard_normal((pop.tokens, pop.features)), JITTER_FLOOR)
            if self.fixed:
                twin = replace(pop, bias_mant=np.rint(np.asarray(pop.bias_mant) / factors).astype(np.int64))
            else:
                twin = replace(pop, bias=np.asarray(pop.bias) / factors)
            self.jittered[pop.name] = (twin, factors)
        return self.jittered[pop.name]

    def lif(self, pop: Population, current: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        inner_state, pending = state if state is not None else (None, None)
        if self.name == "membrane_noise":
            threshold = pop.vth if self.fixed else pop.threshold
            current = current + self._integer(self.level * threshold * self.rng.standard_normal(current.shape))
        elif self.name == "threshold_jitter":
            pop, factors = self._jitter(pop)
            current = self._integer(current / factors)
        spikes, inner_state = self.inner.lif(pop, current, inner_state)
        if self.name == "spike_deletion":
            spikes = spikes & (self.rng.random(spikes.shape) >= self.level)
        elif self.name == "timing_jitter":
            late = spikes & (self.rng.random(spikes.shape) < self.level)
            sent = (spikes & ~late) | (pending if pending is not None else False)
            return sent, (inner_state, late)
        return spikes, (inner_state, None)


def _synapses(conn: Connection) -> np.ndarray:
    """Where ``conn`` has synapses: every entry of a tokenwise weight, the nonzero ones of a full one."""
    weight = np.asarray(conn.weight)
    return np.ones(weight.shape, bool) if conn.kind == "tokenwise" else weight != 0


def noisy_graph(graph: Graph, level: float, rng: np.random.Generator, fixed: bool) -> Graph:
    """A copy of ``graph`` with weight noise at strength ``level`` on every connection's synapses."""
    noisy = copy.deepcopy(graph)
    for conn in noisy.connections:
        weight = np.asarray(conn.weight)
        where = _synapses(conn)
        if not where.any():
            continue
        noise = level * float(weight[where].std()) * rng.standard_normal(weight.shape) * where
        if fixed:  # the even mantissa grid, clipped
            step = 2 * np.rint(noise / 2).astype(np.int64)
            conn.weight = np.clip(weight + step, MANTISSA_MIN, MANTISSA_MAX).astype(np.int64)
        else:
            conn.weight = weight + noise
    return noisy


def _ops(fixed: bool) -> Ops:
    from .fixed_ref import FixedOps

    return FixedOps() if fixed else FloatOps()


def run_noisy(graph: Graph, x_steps: np.ndarray, name: str, level: float, seed: int,
              fixed: bool = False, keep: Optional[set[str]] = None) -> Trace:
    """``graph`` on ``x_steps [T, B, N, F]`` with model-side noise ``name`` at ``level``: on the
    float reference, or on the fixed-point one (``fixed``: a quantised graph and integer input)."""
    if name not in MODEL_NOISE:
        raise IRError(f"unknown model noise {name!r}; choose from {', '.join(MODEL_NOISE)}")
    rng = np.random.default_rng(seed)
    inner = _ops(fixed)
    if name == "weight_noise":
        return run_graph(noisy_graph(graph, level, rng, fixed), x_steps, inner, keep=keep)
    return run_graph(graph, x_steps, NoisyOps(inner, name, level, rng, fixed), keep=keep)


REFERENCES = ("float", "fixed")


def chip_noise(run: Any, references: tuple[str, ...] = REFERENCES, samples: int = 100,
               names: Optional[list[str]] = None, severities: Optional[str] = None,
               progress: bool = True, draws: int = 1) -> dict[str, Any]:
    """The model-side noise suite of ``run`` on the references and on torch, on the first
    ``samples`` test samples; writes and returns ``RUN/chip-noise.json``. A noise of
    ``FROZEN_NOISE`` is scored on ``draws`` devices (draw 0: the single-draw run's) and its
    accuracy is their mean; each draw's is kept in ``draw_accuracies``."""
    from pathlib import Path

    import torch

    from spikeformer.checkpoint import atomic_write_json
    from spikeformer.errors import SpikeformerError
    from spikeformer.robustness import model_noise, parse_selection
    from spikeformer.train import load_run

    from .backends import fixed_graph
    from .compare import encode_steps, torch_trace
    from .lower import lower
    from .quantize import encode_fixed

    if samples <= 0:
        raise SpikeformerError(f"--samples must be a positive number, got {samples}")
    if not isinstance(draws, int) or draws < 1:
        raise SpikeformerError(f"--draws must be a whole number >= 1, got {draws!r}")
    for ref in references:
        if ref not in REFERENCES:
            raise SpikeformerError(f"unknown reference {ref!r}; choose from {', '.join(REFERENCES)}")
    cfg, model, split, _ = load_run(run)
    if cfg.every_token:
        raise SpikeformerError("chip-noise scores classifiers; a language model is not modelled yet")
    chosen, levels = parse_selection(cfg.task, ",".join(names) if names else ",".join(MODEL_NOISE), severities)
    unknown = [n for n in chosen if n not in MODEL_NOISE]
    if unknown:
        raise SpikeformerError(f"{unknown[0]!r} is an input corruption; chip-noise runs the model-side noises "
                               f"({', '.join(MODEL_NOISE)})")
    graph = lower(model)
    count = min(samples, len(split.x_test))
    x, labels = split.x_test[:count], split.y_test[:count].numpy()
    x_steps = encode_steps(model, x, torch.Generator().manual_seed(cfg.seed))
    inputs = {"float": (graph, x_steps)}
    if "fixed" in references:
        fixed = fixed_graph(model, split, graph)
        inputs["fixed"] = (fixed, encode_fixed(fixed, x_steps)[0])
    accuracy = lambda trace: float((trace.logits.argmax(-1) == labels).mean())  # noqa: E731
    record: dict[str, Any] = {"run": str(run), "task": cfg.task, "samples": count, "severities": levels,
                              "parameters": {n: {str(s): MODEL_NOISE[n][s - 1] for s in levels} for n in chosen},
                              "clean": {"torch": accuracy(torch_trace(model, x_steps))}, "noise": {},
                              "draws": draws, "draw_accuracies": {}}
    for ref in references:
        ref_graph, ref_steps = inputs[ref]
        record["clean"][ref] = accuracy(run_graph(ref_graph, ref_steps, _ops(ref == "fixed"), keep=set()))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(chosen) * len(levels), desc="chip noise", unit="level", disable=not progress)
    for name in chosen:
        per: dict[str, dict[str, float]] = {who: {} for who in ("torch", *references)}
        for severity in levels:
            level = MODEL_NOISE[name][severity - 1]
            per_draw: dict[str, list[float]] = {who: [] for who in per}
            for draw in range(draw_count(name, draws)):
                seed = draw_seed(cfg.seed + 1000 * (list(MODEL_NOISE).index(name) + 1) + severity, draw)
                with model_noise(model, name, level, torch.Generator().manual_seed(seed)):  # restored after
                    per_draw["torch"].append(accuracy(torch_trace(model, x_steps)))
                for ref in references:
                    ref_graph, ref_steps = inputs[ref]
                    trace = run_noisy(ref_graph, ref_steps, name, level, seed, ref == "fixed", keep=set())
                    per_draw[ref].append(accuracy(trace))
            for who, accs in per_draw.items():
                per[who][str(severity)] = float(np.mean(accs))
                if len(accs) > 1:
                    record["draw_accuracies"].setdefault(who, {}).setdefault(name, {})[str(severity)] = accs
            bar.update(1)
        record["noise"][name] = per
    bar.close()
    record["mean"] = {who: float(np.mean([a for per in record["noise"].values() for a in per[who].values()]))
                      for who in ("torch", *references)}
    atomic_write_json(Path(run) / "chip-noise.json", record)
    return record


def markdown_table(record: dict[str, Any]) -> str:
    """One line per noise: accuracy at each severity on torch and on each reference."""
    whos = list(record["clean"])
    head = "| noise | " + " | ".join(f"{who}: severity {' / '.join(map(str, record['severities']))}" for who in whos)
    lines = [head + " |", "|---|" + "---|" * len(whos)]
    lines.append("| clean | " + " | ".join(f"{record['clean'][who]:.3f}" for who in whos) + " |")
    for name, per in record["noise"].items():
        lines.append(f"| `{name}` | " + " | ".join(" / ".join(f"{a:.3f}" for a in per[who].values()) for who in whos)
                     + " |")
    lines.append("| **mean** | " + " | ".join(f"**{record['mean'][who]:.3f}**" for who in whos) + " |")
    return "\n".join(lines) + "\n"
