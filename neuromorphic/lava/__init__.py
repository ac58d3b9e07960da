"""Lava backend: IR graphs as Lava processes (stock ``LIFReset`` and ``RingBuffer``, the project's
``Synapses``, ``SpikingAttention``, ``ReadoutLIF`` and ``SpikeRecorder``), in floating point or
bit-accurate fixed point (``run.py`` says why so few processes).

lava-nc 0.10.0 imports only on CPython 3.10; ``require_lava()`` says so in one line on any other
Python, and nothing else in spikeformer needs Lava. Process models live in their own packages
(``neuromorphic.lava.attention``) because Lava imports every module beside a Process to find
its models; this file and ``run.py`` stay outside that folder.
"""

from __future__ import annotations

import sys

from spikeformer.errors import SpikeformerError

NEEDED_PYTHON = (3, 10)


class LavaUnavailable(SpikeformerError, RuntimeError):
    """Lava cannot be imported on this interpreter."""


def require_lava() -> None:
    """Raise ``LavaUnavailable`` with one line unless lava-nc imports here."""
    if sys.version_info[:2] != NEEDED_PYTHON:
        raise LavaUnavailable(
            f"the Lava backend needs CPython {NEEDED_PYTHON[0]}.{NEEDED_PYTHON[1]} (lava-nc 0.10.0 imports only "
            f"there); this is Python {sys.version_info[0]}.{sys.version_info[1]}: use the project's .venv "
            "(make setup)")
    try:
        _import_lava_runtime()
    except ImportError as exc:
        raise LavaUnavailable(f"lava-nc is not installed or broken ({exc}); install it with "
                              "pip install -e '.[lava]' on Python 3.10") from None


def _import_lava_runtime() -> None:
    """Import Lava's runtime, which calls ``multiprocessing.set_start_method('fork')`` at import.

    That call fails once anything in the process has used the default context (a tqdm
    progress bar makes a multiprocessing lock, for one). When the context is already 'fork'
    the call changes nothing, so it is repeated with ``force=True`` for the import only.
    """
    import multiprocessing

    current = multiprocessing.get_start_method(allow_none=True)
    if current not in (None, "fork"):
        raise LavaUnavailable(f"Lava needs the 'fork' multiprocessing start method, but this process already "
                              f"uses {current!r}; run the Lava backend in a fresh process")
    original = multiprocessing.set_start_method
    if current is not None:
        multiprocessing.set_start_method = lambda method, force=False: original(method, force=True)
    try:
        import lava.magma.core.run_configs  # noqa: F401
        import lava.magma.runtime.runtime  # noqa: F401  (the module that sets the start method)
    finally:
        multiprocessing.set_start_method = original
