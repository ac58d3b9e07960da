"""spikeformer: spiking transformers whose attention is an event-driven fast-weight memory.

Quick use::

    from spikeformer import Config
    from spikeformer.train import train
    metrics = train(Config(task="digits", epochs=5), "runs/digits")

Submodules: ``neurons`` (LIF, SPEC §2.1), ``attention`` (spiking attention, §2.3),
``model`` (the transformer and its ANN baseline), ``data``, ``train``, ``metrics``,
``checkpoint``, ``report``, ``cli``.
"""

from .attention import AttentionState, spiking_attention
from .config import Config, load_config
from .errors import CheckpointError, ConfigError, ShapeError, SpikeformerError, TrainingDiverged
from .model import ANNTransformer, Probe, Spikeformer, build_model
from .neurons import LIF, LIFParameters, LIFState, lif_step

__version__ = "0.1.0"

__all__ = [
    "AttentionState", "spiking_attention", "Config", "load_config", "CheckpointError", "ConfigError",
    "ShapeError", "SpikeformerError", "TrainingDiverged", "ANNTransformer", "Probe", "Spikeformer",
    "build_model", "LIF", "LIFParameters", "LIFState", "lif_step",
]
