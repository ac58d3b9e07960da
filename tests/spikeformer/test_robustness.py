"""Robustness suite (robustness.json): every corruption as specified, model-side noise, the suite record."""

from __future__ import annotations

import math

import pytest
import torch

from spikeformer.config import Config
from spikeformer.data import Split, load_digits_split, patchify, unpatchify
from spikeformer.errors import SpikeformerError
from spikeformer.metrics import evaluate
from spikeformer.model import Drive, SpikingNeurons, build_model
from spikeformer.neurons import LIFParameters, lif_initial_state, lif_step
from spikeformer.robustness import (IMAGE_CORRUPTIONS, MODEL_NOISE, SEVERITY_LEVELS, SIGNAL_CORRUPTIONS,
                                    SPIKING_ONLY, corrupt, corrupt_images, corrupt_signals, corruption_suite,
                                    model_noise, parse_selection, plot_robustness)
from spikeformer.encoders import smooth

torch.set_num_threads(1)

IMAGE_CASES = [(name, s) for name in IMAGE_CORRUPTIONS for s in range(1, SEVERITY_LEVELS + 1)]
SIGNAL_CASES = [(name, s) for name in SIGNAL_CORRUPTIONS for s in range(1, SEVERITY_LEVELS + 1)]
STRONGER_WHEN_SMALLER = ("shot_noise", "contrast")  # fewer photons, less contrast


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def digit_tokens(count: int = 12) -> torch.Tensor:
    return load_digits_split(4).x_test[:count]  # [S, 4, 16]: 8 x 8 images in 4 x 4 patches


def signals(shape=(20, 40, 1), seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed))


@pytest.mark.parametrize("table", [IMAGE_CORRUPTIONS, SIGNAL_CORRUPTIONS, MODEL_NOISE])
def test_five_severities_each_stronger_than_the_last(table):
    for name, levels in table.items():
        assert len(levels) == SEVERITY_LEVELS
        order = sorted(levels, reverse=name in STRONGER_WHEN_SMALLER)
        assert list(levels) == order and len(set(levels)) == SEVERITY_LEVELS, name


@pytest.mark.parametrize("name,severity", IMAGE_CASES)
def test_image_corruptions_are_seeded_change_the_input_and_stay_pixels(name, severity):
    x = digit_tokens()
    original = x.clone()
    out = corrupt(x, "digits", name, severity, gen(5), patch=4)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, corrupt(x, "digits", name, severity, gen(5), patch=4))
    assert not torch.equal(out, x)
    assert torch.equal(x, original)  # not modified in place
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name,severity", SIGNAL_CASES)
def test_signal_corruptions_are_seeded_and_change_the_input(name, severity):
    x = signals()
    out = corrupt(x, "mnist1d", name, severity, gen(5))
    assert out.shape == x.shape and torch.equal(out, corrupt(x, "mnist1d", name, severity, gen(5)))
    assert not torch.equal(out, x)


def grey(side: int = 28, count: int = 200, value: float = 0.5) -> torch.Tensor:
    return torch.full((count, side, side), value)


def test_gaussian_noise_on_pixels_has_the_given_sigma():
    out = corrupt_images(grey(), "gaussian_noise", 0.08, gen())
    assert float((out - 0.5).std()) == pytest.approx(0.08, rel=0.02)


def test_shot_noise_is_poisson_photon_counts():
    n = 25.0
    out = corrupt_images(grey(value=0.4), "shot_noise", n, gen())
    counts = out * n
    assert torch.allclose(counts, counts.round(), atol=1e-4)  # whole photons
    assert float(counts.mean()) == pytest.approx(0.4 * n, rel=0.02)
    assert float(counts.var()) == pytest.approx(0.4 * n, rel=0.05)  # Poisson: variance = mean


