"""Widths and literals of Lava's fixed-point learning engine (lava-nc 0.10.0,
``magma/core/learning/constants.py``) shared by ``fixed_learning`` and ``fixed_three_factor``."""

from __future__ import annotations

import math

from rules.base import decay

TRACE_BITS = 7
TRACE_MAX = 2 ** TRACE_BITS - 1
TAG_1_BITS = 8  # W_TAG_1_U: the tag t (a three-factor eligibility) lies in [-2^8 - 1, 2^8 - 1] (conn:1155-1166)
TAG_1_MIN, TAG_1_MAX = -(2 ** TAG_1_BITS) - 1, 2 ** TAG_1_BITS - 1


def literal(mantissa: int, exponent: int) -> str:
    """``m 2^e`` as Lava's rule grammar writes it."""
    if exponent == 0:
        return str(mantissa)
    return f"2^{exponent}" if mantissa == 1 else f"{mantissa}*2^{exponent}"


def max_impulse(tau: float) -> int:
    """The largest integer impulse whose trace stays inside 7 bits even when the neuron spikes
    every step (steady state ``I / (1 - exp(-1/tau))`` <= 127), at least 1."""
    return max(1, int(math.floor(TRACE_MAX * (1.0 - decay(tau)))))
