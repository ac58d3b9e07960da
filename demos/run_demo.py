"""`make demo`: train the digits model, write its report, print accuracy and energy.

Usage: python demos/run_demo.py [--run runs/digits] [--config demos/digits.toml]
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
    parser.add_argument("--run", default="runs/digits")
    parser.add_argument("--config", default=str(Path(__file__).with_name("digits.toml")))
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
    except SpikeformerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"digits demo: test accuracy {metrics['test_accuracy']:.4f} on 450 held-out digits; "
          f"{metrics['synops_per_sample']:.0f} synaptic ops and "
          f"{metrics['energy_pj_per_sample'] / 1e6:.3f} uJ per sample ({metrics['energy_note']}); "
          f"report: {report}; {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