def test_impulse_noise_sets_a_share_of_pixels_to_black_or_white():
    out = corrupt_images(grey(), "impulse_noise", 0.17, gen())
    hit = (out == 0) | (out == 1)
    assert float(hit.float().mean()) == pytest.approx(0.17, abs=0.005)
    assert torch.all(out[~hit] == 0.5)
    assert float((out == 1).float().mean()) == pytest.approx(0.085, abs=0.005)


def test_blur_spreads_a_point_as_a_gaussian():
    image = torch.zeros(1, 28, 28)
    image[0, 14, 14] = 1.0
    sigma = 1.5
    out = corrupt_images(image, "blur", sigma, gen())[0]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    rows = torch.arange(28, dtype=torch.float32) - 14
    assert float((out.sum(1) * rows ** 2).sum()) == pytest.approx(sigma ** 2, rel=0.02)
    small = torch.rand(3, 8, 8, generator=gen())  # sizes are in the task's pixels
    assert torch.equal(corrupt_images(small, "blur", sigma, gen()), smooth(small, sigma, 2, "constant").clamp(0, 1))


def test_contrast_keeps_the_mean_and_scales_the_deviation():
    images = 0.3 + 0.4 * torch.rand(10, 8, 8, generator=gen())
    out = corrupt_images(images, "contrast", 0.2, gen())
    mean = images.mean((1, 2), keepdim=True)
    assert torch.allclose(out, mean + 0.2 * (images - mean), atol=1e-6)


def test_fog_adds_smooth_noise_and_keeps_the_range():
    images = torch.zeros(50, 28, 28)
    out = corrupt_images(images, "fog", 1.0, gen())
    assert float(out.max()) <= 0.5 + 1e-6 and float(out.std()) > 0.02  # (0 + a f) / (1 + a), f in [0, 1]
    step = (out[:, :, 1:] - out[:, :, :-1]).abs().max()
    assert float(step) < 0.1  # low frequency: neighbours differ little
    assert float(corrupt_images(torch.ones(5, 8, 8), "fog", 1.0, gen()).min()) >= 0.5


@pytest.mark.parametrize("severity", range(1, SEVERITY_LEVELS + 1))
def test_occlusion_zeroes_one_square_of_the_given_area(severity):
    area = IMAGE_CORRUPTIONS["occlusion"][severity - 1]
    out = corrupt(torch.ones(30, 4, 16), "digits", "occlusion", severity, gen(), patch=4)
    images = unpatchify(out, 4)
    side = max(1, round(math.sqrt(area) * 8))
    for image in images:
        zero = (image == 0).nonzero()
        assert len(zero) == side * side
        assert int(zero[:, 0].max() - zero[:, 0].min()) == side - 1 == int(zero[:, 1].max() - zero[:, 1].min())


def test_rotation_turns_the_image_about_its_centre_by_the_angle():
    image = torch.zeros(40, 28, 28)
    image[:, 13:15, 22:25] = 1.0  # a blob right of the centre (13.5, 13.5)
    out = corrupt_images(image, "rotation", 30.0, gen())
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    angles = []
    for img in out:
        w = img / img.sum()
        dy, dx = float((w * rows).sum()) - 13.5, float((w * cols).sum()) - 13.5
        angles.append(math.degrees(math.atan2(dy, dx)))
    assert all(abs(abs(a) - 30.0) < 1.5 for a in angles)
    assert any(a > 0 for a in angles) and any(a < 0 for a in angles)  # random sign per image


@pytest.mark.parametrize("severity", range(1, SEVERITY_LEVELS + 1))
def test_translation_moves_digits_right_by_1_to_5_pixels(severity):
    images = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 8, 8) / 128
    tokens = torch.from_numpy(patchify(images.numpy(), 4))
    moved = unpatchify(corrupt(tokens, "digits", "translation", severity, gen(), patch=4), 4)
    assert torch.equal(moved[..., severity:], images[..., :8 - severity])
    assert torch.equal(moved[..., :severity], torch.zeros(2, 8, severity))


def test_signal_shift_rolls_the_token_axis():
    x = signals()
    for severity, tokens in enumerate(SIGNAL_CORRUPTIONS["shift"], 1):
        assert torch.equal(corrupt(x, "mnist1d", "shift", severity, gen()), torch.roll(x, int(tokens), 1))


