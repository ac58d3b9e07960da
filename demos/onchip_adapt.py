"""On-chip adaptation: a deployed digits model recovers from a distribution shift by learning its
readout online on Lava, with a reward-modulated three-factor rule, and the float reference does
the same (docs/backends.md, "On-chip learning").

    .venv/bin/python demos/onchip_adapt.py [--run runs/digits-loihi] [--samples 500] [--shift 2]

The model (trained with BPTT and Loihi timing: demos/digits-loihi.toml) sees digits moved right
by ``--shift`` pixels, where its accuracy falls from about 0.98 to about 0.5. Only its readout
learns, by ``rules.three_factor`` with the readout as an always-active post side (post factor 1)
and A- = 0: the eligibility is the decayed sum of each input's pre trace, and after each sample
the third factor is the output error, label minus prediction (``neuromorphic.reward``), computed
beside the readout on the chip. That is the delta rule, learnt from spikes, one sample at a time.

Both sides start from the run's weights and learn from the same first ``--samples`` shifted
training samples: Lava (a LearningDense with a RuleInputs process) and the float reference
(``simulate.learn_online``: torch's LIF step and ``rules.three_factor.update`` in float64). Lava's
adapted network is then scored on Lava over the shifted test split (``--score-on reference``
scores its learned weights in the float reference instead, which is faster); the reference's
weights are scored by the torch model itself. Prints accuracies, the weight agreement after
every sample and the run time; writes RUN/onchip-adapt.json.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

# the demo's rule: eligibility over two steps, no depression (the readout's post side is always on)
RULE = {"rule_a_plus": 1.0, "rule_a_minus": 0.0, "rule_tau_pre": 2.0, "rule_tau_post": 2.0,
        "rule_tau_eligibility": 2.0}


def torch_accuracy(model, x_steps: np.ndarray, labels: np.ndarray, readout: np.ndarray | None = None) -> float:
    """The torch model (float64) on encoded steps, with its readout weight replaced if given."""
    from neuromorphic.compare import torch_trace

    model = copy.deepcopy(model)
    if readout is not None:
        with torch.no_grad():
            model.readout.linear.weight.copy_(torch.from_numpy(readout))
    return float((torch_trace(model, x_steps).logits.argmax(-1) == labels).mean())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/digits-loihi", help="a digits run trained with delays = \"loihi\"")
    p.add_argument("--samples", type=int, default=500, help="shifted training samples to learn from (default 500)")
    p.add_argument("--shift", type=int, default=2, help="pixels the digits move right (default 2)")
    p.add_argument("--lr", type=float, default=1e-2, help="the online learning rate (default 1e-2)")
    p.add_argument("--score-on", choices=["lava", "reference"], default="lava",
                   help="where Lava's adapted weights are scored on the shifted test split (default lava)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()

    from neuromorphic.compare import encode_steps
    from neuromorphic.lava.run import GUARD_STEPS, run_lava
    from neuromorphic.onchip import accuracy, frozen_copy, learn_reference, learning_graph, run_backend, weight_differences
    from spikeformer.checkpoint import atomic_write_json
    from spikeformer.data import translate_images
    from spikeformer.train import load_run

    run = Path(args.run)
    if not (run / "checkpoint.json").is_file():
        raise SystemExit(f"error: {run} is not a run; train it first: .venv/bin/spikeformer train --config "
                         f"demos/digits-loihi.toml --out {run}")
    cfg, model, split, _ = load_run(run)
    if cfg.task != "digits":
        raise SystemExit(f"error: the demo shifts digit images; {run} is a {cfg.task} run")
    count = min(args.samples, len(split.x_train))
    steps = lambda x: encode_steps(model, x, torch.Generator().manual_seed(cfg.seed))  # noqa: E731
    x_train = steps(translate_images(split.x_train[:count], cfg.patch_size, args.shift))
    y_train = split.y_train[:count].numpy()
    x_test = steps(translate_images(split.x_test, cfg.patch_size, args.shift))
    y_test = split.y_test.numpy()
    clean = torch_accuracy(model, steps(split.x_test), y_test)
    shifted = torch_accuracy(model, x_test, y_test)
    print(f"{run}: clean test accuracy {clean:.4f}; digits moved {args.shift} px right: {shifted:.4f}")

    plan = learning_graph(model, replace(cfg, **RULE), rule="three_factor", layers="readout", lr=args.lr)
    lava_graph = copy.deepcopy(plan.graph)
    tick = time.perf_counter()
    _, ref_weights, _ = learn_reference(plan, x_train, y_train, GUARD_STEPS, progress=not args.quiet)
    reference_seconds = time.perf_counter() - tick
    readout = plan.plastic[0]  # the readout: the only connection that learns
    after_torch = torch_accuracy(model, x_test, y_test, readout.weight)

    tick = time.perf_counter()
    _, info, lava_weights = run_backend("lava-float", lava_graph, x_train, y_train, plan.feedback, not args.quiet)
    lava_learn_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    if args.score_on == "lava":
        trace, _ = run_lava(frozen_copy(lava_graph), x_test, progress=not args.quiet, keep=set())
        after_lava = float((trace.logits.argmax(-1) == y_test).mean())
    else:
        after_lava = accuracy(lava_graph, x_test, y_test)
    score_seconds = time.perf_counter() - tick
    agreement = weight_differences(ref_weights, lava_weights)
    lost = clean - shifted
    result = {
        "run": str(run), "shift_pixels": args.shift, "samples": count, "test_samples": len(y_test),
        "rule": "three_factor", "rule_params": readout.rule_params, "learning": "readout only",
        "accuracy_clean": clean, "accuracy_shifted_before": shifted,
        "accuracy_after_lava": after_lava, "accuracy_after_torch": after_torch, "lava_scored_on": args.score_on,
        "recovered_fraction_lava": (after_lava - shifted) / lost if lost > 0 else float("nan"),
        "recovered_fraction_torch": (after_torch - shifted) / lost if lost > 0 else float("nan"),
        "weight_max_abs_diff": agreement["weight_max_abs_diff"], "weight_max_rel_diff": agreement["weight_max_rel_diff"],
        "reference_learn_seconds": reference_seconds, "lava_learn_seconds": lava_learn_seconds,
        "lava_steps_per_second": info["steps_per_second"], "score_seconds": score_seconds,
        "total_seconds": time.perf_counter() - start,
    }
    print(f"after learning the readout online from {count} shifted training samples:")
    print(f"  Lava float  {after_lava:.4f} (scored on {args.score_on}), "
          f"{result['recovered_fraction_lava']:.0%} of the {lost:.4f} lost recovered")
    print(f"  torch       {after_torch:.4f}, {result['recovered_fraction_torch']:.0%} recovered")
    print(f"  weights after every sample: max |Lava - torch| {agreement['weight_max_abs_diff']:.2e} "
          f"(relative {agreement['weight_max_rel_diff']:.2e})")
    print(f"  time: reference {reference_seconds:.0f} s, Lava learning {lava_learn_seconds:.0f} s "
          f"({info['steps_per_second']:.0f} steps/s), scoring {score_seconds:.0f} s, total "
          f"{result['total_seconds']:.0f} s -> {run / 'onchip-adapt.json'}")
    atomic_write_json(run / "onchip-adapt.json", result)
    return result


if __name__ == "__main__":
    main()
