"""Spiking attention (SPEC §2.3) as a custom Lava Process: ``process.py`` says what (ports,
state Vars), ``models.py`` says how (``floating_pt`` and ``fixed_pt`` ProcessModels).

This package holds nothing else: Lava imports every module beside a Process to find its
models, so these modules do no work at import.
"""
