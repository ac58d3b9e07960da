"""The ``spikeformer`` command line (SPEC §4).

User mistakes (bad path, bad config key, corrupt checkpoint, NaN loss, wrong shapes) print one
line ``error: ...`` and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import SpikeformerError

PLUGIN_GROUP = "spikeformer.commands"  # other packages (neuromorphic: export, validate) add commands here


def _plugins() -> dict:
    """Commands from the ``spikeformer.commands`` entry points: ``name -> (help, add_arguments, handler)``."""
    from importlib.metadata import entry_points

    found: dict = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        found.update(ep.load()())
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikeformer", description="Spiking transformers with event-driven attention.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a TOML config into a run directory")
    p.add_argument("--config", required=True, help="TOML config, e.g. demos/digits.toml")
    p.add_argument("--out", required=True, help="run directory to create (or continue with --resume)")
    p.add_argument("--rule", default=None, help="learning rule: bptt (default), stdp, three_factor, eprop, "
                   "perturbation or readout_only (docs/rules.md)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (TOML value syntax), repeatable")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--init", default=None, metavar="RUN", help="start from the weights of a trained run (fine-tuning)")
    p.add_argument("--qat", action="store_true",
                   help="quantisation-aware fine-tuning: weights on Lava's fixed-point grid (needs --init)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("eval", help="score a saved run on its test split")
    p.add_argument("run")
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise added to the inputs")
    p.add_argument("--corruptions", nargs="?", const="all", default=None, metavar="NAMES",
                   help="also run the robustness suite -> robustness.json and robustness.png: every corruption "
                        "and model-side noise of the task, or the comma-separated NAMES (docs/robustness.md)")
    p.add_argument("--severities", default=None, metavar="S",
                   help="with --corruptions: severities 1-5 to run, comma-separated (default: all five)")
    p.add_argument("--draws", type=int, default=1, metavar="N",
                   help="with --corruptions: score threshold_jitter and weight_noise, which are drawn once per "
                        "evaluation (one device), on N independent draws and average them (default 1)")
    p.add_argument("--robustness-out", default=None, metavar="FILE",
                   help="with --corruptions: write the record to FILE (and its plot beside it as .png) instead of "
                        "RUN/robustness.json, which then keeps the full suite that compare and why read")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="with --corruptions: score the suite on the first N test samples (default: all; the "
                        "full suite on MNIST's 10,000 is 71 passes over the test set)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    p = sub.add_parser("generate", help="stream text from a trained language model (task = \"shakespeare\")")
    p.add_argument("run", help="run directory (any run with one finished epoch)")
    p.add_argument("--prompt", default="ROMEO:", help="text to start from (default \"ROMEO:\")")
    p.add_argument("--chars", type=int, default=400, help="characters to generate (default 400)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="sampling temperature (default 0.8; 0: always the likeliest character)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")

    p = sub.add_parser("report", help="write RUN/report.html with figures")
    p.add_argument("run")

    p = sub.add_parser("compare", help="runs side by side: table, plots, backend agreement -> DIR/compare.html")
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more finished runs of one task")
    p.add_argument("--out", required=True, help="folder for compare.json, compare.md, compare.html and figures/")

    p = sub.add_parser("study", help="train every rule over seeds and training-set sizes -> STUDY/study.json")
    p.add_argument("--config", required=True, help="TOML config, e.g. demos/digits-eprop.toml")
    p.add_argument("--rules", default="bptt,eprop,three_factor,perturbation,stdp,readout_only",
                   help="rules separated by commas (default: all)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 5; --quick: 2)")
    p.add_argument("--train-sizes", default=None, metavar="A,B,...",
                   help="training-set sizes, 'all' for the whole set (default 100,300,1000,all; --quick: 100,300)")
    p.add_argument("--out", required=True, help="study folder (rerun the same command to continue it)")
    p.add_argument("--quick", action="store_true", help="a tiny model, 2 seeds x 2 sizes: a smoke run")
    p.add_argument("--workers", type=int, default=2, help="cells trained at once, one process each (default 2)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (TOML value syntax), repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("why", help="direct/retina encoding, learned/cortical attention, +-top-down and the ANN, "
                       "trained and scored by the robustness suite -> OUT/why.md")
    p.add_argument("--config", required=True, help="a spiking model with learned attention, e.g. demos/digits-loihi.toml")
    p.add_argument("--cortical", default=None, metavar="CONFIG",
                   help="config of the cortical row (default: --config with attention = \"cortical\")")
    p.add_argument("--rows", default="direct,retina,cortical,three_factor,top_down,ann",
                   help="rows separated by commas (default: all six; docs/cli.md)")
    p.add_argument("--out", required=True, help="folder of the runs and why.md (rerun the same command to continue it)")
    p.add_argument("--workers", type=int, default=2, help="rows trained at once, one process each (default 2)")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="score the robustness suite on the first N test samples (default: all)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of every row (TOML value syntax), repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no line per epoch")

    p = sub.add_parser("bench", help="time our kernels against baselines and peer libraries -> bench.json, "
                       ".md and .png")
    p.add_argument("--out", required=True, help="bench.json to write (the .md table and .png plot go beside it)")
    p.add_argument("--quick", action="store_true", help="smaller shapes and 3 repeats: about a minute on 2 cores")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement, median reported "
                   "(default 5; --quick: 3); one warm-up call is never counted")
    p.add_argument("--only", default=None, metavar="SUBSTRING", help="run only the entries whose name contains it")
    p.add_argument("--sizes", default=None, choices=["full", "quick", "tiny"], help=argparse.SUPPRESS)  # tests
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    for name, (text, add_arguments, _) in _plugins().items():
        add_arguments(sub.add_parser(name, help=text))
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    from .config import tomllib

    values: dict = {}
    for item in args.set:
        if "=" not in item:
            raise SpikeformerError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw  # a bare word is a string
    for key in ("rule", "device", "epochs", "seed"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if getattr(args, "init", None):
        values["init_from"] = args.init
    if getattr(args, "qat", False):
        values["qat"] = True
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, _overrides(args))
    train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import atomic_write_json
    from .metrics import evaluate
    from .robustness import parse_selection, write_robustness
    from .train import load_run, measure, resolve_device

    device = resolve_device(args.device)
    cfg, model, split, meta = load_run(args.run, device)
    if args.noise < 0:
        raise SpikeformerError(f"--noise must be >= 0, got {args.noise}")
    if args.severities is not None and args.corruptions is None:
        raise SpikeformerError("--severities needs --corruptions")
    if args.draws != 1 and args.corruptions is None:
        raise SpikeformerError("--draws needs --corruptions")
    if args.draws < 1:
        raise SpikeformerError(f"--draws must be >= 1, got {args.draws}")
    if args.samples is not None:
        if args.corruptions is None:
            raise SpikeformerError("--samples needs --corruptions")
        if args.samples < 1:
            raise SpikeformerError(f"--samples must be >= 1, got {args.samples}")
    if args.robustness_out is not None:
        if args.corruptions is None:
            raise SpikeformerError("--robustness-out needs --corruptions")
        if not args.robustness_out.endswith(".json") or Path(args.robustness_out).is_dir():
            raise SpikeformerError(f"--robustness-out must name a .json file, got {args.robustness_out!r}")
    if args.corruptions is not None:  # check the selection before any work
        names, severities = parse_selection(cfg.task, args.corruptions, args.severities)
        if not names:
            raise SpikeformerError(f"task {cfg.task!r} has no corruptions")
    gen = torch.Generator().manual_seed(cfg.seed)
    result = evaluate(model, split.x_test, split.y_test, device=device, noise=args.noise, generator=gen)
    record = {"run": str(args.run), "epoch": meta["epoch"], "noise": args.noise,
              "test_accuracy": result["accuracy"], "test_loss": result["loss"], "samples": len(split.x_test),
              **measure(model, split, device, cfg)}  # energy and the per-layer efficiency, clean inputs
    atomic_write_json(Path(args.run) / "eval.json", record)
    print(f"{cfg.task}/{cfg.model}: test accuracy {result['accuracy']:.4f} on {len(split.x_test)} samples"
          + (f" (noise sigma {args.noise})" if args.noise else ""))
    if args.corruptions is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names) * len(severities), desc="robustness", unit="eval", disable=args.quiet)
        robust = write_robustness(args.run, model, split, cfg, device, names, severities,
                                  log=lambda line: bar.update(1), draws=args.draws, out=args.robustness_out,
                                  samples=args.samples)
        bar.close()
        out = Path(args.robustness_out or Path(args.run) / "robustness.json")
        mean = robust["mean_corruption_accuracy"]
        print(f"clean {robust['clean_accuracy']:.4f} on {robust['samples']} samples, mean over corruptions "
              f"{'n/a' if mean is None else f'{mean:.4f}'} -> {out}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .config import load_config
    from .study import QUICK_SEEDS, QUICK_SIZES, parse_rules, parse_sizes, quick_config, study

    args.rule, args.seed = None, None  # set per cell
    cfg = load_config(args.config, _overrides(args))
    if args.quick:
        cfg = quick_config(cfg)
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else 5)
    sizes = parse_sizes(args.train_sizes) if args.train_sizes else (QUICK_SIZES if args.quick else (100, 300, 1000, 0))
    study(cfg, parse_rules(args.rules), seeds, sizes, args.out, workers=args.workers, progress=not args.quiet)
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    from .config import load_config
    from .why import markdown_table, parse_rows, why

    args.rule = None
    rows = parse_rows(args.rows)
    cfg = load_config(args.config, _overrides(args))
    cortical = load_config(args.cortical, _overrides(args)) if args.cortical else None
    record = why(cfg, args.out, rows, cortical, workers=args.workers, progress=not args.quiet, samples=args.samples)
    print(markdown_table(record), end="")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate, load_language_model

    cfg, model, vocabulary = load_language_model(args.run)
    characters = generate(model, cfg, vocabulary, args.prompt, args.chars, args.temperature, args.seed)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    for char in characters:
        sys.stdout.write(char)
        sys.stdout.flush()  # stream: each character as soon as it is drawn
    sys.stdout.write("\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.run)
    print(f"report written to {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, markdown_table

    rows, path = compare(args.runs, args.out)
    print(markdown_table(rows), end="")
    print(f"compare written to {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import check_device, check_out, format_table, run_bench, summary_line, write_outputs

    check_out(args.out)
    check_device(args.device)
    sizes = args.sizes or ("quick" if args.quick else "full")
    result = run_bench(sizes=sizes, repeats=args.repeats, device=args.device, only=args.only,
                       progress=not args.quiet)
    json_path, md_path, png_path = write_outputs(result, args.out)
    print(format_table(result))
    print(f"table {md_path}, plot {png_path}")
    print(summary_line(result, json_path))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        handlers = {"train": cmd_train, "eval": cmd_eval, "report": cmd_report, "study": cmd_study,
                    "bench": cmd_bench, "generate": cmd_generate, "compare": cmd_compare, "why": cmd_why}
        handlers.update({name: handler for name, (_, _, handler) in _plugins().items()})
        return handlers[args.command](args)
    except SpikeformerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch is saved (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
