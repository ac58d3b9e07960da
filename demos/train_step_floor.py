"""How fast could a digits-loihi training step get? One step (batch 64, as ``bench``'s
``train_batch_digits_loihi``) timed in one process for:

- ``ours``: the default code path (fused LIF, ``attention_impl = "auto"``);
- ``before``: every LIF ``impl = "loop"`` and recurrent attention (the path before issue 12);
- ``no_norm``: ``ours`` with every BatchNorm replaced by the identity (and so no bias): not a
  model anyone trains, a bound on what any faster norm could give;
- ``ann``: the same-size ANN.

Usage: python demos/train_step_floor.py [--repeats 15] [--config demos/digits-loihi.toml]
Prints the median ms of each and the ratios before / x (docs/benchmarks.md, "Kernels").
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path
from typing import Iterator

import torch

from spikeformer import model as model_module
from spikeformer.bench import SIZES, _make_train_step, _train_models, time_callable


@contextlib.contextmanager
def norms_removed() -> Iterator[None]:
    """Every ``FeatureNorm`` passes its input through while the block runs."""
    original = model_module.FeatureNorm.forward
    model_module.FeatureNorm.forward = lambda self, x: x
    try:
        yield
    finally:
        model_module.FeatureNorm.forward = original


def median_ms(parts: dict, which: str, repeats: int) -> float:
    torch.manual_seed(0)
    step = _make_train_step(parts, which, SIZES["full"], "cpu")()
    return statistics.median(time_callable(step, repeats, warmup=3)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    parts = _train_models("train_batch_digits_loihi", Path(__file__).resolve().parent)
    ms = {which: median_ms(parts, which, args.repeats) for which in ("ours", "before", "ann")}
    with norms_removed():
        ms["no_norm"] = median_ms(parts, "ours", args.repeats)
    print(f"{parts['path'].name}, batch {SIZES['full'].train_batch}, median of {args.repeats}, "
          f"{torch.get_num_threads()} threads")
    for which, value in ms.items():
        print(f"{which:>8}: {value:7.1f} ms   before / {which}: {ms['before'] / value:5.2f}")


if __name__ == "__main__":
    main()
