"""Training with AdamW, warm-up + cosine schedule, exact resume: surrogate gradients (BPTT), or a
local rule of rules/ whose weight changes take the gradients' place (docs/rules.md).

Determinism: the initial weights come from ``seed``; each epoch's shuffling (and Poisson
encoding) draws from a generator seeded by ``(seed, epoch)``, and the learning rate is a pure
function of the step, so stopping after epoch k and resuming gives the same weights as an
uninterrupted run. A checkpoint is written after every epoch; a NaN/inf loss stops training
with ``TrainingDiverged`` and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .checkpoint import (atomic_write_json, load_checkpoint, load_model_weights, load_training_checkpoint,
                         restore_optimizer, save_checkpoint)
from .config import Config, config_from_dict
from .data import Split, load_task, shift_augment
from . import distributed
from .errors import CheckpointError, ConfigError, DistributedError, SpikeformerError, TrainingDiverged
from .metrics import ENERGY_NOTE, count_params, efficiency, energy_pj, evaluate, token_loss
from .model import Probe, build_model


CALIBRATION_SAMPLES = 4096  # training samples used to recompute BatchNorm statistics each epoch
RULES_GROUP = "spikeformer.rules"  # entry point of the local rules (rules/: spikeformer never imports it)


def local_learner(cfg: Config, model: nn.Module) -> Any:
    """The local rule's per-batch step (``rules.driver.LocalLearner``), found through the
    ``spikeformer.rules`` entry point: ``step(x, y, generator) -> (loss, logits)`` sets ``.grad``."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=RULES_GROUP):
        return ep.load()(cfg, model)
    raise ConfigError(f"rule {cfg.rule!r} needs the rules package, which is not installed; reinstall the "
                      "project (make setup, or pip install -e .)")


def parameter_groups(cfg: Config, model: nn.Module, learner: Any) -> list[dict[str, Any]]:
    """AdamW's groups: one, or with ``rule_lr`` set, the weights the local rule trains (at
    ``rule_lr / lr`` of the schedule) apart from the rest (the readout, at the schedule's lr)."""
    if learner is None or cfg.rule_lr <= 0 or not learner.layers:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    ruled = {id(layer.weight) for layer in learner.layers}
    return [{"params": [p for p in model.parameters() if id(p) in ruled], "lr_scale": cfg.rule_lr / cfg.lr},
            {"params": [p for p in model.parameters() if id(p) not in ruled], "lr_scale": 1.0}]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return name


