"""Offline tasks (SPEC §5): digits and MNIST-1D splits, patches, shift augmentation, recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikeformer.config import Config
from spikeformer.data import (
    load_digits_split,
    load_mnist1d_split,
    load_task,
    make_recall,
    patchify,
    shift_augment,
    unpatchify,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(2)


@pytest.fixture(scope="module")
def mnist1d_and_rng_states():
    np.random.seed(1234)
    before = np.random.get_state()
    split = load_mnist1d_split()
    after = np.random.get_state()
    return split, before, after


# --------------------------------------------------------------------------------------------
# digits


def test_digits_split_sizes_shapes_and_dtypes(digits):
    assert digits.x_train.shape == (1347, 16, 4)
    assert digits.x_test.shape == (450, 16, 4)
    assert digits.y_train.shape == (1347,) and digits.y_test.shape == (450,)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10 and digits.tokens == 16 and digits.features == 4


def test_digits_values_lie_in_unit_interval(digits):
    for x in (digits.x_train, digits.x_test):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # X / 16, 16 is the top grey level


def test_digits_split_is_stratified(digits):
    """Each class's test count is its proportional share of 450, rounded either way.

    (Not "within 1 of 45": class 8 has 174 of 1797 images, a share of 43.6, so 43 test images.)
    """
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target, minlength=10)
    test = np.bincount(digits.y_test.numpy(), minlength=10)
    train = np.bincount(digits.y_train.numpy(), minlength=10)
    assert np.array_equal(test + train, totals)
    share = totals * 450 / totals.sum()
    assert np.all(test >= np.floor(share)) and np.all(test <= np.ceil(share))
    assert np.all(np.abs(test - 45) <= 2)


def test_digits_tokens_are_patches_of_the_images(digits):
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)
    rebuilt = unpatchify(digits.x_test, 2)
    # every rebuilt test image is one of the original images
    flat = images.reshape(len(images), -1)
    for image in rebuilt[:20]:
        assert (flat == image.reshape(1, -1)).all(1).any()


@pytest.mark.parametrize("patch,tokens", [(1, 64), (2, 16), (4, 4), (8, 1)])
def test_digits_patch_sizes(patch, tokens):
    split = load_task(Config(task="digits", patch_size=patch))
    assert split.x_train.shape == (1347, tokens, patch * patch)


def test_digits_split_is_the_same_every_time(digits):
    again = load_digits_split(2)
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_train, digits.y_train)


# --------------------------------------------------------------------------------------------
# patches and shifts


@pytest.mark.parametrize("patch", [1, 2, 4, 8])
def test_patchify_unpatchify_round_trip(patch):
    rng = np.random.default_rng(patch)
    images = rng.random((5, 8, 8)).astype(np.float32)
    tokens = patchify(images, patch)
    assert tokens.shape == (5, (8 // patch) ** 2, patch * patch)
    back = unpatchify(torch.from_numpy(tokens), patch)
    assert torch.equal(back, torch.from_numpy(images))
    again = patchify(back.numpy(), patch)
    assert np.array_equal(again, tokens)


def test_patchify_is_row_major_over_patches():
    image = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    tokens = patchify(image, 2)
    assert tokens[0, 0].tolist() == [0, 1, 8, 9]  # top-left patch, row-major inside
    assert tokens[0, 1].tolist() == [2, 3, 10, 11]  # next patch to the right
    assert tokens[0, 4].tolist() == [16, 17, 24, 25]  # first patch of the second patch row


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_shift_augment_with_zero_shift_is_identity(patch):
    tokens = torch.from_numpy(patchify(np.random.default_rng(0).random((6, 8, 8)).astype(np.float32), patch))
    out = shift_augment(tokens, patch, 0, torch.Generator().manual_seed(0))
    assert torch.equal(out, tokens)


def centred_images(count: int, seed: int) -> torch.Tensor:
    """Random images whose content stays inside the central 6x6 (one empty pixel border)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 8, 8)
    images[:, 1:7, 1:7] = torch.rand(count, 6, 6, generator=g) + 0.1
    return images


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_shift_augment_by_one_translates_and_keeps_intensity(patch):
    images = centred_images(40, patch)
    tokens = torch.from_numpy(patchify(images.numpy(), patch))
    out = shift_augment(tokens, patch, 1, torch.Generator().manual_seed(patch))
    assert out.shape == tokens.shape and out.dtype == tokens.dtype
    torch.testing.assert_close(out.sum((1, 2)), tokens.sum((1, 2)))
    shifted = unpatchify(out, patch)
    seen = set()
    for original, moved in zip(images, shifted):
        offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                   if torch.equal(torch.roll(original, (dr, dc), (0, 1)), moved)]
        assert len(offsets) == 1  # an exact translation by at most one pixel
        seen.add(offsets[0])
    assert len(seen) > 1  # the offsets are random, not one fixed translation


