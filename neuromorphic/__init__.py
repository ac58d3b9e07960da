"""Model IR and neuromorphic backends for spikeformer models (SPEC §1, docs/backends.md).

``lower`` turns a trained torch model into the IR (``ir``); ``simulate`` and ``fixed_ref`` are
its float and integer numpy references; ``quantize`` makes the fixed-point IR; ``lava`` runs it
as Lava processes, ``brian2_ref`` as a Brian2 network, ``nir_io`` moves it to and from NIR;
``validate`` scores a backend against torch. Imports only from ``spikeformer``; importing this
package never imports Lava.
"""
