"""Local learning rules (STDP, three-factor, e-prop-style, perturbation) for spikeformer models.

Empty for now: the rules arrive in a later issue. Imports only from ``spikeformer`` (SPEC §3).
"""
