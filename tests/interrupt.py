"""Stop a training run as a crash would: right after the checkpoint of a given epoch, or with a
loss that turns NaN (a diverging run)."""

from __future__ import annotations

from pathlib import Path

from spikeformer.config import Config


def train_until(cfg: Config, out: Path, stop_after: int) -> int:
    """Run ``train`` quietly and interrupt it right after the checkpoint of epoch ``stop_after``;
    returns that epoch, or -1 when training ended first."""
    import spikeformer.train as train_mod

    original = train_mod.save_checkpoint

    class Stop(Exception):
        pass

    def save_then_stop(run, model, optimizer, meta, **kw):
        original(run, model, optimizer, meta, **kw)
        if meta["epoch"] == stop_after:
            raise Stop

    train_mod.save_checkpoint = save_then_stop
    try:
        train_mod.train(cfg, out, progress=False, log=lambda s: None)
    except Stop:
        return stop_after
    finally:
        train_mod.save_checkpoint = original
    return -1


def poison_loss(monkeypatch, module, after_calls: int, name: str = "cross_entropy") -> None:
    """Make ``module.<name>`` (the loss it calls) return NaN from call ``after_calls + 1`` on (a diverging run)."""
    real, calls = getattr(module, name), {"n": 0}

    def poisoned(logits, target, **kw):
        calls["n"] += 1
        loss = real(logits, target, **kw)
        return loss * float("nan") if calls["n"] > after_calls else loss

    monkeypatch.setattr(module, name, poisoned)
