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
from .variants import PARAMETERS, VARIANTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (the Lava environment) has no tomllib
    import tomli as tomllib

IMAGE_SIDE = {"digits": 8, "mnist": 28}  # the square image tasks: side in pixels (patch tokens)
SEQUENCE_TASKS = ("recall", "shakespeare")  # causal tasks: tokens arrive one after the other
SHAKESPEARE_VOCABULARY = 84  # distinct characters of the corpus (spikeformer/corpora.py; checked by a test)
CHOICES: dict[str, tuple] = {
    "task": ("digits", "mnist", "mnist1d", "recall", "shakespeare"),
    "model": ("spikeformer", "ann"),
    "mode": ("global", "causal"),
    "variant": tuple(VARIANTS),  # spikeformer/variants.py
    "attention_impl": ("naive", "recurrent", "parallel", "chunked", "fused", "event", "auto"),
    "lif_impl": ("fused", "loop"),
    "encoder": ("direct", "poisson", "retina"),
    "attention": ("learned", "cortical"),
    "top_down": ("none", "readout", "block"),
    "stem": ("linear", "conv1d", "conv2d"),
    "delays": ("none", "loihi", "aligned"),
    "surrogate": ("fast_sigmoid", "atan", "sigmoid", "triangular"),
    "schedule": ("cosine", "constant"),
    "norm_calibration": ("augmented", "clean"),
    "device": ("auto", "cpu", "cuda"),
    # bptt: surrogate gradients; the rest are rules/'s local rules (readout_only: the control)
    "rule": ("bptt", "stdp", "three_factor", "eprop", "perturbation", "readout_only"),
    "feedback": ("random", "symmetric"),
    "recall_layout": ("pairs", "interleaved"),
}

# Upper bounds (inclusive) of the integer sizes: a typo or a damaged file (dim = 10**9) fails here
# in one line, before anything allocates. Far above every demo (dim 128, depth 2, 20000 sequences).
LIMITS: dict[str, int] = {
    "patch_size": 64, "recall_pairs": 4096, "recall_keys": 4096, "recall_values": 4096,
    "recall_train": 10_000_000, "recall_test": 10_000_000, "context": 65536, "dim": 65536, "heads": 1024, "head_dim": 2048,
    "depth": 256, "mlp_ratio": 64, "conv_channels": 16384, "time_steps": 16384, "steps_per_token": 1024,
    "epochs": 1_000_000, "batch_size": 1_048_576, "warmup_epochs": 1_000_000, "num_threads": 1024,
    "seed": 2 ** 32 - 1, "data_seed": 2 ** 32 - 1, "qat_vth": 2 ** 17 - 1,  # qat_vth: every model divides by it
    "rule_winners": 65536, "train_size": 100_000_000,
}
FLOAT_LIMITS: dict[str, float] = {"lr": 10.0, "weight_decay": 100.0}  # AdamW's step overflows float32 past these
FLOAT32_MAX = 3.4028234663852886e38  # every float key must be a finite float32 (the model's dtype)
MAX_PARAMETERS = 2 ** 28  # about 268M weights (1 GiB in float32): the model size estimate must stay below
MAX_DATA_VALUES = 2 ** 28  # recall: generated train + test token values (1 GiB in float32)
MAX_STATE = 2 ** 22  # attention state heads * head_dim**2 per sample and block (16 MiB in float32)


def _require(needs: dict[str, tuple], why: str) -> None:
    """Raise one ConfigError naming every key whose value ``v`` differs from what ``why`` needs:
    ``needs = {key: (v, wanted)}``."""
    wrong = [f"{k} = {v!r} (needs {want!r})" for k, (v, want) in needs.items() if v != want]
    if wrong:
        raise ConfigError(f"{why}; these keys do not allow it: {', '.join(wrong)}")


