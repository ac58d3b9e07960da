"""The driver: applies a local rule to a ``Spikeformer``'s synapse layers, one batch at a time.

Which Dense feeds which neurons is read from the model's own ``lower(b, ...)`` methods (the
topology written once, in spikeformer/model.py): ``LayerMap`` is a builder that records it
instead of building IR. One forward pass per batch (three for perturbation: clean, +noise,
-noise) is recorded through hooks that the model already offers: a forward pre-hook on each
``Dense`` (or ``Conv1d``) keeps the input it delivers (after its Loihi delay), and ``Probe(keep_traces=True)``
keeps each LIF population's spikes and membranes. There is no second forward implementation.

Per layer the driver hands the rule (docs/rules.md):

    pre   the spikes (or, for the stem, the encoded input) the layer delivers  [T, B, N, I]
    post  its target neurons' spikes (stdp, three_factor), pseudo-derivative (eprop), or the
          node noise added to its current (perturbation)                          [T, B, N, J]
    modulator  the output error through fixed random feedback weights (or, for the layer that
          feeds the readout's neurons, the readout's own weights: ``feedback = "symmetric"``),
          or the loss difference of the two perturbed passes

The target of a layer with its own LIF (q/k/v, gate, MLP fc1) is that LIF. A layer that writes
the residual stream (stem, attention output, MLP fc2) has no neurons of its own; its target is
the next LIF that reads the stream. The norm after a Dense scales its current by a gain per
neuron, which the driver folds into the post side (at the norm's running statistics).

The readout learns by its exact local gradient under every rule (the delta rule: error x the
mean over the readout window of its input, which is what logits are made of). Hidden weights
receive ``-dw`` as their gradient, so AdamW (the same optimizer, schedule, clipping, checkpoint
and resume as BPTT) scales each synapse's step; nothing else of the model learns (positions,
norms, attention decays and plasticity stay at their initial values). ``readout_only`` leaves
every hidden weight at its initialisation: the control.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy, one_hot

from spikeformer.config import Config
from spikeformer.model import SUBLAYER_DELAY, Dense, Drive, FeatureNorm, Probe, SpikingNeurons, Spikeformer
from spikeformer.neurons import delay_one_step

from . import eprop, perturbation, stdp, three_factor
from .base import LOCAL_RULES, RuleError, check_rule, over_steps


@dataclass
class Layer:
    """One synapse layer a rule can reach: a ``Dense``, or a ``Conv1d`` whose weights are shared
    over tokens (a rule then sums over every window, as over tokens for a Dense)."""

    name: str  # e.g. "block0.attn.q_proj"
    module: nn.Module  # Dense or nn.Conv1d: what the hooks watch
    source: str  # population of its pre spikes ("input": the encoded input)
    norm: Optional[FeatureNorm] = None  # the norm after its current, folded into the post side
    delay: bool = False  # a one-step delay before its synapses (Loihi timing)
    target: Optional[str] = None  # LIF population of its post side
    target_norm: Optional[FeatureNorm] = None  # a stream reader's norm (residual writers)
    writes_stream: bool = False
    # whose error the layer learns from (eprop, three_factor): its own LIF, or for a stream writer
    # the last reader of the stream, the neurons the readout reads (the residual path is direct)
    signal_target: Optional[str] = None
    signal_norm: Optional[FeatureNorm] = None
    bias: None = None  # the IR builder protocol's term bias (folded norms): not recorded here
    # timing (``LayerMap.arrival``): the step at which input step 0 first reaches what the layer
    # delivers, along the longest path; ``shift``: steps from there to its signal target's
    # arrival; ``back``: steps from the signal target to the readout current
    arrives: int = 0
    shift: int = 0
    back: int = 0

    @property
    def weight(self) -> Tensor:
        """``[J, I]`` (Dense) or ``[C_out, C_in, k]`` (Conv1d)."""
        return self.module.linear.weight if isinstance(self.module, Dense) else self.module.weight

    @property
    def width(self) -> int:
        """J: post neurons per token."""
        return self.weight.shape[0]

    def set_gradient(self, grad: Tensor) -> None:
        """``grad [J, I]`` (for a convolution I = C_in k, in its weight's order) into ``.grad``."""
        self.weight.grad = grad.reshape(self.weight.shape)

    def pre_activity(self, delivered: Tensor, steps: int) -> Tensor:
        """What the hook saw -> the pre activity ``[T, B, N, I]``. A convolution's input
        ``[T*B, C_in, N]`` becomes its windows: ``I = C_in k`` per output token, zero padded."""
        if isinstance(self.module, Dense):
            return delivered
        conv = self.module
        k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        windows = nn.functional.pad(delivered, (pad, pad)).unfold(2, k, stride)  # [T*B, C_in, N', k]
        tb, c_in, n_out, _ = windows.shape
        return windows.permute(0, 2, 1, 3).reshape(steps, tb // steps, n_out, c_in * k)


@dataclass
class LayerMap:
    """Records a model's topology through its ``lower`` methods (the IR builder protocol)."""

    hop: int = 0  # steps a Dense delivers late (Loihi timing: 1)
    skip_delay: int = 0  # delays = "aligned": the stream passes a sublayer this much later per sublayer
    layers: list[Layer] = field(default_factory=list)
    neurons: dict[str, SpikingNeurons] = field(default_factory=dict)
    readout_layer: Optional[Layer] = None
    tokens: dict[str, int] = field(default_factory=dict)  # tokens of each LIF population
    # per population: the step at which input step 0 first reaches it along the longest path
    # (0 everywhere without delays; "readout": the model's latency)
    arrival: dict[str, int] = field(default_factory=lambda: {"input": 0})
    _pending: list[Layer] = field(default_factory=list)  # stream writers waiting for their reader
    _stream: list[tuple[Layer, int]] = field(default_factory=list)  # each writer and the readers before it
    _readers: int = 0

    def _arrive(self, population: str, step: int) -> None:
        self.arrival[population] = max(self.arrival.get(population, 0), step)

    def affine(self, norm: FeatureNorm, features: int) -> tuple[FeatureNorm, None]:
        return norm, None  # the "gain" handed to connect: the norm itself, read at step time

    def dense(self, dense: Dense, name: str, source: str, tokens: int, position: Any = None) -> Layer:
        layer = Layer(name, dense, source, norm=dense.norm, delay=dense.delay, arrives=self.arrival[source] + self.hop)
        self.layers.append(layer)
        return layer

    def conv(self, conv: nn.Conv1d, apply: Any, shape: tuple[int, int], name: str, source: str,
             norm: Optional[FeatureNorm] = None, position: Any = None, geometry: Any = None) -> Layer:
        # the stem delays the input before the convolution: the hook sees it delivered already
        layer = Layer(name, conv, source, norm=norm, arrives=self.arrival[source] + self.hop)
        self.layers.append(layer)
        return layer

    def input(self, tokens: int, features: int, graded: bool) -> str:
        return "input"

    def lif(self, neurons: SpikingNeurons, name: str, tokens: int, features: int, bias: Any) -> str:
        self.neurons[name], self.tokens[name] = neurons, tokens
        return name

    def connect(self, term: Optional[Layer], target: str, gain: Any = None) -> None:
        if term is not None:
            term.target = target
            self._arrive(target, term.arrives)
            if isinstance(gain, FeatureNorm):  # a norm between the synapses and the LIF (conv1d stem)
                term.norm = gain

    def attention(self, name: str, query: str, key: str, value: str, target: str, *args: Any, **kwargs: Any) -> None:
        # the attention state learns by its own event-driven plasticity; its output is the same step's
        self._arrive(target, max(self.arrival[p] for p in (query, key, value)))

    def readout(self, dense: Dense, source: str) -> str:
        self.readout_layer = Layer("readout", dense, source, delay=dense.delay, arrives=self.arrival[source] + self.hop)
        self._arrive("readout", self.readout_layer.arrives)
        return "readout"

    def write(self, term: Optional[Layer]) -> None:
        if term is not None:
            term.writes_stream = True
            self._pending.append(term)
            self._stream.append((term, self._readers))

    def read(self, norm: FeatureNorm, neurons: SpikingNeurons, name: str, tokens: int, features: int) -> str:
        self.neurons[name], self.tokens[name] = neurons, tokens
        for term in self._pending:  # the first reader after a writer is its target
            term.target, term.target_norm = name, norm
        self._pending = []
        for term, written in self._stream:  # aligned: each writer skips the sublayers since it wrote
            self._arrive(name, term.arrives + self.skip_delay * (self._readers - written))
        self._readers += 1
        return name


def layer_map(model: Spikeformer) -> LayerMap:
    """The synapse layers of ``model`` and the neurons each one drives."""
    found = LayerMap(hop=int(model.cfg.dense_delay), skip_delay=SUBLAYER_DELAY if model.cfg.delays == "aligned" else 0)
    model.lower(found)
    last = found.readout_layer.source  # "final": the stream's last reader
    for layer in found.layers:
        layer.signal_target = last if layer.writes_stream else layer.target
        layer.signal_norm = model.norm if layer.writes_stream else None
        layer.shift = found.arrival[layer.signal_target] - layer.arrives
        layer.back = found.arrival["readout"] - found.arrival[layer.signal_target]
        if isinstance(layer.module, nn.Conv1d):  # the conv1d stem delays the input of each convolution
            layer.delay = model.cfg.dense_delay
    return found


def select_layers(layers: list[Layer], patterns: list[str], rule: str) -> list[Layer]:
    """The layers whose names match one of the glob ``patterns`` (config ``rule_layers``); a
    pattern that matches none of them is a RuleError naming the layers a rule can reach."""
    for pattern in patterns:
        if not any(fnmatchcase(layer.name, pattern) for layer in layers):
            raise RuleError(f"rule {rule!r} cannot reach {pattern!r} (rule_layers): the layers a rule reaches are "
                            f"{', '.join(layer.name for layer in layers)}; positions, norms and the attention "
                            "state are not synapse layers")
    return [layer for layer in layers if any(fnmatchcase(layer.name, p) for p in patterns)]


class Recorder:
    """Hooks that keep what each layer delivers and, when asked, add node noise to its current."""

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self.delivered: dict[str, Tensor] = {}
        self.noise: dict[str, Tensor] = {}  # layer name -> noise added to its current [T, B, N, J]
        self.noise_sign = 0.0

    def __enter__(self) -> "Recorder":
        self.handles = []
        for layer in self.layers:
            self.handles.append(layer.module.register_forward_pre_hook(self._pre_hook(layer.name)))
            self.handles.append(layer.module.register_forward_hook(self._noise_hook(layer.name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()

    def _pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if isinstance(module, Dense) and module.delay:  # what the synapses see
                x = delay_one_step(x, args[1] if len(args) > 1 else None)[0]
            self.delivered[name] = x
        return hook

    def _noise_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if not self.noise_sign or name not in self.noise:
                return None
            noise = self.noise_sign * self.noise[name]  # [T, B, N, J]
            if isinstance(module, nn.Conv1d):  # output [T*B, J, N]
                t, b, n, j = noise.shape
                return output + noise.reshape(t * b, n, j).transpose(1, 2)
            drive, carry = output
            return Drive(drive.total + noise, drive.bias), carry
        return hook


class LocalLearner:
    """One training step of a local rule: ``step(x, y, generator) -> (loss, logits)`` leaves the
    gradient estimate of every weight it trains in ``.grad`` (the optimizer applies it)."""

    def __init__(self, cfg: Config, model: Spikeformer) -> None:
        check_rule(cfg.rule)
        if cfg.rule not in LOCAL_RULES:
            raise RuleError(f"rule {cfg.rule!r} is not a local rule; train it with spikeformer.train")
        if not isinstance(model, Spikeformer):
            raise RuleError(f"local rules train Spikeformer models, not {type(model).__name__}")
        self.cfg, self.model, self.rule = cfg, model, cfg.rule
        found = layer_map(model)
        chosen = select_layers(found.layers, [p.strip() for p in cfg.rule_layers.split(",")], cfg.rule)
        self.layers = [] if cfg.rule == "readout_only" else chosen
        self.neurons = found.neurons
        self.readout = found.readout_layer
        self.classes = model.classes
        # fixed random feedback weights, one matrix per layer, drawn from the seed (nothing to save)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + 17)
        self.feedback: dict[str, Tensor] = {}
        for layer in self.layers:
            width, tokens = layer.width, found.tokens[layer.signal_target]
            shape = (self.classes, width) if cfg.rule == "three_factor" else (self.classes, tokens * width)
            self.feedback[layer.name] = torch.randn(shape, generator=gen) / self.classes ** 0.5
        device = next(model.parameters()).device
        self.feedback = {k: v.to(device) for k, v in self.feedback.items()}
        self.eprop = eprop.EpropParameters(lr=1.0, alpha=cfg.alpha, beta=cfg.beta, feedback=cfg.feedback)
        self.stdp = stdp.STDPParameters(lr=1.0, a_plus=cfg.rule_a_plus, a_minus=cfg.rule_a_minus,
                                        tau_pre=cfg.rule_tau_pre, tau_post=cfg.rule_tau_post)
        self.three_factor = three_factor.ThreeFactorParameters(
            lr=1.0, a_plus=cfg.rule_a_plus, a_minus=cfg.rule_a_minus, tau_pre=cfg.rule_tau_pre,
            tau_post=cfg.rule_tau_post, tau_eligibility=cfg.rule_tau_eligibility)
        self.perturbation = perturbation.PerturbationParameters(lr=1.0, sigma=cfg.perturbation_sigma)

    # --- one batch -------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, x: Tensor, labels: Tensor, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """One batch ``x [B, N, F]``, ``labels [B]``: returns the loss (mean cross-entropy) and the
        logits of the clean pass; sets ``.grad`` of each trained weight (and the readout bias)."""
        model, window = self.model, self.model.window
        x_t = model.encode_input(x, generator)  # [T, B, N, F]
        batch = x.shape[0]
        with Recorder(self.layers + [self.readout]) as recorder:
            probe = Probe(keep_traces=True)  # every population's spikes and membranes
            y, _ = model.forward_steps(x_t, probe=probe)
            logits = y[-window:].mean(0)  # [B, C]
            loss = cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
            error = torch.softmax(logits, -1) - self._targets(labels)  # dLoss/dlogits per sample [B, C]
            self._readout_gradient(recorder.delivered["readout"][-window:].mean(0), error / batch)
            if self.rule == "perturbation":
                losses = self._perturbed_losses(recorder, x_t, labels, generator)
        steps = x_t.shape[0]
        for layer in self.layers:
            pre = layer.pre_activity(recorder.delivered[layer.name], steps)
            if self.rule == "eprop":
                dw = self._eprop(layer, pre, probe, error)
            elif self.rule == "three_factor":
                dw = self._three_factor(layer, pre, probe, error)
            elif self.rule == "perturbation":
                dw = self._node_perturbation(layer, pre, recorder.noise[layer.name], losses)
            else:
                dw = self._stdp(layer, pre, probe)
            layer.set_gradient(-dw / batch)
        return loss, logits

    def _targets(self, labels: Tensor) -> Tensor:
        eps = self.cfg.label_smoothing
        return one_hot(labels, self.classes).float() * (1 - eps) + eps / self.classes

    def _readout_gradient(self, features: Tensor, error: Tensor) -> None:
        """The delta rule: logits = W mean(features) + b, so dLoss/dW = error^T mean(features)."""
        linear = self.readout.module.linear
        linear.weight.grad = error.transpose(0, 1) @ features  # [C, B] @ [B, N*D]
        if linear.bias is not None:
            linear.bias.grad = error.sum(0)

    @staticmethod
    def _gain(layer: Layer) -> Tensor:
        """Per-neuron gain of the norms between the layer's weights and its signal target's membrane."""
        gain = layer.norm.affine()[0] if layer.norm is not None else 1.0
        if layer.signal_norm is not None:
            gain = gain * layer.signal_norm.affine()[0]
        return gain

    def _signal(self, layer: Layer, error: Tensor, post_shape: torch.Size) -> Tensor:
        """The learning signal dLoss/ds of the layer's signal target ``[B, N, J]``, the same at
        every step of ``_window``."""
        t, b, n, j = post_shape
        if self.cfg.feedback == "symmetric" and layer.signal_target == self.readout.source:
            readout = self.readout.weight  # [C, N*D]: the true dLoss/ds of the final neurons
            return (error @ readout).view(b, n, j) / self.model.window
        return (error @ self.feedback[layer.name]).view(b, n, j) / self.model.window

    def _window(self, layer: Layer, steps: int) -> range:
        """The steps at which the spikes of the layer's signal target reach the readout window
        (the last ``window`` steps the readout receives) along the longest path: the window moved
        back by ``layer.back``. With Loihi timing a shorter path (the residual stream) reaches
        the readout before the window, while the input still drives the layer; the readout reads
        the input's effect only through the longest path."""
        return range(max(0, steps - self.model.window - layer.back), steps - layer.back)

    def _eprop(self, layer: Layer, pre: Tensor, probe: Probe, error: Tensor) -> Tensor:
        neurons = self.neurons[layer.signal_target].lif
        membrane = torch.stack(probe.membranes[layer.signal_target])  # [T, B, N, J]
        psi = eprop.pseudo_derivative(membrane, neurons.threshold, neurons.spike_fn) * self._gain(layer)
        signal = self._signal(layer, error, membrane.shape)
        window = self._window(layer, pre.shape[0])
        if layer.shift:  # a stream writer below the last block: pair its input with the signal target's
            # response along the longest path, ``shift`` steps later (a delay line on the pre trace)
            pre = torch.cat([pre.new_zeros(layer.shift, *pre.shape[1:]), pre[:-layer.shift]])
        return over_steps(eprop.update, pre, psi, self.eprop, lambda t: signal if t in window else None)

    def _three_factor(self, layer: Layer, pre: Tensor, probe: Probe, error: Tensor) -> Tensor:
        post = probe.spikes[layer.signal_target]  # [T, B, N, J]
        modulator = -(error @ self.feedback[layer.name])  # [B, J]: minus the error sent back
        # the error is known once the sample is over: the rule's contracted form for a modulator
        # at the last step (equal to stepping three_factor.update through the sample, tested)
        dw = three_factor.update_at_end(pre, post, modulator, self.three_factor)
        return dw * self._gain(layer).reshape(-1, 1)

    def _perturbed_losses(self, recorder: Recorder, x_t: Tensor, labels: Tensor,
                          generator: Optional[torch.Generator]) -> Tensor:
        """``L+ - L-`` per sample ``[B]`` of two passes with antithetic node noise on every layer
        (drawn from the epoch's generator, so a resumed run draws the same noise)."""
        delivered = dict(recorder.delivered)  # the clean pass's inputs
        for layer in self.layers:
            j = layer.width
            shape = (*layer.pre_activity(delivered[layer.name], x_t.shape[0]).shape[:-1], j)  # [T, B, N, J]
            noise = torch.randn(shape, generator=generator)  # on the generator's device (CPU)
            recorder.noise[layer.name] = self.perturbation.sigma * noise.to(x_t.device)
        window = self.model.window
        losses = []
        for sign in (1.0, -1.0):
            recorder.noise_sign = sign
            y, _ = self.model.forward_steps(x_t)
            losses.append(cross_entropy(y[-window:].mean(0), labels, reduction="none",
                                        label_smoothing=self.cfg.label_smoothing))
        recorder.noise_sign = 0.0
        recorder.delivered = delivered
        return losses[0] - losses[1]

    def _node_perturbation(self, layer: Layer, pre: Tensor, noise: Tensor, losses: Tensor) -> Tensor:
        # L+ - L- is known once the sample is over (perturbation.update stepped through, contracted)
        return perturbation.update_at_end(pre, noise, losses, self.perturbation)

    def _stdp(self, layer: Layer, pre: Tensor, probe: Probe) -> Tensor:
        """Unsupervised: STDP of the layer's pre spikes and its target's spikes, only the winners
        of each sample and token learning, with the row norms of the weight kept."""
        post = stdp.winner_take_all(probe.spikes[layer.target], self.cfg.rule_winners)
        dw = over_steps(stdp.update, pre, post, self.stdp)
        return stdp.keep_row_norms(dw, layer.weight.reshape(dw.shape))


def make_step(cfg: Config, model: nn.Module) -> LocalLearner:
    """Entry point ``spikeformer.rules`` (spikeformer.train finds the local rules through it)."""
    return LocalLearner(cfg, model)
