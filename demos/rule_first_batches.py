"""How a local rule starts to learn: the mean training loss over each 10 of the first 60 batches
(batch 64, AdamW at the config's lr and weight decay, no warm-up or schedule), one torch thread,
seed 0. A quick probe of a rule on a model's timing, minutes instead of a training run.

    .venv/bin/python demos/rule_first_batches.py CONFIG [--set KEY=VALUE ...]
    .venv/bin/python demos/rule_first_batches.py demos/mnist1d-eprop.toml --set 'delays="aligned"'

To probe another version of the code, put its packages first on the path, e.g.
    git archive REV rules spikeformer | tar -x -C /tmp/old && PYTHONPATH=/tmp/old .venv/bin/python demos/rule_first_batches.py ...
"""

from __future__ import annotations

import argparse

import torch

import rules.driver as driver
from spikeformer.config import load_config, parse_overrides
from spikeformer.data import load_task
from spikeformer.model import build_model

BATCHES, BATCH, EVERY = 60, 64, 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, parse_overrides(args.set))
    split = load_task(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, split.tokens, split.features, split.num_classes).train()
    learner = driver.LocalLearner(cfg, model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(BATCHES):
        idx = torch.randint(0, len(split.y_train), (BATCH,), generator=generator)
        for p in model.parameters():
            p.grad = None
        loss, _ = learner.step(split.x_train[idx], split.y_train[idx], generator)
        optimizer.step()
        losses.append(float(loss))
    means = [sum(losses[i:i + EVERY]) / EVERY for i in range(0, BATCHES, EVERY)]
    print(f"rules.driver from {driver.__file__}")
    print(f"{args.config} {' '.join(args.set)}: rule {cfg.rule}, delays {cfg.delays}, feedback {cfg.feedback}; "
          f"mean loss per {EVERY} batches: {' '.join(f'{m:.3f}' for m in means)}")


if __name__ == "__main__":
    main()
