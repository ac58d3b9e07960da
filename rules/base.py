"""What every rule shares: the list of rules, one-line errors, parameter checks, the weight-layout
outer product and the modulator contraction."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from spikeformer.config import CHOICES
from spikeformer.errors import ConfigError, ShapeError

# train --rule choices (the config's list): bptt (surrogate gradients) and the local rules;
# readout_only is the control (hidden weights frozen at initialisation, only the readout learns)
RULES: tuple[str, ...] = CHOICES["rule"]
LOCAL_RULES = tuple(r for r in RULES if r != "bptt")


class RuleError(ConfigError):
    """A rule was given bad parameters, a bad modulator, or a layer it cannot reach."""


def check_rule(name: str) -> str:
    """``name`` if it is a known rule; RuleError (one line) otherwise."""
    if name not in RULES:
        raise RuleError(f"unknown learning rule {name!r}; choose one of {', '.join(RULES)}")
    return name


def check_positive(rule: str, **values: float) -> None:
    """RuleError unless every value is a finite number > 0 (time constants, learning rates)."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise RuleError(f"{rule}: {key} must be a finite number > 0, got {value!r}")


def check_non_negative(rule: str, **values: float) -> None:
    """RuleError unless every value is a finite number >= 0 (amplitudes)."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise RuleError(f"{rule}: {key} must be a finite number >= 0, got {value!r}")


def decay(tau: float) -> float:
    """Per-step decay ``exp(-1 / tau)`` of a trace with time constant ``tau`` (steps)."""
    return math.exp(-1.0 / tau)


def weight_outer(pre: Tensor, post: Tensor) -> Tensor:
    """``sum over samples of post_j pre_i``: ``pre [..., I]``, ``post [..., J]`` -> ``[J, I]``
    (nn.Linear's weight layout; the leading axes, e.g. batch and tokens, are summed)."""
    return post.reshape(-1, post.shape[-1]).transpose(0, 1) @ pre.reshape(-1, pre.shape[-1])


def sample_outer(pre: Tensor, post: Tensor) -> Tensor:
    """Per-sample outer product: ``pre [B, ..., I]``, ``post [B, ..., J]`` -> ``[B, J, I]``
    (axes between the batch and the features, e.g. tokens, are summed)."""
    b = pre.shape[0]
    return torch.bmm(post.reshape(b, -1, post.shape[-1]).transpose(1, 2), pre.reshape(b, -1, pre.shape[-1]))


def modulate(eligibility: Tensor, modulator: Tensor, rule: str) -> Tensor:
    """``sum_b m[b] e[b]``: per-sample eligibility ``[B, J, I]`` and a modulator ``[B]`` (one
    reward or error per sample) or ``[B, J]`` (one per post neuron) -> ``[J, I]``."""
    b, j, _ = eligibility.shape
    if modulator.shape == (b,):
        return torch.einsum("b,bji->ji", modulator.to(eligibility.dtype), eligibility)
    if modulator.shape == (b, j):
        return torch.einsum("bj,bji->ji", modulator.to(eligibility.dtype), eligibility)
    raise ShapeError(f"{rule}: modulator must be [B] = [{b}] or [B, J] = [{b}, {j}], got {tuple(modulator.shape)}")


def over_steps(update: Callable[..., Any], pre: Tensor, post: Tensor, params: Any,
               modulator_at: Callable[[int], Optional[Tensor]] = lambda t: None) -> Tensor:
    """Feed a rule's ``update`` the steps of ``pre [T, ...]`` and ``post [T, ...]`` (its traces
    carried over, ``modulator_at(t)`` as the modulator); returns the summed ``dw [J, I]``."""
    traces, total = None, 0.0
    for t in range(pre.shape[0]):
        dw, traces = update(pre[t], post[t], traces, params, modulator_at(t))
        total = total + dw
    return total
