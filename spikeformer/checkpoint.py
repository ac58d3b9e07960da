"""Safe checkpoints: safetensors weights + JSON metadata, written atomically, never unpickled.

A run directory holds ``checkpoint.safetensors`` (model tensors under ``model.``, optimizer
moments under ``optim.``; with ``ema_decay`` the model is the weights' moving average, and the
weights training continues from are under ``train.``) and ``checkpoint.json`` (format version, config, epoch, history,
optimizer hyper-parameters, and the SHA-256 of the weights file so a half-written pair is
detected). Each file is written to a temporary name and renamed into place; the JSON goes
last, so a crash leaves the previous consistent pair or a hash mismatch, never silent mix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import short_repr
from .errors import CheckpointError

FORMAT = "spikeformer-checkpoint"
VERSION = 1
WEIGHTS = "checkpoint.safetensors"
META = "checkpoint.json"
HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")  # read by report and --resume
# the dtypes save_checkpoint writes (model and optimizer tensors); anything else is damage
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool)
OPTIM_KEY = re.compile(r"optim\.(0|[1-9][0-9]{0,8})\.(\w+)")  # optim.<parameter index>.<slot>
MAX_SETTING = 1e6  # numeric optimizer settings (lr, eps, weight_decay) must lie in [0, MAX_SETTING]


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp always makes it 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into flat tensors and a JSON-safe remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, slots in sd["state"].items():
        for slot, value in slots.items():
            tensors[f"optim.{index}.{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state as flat CPU tensors named ``<prefix>.<key>``."""
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(run: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: dict[str, Any], training: nn.Module | None = None) -> None:
    """Write model (+ optimizer) tensors and ``meta`` (must hold ``config`` and ``epoch``);
    ``training``: the module whose weights the optimizer steps, when ``model`` is their average."""
    run = Path(run)
    tensors = _module_tensors("model", model)
    if training is not None:
        tensors.update(_module_tensors("train", training))
    optim_meta = None
    if optimizer is not None:
        extra, optim_meta = _optimizer_tensors(optimizer)
        tensors.update(extra)
    run.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run, prefix=f".{WEIGHTS}.")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT})
        digest = _sha256(Path(tmp))
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, run / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record = dict(meta, format=FORMAT, version=VERSION, weights_sha256=digest, optimizer=optim_meta)
    atomic_write_json(run / META, record)


def load_checkpoint(run: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read a run directory -> ``(meta, model tensors, optimizer tensors)``; never unpickles.

    Raises ``CheckpointError`` with one sentence for a missing, foreign, corrupt or torn checkpoint.
    """
    meta, model, optim, _ = load_training_checkpoint(run)
    return meta, model, optim


def load_training_checkpoint(run: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor],
                                                        dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``load_checkpoint`` plus the weights training continues from (``train.``; empty without
    ``ema_decay``, where they are the model's)."""
    run = Path(run)
    if run.is_file():
        hint = " (.pt/.pth files are pickles, which spikeformer never loads)" if run.suffix in (".pt", ".pth", ".pkl") else ""
        raise CheckpointError(f"{str(run)!r} is a file, not a run directory{hint}; pass the folder given to --out")
    if not run.is_dir():
        raise CheckpointError(f"run directory {str(run)!r} does not exist; pass the folder given to 'train --out'")
    meta_path, weights_path = run / META, run / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"no checkpoint in {str(run)!r} ({META} and {WEIGHTS} expected); train into it first")
    try:
        meta = json.loads(meta_path.read_bytes())
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, a 5000-digit integer, deep nesting
        raise CheckpointError(f"{meta_path} is not valid JSON; the checkpoint is corrupt, retrain or restore it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a spikeformer checkpoint")
    if meta.get("version") != VERSION or isinstance(meta.get("version"), bool):
        raise CheckpointError(f"{meta_path} has checkpoint version {short_repr(meta.get('version'))}; "
                              f"this spikeformer reads {VERSION}")
    if meta.get("weights_sha256") != _sha256(weights_path):
        raise CheckpointError(f"{weights_path} does not match {META} (torn or edited write); restore both files or retrain")
    _check_meta(meta, meta_path)
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({_one_line(exc)})") from None
    for key, value in tensors.items():
        if value.dtype not in DTYPES:
            raise CheckpointError(f"{weights_path} tensor {short_repr(key)} has dtype {value.dtype}, which spikeformer "
                                  "never writes; the checkpoint is corrupt, restore it or retrain")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{weights_path} tensor {short_repr(key)} holds NaN or infinite values; "
                                  "the checkpoint is corrupt, restore it or retrain")
        if key.startswith("optim.") and not OPTIM_KEY.fullmatch(key):
            raise CheckpointError(f"{weights_path} has an optimizer tensor named {short_repr(key)} (expected "
                                  "optim.<index>.<slot>); the checkpoint is corrupt, restore it or retrain")
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    training = {k[len("train."):]: v for k, v in tensors.items() if k.startswith("train.")}
    return meta, model, optim, training


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _number(value: Any) -> bool:
    """A finite JSON number (not a bool; a huge integer does not count)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_meta(meta: dict[str, Any], where: Path) -> None:
    """The fields ``load_run``, ``--resume``, ``eval`` and ``report`` read, with their types."""
    def bad(what: str) -> None:
        raise CheckpointError(f"{where} {what}; the checkpoint is corrupt, restore it or retrain")

    if not isinstance(meta.get("config"), dict):
        bad(f"has config {short_repr(meta.get('config'))}, not a table of config keys")
    epoch = meta.get("epoch")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch < 2 ** 31):
        bad(f"has epoch {short_repr(epoch)}, not a whole number in [0, 2**31)")
    history = meta.get("history")
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        bad(f"has history {short_repr(history)}, not a list of epoch records")
    for row in history:
        missing = [key for key in HISTORY_KEYS if not _number(row.get(key))]
        if missing:
            bad(f"has an epoch record without a finite number for {missing[0]!r}")
    seconds = meta.get("train_seconds")
    if not (_number(seconds) and seconds >= 0):
        bad(f"has train_seconds {short_repr(seconds)}, not a number >= 0")
    optimizer = meta.get("optimizer")
    if optimizer is not None and not (isinstance(optimizer, dict) and isinstance(optimizer.get("param_groups"), list)
                                      and all(isinstance(g, dict) for g in optimizer["param_groups"])):
        bad(f"has optimizer {short_repr(optimizer)}, not a record with a list of param_groups")


def restore_optimizer(optimizer: torch.optim.Optimizer, meta: dict[str, Any],
                      tensors: dict[str, torch.Tensor]) -> None:
    """Load the optimizer state written by ``save_checkpoint``."""
    info = meta.get("optimizer")
    if info is None:
        raise CheckpointError("the checkpoint holds no optimizer state, so it cannot be resumed")
    if not isinstance(info, dict) or not isinstance(info.get("param_groups"), list):
        raise CheckpointError("the checkpoint's optimizer record has no list of param_groups; restore it or retrain")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = OPTIM_KEY.fullmatch(key)
        if match is None:
            raise CheckpointError(f"optimizer tensor {short_repr(key)} is not named optim.<index>.<slot>; "
                                  "restore the checkpoint or retrain")
        index, slot = int(match.group(1)), match.group(2)
        if index >= len(params):
            raise CheckpointError(f"optimizer tensor {key!r} is for parameter {index}, but the model has "
                                  f"{len(params)}; the checkpoint is from another model")
        _check_slot(key, slot, value, params[index])
        state.setdefault(index, {})[slot] = value
    groups = _check_groups(info["param_groups"], optimizer.param_groups)
    slots = {frozenset(s) for s in state.values()}
    if state and isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):  # the slots Adam's step reads
        slots.add(frozenset({"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if groups[0].get("amsgrad") else set())))
    if len(slots) > 1:
        raise CheckpointError(f"optimizer state slots differ between parameters ({sorted(map(sorted, slots))}); "
                              "restore the checkpoint or retrain")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model ({_one_line(exc)})") from None


def _check_slot(key: str, slot: str, value: torch.Tensor, param: torch.Tensor) -> None:
    """``step`` is a count >= 1 (Adam divides by 1 - beta ** step); other slots have the parameter's shape."""
    if slot == "step":
        if value.numel() != 1 or not float(value.double().reshape(())) >= 1:
            raise CheckpointError(f"optimizer tensor {key!r} must be a step count >= 1; restore the checkpoint or retrain")
    elif value.shape != param.shape:
        raise CheckpointError(f"optimizer tensor {key!r} has shape {tuple(value.shape)}, its parameter "
                              f"{tuple(param.shape)}; the checkpoint is from another model")