def learning_rate(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then constant or cosine decay to 0."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def augment(x: torch.Tensor, cfg: Config, generator: torch.Generator) -> torch.Tensor:
    """Training-time augmentation of token batches ``[B, N, F]`` (digits shifts; else identity)."""
    if cfg.augment_shift:
        return shift_augment(x, cfg.patch_size, cfg.augment_shift, generator)
    return x


@torch.no_grad()
def recalibrate_norms(model: nn.Module, x: torch.Tensor, device: str, batch_size: int,
                      generator: torch.Generator) -> None:
    """Recompute every BatchNorm's running statistics as sample-weighted averages over ``x`` [S, N, F].

    The running averages kept during training are dominated by the last batches (momentum
    0.1); their noise, not the weights, made test accuracy jump between late epochs. Like
    ``torch.optim.swa_utils.update_bn``, but with our generator so Poisson draws repeat
    (that keeps resume bit-exact), and weighted by batch size (update_bn's cumulative average
    weights a short last batch like a full one): each running mean is the sample-weighted
    average of that norm's per-batch means.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
    was_training = model.training
    model.train()
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        for m in norms:  # running = (1 - f) running + f batch_stat with f = n_b / n_seen
            m.momentum = len(batch) / (start + len(batch))
        model(batch.to(device), generator=generator)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def subset(split: Split, cfg: Config) -> Split:
    """The split with ``cfg.train_size`` training samples drawn at random (seeded by ``cfg.seed``;
    0 = all); the test split is untouched."""
    if not cfg.train_size:
        return split
    if cfg.train_size > len(split.x_train):
        raise ConfigError(f"train_size {cfg.train_size} exceeds the {len(split.x_train)} training samples of "
                          f"task {cfg.task!r}; use 0 (all) or a smaller size")
    keep = torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.train_size]
    return dataclasses.replace(split, x_train=split.x_train[keep], y_train=split.y_train[keep])


def synapse_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every synapse weight (``*.linear.weight``, conv weights), keyed by parameter name."""
    return {name: p.detach().clone() for name, p in model.named_parameters()
            if name.endswith("linear.weight") or name.endswith("conv1.weight") or name.endswith("conv2.weight")}


def make_model(cfg: Config, split: Split) -> nn.Module:
    return build_model(cfg, split.tokens, split.features, split.num_classes)


def init_weights(model: nn.Module, cfg: Config) -> None:
    """Start from the weights of the run ``cfg.init_from`` (fine-tuning, e.g. qat); its
    architecture must match ``cfg``."""
    meta, weights, _ = load_checkpoint(cfg.init_from)
    source = config_from_dict(meta.get("config", {}), source=str(Path(cfg.init_from) / "checkpoint.json"))
    keys = ("task", "model", "mode", "stem", "dim", "heads", "head_dim", "depth", "mlp_ratio", "variant",
            "patch_size", "learn_beta", "learn_threshold", "learn_decay")
    differ = [k for k in keys if getattr(source, k) != getattr(cfg, k)]
    if differ:
        raise ConfigError(f"init_from run {cfg.init_from} has a different architecture ({', '.join(differ)}); "
                          "fine-tune with the run's own config")
    load_model_weights(model, weights)


def measure(model: nn.Module, split: Split, device: str, cfg: Config, samples: int = 256) -> dict[str, Any]:
    """Synaptic events, energy estimate and spike rate per test sample (first ``samples``), and
    their breakdown per layer (``efficiency``)."""
    probe = Probe()
    x, y = split.x_test[:samples], split.y_test[:samples]
    evaluate(model, x, y, device=device, probe=probe, generator=torch.Generator().manual_seed(cfg.seed))
    n = len(x)
    ac, mac = probe.ac / n, probe.mac / n
    return {
        "synops_per_sample": ac,
        "macs_per_sample": mac,
        "energy_pj_per_sample": energy_pj(ac, mac),
        "spike_rate": probe.spike_rate(),
        "efficiency": efficiency(model, probe, n),
    }


def check_out_dir(out: Path) -> None:
    """Raise ``ConfigError`` when ``out`` cannot become a run directory: it (or a parent) is a
    file, or the nearest existing folder is not writable. Called before any training."""
    existing = out
    while not os.path.lexists(existing):  # nearest existing path: out itself or the folder that will hold it
        existing = existing.parent
    if not existing.is_dir():
        where = "is an existing file" if existing == out else f"lies under {str(existing)!r}, which is a file"
        raise ConfigError(f"--out {str(out)!r} {where}, not a run directory; choose another --out path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out)!r} is not writable (no write permission on {str(existing)!r}); "
                          "choose an --out in a folder you can write to")


def train(cfg: Config, out: str | Path, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] = print,
          epoch_log: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """Train ``cfg`` into the run directory ``out``; returns the metrics written to metrics.json.
    ``epoch_log`` receives each finished epoch's history row once its checkpoint is written.

    Under torchrun (``WORLD_SIZE`` > 1) every process trains its share of each global batch
    (``spikeformer/distributed.py``); rank 0 writes the checkpoints and metrics, and the others
    return an empty dict."""
    out = Path(out)
    device = resolve_device(cfg.device)
    world = distributed.setup(device)
    try:
        metrics = _train(cfg, out, resume, progress and world.main, log, device, world, epoch_log)
    except SpikeformerError:
        raise
    except (RuntimeError, OSError) as exc:
        if world.distributed:  # a collective failed: a peer is gone (no barrier: it would wait for the dead)
            raise distributed.lost_peer(world, exc, str(out)) from None
        raise
    distributed.teardown(world)
    return metrics


def moving_average(cfg: Config, model: nn.Module) -> Optional[AveragedModel]:
    """With ``ema_decay``: the exponential moving average of ``model``'s parameters, updated after
    every optimizer step; it is the model evaluated, checkpointed and exported. Its norms'
    statistics are recalibrated for its own weights each epoch (``recalibrate_norms``)."""
    if not cfg.ema_decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False)