def test_signal_scale_multiplies_each_signal_by_one_plus_or_minus_s():
    x = signals((200, 40, 1))
    out = corrupt_signals(x, "scale", 0.3, gen())
    gains = (out / x).reshape(200, -1)
    assert torch.allclose(gains, gains[:, :1].expand_as(gains), atol=1e-5)
    assert set(round(g, 4) for g in gains[:, 0].tolist()) == {0.7, 1.3}


def test_signal_gaussian_noise_is_relative_to_the_spread():
    x = 3.0 * signals((100, 40, 2))
    noise = corrupt_signals(x, "gaussian_noise", 0.2, gen(3)) - x
    assert float(noise.std()) == pytest.approx(0.2 * float(x.std()), rel=0.03)


def test_time_warp_is_a_monotone_resampling():
    ramp = torch.arange(40.0).view(1, 40, 1).expand(30, 40, 1)
    out = corrupt_signals(ramp, "time_warp", 0.6, gen())
    assert torch.all(out[:, 1:] >= out[:, :-1])  # a monotone warp keeps a ramp rising
    assert float((out - ramp).abs().max()) <= 0.6 * 40 / (2 * math.pi) + 1e-4  # moved at most a L / 2 pi
    assert torch.equal(corrupt_signals(torch.ones(3, 40, 1), "time_warp", 0.6, gen()), torch.ones(3, 40, 1))


def test_sequence_tasks_have_no_input_corruptions_and_unknown_names_fail():
    with pytest.raises(SpikeformerError, match="unknown corruption 'gaussian_noise' for task 'recall'"):
        corrupt(signals(), "recall", "gaussian_noise", 1, gen())
    with pytest.raises(SpikeformerError, match="unknown corruption 'fog'"):
        corrupt(signals(), "mnist1d", "fog", 1, gen())
    with pytest.raises(SpikeformerError, match="out of range"):
        corrupt(signals(), "mnist1d", "shift", 6, gen())


def test_selection_is_checked_with_one_clear_message():
    names, levels = parse_selection("digits", None, None)
    assert names == [*IMAGE_CORRUPTIONS, *MODEL_NOISE] and levels == [1, 2, 3, 4, 5]
    assert parse_selection("mnist1d", "shift,spike_deletion", "1,5") == (["shift", "spike_deletion"], [1, 5])
    assert parse_selection("recall", "all", None)[0] == list(MODEL_NOISE)
    with pytest.raises(SpikeformerError, match="unknown corruption 'smoke'.*choose from"):
        parse_selection("digits", "blur,smoke", None)
    for bad in ("0", "6", "1,7"):
        with pytest.raises(SpikeformerError, match="out of range; severities run from 1 to 5"):
            parse_selection("digits", None, bad)
    with pytest.raises(SpikeformerError, match="integers 1-5"):
        parse_selection("digits", None, "high")


# -------------------------------------------------------------------------------- model-side noise


def tiny_model(model: str = "spikeformer", **keys):
    cfg = Config(model=model, dim=16, heads=2, head_dim=8, depth=1, patch_size=4, seed=3, **keys)
    torch.manual_seed(0)
    return build_model(cfg, 4, 16, 10).eval(), cfg


def logits(model, x, seed: int = 0):
    with torch.no_grad():
        return model(x, generator=gen(seed))[0]


@pytest.mark.parametrize("name", list(MODEL_NOISE))
def test_model_noise_at_zero_equals_the_clean_run_and_changes_it_above(name):
    model, _ = tiny_model()
    x = digit_tokens(30)
    clean = logits(model, x)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with model_noise(model, name, 0.0, gen(1)):
        assert torch.equal(logits(model, x), clean)
    with model_noise(model, name, MODEL_NOISE[name][-1], gen(1)):
        noisy = logits(model, x)
    assert not torch.equal(noisy, clean)
    assert torch.equal(logits(model, x), clean)  # every hook and weight restored
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def population(features: int = 64, alpha: float = 0.0) -> SpikingNeurons:
    cfg = Config(beta=0.8, alpha=alpha, threshold=1.0)
    return SpikingNeurons(cfg, features)


