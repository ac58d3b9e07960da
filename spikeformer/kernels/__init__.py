"""Compiled CPU kernels, built once with the system C compiler and loaded with ctypes.

Why not a torch C++ extension: the kernels touch only raw contiguous buffers, so plain C with
OpenMP is enough. It builds in about a second with no torch headers and no ninja, and the
library is cached per user (``$XDG_CACHE_HOME/spikeformer/kernels``), keyed by a hash of its
source and flags. ``make setup`` builds it (``python -m spikeformer.kernels``). Without a
compiler, or with ``SPIKEFORMER_KERNELS=off``, callers fall back to their torch code, which
computes the same values.

``-ffp-contract=off`` keeps the compiler from fusing a multiply and an add into one FMA: each
operation rounds exactly as torch's eager elementwise ops do, so results are bit-identical.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

SOURCES = Path(__file__).parent
# -march=native: the library is built on the machine that runs it (and keyed by its CPU below)
FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared", "-std=c99"]
KERNELS = ("lif", "attention_event", "attention_train")  # spikeformer/kernels/<name>.c


def cache_dir() -> Path:
    """Where built libraries live: ``$XDG_CACHE_HOME/spikeformer/kernels`` (default ~/.cache)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "spikeformer" / "kernels"


def enabled() -> bool:
    """False when ``SPIKEFORMER_KERNELS=off`` (force the torch fallbacks)."""
    return os.environ.get("SPIKEFORMER_KERNELS", "on").lower() not in ("off", "0", "no", "false")


def _cpu_features() -> bytes:
    """The CPU's feature flags (Linux), so that a cache shared between machines never hands a
    -march=native library to a CPU without those instructions."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine().encode()
    flags = [line for line in text.splitlines() if line.startswith(("flags", "Features"))]
    return (flags[0] if flags else platform.machine()).encode()


def library_path(name: str) -> Path:
    """The cached library of kernel ``name``: its file name carries a hash of source, flags and
    the CPU's features."""
    source = (SOURCES / f"{name}.c").read_bytes()
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + sys.platform.encode() + _cpu_features()).hexdigest()[:16]
    return cache_dir() / f"{name}-{key}.so"


def build(name: str) -> Path:
    """Compile kernel ``name`` into the cache (atomically: a temp file, then a rename) and return
    its path; a no-op when it is there. Raises RuntimeError with the compiler's message."""
    target = library_path(name)
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, str(SOURCES / f"{name}.c"), "-o", tmp, "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building kernel {name!r} failed: {' '.join(cmd)}\n{done.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@lru_cache(maxsize=None)
def load(name: str) -> Optional[ctypes.CDLL]:
    """The loaded library of kernel ``name``, building it on first use; None (with one warning)
    when kernels are disabled or cannot be built, so callers use their torch code."""
    if not enabled():
        return None
    try:
        return ctypes.CDLL(str(build(name)))
    except (OSError, RuntimeError) as err:
        warnings.warn(f"spikeformer: compiled kernel {name!r} unavailable, using the torch fallback ({err})",
                      RuntimeWarning, stacklevel=2)
        return None


def for_tensor(name: str, x: "torch.Tensor") -> Optional[ctypes.CDLL]:
    """Kernel ``name`` when it can run on ``x`` (a float32 or float64 CPU tensor), else None: the
    caller then uses its torch code."""
    import torch

    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    return load(name)


def function(lib: ctypes.CDLL, name: str, x: "torch.Tensor") -> ctypes._CFuncPtr:
    """The entry point ``<name>_f32`` or ``<name>_f64`` of ``lib`` for ``x``'s dtype."""
    import torch

    return getattr(lib, f"{name}_{'f32' if x.dtype == torch.float32 else 'f64'}")


def pointer(x: Optional["torch.Tensor"]) -> Optional[ctypes.c_void_p]:
    """A C pointer to a contiguous tensor's buffer (None stays NULL). The caller must keep ``x``
    referenced until the C call returns: a temporary (``t.contiguous()`` in the argument list)
    would be freed before it."""
    if x is None:
        return None
    if not x.is_contiguous():
        raise ValueError("internal: a compiled kernel needs contiguous buffers")
    return ctypes.c_void_p(x.data_ptr())


def main() -> int:
    """``python -m spikeformer.kernels``: build every kernel now (``make setup`` calls this)."""
    for name in KERNELS:
        print(f"spikeformer kernel {name}: {build(name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
