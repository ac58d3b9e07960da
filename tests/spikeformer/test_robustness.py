"""Corruption suite (robustness.json): each corruption, its severities, and the suite record."""

from __future__ import annotations

import pytest
import torch

from spikeformer.config import Config
from spikeformer.data import Split, load_digits_split
from spikeformer.metrics import evaluate
from spikeformer.model import build_model
from spikeformer.robustness import SEVERITIES, corrupt, corruption_suite

torch.set_num_threads(1)

LEVELS = [(name, level) for name, levels in SEVERITIES.items() for level in levels]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample(shape=(20, 16, 4), seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=gen(seed)) + 0.05  # no zeros, so dropout is visible


def test_severities_are_three_increasing_levels_per_corruption():
    assert set(SEVERITIES) == {"gaussian_noise", "feature_dropout", "translation"}
    for levels in SEVERITIES.values():
        assert len(levels) == 3 and list(levels) == sorted(levels) and levels[0] > 0


@pytest.mark.parametrize("name,level", LEVELS)
def test_each_corruption_changes_the_input_and_keeps_it_intact(name, level):
    x = sample()
    original = x.clone()
    out = corrupt(x, name, level, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    assert torch.equal(x, original)  # not modified in place


@pytest.mark.parametrize("name", sorted(SEVERITIES))
def test_severity_zero_is_identity(name):
    x = sample()
    assert torch.equal(corrupt(x, name, 0, gen()), x)


def test_signal_translation_by_the_token_count_is_identity():
    x = sample()
    assert torch.equal(corrupt(x, "translation", x.shape[1], gen()), x)


@pytest.mark.parametrize("shift", SEVERITIES["translation"])
def test_signal_translation_rolls_the_token_axis(shift):
    x = sample()
    out = corrupt(x, "translation", shift, gen())
    n = x.shape[1]
    for i in range(n):
        assert torch.equal(out[:, (i + shift) % n], x[:, i])
    assert torch.equal(out, torch.roll(x, shift, 1))


@pytest.mark.parametrize("p", SEVERITIES["feature_dropout"])
def test_feature_dropout_zeroes_a_fraction_p(p):
    x = torch.ones(200, 50, 10)
    out = corrupt(x, "feature_dropout", p, gen(1))
    zeros = float((out == 0).float().mean())
    assert abs(zeros - p) < 0.01
    assert set(out.unique().tolist()) <= {0.0, 1.0}  # kept features are unchanged


@pytest.mark.parametrize("sigma", SEVERITIES["gaussian_noise"])
def test_gaussian_noise_scale_is_relative_to_the_input_spread(sigma):
    x = 3.0 * torch.randn(100, 40, 10, generator=gen(2))
    noise = corrupt(x, "gaussian_noise", sigma, gen(3)) - x
    assert abs(float(noise.mean())) < 0.05
    assert float(noise.std()) == pytest.approx(sigma * float(x.std()), rel=0.03)


@pytest.mark.parametrize("name,level", LEVELS)
def test_corruptions_are_seeded(name, level):
    x = sample()
    assert torch.equal(corrupt(x, name, level, gen(5)), corrupt(x, name, level, gen(5)))


def test_unknown_corruption_raises():
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(sample(), "blur", 1, gen())


# --------------------------------------------------------------------------------------------
# the suite


@pytest.fixture(scope="module")
def tiny_digits():
    split = load_digits_split(2)
    small = Split(split.x_train[:10], split.y_train[:10], split.x_test[:60], split.y_test[:60], 10)
    return small


def tiny_model(encoder: str = "direct"):
    cfg = Config(dim=16, heads=2, head_dim=8, depth=1, encoder=encoder, seed=3)
    torch.manual_seed(0)
    return build_model(cfg, 16, 4, 10), cfg


@pytest.mark.parametrize("encoder", ["direct", "poisson"])
def test_corruption_suite_record(tiny_digits, encoder):
    model, cfg = tiny_model(encoder)
    first = corruption_suite(model, tiny_digits, cfg)
    second = corruption_suite(model, tiny_digits, cfg)
    assert first == second  # seeded: the same record twice
    assert set(first) >= {"clean_accuracy", "mean_corruption_accuracy", "corruptions"}
    assert set(first["corruptions"]) == set(SEVERITIES)
    scores = []
    for name, levels in SEVERITIES.items():
        per_level = first["corruptions"][name]
        assert set(per_level) == {str(level) for level in levels}
        for value in per_level.values():
            assert 0.0 <= value <= 1.0
            assert value * 60 == pytest.approx(round(value * 60))  # a fraction of the 60 samples
            scores.append(value)
    assert len(scores) == 9
    assert 0.0 <= first["clean_accuracy"] <= 1.0
    assert first["mean_corruption_accuracy"] == pytest.approx(sum(scores) / len(scores), abs=1e-12)
    assert model.training  # evaluate restores the mode


def test_corruption_suite_clean_accuracy_matches_evaluate(tiny_digits):
    model, cfg = tiny_model()
    record = corruption_suite(model, tiny_digits, cfg)
    clean = evaluate(model, tiny_digits.x_test, tiny_digits.y_test)["accuracy"]
    assert record["clean_accuracy"] == clean
    shifted = corrupt(tiny_digits.x_test, "translation", 2, gen(cfg.seed + 17), cfg.patch_size)
    assert record["corruptions"]["translation"]["2"] == evaluate(model, shifted, tiny_digits.y_test)["accuracy"]


def test_corruption_suite_logs_one_line_per_level(tiny_digits):
    model, cfg = tiny_model()
    lines = []
    corruption_suite(model, tiny_digits, cfg, log=lines.append)
    assert len(lines) == 9
    assert lines[0].startswith("gaussian_noise 0.1: ")


def test_image_translation_moves_pixels_right_with_zero_fill():
    from spikeformer.data import patchify, unpatchify

    images = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 8, 8)
    tokens = torch.from_numpy(patchify(images.numpy(), 4))
    moved = unpatchify(corrupt(tokens, "translation", 3, gen(), patch=4), 4)
    assert torch.equal(moved[..., 3:], images[..., :5])
    assert torch.equal(moved[..., :3], torch.zeros(2, 8, 3))
