"""`make demo`: train the digits demo model (Loihi timing, conv stem, cortical attention), write
its report, then run it on neuromorphic backends: Lava bit-accurate fixed point (50 test
samples, against the integer reference) and the exact Brian2 rebuild (20 test samples, against
torch).

Usage: python demos/run_demo.py [--run runs/digits-cortical] [--config demos/digits-cortical.toml]
       [--lava-samples 50] [--brian2-samples 20]
A finished run in --run is reused (delete the folder to retrain); an unfinished one resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from spikeformer.config import load_config
from spikeformer.errors import SpikeformerError
from spikeformer.report import write_report
from spikeformer.train import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/digits-cortical")
    parser.add_argument("--config", default=str(Path(__file__).with_name("digits-cortical.toml")))
    parser.add_argument("--lava-samples", type=int, default=50, help="test samples on Lava fixed point (0: skip)")
    parser.add_argument("--brian2-samples", type=int, default=20, help="test samples on Brian2 (0: skip)")
    args = parser.parse_args()
    run = Path(args.run)
    start = time.perf_counter()
    try:
        cfg = load_config(args.config)
        metrics_path = run / "metrics.json"
        if metrics_path.is_file() and json.loads(metrics_path.read_text()).get("config") == cfg.to_dict():
            print(f"reusing the finished run in {run} (delete it to retrain)")
            metrics = json.loads(metrics_path.read_text())
        else:
            metrics = train(cfg, run, resume=(run / "checkpoint.json").is_file())
        report = write_report(run)
        print(f"digits demo: test accuracy {metrics['test_accuracy']:.4f} on 450 held-out digits; "
              f"{metrics['attention_params']:,} learnable attention parameters; "
              f"{metrics['synops_per_sample']:.0f} synaptic ops and "
              f"{metrics['energy_pj_per_sample'] / 1e6:.3f} uJ per sample ({metrics['energy_note']}); "
              f"report: {report}")
        if cfg.dense_delay:
            backends(run, args.lava_samples, args.brian2_samples)
    except SpikeformerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def backends(run: Path, lava_samples: int, brian2_samples: int) -> None:
    """Export the model and run it on the neuromorphic backends (issues #4 and #5)."""
    from neuromorphic.validate import export, validate

    summary = export(run, "lava", run / "lava-fixed", fixed_point=True)
    print(f"exported to Lava fixed point: {summary['neurons']} neurons, {summary['synapses']} synapses, "
          f"{summary['lava_processes']} Lava processes -> {run / 'lava-fixed'}")
    if lava_samples:
        r = validate(run, "lava-fixed", lava_samples, log=lambda _: None)
        print(f"Lava fixed point, {r['samples']} test samples: spike agreement with the integer reference "
              f"{r['spike_agreement']:.6f}, class agreement {r['class_agreement']:.4f}; accuracy "
              f"{r['accuracy_backend']:.4f} (float torch {r['accuracy_torch']:.4f}); "
              f"{r['steps_per_second']:.0f} Lava steps/s, the integer reference "
              f"{r['fixed_ref_speedup']:.0f}x faster")
    if brian2_samples:
        r = validate(run, "brian2", brian2_samples, log=lambda _: None)
        print(f"Brian2 exact rebuild, {r['samples']} test samples: spike agreement with torch "
              f"{r['spike_agreement']:.6f}, class agreement {r['class_agreement']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
