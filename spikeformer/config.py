"""One flat, validated configuration for model, data and training (read from TOML).

Unknown keys, wrong types and out-of-range values raise ``ConfigError`` with one sentence
naming the key and the fix. Every field is commented where it is declared.
"""

from __future__ import annotations

import dataclasses
import math
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (the Lava environment) has no tomllib
    import tomli as tomllib

CHOICES: dict[str, tuple] = {
    "task": ("digits", "mnist1d", "recall"),
    "model": ("spikeformer", "ann"),
    "mode": ("global", "causal"),
    "variant": ("hebbian", "stdp", "three_factor", "delta"),
    "attention_impl": ("naive", "recurrent", "parallel"),
    "encoder": ("direct", "poisson"),
    "stem": ("linear", "conv1d"),
    "delays": ("none", "loihi"),
    "surrogate": ("fast_sigmoid", "atan", "sigmoid", "triangular"),
    "schedule": ("cosine", "constant"),
    "device": ("auto", "cpu", "cuda"),
    "rule": ("bptt",),
    "recall_layout": ("pairs", "interleaved"),
}


@dataclass
class Config:
    # --- task and data (SPEC §5) ---
    task: str = "digits"  # digits | mnist1d | recall
    patch_size: int = 2  # digits: square patch side in pixels (8x8 image -> (8/p)^2 tokens)
    augment_shift: int = 0  # digits: random translation of up to this many pixels while training
    recall_pairs: int = 4  # recall: key/value pairs before the query
    recall_pairs_min: int = 0  # recall: curriculum start (0 = no curriculum, always recall_pairs)
    recall_layout: str = "pairs"  # recall: pairs (key+value in one token) | interleaved (key token, value token)
    recall_keys: int = 16  # recall: number of distinct keys
    recall_values: int = 16  # recall: number of distinct values (= classes)
    recall_train: int = 20000  # recall: generated training sequences
    recall_test: int = 2000  # recall: generated test sequences
    data_seed: int = 0  # seed of generated data (recall)
    # --- model ---
    model: str = "spikeformer"  # spikeformer | ann (softmax baseline of the same width/depth)
    mode: str = "global"  # global (all tokens every step) | causal (one token per step, streaming)
    variant: str = "hebbian"  # attention state update: hebbian | stdp | three_factor | delta
    attention_impl: str = "recurrent"  # naive | recurrent | parallel (hebbian only)
    dim: int = 64  # residual width D
    heads: int = 4  # attention heads H
    head_dim: int = 16  # per-head width d (state is d x d per head)
    depth: int = 2  # number of [attention + MLP] blocks (0: a feed-forward SNN, stem -> LIF -> readout)
    mlp_ratio: int = 2  # hidden width of the spiking MLP = mlp_ratio * dim
    stem: str = "linear"  # token embedding: linear (per token) | conv1d (two conv layers over tokens)
    conv_channels: int = 32  # conv1d stem: channels of the first conv
    time_steps: int = 4  # global mode: steps T each sample is shown
    steps_per_token: int = 2  # causal mode: steps each token is held
    encoder: str = "direct"  # direct (current injection) | poisson (Bernoulli rate, input in [0, 1])
    delays: str = "none"  # none | loihi (one-step delay per Dense, SPEC §2.2)
    # --- neurons (SPEC §2.1) ---
    beta: float = 0.5  # membrane decay per step (1 - dv)
    alpha: float = 0.0  # synaptic current decay per step (1 - du); 0 = no current state
    threshold: float = 1.0  # firing threshold
    surrogate: str = "fast_sigmoid"  # snnTorch surrogate in the backward pass
    slope: float = 5.0  # surrogate shape parameter
    learn_beta: bool = False  # per-neuron learnable membrane decay
    learn_threshold: bool = False  # per-neuron learnable threshold
    # --- attention (SPEC §2.3) ---
    attn_decay: float = 0.9  # initial lambda per head
    learn_decay: bool = True  # lambda learnable (sigmoid-parametrised)
    attn_scale: float = 0.0  # read scale; 0 = 1 / head_dim
    a_plus: float = 1.0  # stdp potentiation amplitude (initial, learnable)
    a_minus: float = 0.5  # stdp depression amplitude (initial, learnable)
    pre_decay: float = 0.5  # stdp pre-trace decay
    post_decay: float = 0.5  # stdp post-trace decay
    eligibility_decay: float = 0.5  # three_factor eligibility decay
    delta_rate: float = 0.5  # delta learning rate beta (initial, learnable, in (0, 1))
    # --- training ---
    rule: str = "bptt"  # learning rule; local rules arrive with rules/
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_epochs: int = 1
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    label_smoothing: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # bf16 autocast on CUDA
    num_threads: int = 0  # torch CPU threads; 0 = torch default
    init_from: str = ""  # run directory whose weights start training (fine-tuning); "" = random init
    qat: bool = False  # quantisation-aware: weights on Lava's fixed-point grid in the forward pass
    qat_vth: int = 256  # integer threshold of that grid (neuromorphic.quantize's vth)
    # --- free-form notes carried into metrics.json ---
    notes: str = ""  # free text copied into metrics.json
    extra: dict = field(default_factory=dict, repr=False)  # not settable from TOML

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for key, options in CHOICES.items():
            value = getattr(self, key)
            if value not in options:
                raise ConfigError(f"config key {key!r} is {value!r}; choose one of {list(options)}")
        positive = ("patch_size", "recall_pairs", "recall_keys", "recall_values", "recall_train",
                    "recall_test", "dim", "heads", "head_dim", "mlp_ratio", "conv_channels",
                    "time_steps", "steps_per_token", "epochs", "batch_size")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key {key!r} must be a positive integer, got {getattr(self, key)}")
        if self.depth < 0:
            raise ConfigError(f"config key 'depth' must be >= 0 (0: no attention blocks), got {self.depth}")
        for key in ("beta", "alpha"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"config key {key!r} must lie in [0, 1], got {getattr(self, key)}")
        if self.learn_beta and not 0.0 < self.beta < 1.0:
            raise ConfigError(f"learn_beta needs beta strictly inside (0, 1), got {self.beta}")
        # sigmoid-parametrised (learnable) decays: the open interval
        for key in ("attn_decay", "pre_decay", "post_decay", "eligibility_decay"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ConfigError(f"config key {key!r} must lie in (0, 1), got {getattr(self, key)}")
        for key in ("a_plus", "a_minus", "attn_scale", "weight_decay", "grad_clip", "warmup_epochs",
                    "num_threads", "recall_pairs_min", "data_seed"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(self, key)}")
        if self.a_plus == 0:
            raise ConfigError("config key 'a_plus' must be > 0 (potentiation is the Hebbian term)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"config key 'label_smoothing' must lie in [0, 1), got {self.label_smoothing}")
        if not math.isfinite(self.lr):
            raise ConfigError(f"config key 'lr' must be finite, got {self.lr}")
        if not 0.0 < self.delta_rate < 1.0:
            raise ConfigError(f"config key 'delta_rate' must lie in (0, 1), got {self.delta_rate}")
        for key in ("threshold", "lr", "slope"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config key {key!r} must be > 0, got {getattr(self, key)}")
        if not 0 <= self.augment_shift <= 3:
            raise ConfigError(f"config key 'augment_shift' must lie in [0, 3] pixels, got {self.augment_shift}")
        if self.augment_shift and self.task != "digits":
            raise ConfigError("config key 'augment_shift' applies only to task 'digits'; set it to 0")
        if self.recall_pairs_min > self.recall_pairs:
            raise ConfigError("config key 'recall_pairs_min' must not exceed 'recall_pairs'")
        if self.recall_pairs > self.recall_keys:
            raise ConfigError("config key 'recall_pairs' must not exceed 'recall_keys' (keys are distinct)")
        if self.task == "recall" and self.mode != "causal":
            raise ConfigError("task 'recall' is a sequence task: set mode = \"causal\"")
        if self.task != "recall" and self.mode == "causal":
            raise ConfigError(f"task {self.task!r} is not a sequence task: set mode = \"global\"")
        if self.task == "digits" and 8 % self.patch_size:
            raise ConfigError(f"patch_size {self.patch_size} must divide the 8-pixel digits image (1, 2, 4 or 8)")
        if self.qat:
            needs = {"delays": (self.delays, "loihi"), "stem": (self.stem, "linear"), "model": (self.model, "spikeformer"),
                     "learn_threshold": (self.learn_threshold, False), "alpha": (self.alpha, 0.0)}
            wrong = [f"{k} = {v!r} (needs {want!r})" for k, (v, want) in needs.items() if v != want]
            if wrong:
                raise ConfigError(f"qat fine-tunes an exportable model; these keys do not allow it: {', '.join(wrong)}")
            if not self.init_from:
                raise ConfigError("qat fine-tunes a trained run: set init_from (or pass --init RUN)")
            if not 1 <= self.qat_vth < 2 ** 17:
                raise ConfigError(f"config key 'qat_vth' must lie in 1..131071, got {self.qat_vth}")
        if self.attention_impl == "parallel" and self.variant != "hebbian":
            raise ConfigError("attention_impl 'parallel' exists only for variant 'hebbian'; use 'recurrent'")

    @property
    def scale(self) -> float:
        """Attention read scale actually used."""
        return self.attn_scale if self.attn_scale > 0 else 1.0 / self.head_dim

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("extra")
        return data


FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "extra"}


def config_from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """Build a validated Config; unknown keys and wrong types raise ConfigError."""
    defaults = Config()
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key not in FIELDS:
            near = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown config key {key!r} in {source}{hint}; see docs/cli.md for the keys")
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"config key {key!r} in {source} must be {expected.__name__}, got {type(value).__name__} {value!r}"
            )
        clean[key] = value
    return Config(**clean)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML file (flat keys; ``[sections]`` are flattened) and apply overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a path such as demos/digits.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]  # [sections] flatten
        for name, item in items:
            if name in flat:
                raise ConfigError(f"config key {name!r} is set twice in {path}; keep one")
            flat[name] = item
    flat.update(overrides or {})
    return config_from_dict(flat, source=str(path))


def keys_markdown() -> str:
    """The config keys as Markdown tables, read from the commented fields of ``Config``
    (docs/cli.md embeds this; a test keeps the two equal)."""
    import inspect
    import re

    source = inspect.getsource(Config).split("def __post_init__")[0]
    rows: list[str] = []
    for line in source.splitlines():
        header = re.match(r"\s+# --- (.*) ---", line)
        if header:
            rows += ["", f"**{header.group(1)}**", "", "| key | default | meaning |", "|---|---|---|"]
            continue
        item = re.match(r"\s+(\w+): \w+ = (.*?)(?:\s+#\s*(.*))?$", line)
        if item and item.group(1) in FIELDS:
            meaning = (item.group(3) or "").replace("|", "/")
            rows.append(f"| `{item.group(1)}` | `{item.group(2)}` | {meaning} |")
    return "\n".join(rows).strip() + "\n"
