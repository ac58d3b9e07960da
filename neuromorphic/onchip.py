"""On-chip learning of a trained run: its rule lowered into the IR, and ``spikeformer validate
RUN --learn`` (docs/backends.md, "On-chip learning").

``learning_graph`` makes the connections of the run's ``rule_layers`` plastic with the run's
rule and constants (``rule_a_plus``, ``rule_a_minus``, ``rule_tau_*``) and an online learning
rate (``ONLINE_LR`` unless given): a tokenwise weight becomes its per-token copies (``ir.plastic_connection``). What
training wrapped around the rule (AdamW, winner-take-all, row norms, the norms' gain) does not
go on chip: the rule itself does. A connection that cannot learn on a chip is left frozen and
named with the reason (``ir.learning_refusal``: graded input, STDP into the readout). Under
three_factor the readout learns too (as in training): its post factor is 1, its third factor
the output error (the delta rule); a hidden layer's third factor is the output error through
the run's own fixed random feedback matrix (``rules.driver``), tiled over tokens.

``validate_learn`` starts the float reference (``simulate.learn_online``) and the backend from
the run's weights, lets both learn online from the same training samples, and compares spikes
and every plastic weight after every sample. On lava-fixed the plan's graph is
quantised as ``validate`` quantises it, and the reference is the integer one
(``fixed_ref.learn_online_fixed``): spikes and weights must be equal, integer for integer.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from spikeformer.errors import SpikeformerError

from .ir import Connection, Graph, learning_refusal, plastic_connection
from .reward import modulator
from .trace import Trace

ONCHIP_RULES = ("stdp", "three_factor")
# the default online learning rate: training's lr is AdamW's (a step per synapse scaled by its
# gradient history); raw online updates at that rate wreck a trained digits model within 50 samples
# (three_factor at 1e-2: 0.95 -> 0.28; at 1e-4: 0.95 -> 0.95, docs/benchmarks.md)
ONLINE_LR = 1e-4
LEARN_BACKENDS = ("lava-float", "lava-fixed", "brian2")


@dataclass
class LearningPlan:
    """What learns: the plastic graph, each three_factor connection's feedback ``[C, target size]``,
    and the connections left frozen with why."""

    graph: Graph
    rule: str
    feedback: dict[str, np.ndarray] = field(default_factory=dict)
    frozen: dict[str, str] = field(default_factory=dict)

    @property
    def plastic(self) -> list[Connection]:
        return [c for c in self.graph.connections if c.rule is not None]

    def reward(self, labels: np.ndarray) -> Callable[[int, np.ndarray, Connection], np.ndarray]:
        """``learn_online``'s reward: the output error of sample i through each connection's feedback."""
        return lambda i, logits, conn: modulator(logits, labels[i], self.feedback[conn.name])


def rule_parameters(cfg: Any, rule: str, lr: float) -> dict[str, float]:
    """The run's rule constants as the IR's ``rule_params`` table, with the online rate ``lr``."""
    params = {"lr": lr, "a_plus": cfg.rule_a_plus, "a_minus": cfg.rule_a_minus, "tau_pre": cfg.rule_tau_pre,
              "tau_post": cfg.rule_tau_post}
    if rule == "three_factor":
        params["tau_eligibility"] = cfg.rule_tau_eligibility
    return params


def learning_graph(model: Any, cfg: Any, rule: Optional[str] = None, layers: Optional[str] = None,
                   lr: Optional[float] = None, graph: Optional[Graph] = None) -> LearningPlan:
    """The lowered ``model`` with the connections of ``layers`` (default: the run's ``rule_layers``)
    learning by ``rule`` (default: the run's) at the online rate ``lr`` (default ``ONLINE_LR``)."""
    from .lower import lower

    rule = rule or cfg.rule
    if rule not in ONCHIP_RULES:
        raise SpikeformerError(f"the run learns by {rule!r}; on-chip learning runs {' or '.join(ONCHIP_RULES)} "
                               "(e-prop's pseudo-derivative and perturbation's noise have no trace form on a chip): "
                               "pass --rule")
    lr = float(lr if lr is not None else ONLINE_LR)
    if not lr > 0:
        raise SpikeformerError(f"the online learning rate must be positive, got {lr}")
    patterns = [p.strip() for p in (layers or cfg.rule_layers or "*").split(",") if p.strip()]
    graph = copy.deepcopy(graph) if graph is not None else lower(model)
    plan = LearningPlan(graph, rule)
    feedback = _hidden_feedback(model, cfg) if rule == "three_factor" else {}
    classes = graph.readout.size
    for i, conn in enumerate(graph.connections):
        layer = conn.name.split("->")[0]
        is_readout = conn.target == graph.readout.name
        if not (any(fnmatchcase(layer, p) for p in patterns) or (is_readout and rule == "three_factor")):
            continue
        why = learning_refusal(graph, conn, rule)
        if why is not None:
            plan.frozen[conn.name] = why.strip(" ;")
            continue
        target = graph.population(conn.target)
        graph.connections[i] = plastic_connection(conn, target.tokens, rule, rule_parameters(cfg, rule, lr))
        if rule == "three_factor":
            plan.feedback[conn.name] = (np.eye(classes) if is_readout
                                        else np.tile(feedback[layer], (1, target.tokens)))
    if not plan.plastic:
        raise SpikeformerError(f"no connection of rule_layers {','.join(patterns)!r} can learn by {rule} on a chip ("
                               + "; ".join(f"{k}: {v}" for k, v in plan.frozen.items()) + "): pass --rule-layers")
    graph.validate()
    return plan


def _hidden_feedback(model: Any, cfg: Any) -> dict[str, np.ndarray]:
    """The run's fixed random feedback matrices ``[C, width]`` by layer name (drawn from its seed,
    as ``rules.driver.LocalLearner`` draws them for three_factor)."""
    from dataclasses import replace

    from rules.driver import LocalLearner

    # the run's own matrices first (drawn in the order of its rule_layers), then any other layer's
    found: dict[str, np.ndarray] = {}
    for layers in (cfg.rule_layers or "*", "*"):
        learner = LocalLearner(replace(cfg, rule="three_factor", rule_layers=layers), model)
        for name, b in learner.feedback.items():
            found.setdefault(name, b.double().numpy())
    return found


def frozen_copy(graph: Graph) -> Graph:
    """``graph`` with every plastic connection fixed at its current weight (for scoring)."""
    out = copy.deepcopy(graph)
    for conn in out.connections:
        conn.rule = conn.rule_params = conn.traces = conn.mask = None
    return out


def accuracy(graph: Graph, x_steps: np.ndarray, labels: np.ndarray, chunk: int = 64) -> float:
    """Accuracy of ``graph``'s frozen weights on ``x_steps [T, B, N, F]``: in the float reference,
    or for a fixed graph in ``fixed_ref`` (``x_steps`` then the integer messages, and the learned
    weights as the LearningDense holds them, odd values included)."""
    from .fixed_ref import FixedOps
    from .simulate import run_graph

    frozen = frozen_copy(graph)
    correct = 0
    for start in range(0, x_steps.shape[1], chunk):
        ops = FixedOps() if frozen.precision == "fixed" else None
        trace = run_graph(frozen, x_steps[:, start:start + chunk], ops, keep=set())
        correct += int((trace.logits.argmax(-1) == labels[start:start + chunk]).sum())
    return correct / x_steps.shape[1]


def _recording(plastic: list[Connection], count: int, desc: str, progress: bool,
               learn: Callable[[Callable[[int], None]], list[Trace]]) -> tuple[Trace, dict[str, np.ndarray], float]:
    """Run ``learn(after_sample)`` over ``count`` samples with a progress bar, keeping each plastic
    connection's weights after every sample; returns the samples' traces joined ``[T, B, ...]``,
    the weights ``[B, synapses]`` and the seconds it took."""
    from tqdm import tqdm

    per_sample: dict[str, list[np.ndarray]] = {c.name: [] for c in plastic}
    with tqdm(total=count, desc=desc, unit="sample", disable=not progress, leave=False) as bar:
        def record(_: int) -> None:
            for conn in plastic:
                per_sample[conn.name].append(conn.weight[conn.synapses()].copy())
            bar.update(1)

        tick = time.perf_counter()
        traces = learn(record)
        seconds = time.perf_counter() - tick
    spikes = {name: np.concatenate([t.spikes[name] for t in traces], 1) for name in traces[0].spikes}
    readout = np.concatenate([t.readout for t in traces], 1)
    saturation = sum(t.saturation_events for t in traces)
    return (Trace(spikes, readout, traces[0].window, saturation), {k: np.stack(v) for k, v in per_sample.items()},
            seconds)


def learn_reference(plan: LearningPlan, x_steps: np.ndarray, labels: np.ndarray, guard_steps: int,
                    progress: bool = True) -> tuple[Trace, dict[str, np.ndarray], float]:
    """``simulate.learn_online`` on the plan's graph (in place): the trace ``[T, B, ...]``, each
    plastic connection's weights after every sample ``[B, synapses]``, and the seconds it took."""
    from .simulate import learn_online

    reward = plan.reward(labels) if plan.feedback else None
    return _recording(plan.plastic, x_steps.shape[1], "reference", progress,
                      lambda record: learn_online(plan.graph, x_steps.transpose(1, 0, 2, 3), guard_steps=guard_steps,
                                                  reward=reward, after_sample=record))


def learn_reference_fixed(graph: Graph, x_int: np.ndarray, guard_steps: int, progress: bool = True,
                          labels: Optional[np.ndarray] = None, feedback: Optional[dict[str, np.ndarray]] = None
                          ) -> tuple[Trace, dict[str, np.ndarray], float]:
    """``fixed_ref.learn_online_fixed`` on the fixed ``graph`` (in place) with integer input steps
    ``x_int [T, B, N, F]`` (three_factor: the samples' ``labels`` and each connection's
    ``feedback``): the trace, each plastic connection's integer weights after every sample
    ``[B, synapses]``, and the seconds it took."""
    from .fixed_ref import learn_online_fixed

    plastic = [c for c in graph.connections if c.rule is not None]
    return _recording(plastic, x_int.shape[1], "fixed_ref", progress,
                      lambda record: learn_online_fixed(graph, x_int.transpose(1, 0, 2, 3), guard_steps,
                                                        after_sample=record, labels=labels, feedback=feedback))


def weight_differences(reference: dict[str, np.ndarray], backend: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per sample, the largest |w_backend - w_reference| over every plastic synapse, and the same
    relative to the largest |w_reference| of its connection (a relative error per synapse is
    undefined where a weight crosses zero)."""
    abs_diff, rel_diff = None, None
    for name, ref in reference.items():
        if name not in backend or backend[name].shape != ref.shape:
            raise SpikeformerError(f"the backend recorded no weights of shape {ref.shape} for {name!r}")
        diff = np.abs(backend[name].astype(np.float64) - ref).max(1)  # [samples]; integers exact in float64
        rel = diff / max(float(np.abs(ref).max()), 1e-300)
        abs_diff = diff if abs_diff is None else np.maximum(abs_diff, diff)
        rel_diff = rel if rel_diff is None else np.maximum(rel_diff, rel)
    return {"weight_max_abs_diff": float(abs_diff.max()), "weight_max_rel_diff": float(rel_diff.max()),
            "weight_max_abs_diff_per_sample": abs_diff.tolist(), "weight_max_rel_diff_per_sample": rel_diff.tolist()}


def run_backend(backend: str, graph: Graph, x_steps: np.ndarray, labels: np.ndarray,
                feedback: dict[str, np.ndarray], progress: bool) -> tuple[Trace, dict[str, Any], dict[str, np.ndarray]]:
    """Learn online on ``backend``; returns its trace, its info and its weights after every sample.
    lava-fixed takes the quantised graph (``backends.fixed_graph``) and integer input steps
    (``quantize.encode_fixed``)."""
    recorded: dict[str, np.ndarray] = {}
    if backend == "lava-fixed":
        from .lava.run import run_lava

        if graph.precision != "fixed":
            raise SpikeformerError("lava-fixed learns a quantised graph: quantise it first (backends.fixed_graph)")
        trace, info = run_lava(graph, x_steps, progress=progress, labels=labels, feedback=feedback,
                               weights_per_sample=recorded)
    elif backend == "lava-float":
        from .lava.run import run_lava

        trace, info = run_lava(graph, x_steps, progress=progress, labels=labels, feedback=feedback,
                               weights_per_sample=recorded)
    elif backend == "brian2":
        from .brian2_ref import run_brian2

        trace, info = run_brian2(graph, x_steps, labels=labels, feedback=feedback,
                                 weights_per_sample=recorded)
    else:
        raise SpikeformerError(f"--learn runs on {', '.join(LEARN_BACKENDS)}, not {backend!r}")
    return trace, info, recorded


def validate_learn(run: str | Path, backend: str, samples: int = 50, rule: Optional[str] = None,
                   layers: Optional[str] = None, lr: Optional[float] = None, progress: bool = True,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both the float reference and ``backend`` learn online from the run's weights over the first
    ``samples`` training samples; write and return ``RUN/validate-learn-<backend>.json``.
    lava-fixed: ``_validate_learn_fixed``, against the integer reference."""
    from spikeformer.checkpoint import atomic_write_json
    from spikeformer.train import load_run

    from .compare import encode_steps
    from .validate import _jsonable

    if backend not in LEARN_BACKENDS:
        raise SpikeformerError(f"--learn runs on {', '.join(LEARN_BACKENDS)}, not {backend!r}")
    if samples <= 0:
        raise SpikeformerError(f"--samples must be a positive number, got {samples}")
    cfg, model, split, _ = load_run(run)
    plan = learning_graph(model, cfg, rule, layers, lr)
    count = min(samples, len(split.x_train))
    generator = torch.Generator().manual_seed(cfg.seed)
    x_train = encode_steps(model, split.x_train[:count], generator)
    labels = split.y_train[:count].numpy()
    x_test = encode_steps(model, split.x_test, torch.Generator().manual_seed(cfg.seed))
    y_test = split.y_test.numpy()
    if backend == "lava-fixed":
        record, line = _validate_learn_fixed(run, model, split, plan, x_train, labels, x_test, y_test, progress)
    else:
        record, line = _validate_learn_float(run, backend, plan, x_train, labels, x_test, y_test, progress)
    out = Path(run) / f"validate-learn-{backend}.json"
    atomic_write_json(out, _jsonable(record))
    log(f"{line} -> {out}")
    return record


def _validate_learn_float(run: str | Path, backend: str, plan: LearningPlan, x_train: np.ndarray,
                          labels: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                          progress: bool) -> tuple[dict[str, Any], str]:
    """lava-float and brian2 ``--learn``: the float reference and the backend learn from the same
    samples; accuracies scored in the float reference. Returns the record and the printed line."""
    from .compare import agreement
    from .guard import GUARD_STEPS

    count = x_train.shape[1]
    before = accuracy(plan.graph, x_test, y_test)
    backend_graph = copy.deepcopy(plan.graph)
    reference, ref_weights, ref_seconds = learn_reference(plan, x_train, labels, GUARD_STEPS, progress)
    trace, info, weights = run_backend(backend, backend_graph, x_train, labels, plan.feedback, progress)
    score = agreement(reference, trace, labels)
    record: dict[str, Any] = {
        "backend": backend, "run": str(run), "rule": plan.rule, "samples": count,
        "plastic_connections": [c.name for c in plan.plastic], "frozen_connections": plan.frozen,
        "rule_params": plan.plastic[0].rule_params, "guard_steps_per_sample": GUARD_STEPS,
        "spike_agreement": score["spike_agreement"], "class_agreement_during_learning": score["class_agreement"],
        **weight_differences(ref_weights, weights),
        "accuracy_before": before, "accuracy_after_backend": accuracy(backend_graph, x_test, y_test),
        "accuracy_after_torch": accuracy(plan.graph, x_test, y_test), "test_samples": len(y_test),
        "accuracy_scored_by": "float reference (numpy + torch step functions) with each side's learned weights",
        "reference_seconds": ref_seconds, "steps_per_second": info.get("steps_per_second", float("nan")),
        "backend_info": {k: v for k, v in info.items() if np.isscalar(v)},
    }
    line = (f"{backend} learning {plan.rule} on {len(plan.plastic)} connections over {count} samples: spike "
            f"agreement {record['spike_agreement']:.6f}, weight max rel diff {record['weight_max_rel_diff']:.2e} (abs "
            f"{record['weight_max_abs_diff']:.2e}), accuracy {before:.4f} -> {record['accuracy_after_backend']:.4f} "
            f"(reference {record['accuracy_after_torch']:.4f}), {record['steps_per_second']:.0f} steps/s")
    return record, line


def _validate_learn_fixed(run: str | Path, model: Any, split: Any, plan: LearningPlan, x_train: np.ndarray,
                          labels: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                          progress: bool) -> tuple[dict[str, Any], str]:
    """lava-fixed ``--learn``: the plan's graph quantised as ``validate`` quantises it
    (``backends.fixed_graph``); the integer reference (``fixed_ref.learn_online_fixed``) and Lava
    fixed_pt learn by the plan's rule from the same integer input; spikes and integer weights are compared
    after every sample (exact: agreement 1, differences 0). Accuracies on the test split are
    scored in ``fixed_ref`` with each side's learned weights; ``accuracy_after_torch`` is the float
    reference's (``simulate.learn_online`` on the float plan, scored in float), for scale.
    Returns the record and the printed line (without its destination)."""
    from .backends import fixed_graph
    from .compare import agreement
    from .fixed_learning import connection_rule, realized_amplitudes
    from .guard import GUARD_STEPS
    from .quantize import encode_fixed

    fixed = fixed_graph(model, split, plan.graph)
    x_int, clipped = encode_fixed(fixed, x_train)
    x_test_int, _ = encode_fixed(fixed, x_test)
    plastic = [c for c in fixed.connections if c.rule is not None]
    rules = {}
    for conn in plastic:
        realization = connection_rule(fixed, conn, plan.feedback.get(conn.name))
        tag = 0 if realization.tag_2 is None else int(realization.tag_2.max())
        rules[conn.name] = {**realization.rule, "weight_exp": conn.weight_exp, "tag_2": tag}
        if realization.third_factor:
            gains = realization.inputs.gains
            rules[conn.name].update(post_impulse=gains.post_impulse, post_decay_12bit=gains.post_decay,
                                    modulator_gain=gains.modulator_gain, realized=gains.realized)
        else:
            rules[conn.name]["realized_a_plus_a_minus_weight_units"] = realized_amplitudes(realization.rule, tag)
    before = accuracy(fixed, x_test_int, y_test)
    reference_graph, backend_graph = copy.deepcopy(fixed), copy.deepcopy(fixed)
    reference, ref_weights, ref_seconds = learn_reference_fixed(reference_graph, x_int, GUARD_STEPS, progress,
                                                                labels, plan.feedback)
    trace, info, weights = run_backend("lava-fixed", backend_graph, x_int, labels, plan.feedback, progress)
    score = agreement(reference, trace, labels)
    changes = [ref_weights[c.name][-1] - c.weight[c.synapses()] for c in plastic]
    before_float = accuracy(plan.graph, x_test, y_test)
    _, _, float_seconds = learn_reference(plan, x_train, labels, GUARD_STEPS, progress)
    record: dict[str, Any] = {
        "backend": "lava-fixed", "run": str(run), "rule": plan.rule, "samples": x_train.shape[1],
        "reference": "fixed_ref", "plastic_connections": [c.name for c in plastic], "frozen_connections": plan.frozen,
        "rule_params": plastic[0].rule_params, "fixed_rules": rules, "guard_steps_per_sample": GUARD_STEPS,
        "spike_agreement": score["spike_agreement"], "class_agreement_during_learning": score["class_agreement"],
        **weight_differences(ref_weights, weights),
        "weights_changed": int(sum((d != 0).sum() for d in changes)),  # by the reference, over the samples
        "weight_max_change": int(max(np.abs(d).max() for d in changes)),  # weight units
        "accuracy_before": before, "accuracy_after_backend": accuracy(backend_graph, x_test_int, y_test),
        "accuracy_after_fixed_ref": accuracy(reference_graph, x_test_int, y_test),
        "accuracy_before_float": before_float, "accuracy_after_torch": accuracy(plan.graph, x_test, y_test),
        "test_samples": len(y_test),
        "accuracy_scored_by": "fixed_ref (integer) with each side's learned weights; accuracy_before_float and "
                              "accuracy_after_torch: the float reference (learn_online on the float plan, scored in "
                              "float)",
        "reference_seconds": ref_seconds, "float_reference_seconds": float_seconds,
        "steps_per_second": info.get("steps_per_second", float("nan")), "input_clipped": clipped,
        "saturation_events_fixed_ref": reference.saturation_events, "quantisation": fixed.fixed,
        "backend_info": {k: v for k, v in info.items() if np.isscalar(v)},
    }
    line = (f"lava-fixed learning {plan.rule} on {len(plastic)} connections over {record['samples']} samples against "
            f"fixed_ref: spike agreement {record['spike_agreement']:.6f}, weight max abs diff "
            f"{record['weight_max_abs_diff']:.0f} (weights changed: {record['weights_changed']}), accuracy "
            f"{before:.4f} -> {record['accuracy_after_backend']:.4f} (fixed_ref "
            f"{record['accuracy_after_fixed_ref']:.4f}; float reference {before_float:.4f} -> "
            f"{record['accuracy_after_torch']:.4f}), {record['steps_per_second']:.2f} steps/s")
    return record, line
