"""Gradients of one global batch, as ``spikeformer train`` computes them, from one process or under
torchrun: ``python distributed_worker.py CONFIG OUT.safetensors``. Rank 0 writes every parameter's
gradient (the global batch's), so tests can compare N processes with one (test_distributed.py)."""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file
from torch import nn

from spikeformer import distributed
from spikeformer.config import load_config
from spikeformer.data import load_task
from spikeformer.train import augment, batch_gradients, epoch_generator, local_learner, make_model, subset


def main(config: str, out: str) -> None:
    world = distributed.setup("cpu")
    gradients(config, out, world)
    # after gradients() returned: its DDP wrapper is gone before the process group is (a reducer
    # outliving its group aborts the process at exit)
    distributed.teardown(world)


def gradients(config: str, out: str, world: distributed.World) -> None:
    cfg = load_config(config)
    torch.set_num_threads(1)
    split = subset(load_task(cfg), cfg)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, split)
    model.train()
    learner = local_learner(cfg, model) if cfg.rule != "bptt" else None
    forward = nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False) \
        if world.distributed and learner is None else model
    gen = epoch_generator(cfg.seed, 0)
    idx = torch.randperm(len(split.x_train), generator=gen)[:cfg.batch_size]
    xb, yb = augment(split.x_train[idx], cfg, gen), split.y_train[idx]
    part = distributed.shard(len(idx), world)
    batch_gradients(model, forward, learner, xb[part], yb[part], len(idx), gen, cfg, world)
    if world.main:
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        stats = {f"buffer.{name}": b.detach().clone() for name, b in model.named_buffers() if b.is_floating_point()}
        save_file({**grads, **stats}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
