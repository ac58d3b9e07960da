"""The spiking transformer, in reading order, and its ANN baseline.

Data flow of ``Spikeformer`` (all time-major; T steps, B batch, N tokens, D width):

    x [B, N, F] --encode--> [T, B, N, F] currents or spikes
      --stem (Dense + norm + position bias)--> u [T, B, N, D]          residual stream (currents)
      per block:  s = LIF(norm(u));  u = u + Attention(s)              (membrane shortcut)
                  s = LIF(norm(u));  u = u + MLP(s)
      s = LIF(norm(u)) --flatten tokens--> Dense --> mean over the readout window --> logits [B, C]

Every Dense is a synapse layer a neuromorphic backend can hold: weights, a bias delivered to
the receiving neurons every step, and (``delays = "loihi"``) a one-step delay (SPEC §2.2).
Norm layers are BatchNorm: at inference they are per-feature affine maps that fold into the
Dense weights and biases when the model is lowered to the IR.

The readout is a spike-count readout: logits = W (mean over the window of s) + b, i.e. a
perfect integrator (beta = 1) of the readout Dense's current, divided by the window length.
In global mode the window is the T input steps (shifted by the latency in loihi mode) and the
readout sees all tokens flattened; in causal mode it is the query token's ``steps_per_token``
steps and the readout sees the current token.

What a LIF population receives is a ``Drive``: its total input ``I_in + b`` and, when the
neurons keep a synaptic current (``alpha > 0``), the constant part ``b`` that SPEC §2.1 adds to
the membrane rather than to the current (with ``alpha = 0``, ``i = I_in`` and the two agree).

Model state is explicit: ``forward_steps(x, state) -> (readout current, state)`` where
``state`` is a dict of per-layer states, so a stream can be fed chunk by chunk.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, Iterator, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed
from .attention import attention_event_counts, spiking_attention
from .config import IMAGE_SIDE, Config
from .cortical import CorticalProjection
from .data import unpatchify
from .errors import ShapeError
from .neurons import LIF, LIFParameters, _logit, delay_one_step
from .qat import Term, fake_quantize_fraction, read
from .variants import PARAMETERS, VARIANTS

State = dict[str, Any]


class Probe:
    """Optional observer passed through a forward pass: counts synaptic events and spikes,
    and (with ``keep_traces``) keeps spike trains, membranes and attention states for figures.

    ``ac``: accumulate operations caused by binary spikes; ``mac``: multiply-accumulates
    (real-valued inputs into the first layer, attention state decay). ``layers``: the same per
    synapse layer (the module, or a name for what is not one), with ``dense``, the operations
    had every input been nonzero (NeuroBench's dense synaptic operations).
    """

    def __init__(self, keep_traces: bool = False) -> None:
        self.keep_traces = keep_traces
        self.ac = 0.0
        self.mac = 0.0
        self.layers: dict[Any, dict[str, float]] = {}
        self.spike_counts: dict[str, float] = {}
        self.neuron_steps: dict[str, float] = {}
        self.spikes: dict[str, Tensor] = {}
        self.membranes: dict[str, list] = {}
        self.attention_states: dict[str, list] = {}
        self.prefix = ""  # put before every name recorded (``prefixed``: a top-down model's bottom-up sweep)

    @contextmanager
    def prefixed(self, prefix: str) -> Iterator["Probe"]:
        """Record under ``prefix + name`` inside the block (the IR's names for a second copy of a layer)."""
        before, self.prefix = self.prefix, self.prefix + prefix
        try:
            yield self
        finally:
            self.prefix = before

    def count_synapses(self, ops: float, binary_input: bool, layer: Any = None, dense: Optional[float] = None) -> None:
        """Add synaptic operations: ACs when driven by spikes, MACs when by real values; with
        ``layer``, to that layer's entry too (``dense``: its operations at all inputs nonzero;
        None: ``ops``, as for a real-valued input)."""
        if binary_input:
            self.ac += ops
        else:
            self.mac += ops
        if layer is not None:
            entry = self.layers.setdefault(layer, {"ac": 0.0, "mac": 0.0, "dense": 0.0})
            entry["ac" if binary_input else "mac"] += ops
            entry["dense"] += ops if dense is None else dense

    def record_spikes(self, name: str, spikes: Tensor) -> None:
        name = self.prefix + name
        self.spike_counts[name] = self.spike_counts.get(name, 0.0) + float(spikes.detach().sum())
        self.neuron_steps[name] = self.neuron_steps.get(name, 0.0) + spikes.numel()
        if self.keep_traces:
            self.spikes[name] = spikes.detach().cpu()

    def membrane_list(self, name: str) -> Optional[list]:
        if not self.keep_traces:
            return None
        return self.membranes.setdefault(self.prefix + name, [])

    def spike_rate(self) -> float:
        total = sum(self.neuron_steps.values())
        return sum(self.spike_counts.values()) / total if total else 0.0


class Drive(NamedTuple):
    """The input of a LIF population (SPEC §2.1): ``total`` = I_in + b ``[T, B, N, F]`` and the
    constant bias ``b`` (broadcastable to ``[N, F]``) that enters the membrane, or None where it
    need not be told apart (``alpha = 0``). ``total`` is a list of ``qat.Term`` s in a qat model's
    residual stream. ``rest``: the current when the input is silent (a Dense's folded bias), kept
    for the residual stream of ``delays = "aligned"``, which is delayed (``delay_drive``)."""

    total: Any
    bias: Optional[Tensor] = None
    rest: Optional[Tensor] = None


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return None if a is None or b is None else a + b


def join(a: Drive, b: Drive) -> Drive:
    """The sum of two drives (the residual stream ``u + y``)."""
    return Drive(a.total + b.total, _add(a.bias, b.bias), _add(a.rest, b.rest))


SUBLAYER_DELAY = 2  # Dense hops of an attention or MLP sublayer (q/k/v + out; fc1 + fc2)
BOTTOM_UP = "bottom_up."  # a top-down model's bottom-up sweep: its layers' names, so prefixed (probe and IR)


def delay_drive(u: Drive, steps: int, carry: Optional[Tensor]) -> tuple[Drive, Tensor]:
    """The residual stream ``u`` delivered ``steps`` later, as a Dense whose input arrives late:
    its current ``total [T, B, N, F]`` shifts, the steps before the first are ``u.rest`` (silent
    input), the bias stays. ``carry``: the last ``steps`` steps of the previous call (streaming).
    Returns the delayed drive and the carry for the next call."""
    total = u.total
    if carry is None:
        carry = u.rest.expand(steps, *total.shape[1:])
    joined = torch.cat([carry, total], 0)  # [steps + T, ...]
    return Drive(joined[:total.shape[0]], u.bias, u.rest), joined[total.shape[0]:]


class FeatureNorm(nn.Module):
    """BatchNorm over the last dimension of ``[..., F]``; folds into an affine map at inference."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(features)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])  # [..., F] -> [M, F]
        if self.bn.training and distributed.sync_world() is not None:  # several processes: the global batch's statistics
            return distributed.batch_norm(rows, self.bn).reshape(shape)
        return self.bn(rows).reshape(shape)

    def affine(self, x: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """The norm as ``y = gain * x + shift`` per feature ``([F], [F])``: the batch statistics of
        ``x [..., F]`` when the norm uses them now (training), else the running statistics (the
        fold that lowering and qat use)."""
        bn = self.bn
        if x is not None and (bn.training or bn.running_var is None):
            rows = x.reshape(-1, x.shape[-1])
            if bn.training and distributed.sync_world() is not None:
                mean, var, _ = distributed.global_moments(rows)
            else:
                var, mean = torch.var_mean(rows, 0, correction=0)  # as BatchNorm normalises
        else:
            mean, var = bn.running_mean, bn.running_var
        gain = torch.rsqrt(var + bn.eps)
        gain = gain * bn.weight if bn.affine else gain
        shift = (bn.bias if bn.affine else 0.0) - mean * gain
        return gain, shift

    def drive(self, x: Drive) -> Drive:
        """``norm(u)`` of a drive: the norm of the total; the bias mapped by the same affine map."""
        total = self(x.total)
        if x.bias is None:
            return Drive(total)
        gain, shift = self.affine(x.total)
        return Drive(total, gain * x.bias + shift)


class Dense(nn.Module):
    """A synapse layer: ``[T, B, N, F_in] -> [T, B, N, F_out]`` currents = norm(W x + b), as a
    ``Drive`` whose bias (with ``split_bias``) is the constant part norm(b) (W x = 0).

    ``binary_input`` says whether the input is spikes (counted as ACs: one per spike per
    fan-out) or real values (counted as MACs). With ``delay`` the input is delivered one step
    late, the bias every step, as Lava's Dense + LIF bias do.

    With ``fake_quant`` (``qat``) the folded weight is rounded to Lava's fixed-point grid
    (``unit``: a_in per unit current); a ``residual`` Dense (one that writes the residual
    stream) returns ``[Term]`` instead, which every reader of the stream rounds for itself.
    """

    def __init__(self, f_in: int, f_out: int, norm: bool = True, delay: bool = False,
                 binary_input: bool = True, bias: bool = True, residual: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(f_in, f_out, bias=bias and not norm)
        self.norm = FeatureNorm(f_out) if norm else None
        self.delay = delay
        self.binary_input = binary_input
        self.residual = residual
        self.fake_quant = False
        self.unit = 1.0
        self.split_bias = False  # alpha > 0: tell the membrane bias apart (set by Spikeformer)
        self.keep_rest = False  # delays = "aligned": report the current at silent input (set by Spikeformer)

    def forward(self, x: Tensor, state: Optional[Tensor] = None, probe: Optional[Probe] = None,
                position: Optional[Tensor] = None) -> tuple[Drive, Optional[Tensor]]:
        carry = None
        if self.delay:
            x, carry = delay_one_step(x, state)
        if probe is not None:
            events = getattr(self.linear, "synaptic_events", None)  # a cortical projection counts its own
            if events is not None:
                probe.count_synapses(events(x), self.binary_input, self, events(torch.ones_like(x)))
            else:
                count = float(x.count_nonzero()) if self.binary_input else float(x.numel())
                fan_out = self.linear.out_features
                probe.count_synapses(count * fan_out, self.binary_input, self, float(x.numel()) * fan_out)
        if self.fake_quant:
            term = Term(self, x, position)
            return Drive([term] if self.residual else term.current(x.new_ones(self.linear.out_features), self.unit)), carry
        y = self.linear(x)
        if position is not None:
            y = y + position
        bias = None
        if self.split_bias or self.keep_rest:  # the current at silent input x = 0
            bias = self.linear.bias if self.linear.bias is not None else y.new_zeros(y.shape[-1])
            bias = bias + position if position is not None else bias  # [N, F] or [F]
            if self.norm is not None:
                gain, shift = self.norm.affine(y)
                bias = gain * bias + shift
        if self.norm is not None:
            y = self.norm(y)
        return Drive(y, bias if self.split_bias else None, bias if self.keep_rest else None), carry


class SpikingNeurons(nn.Module):
    """A LIF population built from the config (SPEC §2.1)."""

    def __init__(self, cfg: Config, features: int) -> None:
        super().__init__()
        params = LIFParameters(cfg.beta, cfg.alpha, cfg.threshold, cfg.surrogate, cfg.slope)
        self.lif = LIF(params, features, cfg.learn_beta, cfg.learn_threshold, cfg.lif_impl)

    def forward(self, x: Drive, state, probe: Optional[Probe], name: str):
        """``x``: the population's ``Drive``; returns spikes ``[T, B, N, F]`` and the LIF state."""
        current = x.total if x.bias is None else x.total - x.bias  # I_in; b goes to the membrane
        spikes, state = self.lif(current, state, probe.membrane_list(name) if probe else None, x.bias)
        if probe is not None:
            probe.record_spikes(name, spikes)
        return spikes, state


class SpikingAttention(nn.Module):
    """Multi-head spiking attention block: spikes ``[T, B, N, D]`` -> current ``[T, B, N, D]``.

    q, k, v = LIF(norm(W s)); o = spiking_attention(q, k, v) (SPEC §2.3); a = LIF(norm(o));
    out = norm(W_o a). The three_factor variant adds one gating LIF per head whose mean spike
    over tokens is the modulator m[t] (an external modulator can be passed instead).
    ``attention = "cortical"``: the W are fixed multi-scale token pooling with one shared
    kernel for q and k, none for v, and the identity for W_o (spikeformer/cortical.py).
    ``tokens``: the residual stream's tokens (the cortical kernels pool over them).
    """

    def __init__(self, cfg: Config, tokens: int = 1) -> None:
        super().__init__()
        h, d, delay = cfg.heads, cfg.head_dim, cfg.dense_delay
        self.heads, self.head_dim, self.variant = h, d, cfg.variant
        self.impl, self.scale = cfg.attention_impl, cfg.scale
        self.proj = nn.ModuleDict({n: Dense(cfg.dim, h * d, delay=delay) for n in "qkv"})
        if cfg.attention == "cortical":
            grid = cfg.task in IMAGE_SIDE
            for key in "qkv":  # q, k: one shared [d, D] kernel; v: each head's own slice
                self.proj[key].linear = CorticalProjection(cfg.dim, h, d, tokens, grid, shared=key != "v")
        self.lif = nn.ModuleDict({n: SpikingNeurons(cfg, h * d) for n in "qkv"})
        decay = torch.full((h,), _logit(cfg.attn_decay))
        self.decay_logit = nn.Parameter(decay) if cfg.learn_decay else nn.Buffer(decay)
        # the variant's parameters (spikeformer/variants.py), initial values from the config keys of the same
        # name: amplitudes learnt through abs, decays and rates through a sigmoid
        self.plastic = nn.ParameterDict()
        for p in VARIANTS[cfg.variant].parameters:
            value = getattr(cfg, p.name)
            self.plastic[p.name] = nn.Parameter(torch.full((h,), value if p.kind == "amplitude" else _logit(value)))
        if VARIANTS[cfg.variant].modulated:
            self.gate = Dense(cfg.dim, h, delay=delay)
            self.gate_lif = SpikingNeurons(cfg, h)
        self.out_norm = FeatureNorm(h * d)
        self.out_lif = SpikingNeurons(cfg, h * d)
        self.out = Dense(h * d, cfg.dim, delay=delay, residual=True)
        if cfg.attention == "cortical":  # W_o = I, fixed (heads * head_dim = dim, checked by the config)
            with torch.no_grad():
                self.out.linear.weight.copy_(torch.eye(cfg.dim, h * d))
            self.out.linear.weight.requires_grad_(False)
        self.fake_quant = False  # qat: decays and rates on Lava's 12-bit grid, out_norm folded
        self.split_bias = cfg.alpha > 0  # the out_norm's shift is a membrane bias

    @property
    def decay(self) -> Tensor:
        """lambda per head, in (0, 1)."""
        decay = torch.sigmoid(self.decay_logit)
        return fake_quantize_fraction(decay) if self.fake_quant else decay

    def plasticity(self) -> dict[str, Tensor]:
        """Variant parameters in their natural range (amplitudes >= 0 by abs, decays/rates in (0, 1))."""
        values = {name: (p.abs() if PARAMETERS[name].kind == "amplitude" else torch.sigmoid(p))
                  for name, p in self.plastic.items()}
        return {k: fake_quantize_fraction(v) for k, v in values.items()} if self.fake_quant else values

    def forward(self, s: Tensor, state: State, probe: Optional[Probe], name: str,
                modulator: Optional[Tensor] = None, top_down: Optional[Tensor] = None) -> tuple[Tensor, State]:
        """``top_down``: an extra current into the gate neurons ``[T, B, N or 1, H]`` (``top_down``
        configs), added to their bottom-up drive."""
        t, b, n, _ = s.shape
        new: State = {}
        spikes = {}
        for key in "qkv":
            current, new[f"{key}_delay"] = self.proj[key](s, state.get(f"{key}_delay"), probe)
            spikes[key], new[f"{key}_lif"] = self.lif[key](current, state.get(f"{key}_lif"), probe, f"{name}.{key}")
        q, k, v = (spikes[key].view(t, b, n, self.heads, self.head_dim) for key in "qkv")  # [T, B, N, H, d]
        if VARIANTS[self.variant].modulated and modulator is None:
            g, new["gate_delay"] = self.gate(s, state.get("gate_delay"), probe)
            if top_down is not None:
                g = Drive(g.total + top_down, g.bias, g.rest)
            gate, new["gate_lif"] = self.gate_lif(g, state.get("gate_lif"), probe, f"{name}.gate")
            modulator = gate.mean(2)  # [T, B, H]: fraction of tokens whose gate neuron fired
        o, new["attention"] = spiking_attention(
            q, k, v, self.decay, self.scale, self.variant, self.impl,
            state.get("attention"), self.plasticity(), modulator,
        )
        if probe is not None:
            counts = attention_event_counts(q.detach(), k.detach(), v.detach(), self.variant,
                                            None if modulator is None else modulator.detach())
            ones = torch.ones_like(q)
            dense = attention_event_counts(ones, ones, ones, self.variant,
                                           None if modulator is None else torch.ones_like(modulator))
            probe.count_synapses(float(counts["update"] + counts["read"]), True, self,
                                 float(dense["update"] + dense["read"]))
            probe.count_synapses(float(t * b * self.heads * self.head_dim ** 2), False, self)  # lambda * S each step
            if probe.keep_traces:
                probe.attention_states.setdefault(probe.prefix + name, []).append(new["attention"].memory.detach().cpu())
        o = o.reshape(t, b, n, -1)  # [T, B, N, H*d]
        if self.fake_quant:  # the export folds this norm at its running statistics
            gain, shift = self.out_norm.affine()
            drive = Drive(o * gain + shift)
        else:  # o is a pure current: the norm's shift is the output LIF's bias
            drive = self.out_norm.drive(Drive(o, o.new_zeros(o.shape[-1]) if self.split_bias else None))
        a, new["out_lif"] = self.out_lif(drive, state.get("out_lif"), probe, f"{name}.out")
        y, new["out_delay"] = self.out(a, state.get("out_delay"), probe)
        return y, new


    def lower(self, b: Any, name: str, source: str, tokens: int) -> Any:
        """Describe this block to an IR builder (``neuromorphic.lower.GraphBuilder``): the q/k/v
        (and gate) LIFs fed from ``source``, the attention node, its output LIF (the out_norm folded:
        gain per column, shift as bias); returns the output Dense's term."""
        width = self.heads * self.head_dim
        for key in "qkv":
            term = b.dense(self.proj[key], f"{name}.{key}_proj", source, tokens)
            b.connect(term, b.lif(self.lif[key], f"{name}.{key}", tokens, width, term.bias))
        modulator = None
        if VARIANTS[self.variant].modulated:
            term = b.dense(self.gate, f"{name}.gate_proj", source, tokens)
            modulator = b.lif(self.gate_lif, f"{name}.gate", tokens, self.heads, term.bias)
            b.connect(term, modulator)
        gain, shift = b.affine(self.out_norm, width)
        target = b.lif(self.out_lif, f"{name}.out", tokens, width, shift)
        b.attention(name, f"{name}.q", f"{name}.k", f"{name}.v", target, self.heads, self.head_dim, self.variant,
                    self.decay, self.scale, gain, self.plasticity(), modulator)
        return b.dense(self.out, f"{name}.out_proj", target, tokens)


class SpikingMLP(nn.Module):
    """Spikes ``[T, B, N, D]`` -> current ``[T, B, N, D]``: norm(W2 LIF(norm(W1 s)))."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        hidden, delay = cfg.mlp_ratio * cfg.dim, cfg.dense_delay
        self.fc1 = Dense(cfg.dim, hidden, delay=delay)
        self.lif = SpikingNeurons(cfg, hidden)
        self.fc2 = Dense(hidden, cfg.dim, delay=delay, residual=True)

    def forward(self, s: Tensor, state: State, probe: Optional[Probe], name: str) -> tuple[Tensor, State]:
        new: State = {}
        h, new["fc1_delay"] = self.fc1(s, state.get("fc1_delay"), probe)
        h, new["lif"] = self.lif(h, state.get("lif"), probe, f"{name}.hidden")
        y, new["fc2_delay"] = self.fc2(h, state.get("fc2_delay"), probe)
        return y, new

    def lower(self, b: Any, name: str, source: str, tokens: int) -> Any:
        """Describe this MLP to an IR builder: fc1 into the hidden LIF; returns fc2's term."""
        term = b.dense(self.fc1, f"{name}.fc1", source, tokens)
        b.connect(term, b.lif(self.lif, f"{name}.hidden", tokens, self.fc1.linear.out_features, term.bias))
        return b.dense(self.fc2, f"{name}.fc2", f"{name}.hidden", tokens)


def read_stream(norm: FeatureNorm, u: Drive, unit: float) -> Drive:
    """``norm(u)``: the input of a LIF reading the residual stream ``u`` (with ``qat`` its total
    is the list of ``Term`` s that each reader rounds for itself)."""
    return Drive(read(norm, u.total, unit)) if isinstance(u.total, list) else norm.drive(u)


class Block(nn.Module):
    """Membrane-shortcut block: u += Attn(LIF(norm(u))); u += MLP(LIF(norm(u)))."""

    def __init__(self, cfg: Config, tokens: int = 1) -> None:
        super().__init__()
        self.norm1, self.lif1 = FeatureNorm(cfg.dim), SpikingNeurons(cfg, cfg.dim)
        self.attn = SpikingAttention(cfg, tokens)
        self.norm2, self.lif2 = FeatureNorm(cfg.dim), SpikingNeurons(cfg, cfg.dim)
        self.mlp = SpikingMLP(cfg)
        self.unit = cfg_unit(cfg)  # a_in per unit current (qat)
        # aligned: the stream skips each sublayer as late as the sublayer's output arrives
        self.skip_delay = SUBLAYER_DELAY if cfg.delays == "aligned" else 0

    def skip(self, u: Drive, state: State, new: State, key: str) -> Drive:
        """The residual stream past a sublayer: ``u`` itself, or (aligned) ``u`` delayed as long as the sublayer."""
        if not self.skip_delay:
            return u
        u, new[key] = delay_drive(u, self.skip_delay, state.get(key))
        return u

    def forward(self, u: Drive, state: State, probe: Optional[Probe], name: str,
                modulator: Optional[Tensor] = None, top_down: Optional[Tensor] = None
                ) -> tuple[Drive, State, Tensor]:
        """Returns the residual stream after the block, its state, and the spikes that read the
        stream at its input ``[T, B, N, D]`` (a lower block's top-down source)."""
        new: State = {}
        s_in, new["lif1"] = self.lif1(read_stream(self.norm1, u, self.unit), state.get("lif1"), probe, f"{name}.in")
        y, new["attn"] = self.attn(s_in, state.get("attn", {}), probe, f"{name}.attn", modulator, top_down)
        u = join(self.skip(u, state, new, "skip1"), y)
        s, new["lif2"] = self.lif2(read_stream(self.norm2, u, self.unit), state.get("lif2"), probe, f"{name}.mid")
        y, new["mlp"] = self.mlp(s, state.get("mlp", {}), probe, f"{name}.mlp")
        return join(self.skip(u, state, new, "skip2"), y), new, s_in

    def lower(self, b: Any, name: str, tokens: int) -> None:
        """Describe this block to an IR builder: two readers of the residual stream, each
        followed by the sublayer that writes back into it."""
        dim = self.norm1.bn.num_features
        source = b.read(self.norm1, self.lif1, f"{name}.in", tokens, dim)
        b.write(self.attn.lower(b, f"{name}.attn", source, tokens))
        source = b.read(self.norm2, self.lif2, f"{name}.mid", tokens, dim)
        b.write(self.mlp.lower(b, f"{name}.mlp", source, tokens))


class LinearStem(nn.Module):
    """Per-token embedding ``[T, B, N, F] -> [T, B, N, D]`` = norm(W x + position)."""

    def __init__(self, cfg: Config, tokens: int, features: int, binary_input: bool) -> None:
        super().__init__()
        self.embed = Dense(features, cfg.dim, delay=cfg.dense_delay, binary_input=binary_input, residual=True)
        # unit-scale positions: tiny ones leave the global sum over tokens order-blind
        self.position = nn.Parameter(torch.randn(tokens, cfg.dim))
        self.out_tokens = tokens

    def forward(self, x: Tensor, state: State, probe: Optional[Probe]) -> tuple[Drive, State]:
        u, carry = self.embed(x, state.get("embed_delay"), probe, position=self.position)
        return u, {"embed_delay": carry}

    def lower(self, b: Any, tokens: int) -> int:
        """Describe this stem to an IR builder: the embedding writes the residual stream; returns its tokens."""
        b.write(b.dense(self.embed, "stem.embed", "input", tokens, position=self.position))
        return tokens


class ConvStem(nn.Module):
    """Two convolutions: conv1 (real input: MACs) -> norm -> LIF -> conv2 (spikes: ACs) ->
    + position -> norm. Each convolution is a Dense layer with shared weights; lowering unrolls
    it into a dense matrix. Subclasses say what a convolution runs over (``_conv``) and what it
    costs in synaptic events (``_count``)."""

    def __init__(self, cfg: Config, conv1: nn.Module, conv2: nn.Module, features: int, lif_tokens: int,
                 out_tokens: int, binary_input: bool) -> None:
        super().__init__()
        self.delay = cfg.dense_delay
        self.binary_input = binary_input
        self.conv1, self.conv2 = conv1, conv2
        self.features, self.lif_tokens, self.out_tokens = features, lif_tokens, out_tokens
        self.norm1 = FeatureNorm(conv1.out_channels)
        self.lif = SpikingNeurons(cfg, conv1.out_channels)
        self.position = nn.Parameter(torch.randn(out_tokens, cfg.dim))
        self.norm2 = FeatureNorm(cfg.dim)
        self.split_bias = cfg.alpha > 0  # norm shifts (and the positions) are membrane biases
        self.keep_rest = cfg.delays == "aligned"

    def _conv(self, conv: nn.Module, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _count(self, conv: nn.Module, x: Tensor) -> float:
        raise NotImplementedError

    def _geometry(self, conv: nn.Module) -> Optional[tuple[dict, list, list]]:
        """The convolution's 2-d geometry and the images it maps between (NIR's Conv2d); None: none."""
        return None

    def forward(self, x: Tensor, state: State, probe: Optional[Probe]) -> tuple[Drive, State]:
        new: State = {}
        if self.delay:
            x, new["conv1_delay"] = delay_one_step(x, state.get("conv1_delay"))
        if probe is not None:
            if self.binary_input:
                ops, dense = self._count(self.conv1, x), self._count(self.conv1, torch.ones_like(x))
            else:
                ops = dense = float(x.numel()) * math.prod(self.conv1.kernel_size) * self.conv1.out_channels
            probe.count_synapses(ops, self.binary_input, self.conv1, dense)
        h = self._conv(self.conv1, x)
        zero = h.new_zeros(h.shape[-1]) if self.split_bias else None
        s, new["lif"] = self.lif(self.norm1.drive(Drive(h, zero)), state.get("lif"), probe, "stem.conv1")
        if self.delay:
            s, new["conv2_delay"] = delay_one_step(s, state.get("conv2_delay"))
        if probe is not None:
            probe.count_synapses(self._count(self.conv2, s), True, self.conv2, self._count(self.conv2, torch.ones_like(s)))
        u = Drive(self._conv(self.conv2, s) + self.position, self.position if self.split_bias else None)
        out = self.norm2.drive(u)
        if self.keep_rest:  # aligned: the stream's current at silent input (the folded positions)
            gain, shift = self.norm2.affine(u.total)
            out = out._replace(rest=gain * self.position + shift)
        return out, new

    def lower(self, b: Any, tokens: int) -> int:
        """Describe this stem to an IR builder: conv1 (unrolled) into its LIF, conv2 (+ position,
        norm2 folded) into the residual stream; returns the tokens of the stream."""
        channels = self.conv1.out_channels
        gain, shift = b.affine(self.norm1, channels)
        b.lif(self.lif, "stem.conv1", self.lif_tokens, channels, shift)
        conv1 = b.conv(self.conv1, partial(self._conv, self.conv1), (tokens, self.features), "stem.conv1", "input",
                       geometry=self._geometry(self.conv1))
        b.connect(conv1, "stem.conv1", gain)
        b.write(b.conv(self.conv2, partial(self._conv, self.conv2), (self.lif_tokens, channels), "stem.conv2",
                       "stem.conv1", self.norm2, self.position, geometry=self._geometry(self.conv2)))
        return self.out_tokens


class Conv1dStem(ConvStem):
    """Two convolutions over the token axis: ``[T, B, N, F] -> [T, B, ceil(N/2), D]``:
    conv1 (kernel 5) -> norm -> LIF ``[T, B, N, C]`` -> conv2 (kernel 3, stride 2) -> + position -> norm."""

    def __init__(self, cfg: Config, tokens: int, features: int, binary_input: bool) -> None:
        conv1 = nn.Conv1d(features, cfg.conv_channels, 5, padding=2, bias=False)
        conv2 = nn.Conv1d(cfg.conv_channels, cfg.dim, 3, stride=2, padding=1, bias=False)
        super().__init__(cfg, conv1, conv2, features, tokens, (tokens + 1) // 2, binary_input)

    def _geometry(self, conv: nn.Conv1d) -> tuple[dict, list, list]:
        """A convolution over tokens as a 2-d one over a one-pixel-high image ``[1, tokens, 1]``
        (features as channels) with a k x k kernel whose rows above and below the centre meet only
        padding. Why not 1 x k: NIR's Conv2d infers its output shape from the kernel's height alone,
        and Norse's NIR import has no Conv1d; a square kernel is exact in both."""
        (k,), (stride,), (padding,) = conv.kernel_size, conv.stride, conv.padding
        assert k % 2 == 1, "an odd kernel keeps the one-pixel-high image one pixel high"
        images = ([1, self.lif_tokens, 1], [1, self.lif_tokens if conv is self.conv1 else self.out_tokens, 1])
        return {"kernel": [k, k], "stride": [1, stride], "padding": [k // 2, padding]}, *images

    @staticmethod
    def _conv(conv: nn.Conv1d, x: Tensor) -> Tensor:
        t, b, n, f = x.shape
        y = conv(x.reshape(t * b, n, f).transpose(1, 2))  # [T*B, F, N] -> [T*B, C, N']
        return y.transpose(1, 2).reshape(t, b, y.shape[-1], -1)  # [T, B, N', C]

    @staticmethod
    def _count(conv: nn.Conv1d, x: Tensor) -> float:
        """Exact synaptic events: per output position, active inputs in its window x C_out."""
        t, b, n, _ = x.shape
        active = (x != 0).float().sum(-1).reshape(t * b, 1, n)  # [T*B, 1, N]
        ones = torch.ones(1, 1, conv.kernel_size[0], device=x.device)
        window = F.conv1d(active, ones, stride=conv.stride, padding=conv.padding)
        return float(window.sum()) * conv.out_channels


class Conv2dStem(ConvStem):
    """Two 2-d convolutions over the image that the patch tokens tile: ``[T, B, N, p*p] -> [T, B, N, D]``.

    conv1 (3 x 3, stride 1; pixels: MACs) -> norm -> LIF at every pixel ``[T, B, H*W, C]`` (raster
    order) -> conv2 (p x p, stride p: one output per patch; spikes: ACs) -> + position -> norm.
    The stream keeps the patch tokens' order (row-major), so the body is that of the linear stem.
    """

    def __init__(self, cfg: Config, tokens: int, features: int, binary_input: bool) -> None:
        patch = cfg.patch_size
        side = math.isqrt(tokens) * patch
        if features != patch * patch or side * side != tokens * features:
            raise ShapeError(f"the conv2d stem needs a square grid of {patch}x{patch} patch tokens "
                             f"(patch_size {patch}); got {tokens} tokens of {features} features")
        conv1 = nn.Conv2d(1, cfg.conv_channels, 3, padding=1, bias=False)
        conv2 = nn.Conv2d(cfg.conv_channels, cfg.dim, patch, stride=patch, bias=False)
        super().__init__(cfg, conv1, conv2, features, side * side, tokens, binary_input)
        self.patch, self.side = patch, side

    def _image(self, x: Tensor, conv: nn.Module) -> Tensor:
        """``[T, B, N, F]`` -> ``[T*B, C_in, H, W]``: patch tokens (conv1's input) or pixels x channels (conv2's)."""
        t, b = x.shape[:2]
        if conv is self.conv1:
            return unpatchify(x.reshape(t * b, *x.shape[2:]), self.patch).unsqueeze(1)
        return x.reshape(t * b, self.side, self.side, -1).permute(0, 3, 1, 2)

    def _geometry(self, conv: nn.Conv2d) -> tuple[dict, list, list]:
        """(kernel/stride/padding, source image, target image), images as [height, width, patch]."""
        side = self.side // self.patch
        images = ([self.side, self.side, self.patch], [self.side, self.side, 1]) if conv is self.conv1 else \
            ([self.side, self.side, 1], [side, side, 1])
        return ({"kernel": list(conv.kernel_size), "stride": list(conv.stride), "padding": list(conv.padding)},
                *images)

    def _conv(self, conv: nn.Conv2d, x: Tensor) -> Tensor:
        t, b = x.shape[:2]
        y = conv(self._image(x, conv))  # [T*B, C_out, H', W']
        return y.flatten(2).transpose(1, 2).reshape(t, b, -1, conv.out_channels)  # [T, B, H'*W', C_out]

    def _count(self, conv: nn.Conv2d, x: Tensor) -> float:
        """Exact synaptic events: per output position, active inputs in its window x C_out."""
        active = self._image((x != 0).to(x.dtype), conv).sum(1, keepdim=True)  # [T*B, 1, H, W]
        ones = torch.ones(1, 1, *conv.kernel_size, device=x.device, dtype=x.dtype)
        window = F.conv2d(active, ones, stride=conv.stride, padding=conv.padding)
        return float(window.sum()) * conv.out_channels


STEMS = {"linear": LinearStem, "conv1d": Conv1dStem, "conv2d": Conv2dStem}


def cfg_unit(cfg: Config) -> float:
    """a_in per unit current in the fixed-point export (qat rounds weights in these units)."""
    return cfg.qat_vth / cfg.threshold


def check_tokens(x: Tensor, tokens: int, features: int) -> None:
    """Raise ShapeError unless ``x`` is a finite ``[B, tokens, features]`` tensor."""
    if x.dim() != 3 or x.shape[1] != tokens or x.shape[2] != features:
        raise ShapeError(
            f"model expects input [B, N, F] = [B, {tokens}, {features}], got {tuple(x.shape)}; "
            "check the task and patch_size in the config"
        )
    if not torch.isfinite(x).all():
        raise ShapeError("model input contains NaN or infinite values; clean the data first")


def encode(x: Tensor, cfg: Config, generator: Optional[torch.Generator] = None) -> Tensor:
    """Inputs ``[B, N, F]`` -> ``[T, B, N', F]``.

    global: T = time_steps copies (direct), Bernoulli(x clipped to [0, 1]) draws (poisson), or
    the retina's ON/OFF spike trains ``[T, B, N, F * 8]`` (retina: spikeformer/encoders.py).
    causal: token n is held for steps_per_token steps -> T = N * steps_per_token, N' = 1.
    """
    if cfg.encoder == "retina":  # global image or signal tasks only (config check)
        from .encoders import retina_encode  # noqa: PLC0415 - encoders imports data, which is heavy

        return retina_encode(x, cfg)
    if cfg.mode == "causal":
        b, n, f = x.shape
        steps = x.transpose(0, 1).repeat_interleave(cfg.steps_per_token, 0)  # [N*r, B, F]
        x_t = steps.unsqueeze(2)  # [T, B, 1, F]
    else:
        x_t = x.unsqueeze(0).expand(cfg.time_steps, *x.shape)  # [T, B, N, F]
    if cfg.encoder == "poisson":
        p = x_t.clamp(0.0, 1.0)
        # draw on the generator's device (CPU generators stay usable when the model is on CUDA)
        where = generator.device if generator is not None else p.device
        x_t = (torch.rand(p.shape, generator=generator, device=where).to(p.device) < p).to(p.dtype)
    return x_t


@contextmanager
def running_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Training-mode BatchNorms normalise by the batch but leave their running statistics (and
    batch count) as they were."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) running + 0 batch
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


class Spikeformer(nn.Module):
    """Spiking transformer with event-driven attention (see the module docstring)."""

    def __init__(self, cfg: Config, tokens: int, features: int, classes: int) -> None:
        super().__init__()
        self.cfg, self.tokens, self.features, self.classes = cfg, tokens, features, classes
        binary = cfg.encoder in ("poisson", "retina") or cfg.task == "recall"  # one-hot tokens are spikes
        self.binary_input = binary
        stream_tokens = 1 if cfg.mode == "causal" else tokens
        encoded = features
        if cfg.encoder == "retina":  # each input value becomes CHANNELS spike trains
            from .encoders import CHANNELS  # noqa: PLC0415

            encoded = features * CHANNELS
        self.input_features = encoded  # per token, what the stem reads: the encoder's output
        self.stem = STEMS[cfg.stem](cfg, stream_tokens, encoded, binary)
        body_tokens = self.stem.out_tokens
        self.blocks = nn.ModuleList(Block(cfg, body_tokens) for _ in range(cfg.depth))
        self.norm = FeatureNorm(cfg.dim)
        self.lif = SpikingNeurons(cfg, cfg.dim)
        self.readout = Dense(body_tokens * cfg.dim, classes, norm=False, delay=cfg.dense_delay)
        # top-down: per block, synapses from the readout's current (readout) or from the spikes
        # that read the stream above the block (block) onto its gate neurons; zero at the start,
        # so training begins from the bottom-up model and learns what the feedback is worth
        self.top_down = None
        if cfg.top_down != "none":
            source = classes if cfg.top_down == "readout" else cfg.dim
            self.top_down = nn.ModuleList(Dense(source, cfg.heads, norm=False, bias=False,
                                                binary_input=cfg.top_down == "block") for _ in range(cfg.depth))
            for dense in self.top_down:
                nn.init.zeros_(dense.linear.weight)
        if cfg.qat:  # see spikeformer/qat.py
            for module in self.modules():
                if hasattr(module, "fake_quant"):
                    module.fake_quant = True
                if isinstance(module, Dense) and module is not self.readout:
                    module.unit = cfg_unit(cfg)
        for module in self.modules():  # alpha > 0: biases go to the membrane (SPEC §2.1)
            if isinstance(module, Dense):
                module.split_bias = cfg.alpha > 0
                module.keep_rest = cfg.delays == "aligned" and module.residual

    @property
    def latency(self) -> int:
        """Steps from input to readout current along the longest Dense path (0 without delays)."""
        if not self.cfg.dense_delay:
            return 0
        stem = 1 if self.cfg.stem == "linear" else 2  # conv stems: conv1 then conv2
        per_block = 2 + 2  # attention: q/k/v Dense then out Dense; MLP: fc1 then fc2
        return stem + per_block * self.cfg.depth + 1  # + readout Dense

    @property
    def window(self) -> int:
        """Readout steps averaged for the logits: ``time_steps`` (global) or ``steps_per_token`` (causal)."""
        return self.cfg.steps_per_token if self.cfg.mode == "causal" else self.cfg.time_steps

    def check_input(self, x: Tensor) -> None:
        # a language model streams: any number of characters (its context is only the training window)
        stream = self.cfg.every_token and x.dim() == 3 and x.shape[1] >= 1
        check_tokens(x, x.shape[1] if stream else self.tokens, self.features)

    def lower(self, b: Any) -> int:
        """Describe the model to an IR builder (``neuromorphic.lower.GraphBuilder``), in the order
        of ``forward_steps``; returns the tokens of the residual stream."""
        tokens = 1 if self.cfg.mode == "causal" else self.tokens
        b.input(tokens, self.input_features, graded=not self.binary_input)
        body = self.stem.lower(b, tokens)
        for i, block in enumerate(self.blocks):
            block.lower(b, f"block{i}", body)
        b.read(self.norm, self.lif, "final", body, self.cfg.dim)
        b.readout(self.readout, "final")
        return body

    def encode_input(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Tokens ``[B, N, F]`` -> the steps ``forward`` feeds ``forward_steps``: ``[T (+latency), B, N', F]``
        (with loihi delays, ``latency`` zero steps follow so every path reaches the readout)."""
        self.check_input(x)
        x_t = encode(x, self.cfg, generator)
        if self.latency:
            x_t = torch.cat([x_t, x_t.new_zeros(self.latency, *x_t.shape[1:])], 0)
        return x_t

    def forward_steps(self, x_t: Tensor, state: Optional[State] = None,
                      probe: Optional[Probe] = None, modulator: Optional[Tensor] = None
                      ) -> tuple[Tensor, State]:
        """Encoded input ``[T, B, N, F]`` -> readout current ``[T, B, C]`` and the new state."""
        state = state or {}
        if self.top_down is None:
            y, new, _ = self.sweep(x_t, state, probe, modulator)
            return y, new
        # top-down (docs/equations.md): a bottom-up sweep, then the modulated sweep, whose gates
        # at step t hear the bottom-up sweep's signals of step t - 1 (the same weights; on a chip,
        # two copies of the network side by side, so the graph stays feed-forward)
        # the norms' running statistics follow the modulated sweep alone; a probe records the
        # bottom-up sweep under the names of the IR's bottom-up copy (``BOTTOM_UP`` + name)
        with running_stats_frozen(self), (probe.prefixed(BOTTOM_UP) if probe is not None else nullcontext()):
            bottom_up, new_bottom_up, signals = self.sweep(x_t, state.get("bottom_up", {}), probe, modulator)
        if self.cfg.top_down == "readout":  # every block hears the running prediction, every token alike
            signals = [bottom_up.unsqueeze(2)] * len(self.blocks)  # [T, B, 1, C]
        else:  # block i hears the spikes reading the stream above it (the next block's or the final ones)
            signals = signals[1:]
        currents, carries = [], []
        for i, (dense, signal) in enumerate(zip(self.top_down, signals)):
            late, carry = delay_one_step(signal, state.get(f"top_down{i}"))  # one step late
            currents.append(dense(late, None, probe)[0].total)
            carries.append(carry)
        y, new, _ = self.sweep(x_t, state, probe, modulator, currents)
        new["bottom_up"] = new_bottom_up
        new.update({f"top_down{i}": carry for i, carry in enumerate(carries)})
        return y, new

    def sweep(self, x_t: Tensor, state: State, probe: Optional[Probe], modulator: Optional[Tensor] = None,
              top_down: Optional[list[Tensor]] = None) -> tuple[Tensor, State, list[Tensor]]:
        """One pass of every layer over the steps ``x_t [T, B, N, F]``: the readout current
        ``[T, B, C]``, the new state, and the spikes reading the residual stream at each block's
        input and at the final LIF (``[T, B, N, D]`` each). ``top_down``: each block's extra gate
        current ``[T, B, N or 1, H]``."""
        new: State = {}
        u, new["stem"] = self.stem(x_t, state.get("stem", {}), probe)
        readers = []
        for i, block in enumerate(self.blocks):
            u, new[f"block{i}"], s = block(u, state.get(f"block{i}", {}), probe, f"block{i}", modulator,
                                           None if top_down is None else top_down[i])
            readers.append(s)
        s, new["lif"] = self.lif(read_stream(self.norm, u, cfg_unit(self.cfg)), state.get("lif"), probe, "final")
        readers.append(s)
        t, b = s.shape[:2]
        y, new["readout_delay"] = self.readout(s.reshape(t, b, -1), state.get("readout_delay"), probe)
        return y.total, new, readers  # [T, B, N*D] -> [T, B, C]

    def forward(self, x: Tensor, state: Optional[State] = None, probe: Optional[Probe] = None,
                generator: Optional[torch.Generator] = None) -> tuple[Tensor, State]:
        """Tokens ``[B, N, F]`` -> logits ``[B, C]`` (``[B, N, C]`` for a language model: one
        prediction per token) and the final state.

        The window averaged for the logits is the last ``time_steps`` (global) or
        ``steps_per_token`` (causal) input steps, shifted by ``latency`` (loihi delays: the
        input is followed by ``latency`` zero steps so every path reaches the readout).
        """
        x_t = self.encode_input(x, generator)
        if probe is not None and self.cfg.encoder == "retina":  # the encoder's own filtering
            from .encoders import retina_macs_per_sample  # noqa: PLC0415

            probe.count_synapses(float(retina_macs_per_sample(self.cfg, self.tokens, self.features)) * x.shape[0],
                                 False, "encoder")
        y, state = self.forward_steps(x_t, state, probe)
        if self.cfg.every_token:
            return self.token_logits(y, x.shape[1]), state
        return y[-self.window:].mean(0), state

    def token_logits(self, y: Tensor, tokens: int) -> Tensor:
        """Readout currents ``[T, B, C]`` of ``tokens`` causal tokens -> logits of every token
        ``[B, tokens, C]``: token n's window is its ``steps_per_token`` steps, ``latency`` later."""
        r = self.cfg.steps_per_token
        window = y[self.latency:self.latency + tokens * r]  # [N*r, B, C]
        return window.reshape(tokens, r, *y.shape[1:]).mean(1).transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# ANN baseline: the same width, depth, tokens and readout, with softmax attention.


class ANNTransformer(nn.Module):
    """Pre-LN transformer baseline with softmax attention (causal mask in causal mode).

    Same stem shape, width D, depth, heads x head_dim and MLP ratio as the spiking model;
    readout over all tokens flattened (global) or the last token (causal).
    """

    def __init__(self, cfg: Config, tokens: int, features: int, classes: int) -> None:
        super().__init__()
        self.cfg, self.tokens, self.features = cfg, tokens, features
        d, inner = cfg.dim, cfg.heads * cfg.head_dim
        if cfg.stem == "conv1d":
            self.conv1 = nn.Conv1d(features, cfg.conv_channels, 5, padding=2)
            self.conv2 = nn.Conv1d(cfg.conv_channels, d, 3, stride=2, padding=1)
            body_tokens = (tokens + 1) // 2
        elif cfg.stem == "conv2d":  # the spiking Conv2dStem's shapes: 3x3 over pixels, then p x p per patch
            self.conv1 = nn.Conv2d(1, cfg.conv_channels, 3, padding=1)
            self.conv2 = nn.Conv2d(cfg.conv_channels, d, cfg.patch_size, stride=cfg.patch_size)
            body_tokens = tokens
        else:
            self.embed = nn.Linear(features, d)
            body_tokens = tokens
        self.position = nn.Parameter(torch.randn(body_tokens, d) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(cfg.depth):
            self.blocks.append(nn.ModuleDict({
                "ln1": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * inner), "out": nn.Linear(inner, d),
                "ln2": nn.LayerNorm(d), "fc1": nn.Linear(d, cfg.mlp_ratio * d), "fc2": nn.Linear(cfg.mlp_ratio * d, d),
            }))
        self.ln = nn.LayerNorm(d)
        read_tokens = 1 if cfg.mode == "causal" else body_tokens
        self.readout = nn.Linear(read_tokens * d, classes)
        self.body_tokens = body_tokens

    def check_input(self, x: Tensor) -> None:
        # a language model reads any prefix up to its context (generation starts from a short prompt)
        prefix = self.cfg.every_token and x.dim() == 3 and 1 <= x.shape[1] <= self.tokens
        check_tokens(x, x.shape[1] if prefix else self.tokens, self.features)

    def forward(self, x: Tensor, state: Optional[State] = None, probe: Optional[Probe] = None,
                generator: Optional[torch.Generator] = None) -> tuple[Tensor, State]:
        """Tokens ``[B, N, F]`` -> logits ``[B, C]`` (``[B, N, C]`` for a language model);
        ``state`` is unused (kept for one interface)."""
        self.check_input(x)
        cfg = self.cfg
        if cfg.stem == "conv1d":
            h = F.gelu(self.conv1(x.transpose(1, 2)))  # [B, C, N]
            u = self.conv2(h).transpose(1, 2)  # [B, N', D]
        elif cfg.stem == "conv2d":
            h = F.gelu(self.conv1(unpatchify(x, cfg.patch_size).unsqueeze(1)))  # [B, C, H, W]
            u = self.conv2(h).flatten(2).transpose(1, 2)  # [B, N, D] (patches row-major)
        else:
            u = self.embed(x)
        u = u + self.position[:u.shape[1]]
        b, n, _ = u.shape
        h_, d_ = cfg.heads, cfg.head_dim
        for blk in self.blocks:
            qkv = blk["qkv"](blk["ln1"](u)).view(b, n, 3, h_, d_).permute(2, 0, 3, 1, 4)  # [3, B, H, N, d]
            o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=cfg.mode == "causal")
            u = u + blk["out"](o.transpose(1, 2).reshape(b, n, h_ * d_))
            u = u + blk["fc2"](F.gelu(blk["fc1"](blk["ln2"](u))))
        u = self.ln(u)
        if cfg.every_token:  # a language model: every token's next-token logits [B, N, C]
            feats = u
        else:
            feats = u[:, -1] if cfg.mode == "causal" else u.reshape(b, -1)
        if probe is not None:  # counted in closed form for the whole model (dense: every MAC is done)
            probe.count_synapses(float(self.macs_per_sample()) * b, False, self)
        return self.readout(feats), {}

    def macs_per_sample(self) -> int:
        """Multiply-accumulates of one forward pass (weights and attention products)."""
        cfg, n, d = self.cfg, self.body_tokens, self.cfg.dim
        inner, hidden = cfg.heads * cfg.head_dim, cfg.mlp_ratio * self.cfg.dim
        if cfg.stem == "conv1d":
            stem = self.tokens * self.features * cfg.conv_channels * 5 + n * cfg.conv_channels * d * 3
        elif cfg.stem == "conv2d":  # 9 MACs per pixel and channel, then p*p*C per patch and output
            stem = self.tokens * self.features * cfg.conv_channels * 9 + n * self.features * cfg.conv_channels * d
        else:
            stem = self.tokens * self.features * d
        pairs = n * (n + 1) // 2 if cfg.mode == "causal" else n * n
        block = n * (d * 3 * inner + inner * d + 2 * d * hidden) + 2 * pairs * inner
        reads = n if cfg.every_token else 1
        return stem + cfg.depth * block + reads * self.readout.in_features * self.readout.out_features


def build_model(cfg: Config, tokens: int, features: int, classes: int) -> nn.Module:
    """The model named by ``cfg.model`` for inputs ``[B, tokens, features]``."""
    cls = ANNTransformer if cfg.model == "ann" else Spikeformer
    return cls(cfg, tokens, features, classes)
