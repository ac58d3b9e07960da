"""Safe checkpoints: safetensors weights + JSON metadata, written atomically, never unpickled.

A run directory holds ``checkpoint.safetensors`` (model tensors under ``model.``, optimizer
moments under ``optim.``) and ``checkpoint.json`` (format version, config, epoch, history,
optimizer hyper-parameters, and the SHA-256 of the weights file so a half-written pair is
detected). Each file is written to a temporary name and renamed into place; the JSON goes
last, so a crash leaves the previous consistent pair or a hash mismatch, never silent mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError

FORMAT = "spikeformer-checkpoint"
VERSION = 1
WEIGHTS = "checkpoint.safetensors"
META = "checkpoint.json"


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


def save_checkpoint(run: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    meta: dict[str, Any]) -> None:
    """Write model (+ optimizer) tensors and ``meta`` (must hold ``config`` and ``epoch``)."""
    run = Path(run)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
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
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{meta_path} is not valid JSON; the checkpoint is corrupt, retrain or restore it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a spikeformer checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_path} has checkpoint version {meta.get('version')!r}; this spikeformer reads {VERSION}")
    if meta.get("weights_sha256") != _sha256(weights_path):
        raise CheckpointError(f"{weights_path} does not match {META} (torn or edited write); restore both files or retrain")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({exc})") from None
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    return meta, model, optim


def restore_optimizer(optimizer: torch.optim.Optimizer, meta: dict[str, Any],
                      tensors: dict[str, torch.Tensor]) -> None:
    """Load the optimizer state written by ``save_checkpoint``."""
    info = meta.get("optimizer")
    if info is None:
        raise CheckpointError("the checkpoint holds no optimizer state, so it cannot be resumed")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, slot = key.split(".", 2)
        state.setdefault(int(index), {})[slot] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model ({exc})") from None


def load_model_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load model tensors strictly, turning a mismatch into one clear error."""
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"checkpoint weights do not fit the configured model: {first}") from None
