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
    tokens: int = 0  # a language model's characters per sample: one prediction each (0: one per sample)
    latency: int = 0  # steps from a character to its readout window (with ``tokens``)

    @property
    def logits(self) -> np.ndarray:
        """``[B, C]``: the readout averaged over the last ``window`` steps (the torch model's logits);
        with ``tokens``, ``[B, tokens, C]``: token n's window starts ``latency + n * window`` steps in."""
        if not self.tokens:
            return self.readout[-self.window:].mean(0)
        steps = self.readout[self.latency:self.latency + self.tokens * self.window]  # [N * r, B, C]
        return steps.reshape(self.tokens, self.window, *steps.shape[1:]).mean(1).transpose(1, 0, 2)
