"""``spikeformer train`` under torchrun where rank 1 cannot load the data (as on a machine
without the data package): ``python distributed_no_data.py CONFIG OUT``. Every rank must stop
with one ``error:`` line (test_distributed.py)."""

from __future__ import annotations

import os
import sys

from spikeformer import train as training
from spikeformer.cli import main
from spikeformer.errors import ConfigError

if __name__ == "__main__":
    real = training.load_task

    def load_task(cfg):
        if os.environ.get("RANK") == "1":
            raise ConfigError("task 'digits' needs scikit-learn's digits data, which is not installed on this rank")
        return real(cfg)

    training.load_task = load_task
    sys.exit(main(["train", "--config", sys.argv[1], "--out", sys.argv[2], "--quiet"]))