def _check_groups(saved: list[Any], current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Saved param_groups checked against the optimizer's own: same groups and parameter ids,
    the same flags (amsgrad, foreach, ...), numbers in [0, MAX_SETTING], betas in [0, 1). A
    setting the saved group lacks (written by an older torch) keeps the optimizer's value."""
    if len(saved) != len(current):
        raise CheckpointError(f"the checkpoint has {len(saved)} optimizer param_groups, this optimizer "
                              f"{len(current)}; the checkpoint is from another model")
    groups, start = [], 0
    for i, (old, now) in enumerate(zip(saved, current)):
        if not isinstance(old, dict):
            raise CheckpointError(f"optimizer param_group {i} is {short_repr(old)}, not a record; restore it or retrain")
        ids = list(range(start, start + len(now["params"])))
        start += len(ids)
        if old.get("params") != ids or any(isinstance(x, bool) for x in old.get("params")):
            raise CheckpointError(f"optimizer param_group {i} lists parameters {short_repr(old.get('params'))}, "
                                  f"expected {short_repr(ids)}; the checkpoint is from another model")
        group = dict(old)
        for key, value in now.items():
            if key in ("params", "param_names"):
                continue
            if key not in group:
                group[key] = value
                continue
            got = group[key]
            where = f"optimizer setting {key!r} is {short_repr(got)} in the checkpoint"
            if isinstance(value, bool) or value is None:
                if got is not value:
                    raise CheckpointError(f"{where}, {value!r} in this optimizer; the checkpoint is from another "
                                          "optimizer, restore it or retrain")
            elif isinstance(value, (int, float)):
                if not (_number(got) and 0 <= got <= MAX_SETTING):
                    raise CheckpointError(f"{where}; expected a number in [0, {MAX_SETTING:g}], restore it or retrain")
            elif isinstance(value, (tuple, list)):
                if not (isinstance(got, list) and len(got) == len(value) and all(_number(x) and 0 <= x < 1 for x in got)):
                    raise CheckpointError(f"{where}; expected {len(value)} numbers in [0, 1), restore it or retrain")
                group[key] = tuple(got) if isinstance(value, tuple) else got
        groups.append(group)
    return groups


def load_model_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load model tensors strictly, turning a mismatch into one clear error."""
    expected = model.state_dict()
    for key, value in tensors.items():
        if key in expected and value.dtype != expected[key].dtype:
            raise CheckpointError(f"checkpoint weights do not fit the configured model: tensor {short_repr(key)} is "
                                  f"{value.dtype}, the model's {expected[key].dtype}; restore the checkpoint or retrain")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit the configured model: {_one_line(exc)}") from None