@dataclass
class Config:
    # --- task and data (SPEC §5) ---
    task: str = "digits"  # digits | mnist | mnist1d | recall | shakespeare (character language model)
    patch_size: int = 2  # digits, mnist: square patch side in pixels (8x8 or 28x28 image -> (side/p)^2 tokens)
    augment_shift: int = 0  # digits, mnist: random translation of up to this many pixels while training
    recall_pairs: int = 4  # recall: key/value pairs before the query
    recall_pairs_min: int = 0  # recall: curriculum start (0 = no curriculum, always recall_pairs)
    recall_layout: str = "pairs"  # recall: pairs (key+value in one token) | interleaved (key token, value token)
    recall_keys: int = 16  # recall: number of distinct keys
    recall_values: int = 16  # recall: number of distinct values (= classes)
    recall_train: int = 20000  # recall: generated training sequences
    recall_test: int = 2000  # recall: generated test sequences
    data_seed: int = 0  # seed of generated data (recall)
    context: int = 64  # shakespeare: characters per training window (the model predicts each one's successor)
    # --- model ---
    model: str = "spikeformer"  # spikeformer | ann (softmax baseline of the same width/depth)
    mode: str = "global"  # global (all tokens every step) | causal (one token per step, streaming)
    variant: str = "hebbian"  # attention state update: hebbian | stdp | three_factor | delta
    attention: str = "learned"  # learned (q/k/v/out projections) | cortical (fixed multi-scale token pooling, one shared q/k kernel: spikeformer/cortical.py)
    top_down: str = "none"  # none | readout | block: a top-down current into each block's attention gate (three_factor's third factor), from a bottom-up sweep one step earlier (docs/equations.md)
    attention_impl: str = "auto"  # auto (fused/chunked to train, event for CPU inference) | fused (hebbian, CPU) | chunked | event | recurrent | naive | parallel (hebbian)
    lif_impl: str = "fused"  # fused (one pass over all steps, compiled kernel on CPU) | loop (lif_step per step)
    dim: int = 64  # residual width D
    heads: int = 4  # attention heads H
    head_dim: int = 16  # per-head width d (state is d x d per head)
    depth: int = 2  # number of [attention + MLP] blocks (0: a feed-forward SNN, stem -> LIF -> readout)
    mlp_ratio: int = 2  # hidden width of the spiking MLP = mlp_ratio * dim
    stem: str = "linear"  # token embedding: linear (per token) | conv1d (two conv layers over tokens) | conv2d (3x3 conv over the image's pixels, then one patch-sized conv per token)
    conv_channels: int = 32  # conv stems: channels of the first conv
    time_steps: int = 4  # global mode: steps T each sample is shown
    steps_per_token: int = 2  # causal mode: steps each token is held
    encoder: str = "direct"  # direct (current injection) | poisson (Bernoulli rate, input in [0, 1]) | retina (ON/OFF spikes)
    delays: str = "none"  # none | loihi (one-step delay per Dense, SPEC §2.2) | aligned (loihi + skip delays: every path as long)
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
    # variant parameters: defaults and meanings from the table in spikeformer/variants.py
    a_plus: float = PARAMETERS["a_plus"].default  # stdp potentiation amplitude (initial, learnable)
    a_minus: float = PARAMETERS["a_minus"].default  # stdp depression amplitude (initial, learnable)
    pre_decay: float = PARAMETERS["pre_decay"].default  # stdp pre-trace decay
    post_decay: float = PARAMETERS["post_decay"].default  # stdp post-trace decay
    eligibility_decay: float = PARAMETERS["eligibility_decay"].default  # three_factor eligibility decay
    delta_rate: float = PARAMETERS["delta_rate"].default  # delta learning rate beta (initial, learnable, in (0, 1))
    # --- training ---
    rule: str = "bptt"  # learning rule: bptt | stdp | three_factor | eprop | perturbation | readout_only (docs/rules.md)
    # --- local rules (rules/, docs/rules.md); time constants in steps ---
    feedback: str = "random"  # eprop/three_factor learning signal: random (fixed random weights) | symmetric
    rule_tau_pre: float = 2.0  # stdp/three_factor pre-trace time constant
    rule_tau_post: float = 2.0  # stdp/three_factor post-trace time constant
    rule_tau_eligibility: float = 20.0  # three_factor eligibility time constant
    rule_a_plus: float = 1.0  # stdp/three_factor potentiation amplitude of the weight rule
    rule_a_minus: float = 1.0  # stdp/three_factor depression amplitude of the weight rule
    perturbation_sigma: float = 0.05  # perturbation: noise std added to each layer's current
    rule_winners: int = 8  # stdp: post neurons per token that learn from each sample (winner-take-all); 0 = all
    rule_lr: float = 0.0  # local rules: peak learning rate of the weights the rule trains (0 = lr); the readout keeps lr
    rule_layers: str = "*"  # local rules: the layers they train, comma-separated globs ("stem.*,block0.mlp.*"); the rest stay at init
    epochs: int = 30
    train_size: int = 0  # train on a random subset of this many training samples (drawn from the seed); 0 = all
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_epochs: int = 1
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    label_smoothing: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    norm_calibration: str = "augmented"  # BatchNorm statistics recomputed each epoch on training samples as trained (augmented) | clean (as tested)
    ema_decay: float = 0.0  # evaluate, checkpoint and export an exponential moving average of the weights (per step); 0 = off
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
                raise ConfigError(f"config key {key!r} is {short_repr(value)}; choose one of {list(options)}")
        positive = ("patch_size", "recall_pairs", "recall_keys", "recall_values", "recall_train",
                    "recall_test", "context", "dim", "heads", "head_dim", "mlp_ratio", "conv_channels",
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
        fractions = [name for name, p in PARAMETERS.items() if p.kind in ("decay", "rate")]
        for key in ["attn_decay"] + fractions:
            if not 0.0 < getattr(self, key) < 1.0:
                raise ConfigError(f"config key {key!r} must lie in (0, 1), got {getattr(self, key)}")
        amplitudes = tuple(name for name, p in PARAMETERS.items() if p.kind == "amplitude")
        for key in amplitudes + ("attn_scale", "weight_decay", "grad_clip", "warmup_epochs",
                    "num_threads", "recall_pairs_min", "data_seed"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(self, key)}")
        if self.a_plus == 0:
            raise ConfigError("config key 'a_plus' must be > 0 (potentiation is the Hebbian term)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"config key 'label_smoothing' must lie in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"config key 'ema_decay' must lie in [0, 1) (0 = off, e.g. 0.999), got {self.ema_decay}")
        if self.ema_decay and self.qat:
            raise ConfigError("ema_decay averages weights whose norms are recalibrated every epoch; qat freezes the "
                              "norms, so set ema_decay = 0 for qat")
        for key in ("rule_tau_pre", "rule_tau_post", "rule_tau_eligibility", "perturbation_sigma"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config key {key!r} must be > 0, got {getattr(self, key)}")
        for key in ("rule_a_plus", "rule_a_minus", "rule_winners", "train_size", "rule_lr"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"config key {key!r} must be >= 0, got {getattr(self, key)}")
        if not self.rule_layers.strip() or not all(p.strip() for p in self.rule_layers.split(",")):
            raise ConfigError(f"config key 'rule_layers' must be comma-separated layer names or globs, e.g. \"stem.*\", "
                              f"got {short_repr(self.rule_layers)}")
        if self.rule != "bptt" and (self.model != "spikeformer" or self.qat):
            raise ConfigError(f"rule {self.rule!r} trains spiking models in float: it needs model = \"spikeformer\" "
                              "and qat = false; use rule = \"bptt\" for the ANN or qat")
        if self.every_token and self.delays == "loihi":
            raise ConfigError("a language model with delays = \"loihi\" would see later characters (the residual "
                              "stream's skips are shorter than its sublayers); use delays = \"aligned\" (exportable) "
                              "or \"none\"")
        if self.stem == "conv2d" and self.rule != "bptt":
            raise ConfigError(f"rule {self.rule!r} reaches the linear and conv1d stems, not the conv2d stem; "
                              "use stem = \"linear\" or rule = \"bptt\"")
        if self.every_token and self.rule != "bptt":
            raise ConfigError(f"rule {self.rule!r} learns one label per sequence; the {self.task} language model "
                              "trains with rule = \"bptt\"")
        if not math.isfinite(self.lr):
            raise ConfigError(f"config key 'lr' must be finite, got {self.lr}")
        for key in ("threshold", "lr", "slope"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config key {key!r} must be > 0, got {getattr(self, key)}")
        for key, f in FIELDS.items():
            if f.type in ("float", float) and not abs(getattr(self, key)) <= FLOAT32_MAX:
                raise ConfigError(f"config key {key!r} must be a finite float32 number, got {getattr(self, key)}")
        for key, most in FLOAT_LIMITS.items():
            if getattr(self, key) > most:
                raise ConfigError(f"config key {key!r} is {getattr(self, key)}, above the limit {most}; use a smaller value")
        for key, most in LIMITS.items():
            if getattr(self, key) > most:
                raise ConfigError(f"config key {key!r} is {short_repr(getattr(self, key))}, above the limit {most}; "
                                  "use a smaller value")
        if self.seed < 0:
            raise ConfigError(f"config key 'seed' must be >= 0, got {self.seed}")
        if not 0 <= self.augment_shift <= 3:
            raise ConfigError(f"config key 'augment_shift' must lie in [0, 3] pixels, got {self.augment_shift}")
        if self.augment_shift and self.task not in IMAGE_SIDE:
            raise ConfigError("config key 'augment_shift' applies only to the image tasks (digits, mnist); set it to 0")
        if self.recall_pairs_min > self.recall_pairs:
            raise ConfigError("config key 'recall_pairs_min' must not exceed 'recall_pairs'")
        if self.recall_pairs > self.recall_keys:
            raise ConfigError("config key 'recall_pairs' must not exceed 'recall_keys' (keys are distinct)")
        if self.task in SEQUENCE_TASKS and self.mode != "causal":
            raise ConfigError(f"task {self.task!r} is a sequence task: set mode = \"causal\"")
        if self.task not in SEQUENCE_TASKS and self.mode == "causal":
            raise ConfigError(f"task {self.task!r} is not a sequence task: set mode = \"global\"")
        side = IMAGE_SIDE.get(self.task)
        if self.stem == "conv2d" and not side:
            raise ConfigError(f"stem \"conv2d\" convolves an image; task {self.task!r} is not one "
                              f"(use it with {' or '.join(map(repr, IMAGE_SIDE))})")
        if self.encoder == "retina" and not (side or self.task == "mnist1d"):
            raise ConfigError(f"encoder \"retina\" filters images or signals; task {self.task!r} is neither "
                              "(use it with digits, mnist or mnist1d)")
        if self.encoder == "retina" and self.stem != "linear":
            raise ConfigError(f"encoder \"retina\" feeds spike channels to a linear stem; set stem = \"linear\" "
                              f"(stem {self.stem!r} reads raw pixels)")
        if side and side % self.patch_size:
            divisors = ", ".join(str(p) for p in range(1, side + 1) if side % p == 0)
            raise ConfigError(f"patch_size {self.patch_size} must divide the {side}-pixel {self.task} image ({divisors})")
        if self.qat:
            needs = {"delays": (self.delays, "loihi"), "stem": (self.stem, "linear"), "model": (self.model, "spikeformer"),
                     "learn_threshold": (self.learn_threshold, False), "alpha": (self.alpha, 0.0)}
            _require(needs, "qat fine-tunes an exportable model")
            if not self.init_from:
                raise ConfigError("qat fine-tunes a trained run: set init_from (or pass --init RUN)")
            if not 1 <= self.qat_vth < 2 ** 17:
                raise ConfigError(f"config key 'qat_vth' must lie in 1..131071, got {self.qat_vth}")
        if self.attention == "cortical":
            needs = {"model": (self.model, "spikeformer"), "mode": (self.mode, "global"), "rule": (self.rule, "bptt"),
                     "qat": (self.qat, False)}
            _require(needs, "attention \"cortical\" pools tokens in a global spiking model trained by BPTT")
            if self.heads * self.head_dim != self.dim:
                raise ConfigError(f"attention \"cortical\" gives each head its own slice of the features: heads * "
                                  f"head_dim = {self.heads * self.head_dim} must equal dim = {self.dim}")
        if self.top_down != "none":
            needs = {"variant": (self.variant, "three_factor"), "model": (self.model, "spikeformer"),
                     "mode": (self.mode, "global"), "rule": (self.rule, "bptt"), "qat": (self.qat, False)}
            _require(needs, f"top_down {self.top_down!r} drives the third factor of three_factor attention in a "
                            "global spiking model trained by BPTT")
        if self.attention_impl == "parallel" and self.variant != "hebbian":
            raise ConfigError("attention_impl 'parallel' exists only for variant 'hebbian'; use 'recurrent'")
        tokens, features, _ = self.task_shape()
        if self.task == "recall" and (self.recall_train + self.recall_test) * tokens * features > MAX_DATA_VALUES:
            raise ConfigError(f"recall data of {self.recall_train + self.recall_test} sequences of {tokens} x "
                              f"{features} values exceeds the limit of {MAX_DATA_VALUES} values; lower recall_train, "
                              "recall_test, recall_pairs or recall_keys/recall_values")
        if self.heads * self.head_dim ** 2 > MAX_STATE:
            raise ConfigError(f"the attention state of heads * head_dim**2 = {self.heads * self.head_dim ** 2} values per "
                              f"sample is above the limit of {MAX_STATE} (2**22); lower heads or head_dim")
        if self.parameter_estimate() > MAX_PARAMETERS:
            raise ConfigError(f"the configured model has about {self.parameter_estimate():.3g} parameters, above the "
                              f"limit of {MAX_PARAMETERS} (2**28); lower dim, depth, heads * head_dim or mlp_ratio")

    def task_shape(self) -> tuple[int, int, int]:
        """``(tokens N, features F, classes)`` of the task's inputs ``[S, N, F]`` (SPEC §5, spikeformer/data.py)."""
        if self.task in IMAGE_SIDE:
            grid = IMAGE_SIDE[self.task] // self.patch_size
            return grid * grid, self.patch_size ** 2, 10
        if self.task == "mnist1d":
            return 40, 1, 10
        if self.task == "shakespeare":  # one-hot characters in, the next character out
            return self.context, SHAKESPEARE_VOCABULARY, SHAKESPEARE_VOCABULARY
        tokens = self.recall_pairs * (2 if self.recall_layout == "interleaved" else 1) + 1
        return tokens, self.recall_keys + self.recall_values, self.recall_values

    def parameter_estimate(self) -> int:
        """An upper estimate of the model's weight count (checked against MAX_PARAMETERS before
        anything is built): stem + blocks (q/k/v/out projections, gate, MLP) + readout."""
        tokens, features, classes = self.task_shape()
        d, width, c = self.dim, self.heads * self.head_dim, self.conv_channels
        tokens = 1 if self.mode == "causal" else tokens
        if self.stem == "conv1d":
            stem, tokens = features * c * 5 + c * d * 3 + 4 * c, (tokens + 1) // 2
        elif self.stem == "conv2d":
            stem = c * 9 + c * d * self.patch_size ** 2 + 4 * c
        else:
            stem = features * d
        block = 4 * d * width + d * self.heads + 2 * self.mlp_ratio * d * d + 8 * (d + width) + self.mlp_ratio * d
        return stem + tokens * d + self.depth * block + 8 * d + tokens * d * classes + classes

    @property
    def dense_delay(self) -> bool:
        """Whether every Dense delivers one step late (Loihi timing: ``loihi`` and ``aligned``)."""
        return self.delays in ("loihi", "aligned")

    @property
    def every_token(self) -> bool:
        """Whether the task has a target at every token (a language model: ``[B, N]`` labels,
        ``[B, N, C]`` logits) rather than one per sequence."""
        return self.task == "shakespeare"

    @property
    def scale(self) -> float:
        """Attention read scale actually used."""
        return self.attn_scale if self.attn_scale > 0 else 1.0 / self.head_dim

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("extra")
        return data


FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "extra"}


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about damaged values."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit cannot be printed
        return f"an integer of about {value.bit_length() * 30103 // 100000} digits"
    return text if len(text) <= limit else text[:limit] + "..."


def config_from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """Build a validated Config; unknown keys and wrong types raise ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"the config in {source} must be a table of key = value pairs, got {type(values).__name__}")
    defaults = Config()
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key not in FIELDS:
            near = difflib.get_close_matches(key, FIELDS, n=1) if isinstance(key, str) else []
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown config key {short_repr(key)} in {source}{hint}; see docs/cli.md for the keys")
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(f"config key {key!r} in {source} is {short_repr(value)}, too large for a float; "
                                  "use a finite number") from None
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"config key {key!r} in {source} must be {expected.__name__}, got {type(value).__name__} {short_repr(value)}"
            )
        clean[key] = value
    return Config(**clean)


def _toml_loads(text: str, where: str) -> dict[str, Any]:
    """``tomllib.loads`` with every failure of a damaged text as one ConfigError."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{where} is not valid TOML: arrays, tables or dotted keys are nested too deeply") from None
    except ValueError as exc:  # e.g. an integer past Python's 4300-digit limit for int(str)
        if "integer string conversion" in str(exc):
            raise ConfigError(f"{where} holds an integer of more than 4300 digits; use a smaller value") from None
        raise ConfigError(f"{where} is not valid TOML: {' '.join(str(exc).split())[:200]}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items -> ``{key: value}``; VALUE in TOML value syntax, a bare word is a
    string (``--set task=recall``). A malformed item raises ConfigError naming it."""
    values: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {short_repr(item)}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if "\n" in raw or "\r" in raw:
            raise ConfigError(f"--set {key}=... has a line break in its value; pass one TOML value on one line")
        try:
            parsed = tomllib.loads(f"v = {raw}")
        except (tomllib.TOMLDecodeError, ValueError, RecursionError):
            parsed = {"v": raw}  # a bare word is a string
        values[key] = parsed["v"]
    return values


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML file (flat keys; ``[sections]`` are flattened) and apply overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a path such as demos/digits.toml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror}); check its permissions") from None
    raw = _toml_loads(text, f"config file {str(path)!r}")
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
            default = item.group(2)
            if "PARAMETERS[" in default:  # a default from the variant table: show its value
                default = repr(getattr(Config(), item.group(1)))
            rows.append(f"| `{item.group(1)}` | `{default}` | {meaning} |")
    return "\n".join(rows).strip() + "\n"
