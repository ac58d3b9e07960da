"""Robustness suite: input corruptions and model-side noise, five severities each (robustness.json).

Input corruptions (MNIST-C style) change the test inputs ``[S, N, F]``, seeded so runs repeat.
Images (digits, mnist) are rebuilt from their patch tokens as ``[S, side, side]`` pixels in
[0, 1], corrupted, clipped to [0, 1] and cut into tokens again; sizes are in pixels of the
task's image (a pixel of the 8 x 8 digits is 3.5 of MNIST's). Signals (MNIST-1D) are the
``[S, N, F]`` sequences along the token axis N. Every corruption and its severities are in
``IMAGE_CORRUPTIONS`` / ``SIGNAL_CORRUPTIONS``; docs/robustness.md writes them out.

Model-side noise (``MODEL_NOISE``) perturbs the network while it runs, as a noisy or
mismatched chip would. It is injected at every spiking population (``SpikingNeurons``):
- membrane_noise: Gaussian noise, sigma in units of the threshold, added to every neuron's
  input current at every step (with ``alpha = 0``, the membrane noise itself);
- threshold_jitter: every neuron's threshold scaled by a fixed factor ``1 + sigma * z``
  (z ~ N(0, 1), floored at 0.05), drawn once per population for the whole evaluation (device
  mismatch). Applied as the neuron's input and bias divided by the factor: with the reset to
  zero the membrane is linear in them, so it spikes exactly when ``membrane > factor * threshold``;
- spike_deletion: every spike is lost on its way out with probability p (the neuron resets);
- timing_jitter: every spike arrives one step late with probability p (lost after the last step);
- weight_noise: every weight matrix ``W`` (Linear, Conv) gets ``sigma * std(W) * z`` added for
  the evaluation and restored after. It is the only one that applies to the ANN baseline too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from .checkpoint import atomic_write_json
from .config import IMAGE_SIDE, Config
from .data import Split, patchify, unpatchify
from .encoders import smooth
from .errors import SpikeformerError
from .metrics import evaluate

SEVERITY_LEVELS = 5

# name -> the parameter at severities 1..5 (docs/robustness.md); pixels are in [0, 1]
IMAGE_CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # sigma
    "shot_noise": (60.0, 25.0, 12.0, 5.0, 3.0),  # photons per unit intensity: Poisson(x * n) / n
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # share of pixels set to 0 or 1
    "blur": (0.5, 0.75, 1.0, 1.5, 2.0),  # Gaussian sigma, pixels
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # share of the deviation from the image mean kept
    "fog": (0.2, 0.35, 0.5, 0.75, 1.0),  # amplitude of smooth low-frequency noise
    "occlusion": (0.05, 0.1, 0.2, 0.3, 0.4),  # area share of a zeroed square at a random place
    "rotation": (5.0, 10.0, 15.0, 22.5, 30.0),  # degrees, random sign per image
    "translation": (1.0, 2.0, 3.0, 4.0, 5.0),  # pixels to the right, zero fill
}
SIGNAL_CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.1, 0.2, 0.3, 0.45, 0.6),  # sigma in units of the test set's standard deviation
    "shift": (1.0, 2.0, 4.0, 6.0, 8.0),  # circular shift by tokens
    "scale": (0.1, 0.2, 0.3, 0.4, 0.5),  # amplitude gain 1 + s or 1 - s, random per signal
    "time_warp": (0.1, 0.2, 0.3, 0.45, 0.6),  # strength a of the warp t + a L / (2 pi) sin(2 pi t / L + phase)
}
MODEL_NOISE: dict[str, tuple[float, ...]] = {
    "membrane_noise": (0.05, 0.1, 0.2, 0.3, 0.5),  # sigma / threshold
    "threshold_jitter": (0.05, 0.1, 0.2, 0.3, 0.5),  # sigma of the relative deviation
    "weight_noise": (0.05, 0.1, 0.2, 0.3, 0.5),  # sigma / std(W)
    "spike_deletion": (0.05, 0.1, 0.2, 0.3, 0.5),  # probability
    "timing_jitter": (0.05, 0.1, 0.2, 0.3, 0.5),  # probability
}
SPIKING_ONLY = ("membrane_noise", "threshold_jitter", "spike_deletion", "timing_jitter")
# drawn once for a whole evaluation (a device's mismatch), so one draw is one device: these are
# the noises that ``draws`` repeats with fresh draws and averages
FROZEN_NOISE = ("threshold_jitter", "weight_noise")
JITTER_FLOOR = 0.05  # threshold jitter's factor 1 + sigma z is floored here (a threshold stays positive)


def draw_count(name: str, draws: int) -> int:
    """How many devices a noise is scored on: ``draws`` for a frozen noise, else 1 (noise drawn
    afresh every step already averages over the evaluation)."""
    return draws if name in FROZEN_NOISE else 1


def draw_seed(seed: int, draw: int) -> int:
    """The seed of device ``draw`` of a frozen noise whose single-draw seed is ``seed`` (draw 0)."""
    return seed + 1_000_003 * draw


def input_corruptions(task: str) -> dict[str, tuple[float, ...]]:
    """The input corruptions of ``task`` (none for the sequence tasks)."""
    if task in IMAGE_SIDE:
        return IMAGE_CORRUPTIONS
    if task == "mnist1d":
        return SIGNAL_CORRUPTIONS
    return {}


def all_names(task: str) -> list[str]:
    return [*input_corruptions(task), *MODEL_NOISE]


def parse_selection(task: str, names: Optional[str], severities: Optional[str]) -> tuple[list[str], list[int]]:
    """``--corruptions a,b`` (or all) and ``--severities 1,3`` (or all) -> checked lists."""
    known = all_names(task)
    chosen = known if names in (None, "", "all") else [n.strip() for n in names.split(",") if n.strip()]
    for name in chosen:
        if name not in known:
            raise SpikeformerError(f"unknown corruption {name!r} for task {task!r}; choose from {', '.join(known)}")
    levels = list(range(1, SEVERITY_LEVELS + 1))
    if severities not in (None, "", "all"):
        try:
            levels = [int(s) for s in severities.split(",") if s.strip()]
        except ValueError:
            raise SpikeformerError(f"--severities takes integers 1-{SEVERITY_LEVELS} separated by commas, "
                                   f"got {severities!r}") from None
        bad = [s for s in levels if not 1 <= s <= SEVERITY_LEVELS]
        if bad or not levels:
            raise SpikeformerError(f"severity {bad[0] if bad else severities!r} is out of range; "
                                   f"severities run from 1 to {SEVERITY_LEVELS}")
    return chosen, levels


# ---------------------------------------------------------------- input corruptions


def _smooth_field(shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
    """Low-frequency noise ``[S, H, W]`` in [0, 1]: uniform values on a 4 x 4 grid, bicubic upsampled."""
    s, h, w = shape
    coarse = torch.rand(s, 1, 4, 4, generator=generator)
    field = nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).squeeze(1)
    return field.clamp(0.0, 1.0)


def _rotate(images: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image ``[S, H, W]`` about its centre (bilinear, zero outside)."""
    rad = degrees * math.pi / 180.0
    cos, sin, zero = torch.cos(rad), torch.sin(rad), torch.zeros_like(rad)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # [S, 2, 3]
    grid = nn.functional.affine_grid(theta, [images.shape[0], 1, *images.shape[1:]], align_corners=False)
    return nn.functional.grid_sample(images.unsqueeze(1), grid, align_corners=False).squeeze(1)