def test_shift_augment_is_seeded():
    tokens = torch.from_numpy(patchify(centred_images(10, 0).numpy(), 2))
    a = shift_augment(tokens, 2, 2, torch.Generator().manual_seed(3))
    b = shift_augment(tokens, 2, 2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# mnist1d


def test_mnist1d_split_sizes(mnist1d_and_rng_states):
    split, _, _ = mnist1d_and_rng_states
    assert split.x_train.shape == (4000, 40, 1) and split.x_test.shape == (1000, 40, 1)
    assert split.y_train.shape == (4000,) and split.y_test.shape == (1000,)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.int64
    assert split.num_classes == 10
    assert set(split.y_test.tolist()) == set(range(10))
    assert torch.isfinite(split.x_train).all()


def test_mnist1d_leaves_numpy_global_rng_untouched(mnist1d_and_rng_states):
    _, before, after = mnist1d_and_rng_states
    assert before[0] == after[0]
    assert np.array_equal(before[1], after[1])
    assert before[2:] == after[2:]


# --------------------------------------------------------------------------------------------
# associative recall


def decode(x: torch.Tensor, keys: int):
    """Per sequence: list of (key, value) pairs (None for padding) and the query key."""
    out = []
    for seq in x:
        pairs = []
        for token in seq[:-1]:
            if token.sum() == 0:
                pairs.append(None)
                continue
            key_bits = token[:keys].nonzero().flatten().tolist()
            value_bits = token[keys:].nonzero().flatten().tolist()
            assert len(key_bits) == 1 and len(value_bits) == 1
            pairs.append((key_bits[0], value_bits[0]))
        query = seq[-1]
        assert query[keys:].sum() == 0
        query_bits = query[:keys].nonzero().flatten().tolist()
        assert len(query_bits) == 1
        out.append((pairs, query_bits[0]))
    return out


def test_recall_shapes_and_binary_tokens():
    x, y = make_recall(50, 4, 8, 6, seed=0)
    assert x.shape == (50, 5, 14) and x.dtype == torch.float32
    assert y.shape == (50,) and y.dtype == torch.int64
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert int(y.min()) >= 0 and int(y.max()) < 6


def test_recall_tokens_keys_and_labels_decode():
    keys = 8
    x, y = make_recall(200, 4, keys, 6, seed=1)
    for (pairs, query), label in zip(decode(x, keys), y.tolist()):
        assert all(p is not None for p in pairs)  # no curriculum: every pair slot used
        used = [k for k, _ in pairs]
        assert len(set(used)) == len(used)  # keys distinct within a sequence
        assert query in used
        assert dict(pairs)[query] == label


def test_recall_is_seeded():
    a = make_recall(30, 3, 5, 4, seed=7)
    b = make_recall(30, 3, 5, 4, seed=7)
    c = make_recall(30, 3, 5, 4, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_recall_curriculum_left_pads_with_zero_tokens():
    keys, pairs = 8, 5
    x, y = make_recall(300, pairs, keys, 6, seed=2, min_pairs=2)
    assert x.shape == (300, pairs + 1, keys + 6)
    lengths = set()
    for (decoded, query), label in zip(decode(x, keys), y.tolist()):
        used = [p for p in decoded if p is not None]
        padding = len(decoded) - len(used)
        assert all(p is None for p in decoded[:padding])  # zeros first, then pairs
        assert 2 <= len(used) <= pairs
        lengths.add(len(used))
        assert query in [k for k, _ in used]
        assert dict(used)[query] == label
    assert lengths == set(range(2, pairs + 1))


def test_recall_all_keys_used_when_pairs_equal_keys():
    x, _ = make_recall(20, 4, 4, 3, seed=0)
    for pairs, _ in decode(x, 4):
        assert sorted(k for k, _ in pairs) == [0, 1, 2, 3]


def test_load_task_recall_uses_config_and_full_length_test():
    cfg = Config(task="recall", mode="causal", recall_pairs=3, recall_pairs_min=1, recall_keys=6,
                 recall_values=5, recall_train=40, recall_test=30, data_seed=4)
    split = load_task(cfg)
    assert split.x_train.shape == (40, 4, 11) and split.x_test.shape == (30, 4, 11)
    assert split.num_classes == 5
    # test sequences always carry every pair (no zero tokens)
    assert (split.x_test.sum(-1) > 0).all()
    assert not torch.equal(split.x_train[:30], split.x_test)


def test_interleaved_recall_splits_each_pair_into_key_then_value_token():
    from spikeformer.data import interleave_recall, make_recall

    keys = 5
    x, _ = make_recall(20, 3, keys, 4, seed=1, min_pairs=2)
    out = interleave_recall(x, keys)
    assert out.shape == (20, 7, x.shape[2])
    for j in range(3):
        assert torch.equal(out[:, 2 * j, :keys], x[:, j, :keys]) and not out[:, 2 * j, keys:].any()
        assert torch.equal(out[:, 2 * j + 1, keys:], x[:, j, keys:]) and not out[:, 2 * j + 1, :keys].any()
    assert torch.equal(out[:, -1], x[:, -1])


@pytest.mark.parametrize("patch", [4, 7, 14])
def test_mnist_task_is_patch_tokens_of_the_full_set(patch):
    from spikeformer.config import Config
    from spikeformer.data import load_task

    cfg = Config(task="mnist", patch_size=patch)
    split = load_task(cfg)
    tokens, features, classes = cfg.task_shape()
    assert split.x_train.shape == (60000, tokens, features) and split.x_test.shape == (10000, tokens, features)
    assert tokens == (28 // patch) ** 2 and features == patch * patch and split.num_classes == classes == 10
    assert split.y_train[:5].tolist() == [5, 0, 4, 1, 9] and split.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert float(split.x_train.max()) == 1.0 and float(split.x_train.min()) == 0.0
    image = unpatchify(split.x_test[:1], patch)[0]  # the tokens rebuild the 28x28 picture
    from spikeformer.corpora import mnist

    assert torch.equal((image * 255).round().to(torch.uint8), torch.from_numpy(mnist().x_test[0]))


def test_mnist_shift_augment_moves_28_pixel_images():
    from spikeformer.data import load_mnist_split, shift_augment

    x = load_mnist_split(7).x_test[:4]
    moved = shift_augment(x, 7, 2, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and not torch.equal(moved, x)
    assert torch.isclose(moved.sum(), x.sum(), rtol=0.05)  # a shift by 2 pixels keeps (nearly) every pixel