def drive(steps: int = 30, features: int = 64, seed: int = 0) -> Drive:
    return Drive(1.2 * torch.rand(steps, 4, 2, features, generator=gen(seed)))


def test_spike_deletion_drops_a_share_p_of_the_spikes():
    neurons = population()
    spikes, _ = neurons(drive(), None, None, "x")
    with model_noise(neurons, "spike_deletion", 0.3, gen(7)):  # not the drive's seed
        kept, _ = neurons(drive(), None, None, "x")
    assert torch.all(kept <= spikes)
    assert 1 - float(kept.sum() / spikes.sum()) == pytest.approx(0.3, abs=0.02)


def test_timing_jitter_at_one_delays_every_spike_by_one_step():
    neurons = population()
    spikes, _ = neurons(drive(), None, None, "x")
    with model_noise(neurons, "timing_jitter", 1.0, gen()):
        late, _ = neurons(drive(), None, None, "x")
    assert torch.equal(late[1:], spikes[:-1]) and not late[0].any()
    with model_noise(neurons, "timing_jitter", 0.3, gen(7)):
        some, _ = neurons(drive(), None, None, "x")
    assert set(some.unique().tolist()) <= {0.0, 1.0}  # spikes that meet merge


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_threshold_jitter_equals_the_lif_with_scaled_thresholds(alpha):
    neurons = population(alpha=alpha)
    x = drive(seed=2)
    torch.manual_seed(0)
    with model_noise(neurons, "threshold_jitter", 0.3, gen(4)):
        jittered, _ = neurons(x, None, None, "x")
    factor = (1.0 + 0.3 * torch.randn((2, 64), generator=gen(4))).clamp(min=0.05)
    params = LIFParameters(beta=0.8, alpha=alpha, threshold=1.0)
    state, out = lif_initial_state(x.total[0]), []
    for x_t in x.total.unbind(0):  # SPEC §2.1 with a threshold per neuron
        s, state = lif_step(x_t, state, params.beta, alpha, params.threshold * factor, neurons.lif.spike_fn)
        out.append(s)
    reference = torch.stack(out)
    mismatch = float((reference != jittered).float().mean())
    assert mismatch < 1e-3  # division vs multiplication may round one comparison differently
    assert not torch.equal(jittered, neurons(x, None, None, "x")[0])


def test_membrane_noise_has_sigma_in_threshold_units():
    neurons = population()
    seen = []
    neurons.lif.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    x = Drive(torch.zeros(200, 4, 2, 64))
    with model_noise(neurons, "membrane_noise", 0.3, gen()):
        neurons(x, None, None, "x")
    assert float(seen[0].std()) == pytest.approx(0.3 * 1.0, rel=0.02) and abs(float(seen[0].mean())) < 0.01


def test_ann_gets_weight_noise_only():
    model, _ = tiny_model("ann")
    x = digit_tokens(30)
    with pytest.raises(SpikeformerError, match="spiking models only"):
        with model_noise(model, "spike_deletion", 0.1, gen()):
            pass
    clean = logits(model, x)
    with model_noise(model, "weight_noise", 0.5, gen()):
        assert not torch.equal(logits(model, x), clean)


# -------------------------------------------------------------------------------- the suite


@pytest.fixture(scope="module")
def tiny_digits():
    split = load_digits_split(4)
    return Split(split.x_train[:10], split.y_train[:10], split.x_test[:40], split.y_test[:40], 10)


