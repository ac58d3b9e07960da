"""Median time of one local-rule training step (``rules.driver.LocalLearner.step``), one torch
thread, batch 64, on the digits model of demos/digits-eprop.toml (random weights).

    .venv/bin/python demos/rule_step_time.py [RULE ...]        # default: three_factor perturbation

To time another version of the code, put its packages first on the path, e.g.
    git archive REV rules spikeformer | tar -x -C /tmp/old && PYTHONPATH=/tmp/old .venv/bin/python demos/rule_step_time.py
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import rules.driver as driver
from spikeformer.config import load_config
from spikeformer.model import build_model

REPEATS = 7


def main(rules: list[str]) -> None:
    torch.set_num_threads(1)
    print(f"rules.driver from {driver.__file__}")
    for rule in rules:
        cfg = load_config("demos/digits-eprop.toml", {"rule": rule})
        torch.manual_seed(0)
        model = build_model(cfg, 4, 16, 10).train()
        learner = driver.LocalLearner(cfg, model)
        x = torch.rand(64, 4, 16, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(64) % 10
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            learner.step(x, labels, torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)
        print(f"{rule}: {statistics.median(times):.3f} s per step (median of {REPEATS})")


if __name__ == "__main__":
    main(sys.argv[1:] or ["three_factor", "perturbation"])
