"""The ``export`` and ``validate`` subcommands, plugged into the ``spikeformer`` CLI through the
``spikeformer.commands`` entry point (so ``spikeformer`` never imports ``neuromorphic``: SPEC §3).

Each command is ``name -> (help, add_arguments(parser), handler(args) -> exit status)``.
The choices come from the registry in ``neuromorphic.backends``. This module stays light: heavy
imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
from typing import Callable

from .backends import BACKENDS, TARGET_REGISTRY, TARGETS

__all__ = ["BACKENDS", "TARGETS", "Command", "commands"]

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory with checkpoint.safetensors + checkpoint.json")
    p.add_argument("--to", required=True, choices=list(TARGETS),
                   help="; ".join(f"{t.name}: {t.help}" for t in TARGET_REGISTRY.values()))
    p.add_argument("--fixed-point", action="store_true", help="quantise for Lava's bit-accurate models (SPEC §2.4)")
    p.add_argument("--out", required=True, help="folder (ir, lava) or file (nir) to write")


def _export(args: argparse.Namespace) -> int:
    from .validate import export

    s = export(args.run, args.to, args.out, args.fixed_point)
    extra = f", {s['lava_processes']} Lava processes" if "lava_processes" in s else ""
    print(f"exported {args.run} to {args.to} ({s['precision']}): {s['neurons']} neurons, {s['synapses']} synapses, "
          f"{s['attention_heads']} attention heads{extra} -> {args.out}")
    return 0


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory of a model trained with delays = \"loihi\"")
    p.add_argument("--backend", required=True, choices=list(BACKENDS))
    p.add_argument("--samples", type=int, default=100, help="test samples to run (default 100)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _validate(args: argparse.Namespace) -> int:
    from .validate import validate

    validate(args.run, args.backend, args.samples, progress=not args.quiet)
    return 0


def commands() -> dict[str, Command]:
    return {
        "export": ("export a trained run to the IR, Lava or NIR", _export_arguments, _export),
        "validate": ("run test samples on a backend and compare with torch or fixed_ref",
                     _validate_arguments, _validate),
    }
