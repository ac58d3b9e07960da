"""Lowering: a trained torch ``Spikeformer`` -> ``neuromorphic.ir.Graph`` (a pure function).

What happens to each torch layer (docs/backends.md has the equations):

- ``Dense`` = Linear + BatchNorm -> one connection whose weight is the BatchNorm gain times W
  and whose bias (BatchNorm shift, position embedding) goes to the receiving neurons' bias.
- The residual stream ``u`` is not a neuron population: it is the sum of the currents of
  every Dense that writes into it. Each LIF that reads ``u`` through its own BatchNorm
  (``block{i}.in``, ``block{i}.mid``, ``final``) gets its own copy of those connections,
  scaled by that BatchNorm's gain, and the summed shifts as its bias.
- Spiking attention -> an ``Attention`` node; the BatchNorm after it folds into a
  per-column ``out_scale`` and the output LIF's bias.
- The readout Dense -> a ``full`` connection into a ``readout`` integrator.

Population names equal the names the torch ``Probe`` records spikes under, so spike trains
are compared by name. Only ``delays = "loihi"`` models lower: that mode is what Lava and
Brian2 compute (SPEC §2.2); a model trained without delays would change meaning.
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch
from torch import nn

from spikeformer.model import Conv1dStem, Dense, FeatureNorm, SpikingAttention, SpikingNeurons, Spikeformer
from spikeformer.qat import norm_affine

from .ir import Attention, Connection, Graph, LoweringError, Population


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().copy()


def _affine(norm: Optional[FeatureNorm], features: int) -> tuple[np.ndarray, np.ndarray]:
    """An eval-mode BatchNorm as ``y = gain * x + shift`` (identity when ``norm`` is None), in
    float64, by ``spikeformer.qat.norm_affine``: the same fold quantisation-aware training uses."""
    if norm is None:
        return np.ones(features), np.zeros(features)
    gain, shift = norm_affine(copy.deepcopy(norm).double(), features, torch.zeros(0, dtype=torch.float64))
    return _np(gain), _np(shift)


class _Term:
    """One Dense current into the residual stream: ``weight @ spikes(source) + bias``."""

    def __init__(self, name: str, source: str, kind: str, weight: np.ndarray, bias: np.ndarray) -> None:
        self.name, self.source, self.kind, self.weight, self.bias = name, source, kind, weight, bias


def _dense_term(dense: Dense, name: str, source: str, tokens: int,
                position: Optional[np.ndarray] = None) -> _Term:
    """Fold a ``Dense`` (Linear, optional position, BatchNorm) into weight [F_out, F_in] + bias [N, F_out]."""
    w = _np(dense.linear.weight)
    b = _np(dense.linear.bias) if dense.linear.bias is not None else np.zeros(w.shape[0])
    pre_bias = np.broadcast_to(b, (tokens, w.shape[0])).copy()
    if position is not None:
        pre_bias = pre_bias + position
    gain, shift = _affine(dense.norm, w.shape[0])
    return _Term(name, source, "tokenwise", gain[:, None] * w, gain * pre_bias + shift)


def _conv_matrix(conv: nn.Conv1d, tokens: int) -> np.ndarray:
    """Unroll a 1-d convolution over tokens into ``[N_out*C_out, N_in*C_in]`` (token-major)."""
    w = _np(conv.weight)  # [C_out, C_in, K]
    c_out, c_in, k = w.shape
    stride, pad = conv.stride[0], conv.padding[0]
    n_out = (tokens + 2 * pad - k) // stride + 1
    m = np.zeros((n_out, c_out, tokens, c_in))
    for o in range(n_out):
        for j in range(k):
            n = o * stride + j - pad
            if 0 <= n < tokens:
                m[o, :, n, :] += w[:, :, j]
    return m.reshape(n_out * c_out, tokens * c_in)


def _lif_params(neurons: SpikingNeurons, name: str, features: int) -> tuple[float, float, np.ndarray]:
    """(beta, alpha, threshold per feature) of a population; per-neuron decays cannot lower."""
    lif = neurons.lif
    if lif.params.alpha != 0.0:
        raise LoweringError(
            f"layer {name!r} has alpha = {lif.params.alpha}: the torch model adds its bias to the "
            "synaptic current while Lava adds it to the membrane, so only alpha = 0 lowers exactly; "
            "train with alpha = 0")
    beta = lif.beta
    if isinstance(beta, torch.Tensor):
        values = _np(beta)
        if not np.allclose(values, values[0], rtol=0, atol=0):
            raise LoweringError(f"layer {name!r} has a learnt per-neuron beta; Lava's LIF takes one decay "
                                "per population: train with learn_beta = false")
        beta = float(values[0])
    threshold = lif.threshold
    threshold = _np(threshold) if isinstance(threshold, torch.Tensor) else np.full(features, float(threshold))
    return float(beta), 0.0, threshold


class _Builder:
    def __init__(self) -> None:
        self.populations: list[Population] = []
        self.connections: list[Connection] = []
        self.attentions: list[Attention] = []
        self.scales: dict[str, np.ndarray] = {}  # 1 / threshold per feature, when thresholds are per neuron

    def lif(self, neurons: SpikingNeurons, name: str, tokens: int, features: int, bias: np.ndarray) -> str:
        beta, alpha, threshold = _lif_params(neurons, name, features)
        uniform = bool(np.all(threshold == threshold[0]))
        if not uniform:  # fold per-neuron thresholds into the inputs: v / theta_n crosses 1
            self.scales[name] = 1.0 / threshold
            bias = bias / threshold
        self.populations.append(Population(
            name, "lif", tokens, features, beta=beta, alpha=alpha,
            threshold=float(threshold[0]) if uniform else 1.0,
            bias=np.broadcast_to(bias, (tokens, features)).astype(np.float64).copy()))
        return name

    def connect(self, term: _Term, target: str, gain: Optional[np.ndarray] = None) -> None:
        """Add ``term`` into ``target``, rows scaled by ``gain`` (a consumer's BatchNorm) and its thresholds."""
        features = next(p.features for p in self.populations if p.name == target)
        scale = (np.ones(features) if gain is None else gain) * self.scales.get(target, 1.0)
        if term.kind == "full":  # rows are (token, feature) pairs, token-major
            scale = np.tile(scale, term.weight.shape[0] // features)
        self.connections.append(Connection(f"{term.name}->{target}", term.source, target, term.kind,
                                           scale[:, None] * term.weight))


def lower(model: Spikeformer) -> Graph:
    """Lower a trained ``Spikeformer`` (eval-mode semantics, ``delays = "loihi"``) to an IR ``Graph``.

    Raises ``LoweringError`` naming the layer for anything a backend cannot run exactly.
    """
    if not isinstance(model, Spikeformer):
        raise LoweringError(f"only Spikeformer models lower to the IR, not {type(model).__name__} "
                            "(the ANN baseline has no spiking form)")
    cfg = model.cfg
    if cfg.delays != "loihi":
        raise LoweringError(
            f"the model was trained with delays = {cfg.delays!r}; Lava and Brian2 compute the "
            "one-step Dense delay of SPEC §2.2, so retrain with --set 'delays=\"loihi\"'")
    if cfg.encoder not in ("direct", "poisson"):
        raise LoweringError(f"encoder {cfg.encoder!r} has no IR form")
    b = _Builder()
    stream_tokens = 1 if cfg.mode == "causal" else model.tokens
    binary = cfg.encoder == "poisson" or cfg.task == "recall"
    b.populations.append(Population("input", "input", stream_tokens, model.features, graded=not binary))
    dim = cfg.dim

    # stem -> residual terms
    residual: list[_Term] = []
    if isinstance(model.stem, Conv1dStem):
        stem = model.stem
        c = stem.conv1.out_channels
        gain, shift = _affine(stem.norm1, c)
        b.lif(stem.lif, "stem.conv1", stream_tokens, c, np.broadcast_to(shift, (stream_tokens, c)))
        conv1 = _Term("stem.conv1", "input", "full", _conv_matrix(stem.conv1, stream_tokens), np.zeros(0))
        b.connect(conv1, "stem.conv1", gain)
        gain2, shift2 = _affine(stem.norm2, dim)
        n_out = stem.out_tokens
        conv2 = np.tile(gain2, n_out)[:, None] * _conv_matrix(stem.conv2, stream_tokens)  # BatchNorm per row
        bias = gain2 * _np(stem.position) + shift2
        residual.append(_Term("stem.conv2", "stem.conv1", "full", conv2, bias))
        body_tokens = n_out
    else:
        residual.append(_dense_term(model.stem.embed, "stem.embed", "input", stream_tokens, _np(model.stem.position)))
        body_tokens = stream_tokens

    def consume(norm: FeatureNorm, neurons: SpikingNeurons, name: str) -> str:
        """A LIF reading the residual stream through ``norm``: copies of every residual term."""
        gain, shift = _affine(norm, dim)
        bias = gain * sum(t.bias for t in residual) + shift
        b.lif(neurons, name, body_tokens, dim, bias)
        for term in residual:
            b.connect(term, name, gain)
        return name

    for i, block in enumerate(model.blocks):
        src = consume(block.norm1, block.lif1, f"block{i}.in")
        residual.append(_lower_attention(b, block.attn, f"block{i}.attn", src, body_tokens))
        src = consume(block.norm2, block.lif2, f"block{i}.mid")
        mlp = block.mlp
        hidden = mlp.fc1.linear.out_features
        t1 = _dense_term(mlp.fc1, f"block{i}.mlp.fc1", src, body_tokens)
        b.lif(mlp.lif, f"block{i}.mlp.hidden", body_tokens, hidden, t1.bias)
        b.connect(t1, f"block{i}.mlp.hidden")
        residual.append(_dense_term(mlp.fc2, f"block{i}.mlp.fc2", f"block{i}.mlp.hidden", body_tokens))
    consume(model.norm, model.lif, "final")

    readout = model.readout
    classes = readout.linear.out_features
    b.populations.append(Population("readout", "readout", 1, classes, bias=_np(readout.linear.bias)[None, :]))
    b.connect(_Term("readout", "final", "full", _np(readout.linear.weight), np.zeros(0)), "readout")

    window = cfg.steps_per_token if cfg.mode == "causal" else cfg.time_steps
    meta = {
        "task": cfg.task, "mode": cfg.mode, "encoder": cfg.encoder, "classes": classes,
        "tokens": model.tokens, "features": model.features, "body_tokens": body_tokens,
        "time_steps": cfg.time_steps, "steps_per_token": cfg.steps_per_token,
        "latency": model.latency, "window": window,
        # global: every sample has the same length; causal: (tokens * steps_per_token) + latency
        "steps": (cfg.time_steps if cfg.mode == "global" else model.tokens * cfg.steps_per_token) + model.latency,
    }
    return Graph(b.populations, b.connections, b.attentions, meta).validate()


def _lower_attention(b: _Builder, attn: SpikingAttention, name: str, source: str, tokens: int) -> _Term:
    """q/k/v (and gate) LIFs, the attention node and its output LIF; returns the output Dense term."""
    width = attn.heads * attn.head_dim
    for key in "qkv":
        term = _dense_term(attn.proj[key], f"{name}.{key}_proj", source, tokens)
        b.lif(attn.lif[key], f"{name}.{key}", tokens, width, term.bias)
        b.connect(term, f"{name}.{key}")
    modulator = None
    if attn.variant == "three_factor":
        term = _dense_term(attn.gate, f"{name}.gate_proj", source, tokens)
        modulator = b.lif(attn.gate_lif, f"{name}.gate", tokens, attn.heads, term.bias)
        b.connect(term, modulator)
    gain, shift = _affine(attn.out_norm, width)
    target = b.lif(attn.out_lif, f"{name}.out", tokens, width, np.broadcast_to(shift, (tokens, width)))
    b.attentions.append(Attention(
        name=name, query=f"{name}.q", key=f"{name}.k", value=f"{name}.v", target=target,
        heads=attn.heads, head_dim=attn.head_dim, variant=attn.variant,
        decay=_np(attn.decay), scale=float(attn.scale), out_scale=gain * b.scales.get(target, 1.0),
        plasticity={k: _np(v) for k, v in attn.plasticity().items()}, modulator=modulator))
    return _dense_term(attn.out, f"{name}.out_proj", target, tokens)
