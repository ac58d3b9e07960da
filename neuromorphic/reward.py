"""The third factor of on-chip three_factor learning: the output error, sent back per neuron.

After each sample, once its logits are known, every three_factor connection receives

    m = (onehot(label) - softmax(logits)) @ B          m: [target size]

(label minus prediction: the reward that says which classes to strengthen). ``B [C, target size]``
is the identity for the readout (the delta rule) and the run's fixed random feedback matrix,
tiled over tokens, for a hidden layer (as ``rules.driver`` trains it). One definition, shared by
the float reference (``simulate.learn_online``), the Lava process that computes it next to the
learning engine (``neuromorphic.lava.plasticity``) and the Brian2 network.
"""

from __future__ import annotations

import numpy as np


def output_error(logits: np.ndarray, label: int) -> np.ndarray:
    """``onehot(label) - softmax(logits)`` for one sample: ``logits [C]`` -> ``[C]`` (float64)."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max())
    p = p / p.sum()
    target = np.zeros_like(p)
    target[int(label)] = 1.0
    return target - p


def modulator(logits: np.ndarray, label: int, feedback: np.ndarray) -> np.ndarray:
    """The third factor per target neuron ``[target size]`` through ``feedback [C, target size]``."""
    return output_error(logits, label) @ np.asarray(feedback, np.float64)
