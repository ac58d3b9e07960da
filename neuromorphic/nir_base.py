"""What the NIR modules share (``nir_export``, ``nir_import``, ``nir_norse``): the format's
constants and import bounds, the lazy ``nir`` import, parameter reading and the scalar
conversions. docs/backends.md (NIR section) and ``neuromorphic.nir_io`` describe the mapping."""

from __future__ import annotations

from typing import Any

import numpy as np

from .ir import IRError, LoweringError, Population, _validate_population

FORMAT = "spikeformer-nir"
NIR_IO_VERSION = 1
DEFAULT_DT = 1e-3  # seconds per IR step written into exported graphs (Norse's importer default)
CLOCK = "nir.clock"  # imported graphs: the always-firing population that delivers shifted biases
SNNTORCH_DT = 1e-4  # the dt snnTorch's export_to_nir / import_from_nir hard-code
# Import bounds, checked before the importer allocates (a damaged file must fail in one line,
# not in the allocator): see read_nir and nir_to_graph
MAX_FILE_VALUES = 2 ** 25  # values in all datasets of one .nir file (256 MiB as float64)
MAX_GROUP_DEPTH = 16  # HDF5 groups nested in a .nir file (nir.write uses 4)
MAX_NIR_NEURONS = 2 ** 20  # neurons (values) of one NIR node's input or output
MAX_MATRIX = 2 ** 25  # values of one dense matrix the importer builds (256 MiB as float64)
MAX_WORK = 2 ** 34  # multiply-adds of one matrix product composing linear nodes (a few seconds)


def _nir():
    try:
        import nir
    except ImportError:  # pragma: no cover - nir is a declared dependency
        raise LoweringError("the 'nir' package is needed for NIR import/export; install it with "
                            "'pip install nir'") from None
    return nir


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _arr(value: Any, name: str) -> np.ndarray:
    """NIR parameter (numpy, torch tensor or scalar) -> finite float64 array."""
    if hasattr(value, "detach"):  # Norse writes torch tensors into in-memory graphs
        value = value.detach().cpu().numpy()
    if np.iscomplexobj(value):
        raise IRError(f"NIR node {name} has a complex parameter; NIR parameters are real")
    try:
        out = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise IRError(f"NIR node {name} has a non-numeric parameter") from None
    if not np.isfinite(out).all():
        raise IRError(f"NIR node {name} has NaN or infinite parameters")
    return out


def _metadata(obj: Any) -> dict:
    meta = getattr(obj, "metadata", None)
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------------------
# scalar conversions (each one written once, used by export and import)


def decay_to_tau(decay: float, dt: float) -> float:
    """Per-step decay ``d`` (beta or alpha) -> time constant ``tau = dt / (1 - d)`` (Euler)."""
    if not 0.0 <= decay < 1.0:
        raise LoweringError(f"decay {decay} has no finite NIR time constant (needs 0 <= decay < 1)")
    return dt / (1.0 - decay)


def tau_to_decay(tau: np.ndarray, dt: float) -> np.ndarray:
    """Time constant -> per-step decay ``1 - dt / tau`` (the inverse of ``decay_to_tau``)."""
    return 1.0 - dt / np.asarray(tau, np.float64)


def image_order(meta: dict) -> np.ndarray | None:
    """The IR grid's neurons in the order of a ``[C, H, W]`` node (its metadata ``image``, written
    by ``export_nir``: ``Population.image_order``); None for a flat node."""
    if not isinstance(meta.get("image"), (list, tuple, np.ndarray)):
        return None
    try:
        population = Population("", "input", int(meta["tokens"]), int(meta["features"]),
                                image=[int(n) for n in meta["image"]])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise IRError("a NIR node's metadata 'image' needs whole-number tokens, features and [height, width, "
                      "patch]; re-export the graph") from None
    try:
        _validate_population(population, fixed=False)
    except IRError as exc:
        raise IRError(f"a NIR node's metadata does not describe an image grid: {exc}; re-export the graph") from None
    return population.image_order()


def conv2d_indices(channels: tuple[int, int], in_hw: tuple[int, int], out_hw: tuple[int, int], conv: dict
                   ) -> tuple[np.ndarray, ...]:
    """Where a 2-d convolution's kernel sits in its dense matrix ``[C_out*H'*W', C_in*H*W]`` (C
    order): ``matrix[rows, cols] = kernel[:, :, i, j]`` with ``rows [C_out, 1, P]``, ``cols
    [1, C_in, P]`` and ``i, j [P]`` over the P (output pixel, kernel tap) pairs inside the image;
    every other entry is 0. ``conv``: kernel, stride, padding as pairs; ``channels``: (C_out, C_in)."""
    (c_out, c_in), (height, width), (out_h, out_w) = channels, in_hw, out_hw
    (kh, kw), (sh, sw), (ph, pw) = conv["kernel"], conv["stride"], conv["padding"]
    yo, xo, i, j = (a.reshape(-1) for a in np.meshgrid(np.arange(out_h), np.arange(out_w), np.arange(kh),
                                                         np.arange(kw), indexing="ij"))
    y, x = yo * sh - ph + i, xo * sw - pw + j
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    yo, xo, i, j, y, x = (a[inside] for a in (yo, xo, i, j, y, x))
    rows = np.arange(c_out)[:, None, None] * (out_h * out_w) + (yo * out_w + xo)[None, None, :]
    cols = np.arange(c_in)[None, :, None] * (height * width) + (y * width + x)[None, None, :]
    return rows, cols, i, j


def conv2d_kernel(weight: np.ndarray, src: Population, dst: Population, conv: dict) -> np.ndarray | None:
    """The ``[C_out, C_in, kh, kw]`` kernel of a full weight between image grids ``src -> dst``
    (``Population.image``), rows and columns in their ``[C, H, W]`` order, read off its entries;
    None unless every entry is that kernel's (shared entries equal, nothing outside the windows)."""
    rows, cols, i, j = conv2d_indices((dst.channels, src.channels), src.image[:2], dst.image[:2], conv)
    values = weight[rows, cols]  # [C_out, C_in, P]
    kernel = np.zeros((dst.channels, src.channels, *conv["kernel"]))
    kernel[:, :, i, j] = values
    # (rows, cols) pairs are distinct, so any nonzero beyond the windows' shows in the count (no copy
    # of the matrix: the MNIST patch convolution's is 2,048 x 12,544)
    outside = np.count_nonzero(weight) - np.count_nonzero(values)
    return kernel if np.array_equal(kernel[:, :, i, j], values) and not outside else None
