"""Local learning rules for spikeformer models: pure update functions with explicit traces.

Each rule module offers parameters (a frozen dataclass, checked when built), traces (a
NamedTuple) and one step ``update(pre, post, traces, params, modulator=None) -> (dw, traces)``
(../shared/STYLE.md rule 6: rules never touch ``.grad`` or an optimizer; a driver applies dw).
Weights use torch's ``nn.Linear`` layout ``[J, I]`` (post x pre). The equations are in
docs/rules.md; the STDP and eligibility steps are ``spikeformer.plasticity``'s, shared with the
attention's fast weights. Imports only from ``spikeformer`` (SPEC §3).

    stdp          pair-based trace STDP, additive or multiplicative (soft bounds)
    three_factor  STDP eligibility x a modulator (reward, error, or a random-feedback error)
    eprop         e-prop: filtered pre spikes x the surrogate's pseudo-derivative x a learning signal
    perturbation  node and weight perturbation (antithetic), derivative-free
"""

from .base import RULES, RuleError

__all__ = ["RULES", "RuleError"]
