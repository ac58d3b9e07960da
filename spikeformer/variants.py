"""The table of attention plasticity variants (SPEC §2.3): one entry per variant, read by the
config, the torch attention and model, the quantiser, the Lava process and the Brian2 builder.

Each variant names the per-head parameters of its state update. A parameter's ``kind`` says
how it is learnt, checked and put on the fixed-point grid:

    amplitude  >= 0, learnt through abs           fixed point: a 12-bit fraction (rate12)
    decay      in (0, 1), learnt through sigmoid  fixed point: a 12-bit decrement (decrement12)
    rate       in (0, 1), learnt through sigmoid  fixed point: a 12-bit fraction (rate12)

The parameter names are also the config keys that give their initial values and the keys of
``spiking_attention``'s ``plasticity`` dict and of the IR's ``Attention.plasticity``.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("amplitude", "decay", "rate")


@dataclass(frozen=True)
class Parameter:
    """One per-head parameter of a variant's update."""

    name: str
    kind: str
    default: float
    doc: str


@dataclass(frozen=True)
class Variant:
    """A plasticity variant: its update (for docs), parameters, extra state and modulator."""

    name: str
    update: str
    parameters: tuple[Parameter, ...] = ()
    traces: bool = False  # pre/post traces per token (stdp)
    eligibility: bool = False  # an eligibility matrix per head (three_factor)
    modulated: bool = False  # needs a modulator m[t] per head (three_factor)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("hebbian", "dS = sum_n k_n^T v_n"),
    Variant("stdp", "x_n = d_pre x_n + k_n;  y_n = d_post y_n;  dS = A+ sum_n x_n^T v_n - A- sum_n k_n^T y_n;  y_n = y_n + v_n",
            (Parameter("a_plus", "amplitude", 1.0, "stdp potentiation amplitude A+ (initial, learnable)"),
             Parameter("a_minus", "amplitude", 0.5, "stdp depression amplitude A- (initial, learnable)"),
             Parameter("pre_decay", "decay", 0.5, "stdp pre-trace decay d_pre"),
             Parameter("post_decay", "decay", 0.5, "stdp post-trace decay d_post")),
            traces=True),
    Variant("three_factor", "e = d_elig e + sum_n k_n^T v_n;  dS = m[t] e",
            (Parameter("eligibility_decay", "decay", 0.5, "three_factor eligibility decay d_elig"),),
            eligibility=True, modulated=True),
    Variant("delta", "dS = beta sum_n k_n^T (v_n - k_n (lambda S)) / max(1, |k_n|)",
            (Parameter("delta_rate", "rate", 0.5, "delta learning rate beta (initial, learnable, in (0, 1))"),)),
)}

PARAMETERS: dict[str, Parameter] = {p.name: p for v in VARIANTS.values() for p in v.parameters}


def variant(name: str) -> Variant:
    """The table entry of ``name``; ValueError (one line) for an unknown variant."""
    if name not in VARIANTS:
        raise ValueError(f"unknown attention variant {name!r}; choose one of {list(VARIANTS)}")
    return VARIANTS[name]


def variants_markdown() -> str:
    """The table as Markdown, pasted into docs/equations.md (tests/test_docs.py keeps them equal)."""
    rows = ["| variant | update dS | parameters (kind, config default) |", "|---|---|---|"]
    for v in VARIANTS.values():
        params = ", ".join(f"`{p.name}` ({p.kind}, {p.default})" for p in v.parameters) or "none"
        rows.append(f"| `{v.name}` | `{v.update}` | {params} |")
    return "\n".join(rows)