def corrupt_images(images: Tensor, name: str, level: float, generator: torch.Generator) -> Tensor:
    """One corruption of ``images [S, H, W]`` (pixels in [0, 1]) at parameter ``level``."""
    s, side = images.shape[0], images.shape[-1]
    if name == "gaussian_noise":
        out = images + level * torch.randn(images.shape, generator=generator)
    elif name == "shot_noise":
        out = torch.poisson(images.clamp(0.0, 1.0) * level, generator=generator) / level
    elif name == "impulse_noise":
        u = torch.rand(images.shape, generator=generator)
        salt = torch.rand(images.shape, generator=generator) < 0.5
        out = torch.where(u < level, salt.to(images.dtype), images)
    elif name == "blur":
        out = smooth(images, level, 2, padding="constant")
    elif name == "contrast":
        mean = images.mean((1, 2), keepdim=True)
        out = (images - mean) * level + mean
    elif name == "fog":
        out = (images + level * _smooth_field(tuple(images.shape), generator)) / (1.0 + level)
    elif name == "occlusion":
        size = max(1, round(math.sqrt(level) * side))
        rows = torch.randint(0, side - size + 1, (s,), generator=generator)
        cols = torch.randint(0, side - size + 1, (s,), generator=generator)
        r, c = torch.arange(side), torch.arange(side)
        inside_r = (r[None] >= rows[:, None]) & (r[None] < rows[:, None] + size)  # [S, H]
        inside_c = (c[None] >= cols[:, None]) & (c[None] < cols[:, None] + size)  # [S, W]
        out = images.masked_fill(inside_r[:, :, None] & inside_c[:, None, :], 0.0)
    elif name == "rotation":
        sign = torch.randint(0, 2, (s,), generator=generator).float() * 2 - 1
        out = _rotate(images, sign * level)
    elif name == "translation":
        k = int(level)
        out = torch.zeros_like(images)
        out[..., k:] = images[..., :side - k]
    else:
        raise SpikeformerError(f"unknown image corruption {name!r}; choose from {', '.join(IMAGE_CORRUPTIONS)}")
    return out.clamp(0.0, 1.0).to(images.dtype)


