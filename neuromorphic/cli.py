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
    p.add_argument("--samples", type=int, default=None,
                   help="test samples to run (default 100); with --learn, training samples to learn from (default 50)")
    p.add_argument("--learn", action="store_true",
                   help="learn online on the backend with the run's rule (stdp, three_factor) from the run's weights, "
                        "beside the float reference (lava-fixed: beside fixed_ref); writes "
                        "RUN/validate-learn-<backend>.json")
    p.add_argument("--rule", choices=["stdp", "three_factor"], default=None, help="with --learn: instead of the run's rule")
    p.add_argument("--rule-layers", default=None,
                   help="with --learn: the layers that learn, comma-separated globs (default: the run's rule_layers)")
    p.add_argument("--learn-rate", type=float, default=None,
                   help="with --learn: the online learning rate (default 1e-4)")
    p.add_argument("--codegen", choices=["numpy", "cython"], default="numpy",
                   help="Brian2 backends: numpy (default, no compile step) or cython (compiled once and "
                        "cached: faster for long runs; build_seconds and run_seconds are reported apart)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _validate(args: argparse.Namespace) -> int:
    if args.learn:
        from .onchip import validate_learn

        validate_learn(args.run, args.backend, 50 if args.samples is None else args.samples, args.rule, args.rule_layers, args.learn_rate,
                       progress=not args.quiet)
        return 0
    if args.rule or args.rule_layers or args.learn_rate is not None:
        from spikeformer.errors import SpikeformerError

        raise SpikeformerError("--rule, --rule-layers and --learn-rate go with --learn")
    from .validate import validate

    validate(args.run, args.backend, 100 if args.samples is None else args.samples, progress=not args.quiet,
             codegen=args.codegen)
    return 0


def _chip_noise_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory of a model trained with delays = \"loihi\"")
    p.add_argument("--references", default="float,fixed",
                   help="float (the numpy float64 reference), fixed (the integer fixed-point one) or both")
    p.add_argument("--samples", type=int, default=100, help="test samples (default 100)")
    p.add_argument("--noises", default=None, metavar="NAMES",
                   help="model-side noises, comma-separated (default: all five; docs/robustness.md)")
    p.add_argument("--severities", default=None, metavar="S", help="severities 1-5, comma-separated (default: all)")
    p.add_argument("--draws", type=int, default=1, metavar="N",
                   help="score threshold jitter and weight noise, frozen for a run (one device), on N independent "
                        "draws and average them (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _chip_noise(args: argparse.Namespace) -> int:
    from .chip_noise import chip_noise, markdown_table

    record = chip_noise(args.run, tuple(r.strip() for r in args.references.split(",") if r.strip()), args.samples,
                        [n.strip() for n in args.noises.split(",")] if args.noises else None,
                        args.severities, progress=not args.quiet, draws=args.draws)
    print(markdown_table(record), end="")
    print(f"chip noise written to {args.run}/chip-noise.json")
    return 0


def commands() -> dict[str, Command]:
    return {
        "export": ("export a trained run to the IR, Lava or NIR", _export_arguments, _export),
        "validate": ("run test samples on a backend and compare with torch or fixed_ref",
                     _validate_arguments, _validate),
        "chip-noise": ("model-side noise on the float and fixed-point references beside torch -> RUN/chip-noise.json",
                       _chip_noise_arguments, _chip_noise),
    }