def test_suite_record_is_seeded_and_a_subset_gives_the_same_numbers(tiny_digits, tmp_path):
    model, cfg = tiny_model(encoder="poisson")
    names = ["gaussian_noise", "rotation", "spike_deletion", "weight_noise"]
    record = corruption_suite(model, tiny_digits, cfg, names=names)
    assert record == corruption_suite(model, tiny_digits, cfg, names=names)
    assert record["clean_accuracy"] == evaluate(model, tiny_digits.x_test, tiny_digits.y_test,
                                                generator=gen(cfg.seed))["accuracy"]
    scores = [a for name in names for a in record["corruptions"][name].values()]
    assert len(scores) == 4 * SEVERITY_LEVELS and all(0 <= a <= 1 for a in scores)
    assert record["mean_corruption_accuracy"] == pytest.approx(sum(scores) / len(scores), abs=1e-12)
    assert record["relative_robustness"] == pytest.approx(record["mean_corruption_accuracy"] / record["clean_accuracy"])
    assert record["parameters"]["rotation"]["3"] == IMAGE_CORRUPTIONS["rotation"][2]
    part = corruption_suite(model, tiny_digits, cfg, names=["rotation", "weight_noise"], severities=[2, 5])
    for name in ("rotation", "weight_noise"):
        for s in ("2", "5"):
            assert part["corruptions"][name][s] == record["corruptions"][name][s]
    plot_robustness(record, tmp_path / "r.png", "tiny")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_suite_on_a_subset_scores_the_first_samples(tiny_digits):
    model, cfg = tiny_model()
    names = ["blur", "spike_deletion", "weight_noise"]
    part = corruption_suite(model, tiny_digits, cfg, names=names, severities=[3], samples=15)
    first = Split(tiny_digits.x_train, tiny_digits.y_train, tiny_digits.x_test[:15], tiny_digits.y_test[:15], 10)
    alone = corruption_suite(model, first, cfg, names=names, severities=[3])
    assert part["samples"] == 15 and part["subset"] == 15 and alone["subset"] is None
    assert part["corruptions"] == alone["corruptions"] and part["clean_accuracy"] == alone["clean_accuracy"]
    assert corruption_suite(model, tiny_digits, cfg, names=["blur"], severities=[1], samples=10**6)["samples"] == 40
    with pytest.raises(SpikeformerError, match="samples must be a whole number >= 1"):
        corruption_suite(model, tiny_digits, cfg, names=names, samples=0)


def test_suite_on_the_ann_marks_spiking_only_noise_not_applicable(tiny_digits):
    model, cfg = tiny_model("ann")
    record = corruption_suite(model, tiny_digits, cfg, names=["blur", *MODEL_NOISE], severities=[1])
    assert set(record["not_applicable"]) == set(SPIKING_ONLY)
    assert set(record["corruptions"]) == {"blur", "weight_noise"}
    assert record["mean_model_noise_accuracy"] == record["corruptions"]["weight_noise"]["1"]


def test_frozen_noise_averages_independent_draws_and_the_first_is_the_single_draw(tiny_digits):
    model, cfg = tiny_model()
    names = ["threshold_jitter", "weight_noise", "spike_deletion"]
    single = corruption_suite(model, tiny_digits, cfg, names=names, severities=[5])
    several = corruption_suite(model, tiny_digits, cfg, names=names, severities=[5], draws=3)
    assert single["draws"] == 1 and single["draw_accuracies"] == {} and several["draws"] == 3
    for name in ("threshold_jitter", "weight_noise"):
        draws = several["draw_accuracies"][name]["5"]
        assert len(draws) == 3 and draws[0] == single["corruptions"][name]["5"]
        assert len(set(draws)) > 1  # fresh mismatch per draw, not one draw scored three times
        assert several["corruptions"][name]["5"] == pytest.approx(sum(draws) / 3, abs=1e-12)
    # noise drawn afresh every step is scored once: more draws would only repeat the same average
    assert "spike_deletion" not in several["draw_accuracies"]
    assert several["corruptions"]["spike_deletion"] == single["corruptions"]["spike_deletion"]
    with pytest.raises(SpikeformerError, match="draws must be a whole number >= 1"):
        corruption_suite(model, tiny_digits, cfg, names=names, draws=0)
