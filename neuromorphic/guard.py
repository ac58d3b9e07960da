"""The guard steps that separate samples run back to back in one network (docs/backends.md).

Lava's network (``neuromorphic.lava.run``) follows each sample with ``GUARD_STEPS`` steps: in
the first a guard neuron fires, in the second its synapses (weight ``GUARD_MANTISSA << GUARD_EXP``
in fixed point, Dense arithmetic) hold every LIF below threshold. The learning references (``simulate.
learn_online``, ``fixed_ref.learn_online_fixed``) and Brian2's learning network step the same
guard, so the constants live here, beside none of them (no backend imports another for them).
"""

from __future__ import annotations

from spikeformer.fixed_point import MANTISSA_MIN

GUARD_STEPS = 2
GUARD_MANTISSA, GUARD_EXP = MANTISSA_MIN, 8  # fixed point: the guard weight -256 << 8
GUARD_A_IN = -GUARD_MANTISSA << GUARD_EXP  # 2^16: (a_in << 6) stays inside Lava's 24-bit u


def guard_steps(max_delay: int) -> int:
    """Guard steps after each sample of a graph whose longest connection delays ``max_delay``
    steps: the guard neuron fires in all but the last, so every LIF is held from the second guard
    step on, and a spike of the last free step lands (``max_delay`` later) before the next sample."""
    return max(GUARD_STEPS, max_delay + 1)
