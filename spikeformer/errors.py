"""Errors meant for users: each message is one sentence naming the bad thing and a fix.

The CLI prints ``error: <message>`` for these and exits non-zero, with no traceback.
"""

from __future__ import annotations


class SpikeformerError(Exception):
    """Base class of every user-facing error in spikeformer."""


class ConfigError(SpikeformerError, ValueError):
    """A configuration value or key is invalid."""


class ShapeError(SpikeformerError, ValueError):
    """A tensor handed to a model or operator has the wrong shape."""


class CheckpointError(SpikeformerError, ValueError):
    """A checkpoint is missing, corrupt, or not in the safe safetensors + JSON format."""


class TrainingDiverged(SpikeformerError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DistributedError(SpikeformerError, RuntimeError):
    """Multi-process training stopped: another rank failed or went away (the last checkpoint is kept)."""


class DataError(SpikeformerError, RuntimeError):
    """A data set's files are missing or altered (the message names the package to install)."""
