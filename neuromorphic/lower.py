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
- ``top_down = "block"``: the bottom-up sweep is a second copy of every layer but the readout,
  named ``bottom_up.<name>``, fed by the same input; each block's top-down synapses connect the
  copy's reader above the block (``bottom_up.block{i+1}.in`` or ``bottom_up.final``) to the
  block's gate neurons, one step late like every Dense.

Population names equal the names the torch ``Probe`` records spikes under, so spike trains
are compared by name. Only ``delays = "loihi"`` models lower: that mode is what Lava and
Brian2 compute (SPEC §2.2); a model trained without delays would change meaning.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Callable, Optional

import numpy as np
import torch

from spikeformer.model import BOTTOM_UP, SUBLAYER_DELAY, Dense, FeatureNorm, SpikingNeurons, Spikeformer

from .ir import Attention, Connection, Graph, LoweringError, Population


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy().copy()


def _affine(norm: Optional[FeatureNorm], features: int) -> tuple[np.ndarray, np.ndarray]:
    """An eval-mode BatchNorm as ``y = gain * x + shift`` (identity when ``norm`` is None), in
    float64, by ``FeatureNorm.affine``: the same fold quantisation-aware training uses."""
    if norm is None:
        return np.ones(features), np.zeros(features)
    gain, shift = copy.deepcopy(norm).double().affine()
    return _np(gain), _np(shift)


class _Term:
    """One Dense current: ``weight @ spikes(source) + bias`` (bias ``[N, F_out]``, for the residual
    stream); a 2-d convolution also carries its geometry (``Connection.conv``) and the image
    grids of its source and target (``Population.image``)."""

    def __init__(self, name: str, source: str, kind: str, weight: np.ndarray, bias: np.ndarray,
                 conv: Optional[dict] = None, images: Optional[tuple[list, list]] = None) -> None:
        self.name, self.source, self.kind, self.weight, self.bias = name, source, kind, weight, bias
        self.conv, self.images = conv, images


def _unrolled(apply: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int], dtype: torch.dtype,
              chunk: int = 1024) -> np.ndarray:
    """The matrix ``[N_out*C_out, N_in*C_in]`` (token-major, float64) of a linear map ``apply``:
    ``[1, S, N_in, C_in] -> [1, S, N_out, C_out]``, read off its images of the unit inputs. Each
    image is one weight plus products with zero, so the entries are the weights exactly, in any dtype."""
    size = shape[0] * shape[1]
    columns = []
    with torch.no_grad():
        for start in range(0, size, chunk):
            rows = min(chunk, size - start)
            units = torch.zeros(rows, size, dtype=dtype)
            units[torch.arange(rows), start + torch.arange(rows)] = 1.0
            columns.append(_np(apply(units.reshape(1, rows, *shape)).reshape(rows, -1)))
    return np.ascontiguousarray(np.concatenate(columns).T)


def _lif_params(neurons: SpikingNeurons, name: str, features: int) -> tuple[float, float, np.ndarray]:
    """(beta, alpha, threshold per feature) of a population; per-neuron decays cannot lower."""
    lif = neurons.lif
    beta = lif.beta
    if isinstance(beta, torch.Tensor):
        values = _np(beta)
        if not np.allclose(values, values[0], rtol=0, atol=0):
            raise LoweringError(f"layer {name!r} has a learnt per-neuron beta; Lava's LIF takes one decay "
                                "per population: train with learn_beta = false")
        beta = float(values[0])
    threshold = lif.threshold
    threshold = _np(threshold) if isinstance(threshold, torch.Tensor) else np.full(features, float(threshold))
    return float(beta), float(lif.params.alpha), threshold