def corrupt_signals(x: Tensor, name: str, level: float, generator: torch.Generator) -> Tensor:
    """One corruption of signals ``x [S, N, F]`` along the token axis N at parameter ``level``."""
    s, n = x.shape[0], x.shape[1]
    if name == "gaussian_noise":
        return x + level * float(x.std()) * torch.randn(x.shape, generator=generator)
    if name == "shift":
        return torch.roll(x, shifts=int(level), dims=1)
    if name == "scale":
        sign = torch.randint(0, 2, (s, 1, 1), generator=generator).to(x.dtype) * 2 - 1
        return x * (1.0 + sign * level)
    if name == "time_warp":  # monotone for level < 1: d/dt = 1 + level cos(...) > 0
        phase = torch.rand(s, 1, generator=generator) * 2 * math.pi
        t = torch.arange(n, dtype=torch.float32)[None]
        where = (t + level * n / (2 * math.pi) * torch.sin(2 * math.pi * t / n + phase)).clamp(0, n - 1)
        low = where.floor().long().clamp(max=n - 1)
        high = (low + 1).clamp(max=n - 1)
        frac = (where - low).unsqueeze(-1).to(x.dtype)
        gather = lambda idx: torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # noqa: E731
        return gather(low) * (1 - frac) + gather(high) * frac
    raise SpikeformerError(f"unknown signal corruption {name!r}; choose from {', '.join(SIGNAL_CORRUPTIONS)}")


def corrupt(x: Tensor, task: str, name: str, severity: int, generator: torch.Generator, patch: int = 0) -> Tensor:
    """The test inputs ``x [S, N, F]`` of ``task`` under input corruption ``name`` at ``severity`` (1-5).
    ``patch``: the image tasks' patch size."""
    table = input_corruptions(task)
    if name not in table:
        raise SpikeformerError(f"unknown corruption {name!r} for task {task!r}; choose from {', '.join(table)}")
    if not 1 <= severity <= SEVERITY_LEVELS:
        raise SpikeformerError(f"severity {severity} is out of range; severities run from 1 to {SEVERITY_LEVELS}")
    level = table[name][severity - 1]
    if task in IMAGE_SIDE:
        images = corrupt_images(unpatchify(x, patch), name, level, generator)
        return torch.from_numpy(patchify(images.numpy(), patch))
    return corrupt_signals(x, name, level, generator)


# ---------------------------------------------------------------- model-side noise


def _populations(model: nn.Module) -> list[nn.Module]:
    from .model import SpikingNeurons  # noqa: PLC0415 - model imports metrics, which is light

    return [m for m in model.modules() if isinstance(m, SpikingNeurons)]


