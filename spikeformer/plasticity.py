"""Trace plasticity kernels shared by the attention's fast weights and the weight rules (SPEC §2.3, §2.5).

One pair-based STDP step and one eligibility step, pure functions with explicit state. The
attention's ``stdp`` and ``three_factor`` variants (``spikeformer/attention.py``) and the local
rules in ``rules/`` call these; nobody restates them.

Per step t, with pre spikes ``s_pre[t]`` and post spikes ``s_post[t]``:

    x_pre  = d_pre  * x_pre  + s_pre                          # pre trace, this step's spike included
    y_post = d_post * y_post                                  # post trace decayed to step t ...
    dw     = A+ * outer(x_pre, s_post) - A- * outer(s_pre, y_post)
    y_post = y_post + s_post                                  # ... and this step's spike added after use

so the depression term sees only earlier post spikes: a simultaneous pair potentiates only. Both
traces are read at step t, as Brian2's event-driven STDP reads its exponentially decaying
``Apre``/``Apost`` (decay, then the ``on_pre`` pathway, then ``on_post``): a pre spike Delta
steps after a post spike depresses by A- d_post^Delta, a post spike Delta steps after a pre
spike potentiates by A+ d_pre^Delta.

    e      = d_e * e + increment                              # eligibility (three-factor rules)

``outer(a, b)`` contracts the sample axes of a pre-side tensor ``a [..., I]`` and a post-side
tensor ``b [..., J]`` into a synapse-shaped tensor; the caller chooses it (the attention sums
over tokens per batch and head, a weight rule over batch and tokens). Decays broadcast against
the traces, amplitudes against ``outer``'s result. Time is in steps; everything is dimensionless.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from torch import Tensor

Outer = Callable[[Tensor, Tensor], Tensor]


class Traces(NamedTuple):
    """Pre and post spike traces after step t (shapes of the pre and post spikes)."""

    pre: Tensor  # x_pre
    post: Tensor  # y_post


def stdp_step(pre: Tensor, post: Tensor, traces: Traces, a_plus: Tensor | float, a_minus: Tensor | float,
              pre_decay: Tensor | float, post_decay: Tensor | float, outer: Outer) -> tuple[Tensor, Traces]:
    """One pair-based STDP step: ``(s_pre[t], s_post[t], traces[t-1]) -> (dw[t], traces[t])``.

    ``pre [..., I]``, ``post [..., J]`` spikes (or any real activity); ``traces`` shaped like them.
    Returns ``dw = A+ outer(x_pre[t], s_post[t]) - A- outer(s_pre[t], d_post y_post[t-1])`` and the
    new traces.
    """
    x = pre_decay * traces.pre + pre
    y = post_decay * traces.post
    dw = a_plus * outer(x, post) - a_minus * outer(pre, y)
    return dw, Traces(x, y + post)


def eligibility_step(eligibility: Tensor, increment: Tensor, decay: Tensor | float) -> Tensor:
    """``e[t] = d_e * e[t-1] + increment[t]``: a leaky memory of candidate weight changes."""
    return decay * eligibility + increment