class GraphBuilder:
    """What the model's modules describe themselves to: each ``lower(b, ...)`` method in
    ``spikeformer/model.py`` calls these (the model's topology is written there, once, beside
    its ``forward``); the builder folds norms and biases into IR populations and connections.

    The residual stream ``u`` is not a population: it is the list of terms written into it
    (``write``); each LIF that reads it through its own BatchNorm (``read``) gets its own copy
    of every term, scaled by that norm's gain, and the summed shifts as its bias.
    """

    def __init__(self, skip_delay: int = 0) -> None:
        self.populations: list[Population] = []
        self.connections: list[Connection] = []
        self.attentions: list[Attention] = []
        self.scales: dict[str, np.ndarray] = {}  # 1 / threshold per feature, when thresholds are per neuron
        self.stream: list[tuple[_Term, int]] = []  # each term and the number of readers before it
        self.readers = 0
        # delays = "aligned": a term reaches a reader one step plus skip_delay per sublayer it skips
        self.skip_delay = skip_delay

    # --- folding ---------------------------------------------------------------------------------

    def affine(self, norm: Optional[FeatureNorm], features: int) -> tuple[np.ndarray, np.ndarray]:
        """A norm at inference as ``(gain, shift)`` in float64 (``FeatureNorm.affine``); identity for None."""
        return _affine(norm, features)

    def dense(self, dense: Dense, name: str, source: str, tokens: int,
              position: Optional[torch.Tensor] = None) -> _Term:
        """Fold a ``Dense`` (Linear, optional position, BatchNorm) into weight [F_out, F_in] + bias [N, F_out]
        (a projection that pools tokens, ``spikeformer/cortical.py``: a full [N F_out, N F_in] weight)."""
        if getattr(dense.linear, "mixes_tokens", False):
            return self.unrolled(dense.linear, dense.linear.out_features, (tokens, dense.linear.in_features),
                                 dense.linear.kernels.dtype, name, source, dense.norm, position)
        w = _np(dense.linear.weight)
        b = _np(dense.linear.bias) if dense.linear.bias is not None else np.zeros(w.shape[0])
        pre_bias = np.broadcast_to(b, (tokens, w.shape[0])).copy()
        if position is not None:
            pre_bias = pre_bias + _np(position)
        gain, shift = _affine(dense.norm, w.shape[0])
        return _Term(name, source, "tokenwise", gain[:, None] * w, gain * pre_bias + shift)

    def conv(self, conv: torch.nn.Module, apply: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int],
             name: str, source: str, norm: Optional[FeatureNorm] = None,
             position: Optional[torch.Tensor] = None,
             geometry: Optional[tuple[dict, list, list]] = None) -> _Term:
        """The convolution ``conv`` as its stem applies it (``apply: [T, B, N, C_in] -> [T, B, N', C_out]``)
        to the source ``shape = (N, C_in)``, unrolled into a ``full`` weight, with the norm after it
        folded per row (and ``position [N', C_out]`` into the bias). ``geometry``: a 2-d
        convolution's (kernel/stride/padding, source image, target image), kept for NIR's Conv2d."""
        conv_geometry, images = (geometry[0], geometry[1:]) if geometry is not None else (None, None)
        return self.unrolled(apply, conv.out_channels, shape, conv.weight.dtype, name, source, norm, position,
                             conv_geometry, images)

    def unrolled(self, apply: Callable[[torch.Tensor], torch.Tensor], c_out: int, shape: tuple[int, int],
                 dtype: torch.dtype, name: str, source: str, norm: Optional[FeatureNorm] = None,
                 position: Optional[torch.Tensor] = None, conv: Optional[dict] = None,
                 images: Optional[tuple[list, list]] = None) -> _Term:
        """Any linear map ``apply`` of the source ``shape = (N, C_in)`` to ``C_out`` channels as a
        ``full`` term (``_unrolled``, in ``dtype``), with ``norm`` folded per row and ``position`` into the bias."""
        matrix = _unrolled(apply, shape, dtype)
        n_out = matrix.shape[0] // c_out
        gain, shift = _affine(norm, c_out)
        pre_bias = _np(position) if position is not None else np.zeros((n_out, c_out))
        return _Term(name, source, "full", np.tile(gain, n_out)[:, None] * matrix, gain * pre_bias + shift,
                     conv, images)

    # --- populations and connections -------------------------------------------------------------

    def input(self, tokens: int, features: int, graded: bool) -> str:
        self.populations.append(Population("input", "input", tokens, features, graded=graded))
        return "input"

    def lif(self, neurons: SpikingNeurons, name: str, tokens: int, features: int, bias: np.ndarray) -> str:
        """A LIF population ``[tokens, features]`` with membrane bias ``bias`` (broadcast to it)."""
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

    def connect(self, term: _Term, target: str, gain: Optional[np.ndarray] = None, delay: int = 1) -> None:
        """Add ``term`` into ``target``, rows scaled by ``gain`` (a consumer's BatchNorm) and its thresholds."""
        features = next(p.features for p in self.populations if p.name == target)
        scale = (np.ones(features) if gain is None else gain) * self.scales.get(target, 1.0)
        if term.kind == "full":  # rows are (token, feature) pairs, token-major
            scale = np.tile(scale, term.weight.shape[0] // features)
        if term.images is not None:  # a convolution's ends are images (rows scaled per channel: still one)
            for pop in self.populations:
                if pop.name in (term.source, target):
                    pop.image = list(term.images[pop.name == target])
        self.connections.append(Connection(f"{term.name}->{target}", term.source, target, term.kind,
                                           scale[:, None] * term.weight, delay=delay, conv=term.conv))

    def attention(self, name: str, query: str, key: str, value: str, target: str, heads: int, head_dim: int,
                  variant: str, decay: torch.Tensor, scale: float, out_gain: np.ndarray,
                  plasticity: dict[str, torch.Tensor], modulator: Optional[str]) -> None:
        """A spiking-attention node; ``out_gain`` is the folded norm after it (per output column)."""
        self.attentions.append(Attention(
            name=name, query=query, key=key, value=value, target=target, heads=heads, head_dim=head_dim,
            variant=variant, decay=_np(decay), scale=float(scale), out_scale=out_gain * self.scales.get(target, 1.0),
            plasticity={k: _np(v) for k, v in plasticity.items()}, modulator=modulator))

    def readout(self, dense: Dense, source: str) -> str:
        """The readout Dense into a ``readout`` integrator (its bias delivered every step)."""
        classes = dense.linear.out_features
        self.populations.append(Population("readout", "readout", 1, classes, bias=_np(dense.linear.bias)[None, :]))
        self.connect(_Term("readout", source, "full", _np(dense.linear.weight), np.zeros(0)), "readout")
        return "readout"

    # --- the residual stream ---------------------------------------------------------------------

    def write(self, term: _Term) -> None:
        """Add a Dense current to the residual stream."""
        self.stream.append((term, self.readers))

    def read(self, norm: FeatureNorm, neurons: SpikingNeurons, name: str, tokens: int, features: int) -> str:
        """A LIF reading the residual stream through ``norm``: copies of every term written so far
        (aligned: each delayed by ``skip_delay`` per sublayer between its writer and this reader)."""
        gain, shift = _affine(norm, features)
        bias = gain * sum(t.bias for t, _ in self.stream) + shift
        self.lif(neurons, name, tokens, features, bias)
        for term, written in self.stream:
            self.connect(term, name, gain, delay=1 + self.skip_delay * (self.readers - written))
        self.readers += 1
        return name


def _bottom_up_copy(model: Spikeformer, b: GraphBuilder) -> None:
    """Add a ``top_down = "block"`` model's bottom-up sweep to ``b`` (which holds the modulated
    one): every layer again but the readout, named ``BOTTOM_UP + name``, on the same input, and
    each block's top-down synapses from the copy's reader above it onto its gate neurons."""
    copy_ = GraphBuilder(b.skip_delay)
    model.lower(copy_)
    renamed = lambda name: name if name == "input" else BOTTOM_UP + name  # noqa: E731
    b.populations += [replace(p, name=renamed(p.name)) for p in copy_.populations if p.kind not in ("input", "readout")]
    b.connections += [replace(c, name=BOTTOM_UP + c.name, source=renamed(c.source), target=renamed(c.target))
                      for c in copy_.connections if c.target != "readout"]
    b.attentions += [replace(a, name=BOTTOM_UP + a.name, query=renamed(a.query), key=renamed(a.key),
                             value=renamed(a.value), target=renamed(a.target),
                             modulator=renamed(a.modulator) if a.modulator else None) for a in copy_.attentions]
    depth = len(model.blocks)
    for i, dense in enumerate(model.top_down):
        source = renamed(f"block{i + 1}.in" if i + 1 < depth else "final")
        b.connect(_Term(f"top_down{i}", source, "tokenwise", _np(dense.linear.weight), np.zeros(0)),
                  f"block{i}.attn.gate")


def lower(model: Spikeformer) -> Graph:
    """Lower a trained ``Spikeformer`` (eval-mode semantics, ``delays = "loihi"``) to an IR ``Graph``.

    The model describes its own topology (``Spikeformer.lower`` and its modules' ``lower``
    methods); this function checks that it can lower and adds the timing facts.
    Raises ``LoweringError`` naming the layer for anything a backend cannot run exactly.
    """
    if not isinstance(model, Spikeformer):
        raise LoweringError(f"only Spikeformer models lower to the IR, not {type(model).__name__} "
                            "(the ANN baseline has no spiking form)")
    cfg = model.cfg
    if not cfg.dense_delay:
        raise LoweringError(
            f"the model was trained with delays = {cfg.delays!r}; Lava and Brian2 compute the "
            "one-step Dense delay of SPEC §2.2, so retrain with --set 'delays=\"aligned\"' (or \"loihi\")")
    if cfg.encoder not in ("direct", "poisson", "retina"):
        raise LoweringError(f"encoder {cfg.encoder!r} has no IR form")
    if cfg.top_down == "readout":
        raise LoweringError("top_down 'readout' feeds the gates the bottom-up readout's graded current, which IR "
                            "connections (spikes) cannot carry; top_down = \"block\" (spikes) lowers")
    b = GraphBuilder(SUBLAYER_DELAY if cfg.delays == "aligned" else 0)
    body_tokens = model.lower(b)
    if cfg.top_down == "block":
        _bottom_up_copy(model, b)
    meta = {
        "task": cfg.task, "mode": cfg.mode, "encoder": cfg.encoder, "classes": model.classes,
        "tokens": model.tokens, "features": model.features, "body_tokens": body_tokens,
        "time_steps": cfg.time_steps, "steps_per_token": cfg.steps_per_token, "delays": cfg.delays,
        "latency": model.latency, "window": model.window,
        # global: every sample has the same length; causal: (tokens * steps_per_token) + latency
        "steps": (cfg.time_steps if cfg.mode == "global" else model.tokens * cfg.steps_per_token) + model.latency,
    }
    return Graph(b.populations, b.connections, b.attentions, meta).validate()