def _load_run(cfg: Config, out: Path, resume: bool, log: Callable[[str], None], model: nn.Module,
              optimizer: torch.optim.Optimizer, average: Optional[AveragedModel] = None
              ) -> tuple[int, list[dict[str, Any]], float]:
    """Resume ``out`` into model, optimizer (and the moving ``average``), or check that a fresh run
    may start there; returns ``(start_epoch, history, train_seconds)``."""
    if resume:
        meta, weights, optim, live = load_training_checkpoint(out)
        saved = config_from_dict(meta["config"], source=str(out / "checkpoint.json"))
        if saved.to_dict() != cfg.to_dict():
            changed = sorted(k for k, v in cfg.to_dict().items() if saved.to_dict()[k] != v)
            raise ConfigError(f"--resume needs the same config as the run; these keys differ: {changed}")
        if average is not None:  # the checkpoint's model is the average; training continues from "train."
            if not live:
                raise CheckpointError(f"{out} has no training weights beside its averaged model; the checkpoint is "
                                      "corrupt, restore it or retrain")
            load_model_weights(average.module, weights)
            average.n_averaged.fill_(1)
            weights = live
        load_model_weights(model, weights)
        restore_optimizer(optimizer, meta, optim)
        start_epoch = meta["epoch"] + 1
        if start_epoch >= cfg.epochs:
            log(f"run {out} already finished {cfg.epochs} epochs; nothing to resume")
        return start_epoch, meta["history"], meta["train_seconds"]
    if (out / "checkpoint.json").exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose a new --out")
    if cfg.init_from:
        init_weights(model, cfg)
    return 0, [], 0.0


