"""``Trace``: what a run of an IR graph produced, the one result type every backend returns.

It lives apart from the simulator so a backend (Lava, Brian2, Norse, the integer reference)
can return one without importing ``neuromorphic.simulate``; ``neuromorphic.simulate.Trace``
stays as a re-export.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Trace:
    """What a run produced: spikes per population ``[T, B, N, F]`` (bool) and the readout ``[T, B, C]``."""

    spikes: dict[str, np.ndarray]
    readout: np.ndarray
    window: int
    saturation_events: int = 0

    @property
    def logits(self) -> np.ndarray:
        """``[B, C]``: the readout averaged over the last ``window`` steps (the torch model's logits)."""
        return self.readout[-self.window:].mean(0)
