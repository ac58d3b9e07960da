"""The fixed-point arithmetic of SPEC §2.4 in one place: every constant and rounding rule.

These are the integer equations of Lava's bit-accurate models (``PyLifModelBitAcc``,
``PyDenseModelBitAcc``, lava-nc 0.10.0), used by the export (``neuromorphic.quantize``), the
integer reference (``neuromorphic.fixed_ref``), the Lava processes and quantisation-aware
training (``spikeformer.qat``). It lives in ``spikeformer`` because qat needs it and
``spikeformer`` never imports ``neuromorphic``.

    decay12(x, d)  = sign(x (4096 - d)) * (|x (4096 - d)| >> 12)     Lava's sign-magnitude decay
    mul12(x, r)    = sign(x r) * (|x r| >> 12)                        x times the fraction r / 4096
    shift(x, e)    = x << e, or x >> -e (floor) for e < 0             Dense's weight_exp, bias_exp
    weights        w = mantissa << weight_exp, even mantissas in [-256, 254]
    LIF            u = decay12(u, du + 1) + (a_in << 6);  v = decay12(v, dv) + u + (bias_mant << bias_exp)
                   s = v > (vth << 6)

The weight grid and the 12-bit fractions are written once for numpy arrays and torch tensors
alike (only operators both share), so qat trains on exactly the grid the export writes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DECAY_SHIFT = 12  # decays and rates are 12-bit fractions of 4096
DECAY_UNITY = 2 ** DECAY_SHIFT
CURRENT_DECAY_OFFSET = 1  # Lava decays u by du + 1 (ds_offset): du = 4095 keeps nothing
ACT_SHIFT = 6  # a_in << 6 and vth << 6 in PyLifModelBitAcc
UV_BITS = 24  # u and v are 24-bit; v saturates at +-(2^23 - 1), u wraps
VTH_MAX = 2 ** 17 - 1  # vth is 17 bits
MANTISSA_MAX, MANTISSA_MIN = 254, -256  # even mantissas: Lava drops the LSB of mixed-sign 8-bit weights
WEIGHT_BITS = 8
BIAS_MANT_MAX = 2 ** 12 - 1  # bias_mant is 13-bit signed
BIAS_EXP_MAX = 7  # bias_exp 0..7 (3 bits)
INPUT_MAX = 127  # graded input messages: 8 signed bits
INPUT_MESSAGE_BITS = 8
WIRE_MAX = 2 ** 31 - 1  # a graded int32 message on a Lava channel


# ---------------------------------------------------------------------------------------------
# decays and rates (12-bit fractions)


def decrement12(keep: float) -> int:
    """A decay factor in [0, 1] as Lava's 12-bit decrement ``round((1 - keep) 4096)``, in 0..4096."""
    return int(min(max(round((1.0 - float(keep)) * DECAY_UNITY), 0), DECAY_UNITY))


def current_decrement(alpha: float) -> int:
    """Lava's ``du`` for a current that keeps ``alpha`` per step: ``decrement12(alpha) - 1``
    (Lava decays u by ``du + 1``); -1 when alpha has no 12-bit form (above 4095.5 / 4096)."""
    return decrement12(alpha) - CURRENT_DECAY_OFFSET


def rate12(rate: float) -> int:
    """A non-negative rate as a 12-bit fraction ``round(rate 4096)``."""
    return int(round(float(rate) * DECAY_UNITY))


def fraction12(value: Any) -> Any:
    """A decay or rate on the 12-bit grid, ``round(value 4096) / 4096`` (numpy or torch)."""
    return (value * DECAY_UNITY).round() / DECAY_UNITY


def decay12(x: np.ndarray, decrement: np.ndarray | int) -> np.ndarray:
    """Lava's decay ``sign(x (4096 - d)) * (|x (4096 - d)| >> 12)`` in int64."""
    prod = np.asarray(x, np.int64) * (DECAY_UNITY - np.asarray(decrement, np.int64))
    return np.sign(prod) * (np.abs(prod) >> DECAY_SHIFT)


def mul12(x: np.ndarray, rate: np.ndarray | int) -> np.ndarray:
    """``x * rate / 4096`` rounded toward zero (sign-magnitude, as Lava's decays), int64."""
    prod = np.asarray(x, np.int64) * np.asarray(rate, np.int64)
    return np.sign(prod) * (np.abs(prod) >> DECAY_SHIFT)


def shift(x: np.ndarray, exp: int) -> np.ndarray:
    """``x << exp`` for exp >= 0, arithmetic ``x >> -exp`` (floor) otherwise (Lava's Dense)."""
    x = np.asarray(x, np.int64)
    return np.left_shift(x, exp) if exp >= 0 else np.right_shift(x, -exp)


def shift_array(mantissa: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """``mantissa << exp`` elementwise, ``>> -exp`` where exp < 0 (Lava's ``scale_bias``)."""
    mant, exp = np.asarray(mantissa, np.int64), np.asarray(exp, np.int64)
    return np.where(exp >= 0, np.left_shift(mant, np.maximum(exp, 0)), np.right_shift(mant, np.maximum(-exp, 0)))


# ---------------------------------------------------------------------------------------------
# the weight grid


def weight_grid(peak: float) -> int:
    """The first exponent to try for a connection whose largest |w| is ``peak`` (a_in units)."""
    return math.ceil(math.log2(peak / MANTISSA_MAX))


def grid_weights(weight: Any) -> tuple[Any, int]:
    """Weights (a_in units, numpy or torch, no gradient) -> ``(mantissa, weight_exp)`` with
    ``mantissa = 2 round(w / 2^(e+1))`` even in [-256, 254] and the smallest exponent that fits
    (most precision); ``mantissa * 2^e`` approximates ``weight``. Mantissas keep the input's
    float type. Lava's ``clip_weights`` and ``truncate_weights`` leave them unchanged (tested)."""
    peak = float(abs(weight).max()) if math.prod(weight.shape) else 0.0
    if peak == 0.0:
        return weight * 0, 0
    exp = weight_grid(peak)
    while True:
        mantissa = 2 * (weight / 2.0 ** (exp + 1)).round()
        if mantissa.max() <= MANTISSA_MAX and mantissa.min() >= MANTISSA_MIN:
            return mantissa, int(exp)
        exp += 1


def bias_grid(bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer-unit bias -> (13-bit mantissa, exponent 0..7) per neuron, the smallest exponent
    that fits; raises ValueError where none does."""
    bias = np.asarray(bias, np.float64)
    exp = np.zeros(bias.shape, np.int64)
    for _ in range(BIAS_EXP_MAX + 1):  # raise the exponent only where the rounded mantissa does not fit
        exp = np.where((np.abs(np.round(bias / 2.0 ** exp)) > BIAS_MANT_MAX) & (exp < BIAS_EXP_MAX), exp + 1, exp)
    if (np.abs(np.round(bias / 2.0 ** exp)) > BIAS_MANT_MAX).any():
        raise ValueError("a bias is too large for Lava's 13-bit mantissa and 3-bit exponent")
    return np.round(bias / 2.0 ** exp).astype(np.int64), exp


def saturate(x: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """Clip ``x`` to a signed ``bits``-bit range ``+-(2^(bits-1) - 1)``; returns it and how many clipped."""
    limit = 2 ** (bits - 1) - 1
    clipped = np.clip(x, -limit, limit)
    return clipped, int((clipped != x).sum())