def batch_gradients(model: nn.Module, forward: nn.Module, learner: Any, xb: torch.Tensor, yb: torch.Tensor,
                    batch: int, generator: torch.Generator, cfg: Config, world: distributed.World,
                    use_amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part ``xb [b, N, F]``, ``yb [b]`` of a global batch of ``batch`` samples ->
    ``(loss, logits)`` (the mean loss over ``xb``), leaving in ``.grad`` the gradient of the global
    batch's mean loss (BPTT through ``forward``, the model or its DDP wrapper) or the local rule's
    weight change, the same on every rank."""
    with distributed.synced_norms(world):
        if learner is None:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits, _ = forward(xb, generator=generator)
            loss = token_loss(logits, yb, label_smoothing=cfg.label_smoothing)
        else:  # a local rule: its weight changes arrive in .grad, no backward pass
            loss, logits = learner.step(xb, yb, generator)
    share = len(xb) / batch  # this rank's part of the global batch
    if learner is None:
        for p in model.parameters():
            p.grad = None
        # DDP averages over ranks: scaled by share * world, every sample of the batch weighs the same
        (loss * (share * world.size) if world.distributed else loss).backward()
    else:
        distributed.reduce_gradients(list(model.parameters()), share, world)
    return loss, logits


def _agreed(world: distributed.World, step: Callable[[], Any]) -> Any:
    """Run ``step`` on every rank; when it fails on any, every rank stops: the failing rank with
    its own error, the others with one line saying which rank to look at."""
    error: Optional[BaseException] = None
    result = None
    try:
        result = step()
    except SpikeformerError as exc:
        error = exc
    if not distributed.agree(error is None, world):
        if error is not None:
            raise error
        raise DistributedError(f"rank {world.rank}: another rank could not start (its error says why); "
                               "every rank needs the data, the config and, with --resume, the run directory")
    return result


def _train(cfg: Config, out: Path, resume: bool, progress: bool, log: Callable[[str], None], device: str,
           world: distributed.World, epoch_log: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    # fail before the first epoch, not when the first checkpoint is written
    _agreed(world, lambda: check_out_dir(out) if world.main else None)
    distributed.check_batch(cfg.batch_size, world)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    split = _agreed(world, lambda: subset(load_task(cfg), cfg))

    torch.manual_seed(cfg.seed)
    model = make_model(cfg, split).to(device)
    learner = local_learner(cfg, model) if cfg.rule != "bptt" else None
    optimizer = torch.optim.AdamW(parameter_groups(cfg, model, learner), lr=cfg.lr, weight_decay=cfg.weight_decay)
    average = moving_average(cfg, model)
    start_epoch, history, train_seconds = _agreed(world, lambda: _load_run(cfg, out, resume, log, model, optimizer,
                                                                           average))
    evaluated = model if average is None else average.module  # what is evaluated, checkpointed and exported
    # BPTT under several processes: DDP averages the gradients as backward produces them
    forward = model
    if world.distributed and learner is None:
        forward = nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)

    steps_per_epoch = math.ceil(len(split.x_train) / cfg.batch_size)
    use_amp = cfg.amp and device == "cuda"
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"train {cfg.task}/{cfg.model}", unit="epoch")
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        before = synapse_weights(model)
        model.train()
        gen = epoch_generator(cfg.seed, epoch)
        order = torch.randperm(len(split.x_train), generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb, yb = split.x_train[idx], split.y_train[idx]
            xb = augment(xb, cfg, gen)  # the whole global batch, so every rank draws what one process draws
            if world.distributed:
                part = distributed.shard(len(idx), world)
                if len(idx) < world.size:  # a last batch too short to give every rank a sample
                    continue
                xb, yb = xb[part], yb[part]
            xb, yb = xb.to(device), yb.to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch * steps_per_epoch + i, steps_per_epoch) * group["lr_scale"]
            loss, logits = batch_gradients(model, forward, learner, xb, yb, len(idx), gen, cfg, world, use_amp)
            finite = bool(torch.isfinite(loss))
            if not distributed.agree(finite, world):
                if bar is not None:
                    bar.close()
                kept = f"epoch {epoch - 1}" if epoch > 0 else "none (no epoch finished)"
                where = f" on rank {world.rank}" if world.distributed and not finite else ""
                value = loss.item() if not finite else "non-finite on another rank"
                raise TrainingDiverged(
                    f"loss became {value} at epoch {epoch} step {i}{where}; training stopped, last good "
                    f"checkpoint: {kept} in {out}; lower lr or raise grad_clip"
                )
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            loss_sum += loss.item() * yb.numel()
            correct += int((logits.argmax(-1) == yb).sum())
        loss_sum, correct = distributed.all_sum([loss_sum, float(correct)], world)
        if world.main:
            # the statistics describe the inputs training showed the model (augmented) or, with
            # norm_calibration = "clean", inputs as the test presents them
            calib = split.x_train[torch.randperm(len(split.x_train), generator=gen)[:CALIBRATION_SAMPLES]]
            if cfg.norm_calibration == "augmented":
                calib = augment(calib, cfg, gen)
            if not cfg.qat:  # qat folds the norms at their running statistics: they stay frozen
                recalibrate_norms(evaluated, calib, device, 256, gen)
        train_seconds += time.perf_counter() - t0
        if not world.main:  # rank 0 alone evaluates, logs and checkpoints
            continue
        test = evaluate(evaluated, split.x_test, split.y_test, device=device,
                        generator=torch.Generator().manual_seed(cfg.seed))
        row = {"epoch": epoch, "train_loss": loss_sum / split.y_train.numel(),
               "train_accuracy": correct / split.y_train.numel(),
               "test_loss": test["loss"], "test_accuracy": test["accuracy"],
               "lr": optimizer.param_groups[0]["lr"], "seconds": train_seconds,
               # how far each layer's weights moved this epoch (Frobenius norm of the change)
               "update_norms": {name: float((p.detach() - before[name]).norm())
                                for name, p in model.named_parameters() if name in before}}
        history.append(row)
        save_checkpoint(out, evaluated, optimizer, {"config": cfg.to_dict(), "epoch": epoch, "history": history,
                                                "train_seconds": train_seconds, "device": device,
                                                **({"vocabulary": split.vocabulary} if split.vocabulary else {})},
                        training=model if average is not None else None)
        if epoch_log is not None:
            epoch_log(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", test=f"{row['test_accuracy']:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    if not world.main:
        return {}
    if not history:
        raise CheckpointError(f"no finished epoch in {out}; nothing to report")

    metrics = run_metrics(cfg, evaluated, split, device, history, train_seconds)
    metrics.update(world_size=world.size, global_batch=cfg.batch_size)
    atomic_write_json(out / "metrics.json", metrics)
    name = f"{cfg.task}/{cfg.model}" + (f"/{cfg.variant}" if cfg.model == "spikeformer" else "")
    log(f"{name}: test accuracy {metrics['test_accuracy']:.4f}, "
        f"{metrics['energy_pj_per_sample'] / 1e6:.3f} uJ/sample (estimate), {train_seconds:.0f} s training -> {out}"
        + (f" ({world.size} processes)" if world.distributed else ""))
    return metrics


def run_metrics(cfg: Config, model: nn.Module, split: Split, device: str,
                history: list[dict[str, float]], train_seconds: float) -> dict[str, Any]:
    """The SPEC §4 metrics.json record of a trained model."""
    params, attention_params = count_params(model)
    energy = measure(model, split, device, cfg)
    language = language_metrics(cfg, model, split, history, train_seconds) if cfg.every_token else {}
    return {
        "task": cfg.task, "model": cfg.model, "rule": cfg.rule, "variant": cfg.variant, "mode": cfg.mode,
        "test_accuracy": history[-1]["test_accuracy"],
        "best_test_accuracy": max(r["test_accuracy"] for r in history),
        "train_seconds": train_seconds, "params": params, "attention_params": attention_params,
        "latency_steps": int(getattr(model, "latency", 0)), "delays": cfg.delays,
        **energy, "energy_note": ENERGY_NOTE, **language,
        "epochs": len(history), "seed": cfg.seed, "device": device,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "history": history, "config": cfg.to_dict(),
    }


def language_metrics(cfg: Config, model: nn.Module, split: Split, history: list[dict[str, float]],
                     train_seconds: float) -> dict[str, Any]:
    """A language model's validation loss per character (nats and bits), its training and
    generation speed in characters per second, and the corpus' unigram and bigram
    cross-entropies for scale (``spikeformer/generate.py``, ``spikeformer/data.py``)."""
    from .data import ngram_bits_per_char
    from .generate import generation_speed

    loss = history[-1]["test_loss"]
    model_cpu = model.to("cpu").eval()
    return {"val_loss_nats": loss, "val_bits_per_char": loss / math.log(2),
            "tokens_per_second": len(history) * split.y_train.numel() / train_seconds if train_seconds else 0.0,
            **generation_speed(model_cpu, cfg, split.vocabulary),
            **ngram_bits_per_char(split.y_train.reshape(-1), split.y_test.reshape(-1), split.num_classes)}


def load_run(run: str | Path, device: str = "cpu") -> tuple[Config, nn.Module, Split, dict[str, Any]]:
    """Rebuild a trained model from its run directory (safetensors + JSON only)."""
    meta, weights, _ = load_checkpoint(run)
    cfg = config_from_dict(meta.get("config", {}), source=str(Path(run) / "checkpoint.json"))
    split = load_task(cfg)
    model = make_model(cfg, split)
    load_model_weights(model, weights)
    return cfg, model.to(device).eval(), split, meta
