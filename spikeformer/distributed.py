"""Data-parallel training over several processes with torch.distributed (torchrun, SLURM).

Every rank holds the whole model and trains on its share of each global batch (``batch_size``
is the global batch, as in one process):

- every rank draws the same shuffled order and the same augmentation of the global batch from
  ``(seed, epoch)``, then keeps its contiguous slice (``shard``);
- BatchNorm normalises with the statistics of the global batch (``synced_norms``: the sums are
  all-reduced, differentiably), so a step sees what one process with the whole batch sees;
- BPTT gradients are averaged by ``DistributedDataParallel``; the local rules' weight changes,
  which need no backward pass, by ``reduce_gradients``; each rank's loss is scaled by its share
  of the batch, so a short last batch split unevenly still weighs every sample equally;
- one rank's failure (NaN loss, missing data, bad checkpoint) stops every rank with one line
  (``agree``), and a dead peer ends the others with a one-line ``DistributedError``.

Up to floating-point rounding (sums taken in another order), N processes give the weights one
process gives with the same global batch (tests/spikeformer/test_distributed.py). Rank 0 alone
writes checkpoints and metrics; checkpoints hold no trace of the world size, so a run resumes
with any number of processes. Poisson encoding draws per rank (statistically, not bitwise, the
same as one process). docs/scaling.md shows torchrun on one machine, on several, and SLURM.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import ConfigError, DistributedError

TIMEOUT = timedelta(minutes=10)  # the longest a rank waits for the others (rank 0's epoch-end evaluation included)
_SYNC: Optional["World"] = None  # set inside ``synced_norms``


@dataclass(frozen=True)
class World:
    """This process's place among the ranks: ``rank`` of ``size`` (1: not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, checkpoints and writes metrics."""
        return self.rank == 0


def setup(device: str) -> World:
    """Join the process group that torchrun (or a SLURM launch of it) describes in the environment
    (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU,
    NCCL on CUDA. Without ``WORLD_SIZE`` > 1 this is one process and nothing is initialised."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={size} is set but {', '.join(missing)} are not; launch with torchrun "
                          "(docs/scaling.md), which sets them all")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=TIMEOUT)
    world = World(dist.get_rank(), dist.get_world_size())
    _stop_with_one_line(world)
    return world


def _stop_with_one_line(world: World) -> None:
    """torchrun ends every rank with SIGTERM when one fails; say so in one line (the CLI prints
    ``error: ...``) instead of dying silently."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        raise DistributedError(f"rank {world.rank} of {world.size} was stopped by the launcher, which ends every "
                               "rank when one fails (that rank's output says why); the last finished epoch is "
                               "saved: rerun with --resume (any number of processes)")

    signal.signal(signal.SIGTERM, stop)


def teardown(world: World) -> None:
    """Wait for every rank (rank 0 writes the metrics last), then leave the process group. Call it
    once the DDP wrapper is out of scope: a reducer that outlives its group aborts the process at
    exit ("terminate called without an active exception"); the collection frees one held by a
    reference cycle."""
    if world.distributed and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def check_batch(batch_size: int, world: World) -> None:
    """The global batch must split evenly over the ranks."""
    if world.distributed and batch_size % world.size:
        raise ConfigError(f"batch_size {batch_size} (the global batch) does not divide over {world.size} processes; "
                          f"choose a batch_size that is a multiple of {world.size} or another --nproc_per_node")


def shard(count: int, world: World) -> slice:
    """This rank's contiguous slice of a global batch of ``count`` samples (sizes differ by at most
    one; a rank gets none when ``count`` < the world size)."""
    base, extra = divmod(count, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


def agree(ok: bool, world: World) -> bool:
    """True on every rank when ``ok`` holds on every rank (a collective: every rank must call it)."""
    if not world.distributed:
        return ok
    flag = torch.tensor([1.0 if ok else 0.0], device=_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0.5)


def all_sum(values: list[float], world: World) -> list[float]:
    """Element-wise sums of ``values`` over the ranks (float64)."""
    if not world.distributed:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(total)
    return total.tolist()


def reduce_gradients(parameters: list[nn.Parameter], share: float, world: World) -> None:
    """``grad = sum over ranks of share_r * grad_r`` for every parameter with a gradient (the
    local rules'); ``share`` is this rank's fraction of the global batch. One flat all-reduce."""
    if not world.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]) * share
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _device() -> torch.device:
    """Where collectives' small tensors live: the current CUDA device under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def synced_norms(world: World) -> Iterator[None]:
    """Inside, every ``FeatureNorm`` in training mode normalises with global-batch statistics."""
    global _SYNC
    previous, _SYNC = _SYNC, (world if world.distributed else None)
    try:
        yield
    finally:
        _SYNC = previous


def sync_world() -> Optional[World]:
    """The world FeatureNorm synchronises over now, or None."""
    return _SYNC


def global_moments(x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Mean and biased variance ``[F]`` of the rows of ``x [M, F]`` over every rank, and the total
    row count. Differentiable: the all-reduce's backward all-reduces the gradient. The sums are
    float64, so the one-pass variance loses nothing to cancellation at float32 inputs."""
    wide = x.to(torch.float64)
    local = torch.cat([wide.sum(0), (wide * wide).sum(0), wide.new_tensor([float(x.shape[0])])])
    total = _SumOverRanks.apply(local)
    features = x.shape[1]
    count = total[-1]
    mean = total[:features] / count
    var = (total[features:2 * features] / count - mean * mean).clamp(min=0.0)
    return mean.to(x.dtype), var.to(x.dtype), int(count.item())


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: every rank's value feeds every
    rank's sum, so each rank's input gets the sum of all ranks' output gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def batch_norm(x: Tensor, bn: nn.BatchNorm1d) -> Tensor:
    """``bn`` applied to ``x [M, F]`` with the global batch's statistics (training mode), the
    running statistics updated from them as BatchNorm would (unbiased variance, momentum)."""
    mean, var, count = global_moments(x)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(var.detach() * (count / max(count - 1, 1)), alpha=factor)
    y = (x - mean) * torch.rsqrt(var + bn.eps)
    return y * bn.weight + bn.bias if bn.affine else y


def lost_peer(world: World, exc: BaseException, where: str) -> DistributedError:
    """The one-line error of a rank whose collective failed because another rank went away."""
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return DistributedError(f"rank {world.rank} of {world.size} lost contact with the other ranks ({reason}); "
                            f"the last finished epoch is saved in {where}: rerun with --resume (any number of "
                            "processes)")