@contextlib.contextmanager
def model_noise(model: nn.Module, name: str, level: float, generator: torch.Generator) -> Iterator[None]:
    """Run ``model`` with model-side noise ``name`` at parameter ``level`` inside the block
    (module docstring); a level of 0 leaves every output unchanged. Raises SpikeformerError for a
    spiking-only noise on a model without spiking populations."""
    from .model import Drive  # noqa: PLC0415

    if name not in MODEL_NOISE:
        raise SpikeformerError(f"unknown model noise {name!r}; choose from {', '.join(MODEL_NOISE)}")
    if name == "weight_noise":
        weights = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
        saved = [w.detach().clone() for w in weights]
        with torch.no_grad():
            for w in weights:
                w.add_(level * w.std() * torch.randn(w.shape, generator=generator).to(w.device, w.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for w, original in zip(weights, saved):
                    w.copy_(original)
        return
    populations = _populations(model)
    if not populations:
        raise SpikeformerError(f"{name} applies to spiking models only")

    def draw(shape: Sequence[int], like: Tensor) -> Tensor:
        return torch.randn(tuple(shape), generator=generator).to(like.device, like.dtype)

    def uniform(like: Tensor) -> Tensor:
        return torch.rand(like.shape, generator=generator).to(like.device)

    factors: dict[int, Tensor] = {}

    def pre(module: nn.Module, args: tuple) -> Optional[tuple]:
        drive = args[0]
        if not isinstance(drive.total, Tensor):
            raise SpikeformerError(f"{name} is not modelled for qat models")
        if name == "membrane_noise":
            threshold = module.lif.threshold
            noise = level * draw(drive.total.shape, drive.total) * threshold
            return (Drive(drive.total + noise, drive.bias, drive.rest), *args[1:])
        if name == "threshold_jitter":
            key = id(module)
            if key not in factors:  # one factor per neuron [N, F], fixed for the evaluation
                factors[key] = (1.0 + level * draw(drive.total.shape[2:], drive.total)).clamp(min=JITTER_FLOOR)
            f = factors[key]
            return (Drive(drive.total / f, None if drive.bias is None else drive.bias / f, drive.rest), *args[1:])
        return None

    def post(module: nn.Module, args: tuple, output: tuple) -> tuple:
        spikes, state = output
        if name == "spike_deletion":
            return spikes * (uniform(spikes) >= level).to(spikes.dtype), state
        if name == "timing_jitter":
            late = spikes * (uniform(spikes) < level).to(spikes.dtype)
            moved = torch.cat([torch.zeros_like(late[:1]), late[:-1]], 0)
            return torch.maximum(spikes - late, moved), state
        return output

    hooks = []
    for module in populations:
        if name in ("membrane_noise", "threshold_jitter"):
            hooks.append(module.register_forward_pre_hook(pre))
        else:
            hooks.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


# ---------------------------------------------------------------- the suite


def is_spiking(model: nn.Module) -> bool:
    return bool(_populations(model))


def corruption_suite(model: nn.Module, split: Split, cfg: Config, device: str = "cpu",
                     names: Optional[Sequence[str]] = None, severities: Optional[Sequence[int]] = None,
                     log: Callable[[str], None] = lambda s: None, draws: int = 1,
                     samples: Optional[int] = None) -> dict[str, Any]:
    """Accuracy on the clean and corrupted test split -> the robustness.json record.

    ``samples`` scores the first N test samples only (all when None): the full suite on MNIST's
    10,000 is 71 passes over the test set. The record keeps N as ``subset``.

    Every (corruption, severity) draws from its own generator, seeded from ``cfg.seed``, so any
    subset of the suite gives the same numbers as the whole. Spiking-only noise on a model
    without spiking populations is recorded as not applicable. A noise of ``FROZEN_NOISE`` is
    scored on ``draws`` independent draws (devices) and its accuracy is their mean; the first
    draw is the one a single-draw run uses, and every draw is kept in ``draw_accuracies``."""
    if not isinstance(draws, int) or draws < 1:
        raise SpikeformerError(f"draws must be a whole number >= 1, got {draws!r}")
    if samples is not None:
        if not isinstance(samples, int) or samples < 1:
            raise SpikeformerError(f"samples must be a whole number >= 1, got {samples!r}")
        split = dataclasses.replace(split, x_test=split.x_test[:samples], y_test=split.y_test[:samples])
    names = list(names) if names is not None else all_names(cfg.task)
    severities = list(severities) if severities is not None else list(range(1, SEVERITY_LEVELS + 1))
    patch = cfg.patch_size if cfg.task in IMAGE_SIDE else 0
    clean = evaluate(model, split.x_test, split.y_test, device=device,
                     generator=torch.Generator().manual_seed(cfg.seed))["accuracy"]
    record: dict[str, Any] = {"clean_accuracy": clean, "samples": len(split.y_test), "subset": samples,
                              "severities": severities,
                              "corruptions": {}, "parameters": {}, "not_applicable": {}, "draws": draws,
                              "draw_accuracies": {}}
    spiking = is_spiking(model)
    scores, by_kind = [], {"input": [], "model": []}
    for name in names:
        kind = "model" if name in MODEL_NOISE else "input"
        table = MODEL_NOISE if kind == "model" else input_corruptions(cfg.task)
        if name in SPIKING_ONLY and not spiking:
            record["not_applicable"][name] = "spiking-only noise; this model has no spiking neurons"
            continue
        record["corruptions"][name] = {}
        record["parameters"][name] = {str(s): table[name][s - 1] for s in severities}
        for severity in severities:
            seed = cfg.seed + 10 * zlib.crc32(name.encode()) + severity  # the same in any selection
            model_gen = lambda: torch.Generator().manual_seed(cfg.seed)  # noqa: E731 - Poisson encoding: as clean
            if kind == "input":
                x = corrupt(split.x_test, cfg.task, name, severity, torch.Generator().manual_seed(seed), patch)
                acc = evaluate(model, x, split.y_test, device=device, generator=model_gen())["accuracy"]
            else:
                per_draw = []
                for draw in range(draw_count(name, draws)):
                    noise_gen = torch.Generator().manual_seed(draw_seed(seed, draw))
                    with model_noise(model, name, table[name][severity - 1], noise_gen):
                        per_draw.append(evaluate(model, split.x_test, split.y_test, device=device,
                                                 generator=model_gen())["accuracy"])
                acc = sum(per_draw) / len(per_draw)
                if name in FROZEN_NOISE and draws > 1:
                    record["draw_accuracies"].setdefault(name, {})[str(severity)] = per_draw
            record["corruptions"][name][str(severity)] = acc
            scores.append(acc)
            by_kind[kind].append(acc)
            log(f"{name} {severity}: {acc:.4f}")
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    record["mean_corruption_accuracy"] = mean(scores)
    record["mean_input_corruption_accuracy"] = mean(by_kind["input"])
    record["mean_model_noise_accuracy"] = mean(by_kind["model"])
    record["relative_robustness"] = (record["mean_corruption_accuracy"] / clean
                                     if scores and clean > 0 else None)
    return record


def write_robustness(run: str | Path, model: nn.Module, split: Split, cfg: Config, device: str = "cpu",
                     names: Optional[Sequence[str]] = None, severities: Optional[Sequence[int]] = None,
                     log: Callable[[str], None] = lambda s: None, draws: int = 1,
                     out: Optional[str | Path] = None, samples: Optional[int] = None) -> dict[str, Any]:
    """Run the suite on a trained run's model and write ``RUN/robustness.json`` and ``RUN/robustness.png``
    (or ``out`` and the plot beside it, with suffix .png)."""
    path = Path(out) if out is not None else Path(run) / "robustness.json"
    robust = corruption_suite(model, split, cfg, device, names, severities, log=log, draws=draws, samples=samples)
    atomic_write_json(path, {"run": str(run), "task": cfg.task, "model": cfg.model, **robust})
    plot_robustness(robust, path.with_suffix(".png"), f"{cfg.task}/{cfg.model}")
    return robust


def plot_robustness(record: dict[str, Any], path: Any, title: str = "") -> None:
    """Accuracy against severity, one line per corruption, input corruptions and model noise side by side."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ("input", "model")):
        for name, levels in record["corruptions"].items():
            if (name in MODEL_NOISE) != (kind == "model"):
                continue
            xs = [int(s) for s in levels]
            ax.plot(xs, list(levels.values()), marker="o", label=name)
        ax.axhline(record["clean_accuracy"], color="k", linestyle="--", linewidth=1, label="clean")
        ax.set_xlabel("severity")
        ax.set_title("input corruptions" if kind == "input" else "model-side noise")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
