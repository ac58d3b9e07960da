"""Run every backend on trained Loihi-timed runs and print the table of docs/benchmarks.md.

Usage: python demos/validate_backends.py RUN[:BACKEND,...[:SAMPLES]] ...
e.g.   python demos/validate_backends.py runs/digits-loihi:lava-float,lava-fixed:100 \\
           runs/digits-loihi:brian2,brian2-bio:20 runs/recall-loihi:lava-float,lava-fixed,brian2:50

Each item calls ``spikeformer validate RUN --backend B --samples N`` (writing
RUN/validate-B.json) and adds a row.
"""

from __future__ import annotations

import sys

from neuromorphic.validate import validate
from spikeformer.errors import SpikeformerError

HEADER = ("| run | backend | samples | reference | spike agreement | class agreement | accuracy backend "
          "| accuracy torch | steps/s | saturation | extra |\n|---|---|---|---|---|---|---|---|---|---|---|")


def row(run: str, r: dict) -> str:
    extra = []
    if "fixed_ref_speedup" in r:
        extra.append(f"fixed_ref {r['fixed_ref_speedup']:.0f}x faster than the Lava run")
        extra.append(f"fixed vs float: spikes {r['fixed_vs_float_spike_agreement']:.4f}, "
                     f"classes {r['fixed_vs_float_class_agreement']:.4f}")
    for key in ("spike_train_correlation", "spike_count_correlation", "readout_correlation"):
        if key in r:
            extra.append(f"{key.replace('_', ' ')} {r[key]:.3f}")
    for key in ("compile_seconds", "build_seconds", "run_seconds"):
        if key in r:
            extra.append(f"{key.split('_')[0]} {r[key]:.1f} s")
    reference = r.get("reference", "").split(" (")[0]
    return (f"| {run} | {r['backend']} | {r['samples']} | {reference} | {r['spike_agreement']:.6f} | "
            f"{r['class_agreement']:.4f} | {r['accuracy_backend']:.4f} | {r['accuracy_torch']:.4f} | "
            f"{r['steps_per_second']:.0f} | {r['saturation_events']} | {'; '.join(extra)} |")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    rows = []
    try:
        for item in argv:
            parts = item.split(":")
            run = parts[0]
            backends = parts[1].split(",") if len(parts) > 1 else ["lava-float", "lava-fixed"]
            samples = int(parts[2]) if len(parts) > 2 else 100
            for backend in backends:
                rows.append(row(run, validate(run, backend, samples)))
    except SpikeformerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(HEADER)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
