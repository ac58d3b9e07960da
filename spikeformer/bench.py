"""``spikeformer bench``: timings and peak memory of our kernels against baselines and peer libraries.

Writes ``bench.json`` (SPEC §4): ``{"machine": {...}, "entries": [...]}``; every entry has

    name, baseline, ours_seconds, baseline_seconds, ratio (= baseline_seconds / ours_seconds),
    ours_peak_mem_mb, baseline_peak_mem_mb, shape

plus ``peers`` (``{peer: {"seconds", "peak_mem_mb"}}`` or ``{peer: {"missing": "reason"}}``),
``repeats`` and ``note``. A ratio above 1 means ours is faster than the baseline. Names are stable
ids built from the measured shape (``lif_fwd_bwd_n4096_t500``, ``attention_l16384``,
``event_rate0.10``, ``train_batch_digits``); ``--quick`` measures smaller shapes, so its names carry
the smaller numbers.

Groups of entries (shapes for the full run; ``--quick`` and the tests' ``tiny`` are smaller):

- ``lif_neuron_n{n}_t{T}``: the LIF neuron alone, fwd+bwd; ours ``LIF(impl="fused")``, baseline
  ``loop`` (``LIF(impl="loop")``); peers snnTorch ``Leaky``, Norse ``LIF``, SpikingJelly ``LIFNode``.
- ``lif_fwd_bwd_n{n}_t{T}``: Linear(n, n) + LIF, fwd+bwd; baseline ``floor`` = the Linear alone, so
  the ratio says how close the LIF gets to costing nothing; peers as above behind the same Linear.
  ``lif_floor_n{n}_t{T}``: the Linear alone (ratio 1, the reference number).
- ``attention_l{L}``: causal hebbian spiking attention fwd+bwd; ours ``impl="chunked"``, baseline
  the materialised softmax attention; peers SDPA and ``impl="recurrent"``.
  ``attention_crossover``: the smallest L of a sweep where chunked beats SDPA.
- ``attention_global_train``: global-mode hebbian attention fwd+bwd at a digits-loihi step's shape;
  ours ``impl="auto"`` (the fused CPU kernel), baseline ``impl="chunked"``, peer ``impl="recurrent"``.
- ``event_rate{r}``: causal hebbian inference at spike rate r; ours ``impl="event"``, baseline
  ``impl="recurrent"``, peer ``impl="chunked"``.
- ``train_batch_digits[_loihi]``: one training step of demos/digits-nodelay.toml (no delays) and
  demos/digits-loihi.toml; baseline the same-size ANN; peer ``before`` = the spiking model on the
  loop LIF and recurrent attention.
- entries other packages register under the ``spikeformer.bench`` entry point: the neuromorphic
  backends' ``lava_steps_per_s_digits_loihi`` and ``fixed_ref_vs_lava`` (neuromorphic/bench.py).

Time: the median of ``repeats`` calls after one warm-up call that is not counted. Peak memory:
one more call, see ``peak_memory_mb``. A peer that cannot be imported or fails is recorded as
``{"missing": "<reason>"}``, never estimated.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .errors import SpikeformerError

SPEC_KEYS = ("name", "baseline", "ours_seconds", "baseline_seconds", "ratio", "ours_peak_mem_mb",
             "baseline_peak_mem_mb", "shape")
BEFORE_ISSUE_MS_PER_BATCH = 117  # digits-loihi training step before the fused kernels (2026-11-30, this machine)
RECURRENT_BUDGET_S = 60.0  # skip the recurrent attention loop when its measurement would take longer
SOFTMAX_BUDGET_BYTES = 8 * 2 ** 30  # above this the materialised softmax runs once (not 1 + repeats + 1 calls)
MEMORY_HEADROOM = 0.75  # ... and only when its estimated peak is at most this share of the memory available
CONFIGS = {"train_batch_digits": "digits-nodelay.toml", "train_batch_digits_loihi": "digits-loihi.toml"}
PEAK_MEMORY_METHOD = {
    "cpu": "torch profiler allocator events (profile_memory=True): the peak of the running sum of bytes "
           "allocated minus bytes freed during one call, i.e. the most tensor memory allocated during the "
           "call that was alive at once; tensors that existed before the call (inputs, weights) are not counted",
    "cuda": "torch.cuda.max_memory_allocated() during one call minus torch.cuda.memory_allocated() before it",
}


@dataclass(frozen=True)
class Sizes:
    """The shapes of one bench run."""

    batch: int  # LIF benchmarks: batch B
    steps: int  # LIF benchmarks: time steps T
    lif_features: tuple[int, ...]  # LIF benchmarks: neurons n
    attention_lengths: tuple[int, ...]  # attention_l{L}
    crossover_lengths: tuple[int, ...]  # the sweep of attention_crossover
    event_length: int  # event_rate: sequence length L
    event_rates: tuple[float, ...]
    heads: int = 4
    head_dim: int = 64
    train_batch: int = 64
    repeats: int = 5
    global_shape: tuple[int, int, int, int, int] = (14, 64, 4, 8, 16)  # attention_global: T, B, N, H, d
    lava_samples: int = 20  # test samples of the Lava / fixed_ref / Brian2 runs


SIZES: dict[str, Sizes] = {
    "full": Sizes(16, 500, (1024, 4096), (1024, 4096, 16384), (256, 512, 1024, 2048, 4096, 8192, 16384),
                  4096, (0.01, 0.05, 0.10, 0.30)),
    "quick": Sizes(4, 100, (512,), (256, 1024), (64, 128, 256, 512, 1024), 512, (0.01, 0.05, 0.10, 0.30),
                   repeats=3, lava_samples=5),
    # the tests' size: everything runs, nothing is meaningful
    "tiny": Sizes(2, 8, (16,), (16, 32), (16, 32), 32, (0.10,), heads=2, head_dim=8, train_batch=4, repeats=1,
                  global_shape=(4, 2, 2, 2, 8), lava_samples=1),
}

PEER_NOTE = ("peers: snnTorch Leaky(beta=0.9) stepped on x[t] in a loop as its tutorials do (its default "
             "subtractive reset, so its spikes differ); Norse LIFBoxCell over x.unbind(0) (tau_mem_inv 100, dt 1e-3, "
             "v_th 0.1: our neuron rescaled); SpikingJelly LIFNode(tau=10, decay_input=False, detach_reset=True, "
             "step_mode='m', backend='torch'; 'cupy' too on CUDA); each peer's spike_rate is recorded")
Measurement = dict  # {"seconds", "peak_mem_mb"} or {"missing": reason}


# ---------------------------------------------------------------- timing and memory


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_callable(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: str = "cpu",
                  clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls that are not timed."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        _sync(device)
        times.append(clock() - start)
    return times


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ profiler's own log lines (kineto start/stop, unknown-block warnings) on fd 2."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory_mb(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Peak tensor memory of one call of ``fn``, in MB (10^6 bytes), not counting what was allocated before.

    CUDA: ``max_memory_allocated`` during the call minus ``memory_allocated`` before it.
    CPU: the call runs under ``torch.profiler.profile(profile_memory=True)``, which reports every
    CPU allocator allocation (+bytes) and free (-bytes) with a time stamp; the result is the peak of
    their running sum: the largest amount of memory allocated during the call (tensors, including
    autograd's saved tensors and ops' scratch buffers) that was alive at one moment. Frees of memory
    allocated before any profiling are not reported, so this never undercounts by them.
    """
    if device == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated() - start) / 1e6
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for _, nbytes in sorted(events):
        running += nbytes
        peak = max(peak, running)
    del prof, events
    gc.collect()  # the profile sits in a reference cycle: its event log (GBs for long loops) goes now
    return peak / 1e6


def reason(exc: BaseException) -> str:
    """One line naming an exception."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


# The peer neuron libraries step Python loops of 500 steps (snnTorch's backward is O(T^2)): the
# CPU profiler's event log of one such call outgrew this machine's 24 GiB, so their memory is not
# measured on CPU (SPEC asks for ours and the baseline's).
PEER_MEMORY_NOTE = "not measured on CPU for peer libraries (the profiler's event log of their loops outgrows 24 GiB)"


def measure(make: Callable[[], Callable[[], Any]], repeats: int, device: str = "cpu",
            memory: bool = True, warmup: int = 1) -> Measurement:
    """Build the workload with ``make()`` and time it (and its peak memory, unless ``memory`` is
    False); ``{"missing": reason}`` if building or running fails."""
    try:
        torch.manual_seed(0)
        fn = make()
        times = time_callable(fn, repeats, warmup=warmup, device=device)
        peak = peak_memory_mb(fn, device) if memory or device == "cuda" else None
    except Exception as exc:  # noqa: BLE001 - any failure of a peer is recorded, not raised
        return {"missing": reason(exc)}
    return {"seconds": statistics.median(times), "peak_mem_mb": None if peak is None else round(peak, 3),
            "all_seconds": times, **({} if peak is not None else {"peak_mem_note": PEER_MEMORY_NOTE})}


def once(seconds: float) -> Measurement:
    """A measurement taken once (a whole simulator run: memory not profiled)."""
    return {"seconds": seconds, "peak_mem_mb": None, "all_seconds": [seconds],
            "peak_mem_note": "not measured (a whole simulator run)"}


def missing(m: Measurement) -> bool:
    return "missing" in m


def _peer(m: Measurement) -> dict:
    """A peer's record: seconds and peak memory, or why it is missing."""
    if missing(m):
        return {"missing": m["missing"]}
    return {k: m[k] for k in ("seconds", "peak_mem_mb", "peak_mem_note", "all_seconds", "spike_rate") if k in m}


def make_entry(name: str, shape: dict, ours: Measurement, baseline_name: str, baseline: Measurement,
               peers: Optional[dict[str, Measurement]] = None, repeats: int = 0, note: str = "",
               **extra: Any) -> dict:
    """One bench.json entry with the SPEC keys; seconds and memory are None where missing."""
    ours_s = None if missing(ours) else ours["seconds"]
    base_s = None if missing(baseline) else baseline["seconds"]
    entry = {
        "name": name, "baseline": baseline_name, "shape": shape,
        "ours_seconds": ours_s, "baseline_seconds": base_s,
        "ratio": base_s / ours_s if ours_s and base_s is not None else None,
        "ours_peak_mem_mb": None if missing(ours) else ours["peak_mem_mb"],
        "baseline_peak_mem_mb": None if missing(baseline) else baseline["peak_mem_mb"],
        "peers": {k: _peer(m) for k, m in (peers or {}).items()},
        "repeats": repeats, "note": note,
    }
    for label, m in (("ours", ours), ("baseline", baseline)):
        if missing(m):
            entry[f"{label}_missing"] = m["missing"]
        else:
            entry[f"{label}_all_seconds"] = m["all_seconds"]
            if "peak_mem_note" in m:
                entry[f"{label}_note"] = m["peak_mem_note"]
    entry.update(extra)
    return entry


# ---------------------------------------------------------------- workloads


def _import(name: str) -> Any:
    """Import a peer library (a test replaces ``sys.modules[name]`` by None to make it missing)."""
    return importlib.import_module(name)


def _grads(loss: Tensor, leaves: Sequence[Tensor]) -> None:
    """Backward without accumulating into ``.grad``: every call starts and ends with the same tensors alive."""
    torch.autograd.grad(loss, list(leaves))


def _lif_input(sizes: Sizes, n: int, device: str, requires_grad: bool) -> Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(sizes.steps, sizes.batch, n, generator=gen) * 0.5 + 0.3
    return x.to(device).requires_grad_(requires_grad)


def _neuron(kind: str, device: str) -> Callable[[Tensor], Tensor]:
    """A LIF population ``[T, B, n] -> spikes [T, B, n]`` of library ``kind``, membrane decay 0.9 per step,
    threshold 1, reset to zero (snnTorch: its default subtractive reset)."""
    if kind in ("fused", "loop"):
        from .neurons import LIF, LIFParameters

        lif = LIF(LIFParameters(beta=0.9), impl=kind).to(device)
        return lambda x: lif(x)[0]
    if kind == "snntorch":
        snn = _import("snntorch")
        leaky = snn.Leaky(beta=0.9).to(device)

        def run_snntorch(x: Tensor) -> Tensor:  # as snnTorch's tutorials loop: mem = init_leaky(); x[t]
            mem = leaky.init_leaky()
            out = []
            for t in range(x.shape[0]):
                spk, mem = leaky(x[t], mem)
                out.append(spk)
            return torch.stack(out)

        return run_snntorch
    if kind == "norse":
        norse = _import("norse.torch")
        # Norse's fastest CPU form here (faster than its LIF module, which also carries a current):
        # LIFBoxCell stepped over x.unbind(0). v <- v + dt * tau_mem_inv * (x - v) with dt * tau_mem_inv = 0.1
        # is v <- 0.9 v + 0.1 x, and v_th = 0.1 is threshold 1 on the 10x smaller membrane: the same neuron
        value = lambda x: torch.as_tensor(x, device=device)  # noqa: E731
        p = norse.LIFBoxParameters(tau_mem_inv=value(100.0), v_th=value(0.1), v_leak=value(0.0), v_reset=value(0.0))
        cell = norse.LIFBoxCell(p, dt=0.001).to(device)

        def run_norse(x: Tensor) -> Tensor:
            state, out = None, []
            for x_t in x.unbind(0):
                spk, state = cell(x_t, state)
                out.append(spk)
            return torch.stack(out)

        return run_norse
    if kind.startswith("spikingjelly"):
        neuron = _import("spikingjelly.activation_based.neuron")
        backend = "cupy" if kind.endswith("cupy") else "torch"
        # tau = 10 with decay_input=False: v <- 0.9 v + x; hard reset to 0, reset detached as ours
        node = neuron.LIFNode(tau=10.0, decay_input=False, v_threshold=1.0, v_reset=0.0, detach_reset=True,
                              step_mode="m", backend=backend).to(device)

        def run_spikingjelly(x: Tensor) -> Tensor:
            node.reset()
            return node(x)

        return run_spikingjelly
    raise ValueError(f"unknown neuron {kind!r}")


def _peer_neurons(device: str) -> list[str]:
    peers = ["snntorch", "norse", "spikingjelly"]
    return peers + (["spikingjelly_cupy"] if device == "cuda" else [])


def _make_neuron_step(sizes: Sizes, n: int, kind: str, device: str) -> Callable[[], Callable[[], None]]:
    def make() -> Callable[[], None]:
        x = _lif_input(sizes, n, device, requires_grad=True)
        run = _neuron(kind, device)

        def step() -> None:
            _grads(run(x).sum(), [x])

        return step

    return make


def _make_linear_step(sizes: Sizes, n: int, kind: Optional[str], device: str) -> Callable[[], Callable[[], None]]:
    """Linear(n, n) (+ the LIF of ``kind``; None: the Linear alone, the floor), fwd+bwd into the weights."""
    def make() -> Callable[[], None]:
        x = _lif_input(sizes, n, device, requires_grad=False) * 2.0
        linear = nn.Linear(n, n).to(device)
        run = _neuron(kind, device) if kind is not None else (lambda y: y)
        leaves = list(linear.parameters())

        def step() -> None:
            _grads(run(linear(x)).sum(), leaves)

        return step

    return make


def _spike_rate(run: Callable[[Tensor], Tensor], x: Tensor) -> Optional[float]:
    try:
        with torch.no_grad():
            return round(float(run(x).float().mean()), 4)
    except Exception:  # noqa: BLE001 - the rate is informative only
        return None


def _with_rates(peers: dict[str, Measurement], x: Tensor, device: str) -> dict[str, Measurement]:
    """Each measured peer neuron's spike rate on ``x`` (the neurons differ only where a peer resets differently)."""
    out = {}
    for kind, m in peers.items():
        out[kind] = m if missing(m) else {**m, "spike_rate": _spike_rate(_neuron(kind, device), x)}
    return out


def _spikes(length: int, sizes: Sizes, rate: float, device: str, requires_grad: bool) -> list[Tensor]:
    """q, k, v: 0/1 floats ``[L, B=1, N=1, H, d]`` at ``rate``."""
    gen = torch.Generator().manual_seed(2)
    shape = (length, 1, 1, sizes.heads, sizes.head_dim)
    return [(torch.rand(shape, generator=gen) < rate).float().to(device).requires_grad_(requires_grad)
            for _ in range(3)]


def _make_attention(sizes: Sizes, length: int, impl: str, device: str, rate: float = 0.1,
                    train: bool = True) -> Callable[[], Callable[[], None]]:
    """Causal attention over ``length`` steps. ``impl``: a ``spiking_attention`` impl (hebbian, decay 0.9,
    scale 1/d), or ``softmax`` (materialised [L, L] scores, causal mask, softmax, @ v) or ``sdpa``
    (``scaled_dot_product_attention(is_causal=True)``), both at the usual scale 1/sqrt(d)."""
    def make() -> Callable[[], None]:
        q, k, v = _spikes(length, sizes, rate, device, requires_grad=train)
        if impl in ("softmax", "sdpa"):
            q, k, v = (t.detach().view(length, sizes.heads, sizes.head_dim).permute(1, 0, 2).unsqueeze(0)
                       .contiguous().requires_grad_(train) for t in (q, k, v))  # [B, H, L, d]

            def run() -> Tensor:
                if impl == "sdpa":
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                scores = (q @ k.transpose(-1, -2)) / math.sqrt(sizes.head_dim)
                mask = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
                return torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ v
        else:
            from .attention import spiking_attention

            decay = torch.full((sizes.heads,), 0.9, device=device)

            def run() -> Tensor:
                return spiking_attention(q, k, v, decay, 1.0 / sizes.head_dim, "hebbian", impl=impl)[0]

        if not train:
            def infer() -> None:
                with torch.no_grad():
                    run()

            return infer

        def step() -> None:
            _grads(run().sum(), [q, k, v])

        return step

    return make


def _make_global_attention(sizes: Sizes, impl: str, device: str) -> Callable[[], Callable[[], None]]:
    """Global-mode hebbian attention fwd+bwd at ``sizes.global_shape`` (all N tokens every step,
    spikes at rate 0.2, a learnable decay): the attention of a digits-loihi training step."""
    def make() -> Callable[[], None]:
        from .attention import spiking_attention

        gen = torch.Generator().manual_seed(3)
        shape = sizes.global_shape
        q, k, v = ((torch.rand(shape, generator=gen) < 0.2).float().to(device).requires_grad_(True) for _ in range(3))
        logit = torch.full((shape[3],), 2.0, device=device, requires_grad=True)
        weight = torch.randn(shape, generator=gen).to(device)

        def step() -> None:
            o, _ = spiking_attention(q, k, v, torch.sigmoid(logit), 1.0 / shape[4], "hebbian", impl=impl)
            _grads((o * weight).sum(), [q, k, v, logit])

        return step

    return make


def _softmax_bytes(sizes: Sizes, length: int) -> int:
    """Peak memory of the materialised softmax's fwd+bwd: three float32 [H, L, L] matrices alive
    at once (the kept probabilities, their gradient and the scores' gradient). Measured here:
    13.17 GB at L = 16384, H = 4 (three matrices: 12.88 GB)."""
    return 3 * sizes.heads * length * length * 4


def available_memory_bytes(device: str) -> Optional[int]:
    """Memory a new workload can take: CUDA's free memory, or Linux's MemAvailable; None if unknown."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _train_models(name: str, config_dir: Optional[Path]) -> dict:
    """The ours / ann / before configs of ``name``'s demo config, the overrides that make them,
    and its data (loaded once for all three)."""
    from .config import load_config
    from .data import load_task

    folder = config_dir or Path(__file__).resolve().parents[1] / "demos"
    path = folder / CONFIGS[name]
    if not path.is_file():
        raise SpikeformerError(f"config {path} not found; run bench from a source checkout")
    overrides = {"ours": {"lif_impl": "fused", "attention_impl": "auto"}, "ann": {"model": "ann"},
                 "before": {"lif_impl": "loop", "attention_impl": "recurrent"}}  # the code path before the kernels
    configs = {which: load_config(path, values) for which, values in overrides.items()}
    return {"path": path, "configs": configs, "split": load_task(configs["ours"]), "overrides": overrides}


def _make_train_step(parts: dict, which: str, sizes: Sizes, device: str) -> Callable[[], Callable[[], None]]:
    """One training step on ``sizes.train_batch`` digits: forward, cross-entropy, backward, gradient clipping
    and AdamW, as ``spikeformer train`` does (the gradients are freed at the end of the step)."""
    def make() -> Callable[[], None]:
        from .train import make_model

        cfg, split = parts["configs"][which], parts["split"]
        xb = split.x_train[:sizes.train_batch].to(device)
        yb = split.y_train[:sizes.train_batch].to(device)
        torch.manual_seed(cfg.seed)
        model = make_model(cfg, split).to(device)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator(device=device).manual_seed(cfg.seed)

        def step() -> None:
            logits, _ = model(xb, generator=gen)
            loss = nn.functional.cross_entropy(logits.float(), yb)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    return make


# ---------------------------------------------------------------- the runner


class _Bench:
    def __init__(self, sizes: Sizes, repeats: int, device: str, config_dir: Optional[Path]) -> None:
        self.sizes, self.repeats, self.device, self.config_dir = sizes, repeats, device, config_dir
        self.cache: dict[tuple, Measurement] = {}

    def m(self, key: tuple, make: Callable[[], Callable[[], Any]], memory: bool = True) -> Measurement:
        """Measure once per run: entries that share a workload share its numbers."""
        if key not in self.cache:
            self.cache[key] = measure(make, self.repeats, self.device, memory)
        return self.cache[key]

    # -- LIF

    def lif_neuron(self, n: int) -> dict:
        s, dev = self.sizes, self.device
        ours = self.m(("neuron", n, "fused"), _make_neuron_step(s, n, "fused", dev))
        loop = self.m(("neuron", n, "loop"), _make_neuron_step(s, n, "loop", dev))
        peers = {k: self.m(("neuron", n, k), _make_neuron_step(s, n, k, dev), memory=False) for k in _peer_neurons(dev)}
        x = _lif_input(s, n, dev, False)
        rate = _spike_rate(_neuron("fused", dev), x)
        peers = _with_rates(peers, x, dev)
        return make_entry(f"lif_neuron_n{n}_t{s.steps}", self._lif_shape(n), ours, "loop", loop, peers, self.repeats,
                          "LIF alone (beta 0.9, threshold 1, reset to zero), fwd+bwd, input randn*0.5+0.3 "
                          "requires grad, loss = spikes.sum(); ours LIF(impl='fused'), baseline LIF(impl='loop'); "
                          + PEER_NOTE,
                          spike_rate=rate)

    def _lif_shape(self, n: int) -> dict:
        return {"T": self.sizes.steps, "B": self.sizes.batch, "n": n}

    def lif_floor_m(self, n: int) -> Measurement:
        return self.m(("linear", n, None), _make_linear_step(self.sizes, n, None, self.device))

    def lif_fwd_bwd(self, n: int) -> dict:
        s, dev = self.sizes, self.device
        floor = self.lif_floor_m(n)
        ours = self.m(("linear", n, "fused"), _make_linear_step(s, n, "fused", dev))
        peers = {k: self.m(("linear", n, k), _make_linear_step(s, n, k, dev), memory=k == "loop")
                 for k in ["loop", *_peer_neurons(dev)]}
        torch.manual_seed(0)
        linear = nn.Linear(n, n).to(dev)
        with torch.no_grad():
            drive = linear(_lif_input(s, n, dev, False) * 2.0)
        rate = _spike_rate(_neuron("fused", dev), drive)
        peers = _with_rates(peers, drive, dev)
        return make_entry(f"lif_fwd_bwd_n{n}_t{s.steps}", self._lif_shape(n), ours, "floor", floor, peers,
                          self.repeats, "Linear(n, n) + LIF, fwd+bwd into the weights, loss = spikes.sum(); baseline "
                          "'floor' = the Linear alone (loss = out.sum()), so ratio = floor / ours (goal >= 0.91); "
                          "input randn+0.6; peers: the same Linear + the loop LIF and the peer neurons; " + PEER_NOTE,
                          spike_rate=rate)

    def lif_floor(self, n: int) -> dict:
        floor = self.lif_floor_m(n)
        return make_entry(f"lif_floor_n{n}_t{self.sizes.steps}", self._lif_shape(n), floor, "floor", floor, {},
                          self.repeats, "the Linear(n, n) alone, fwd+bwd: the reference number of lif_fwd_bwd")

    # -- attention

    def _attention_shape(self, length: int, rate: float = 0.1) -> dict:
        return {"L": length, "B": 1, "N": 1, "H": self.sizes.heads, "d": self.sizes.head_dim, "spike_rate": rate}

    def attention_m(self, length: int, impl: str) -> Measurement:
        key = ("attention", length, impl)
        if key in self.cache:
            return self.cache[key]
        if impl == "softmax" and _softmax_bytes(self.sizes, length) > SOFTMAX_BUDGET_BYTES:
            need, free = _softmax_bytes(self.sizes, length), available_memory_bytes(self.device)
            if free is None or need > MEMORY_HEADROOM * free:
                have = "unknown" if free is None else f"{free / 2 ** 30:.1f} GiB"
                self.cache[key] = {"missing": f"skipped: needs about {need / 2 ** 30:.1f} GiB for its [L, L] "
                                              f"matrices; available: {have}"}
            else:  # one call, timed and profiled: a warm-up and 5 repeats would take minutes each
                m = measure(_make_attention(self.sizes, length, impl, self.device), 1, self.device, warmup=0)
                if not missing(m):
                    m["peak_mem_note"] = (f"one call, no warm-up (its [L, L] matrices need about "
                                          f"{need / 2 ** 30:.1f} GiB)")
                self.cache[key] = m
        elif impl == "recurrent":
            estimate = self._estimate_recurrent(length)
            if estimate > RECURRENT_BUDGET_S:
                self.cache[key] = {"missing": f"skipped: too slow (estimated {estimate / (self.repeats + 2):.1f} s "
                                              f"per call, {estimate:.0f} s for {self.repeats + 2} calls)"}
        return self.m(key, _make_attention(self.sizes, length, impl, self.device))

    def _estimate_recurrent(self, length: int) -> float:
        """Seconds the recurrent loop's measurement (warm-up, repeats, memory) would take at ``length``,
        scaled linearly from the longest shorter length measured (or a single probe call at L/8)."""
        done = [(L, m["seconds"]) for (kind, L, impl), m in self.cache.items()
                if kind == "attention" and impl == "recurrent" and L < length and not missing(m)]
        if done:
            base_len, base_s = max(done)
        else:
            base_len = max(8, length // 8)
            fn = _make_attention(self.sizes, base_len, "recurrent", self.device)()
            base_s = min(time_callable(fn, 1, warmup=0, device=self.device))
        return base_s * length / base_len * (self.repeats + 2)

    def attention(self, length: int) -> dict:
        impls = ("chunked", "softmax", "sdpa", "recurrent")
        ours, softmax, sdpa, recurrent = (self.attention_m(length, i) for i in impls)
        return make_entry(f"attention_l{length}", self._attention_shape(length), ours, "softmax", softmax,
                          {"sdpa": sdpa, "recurrent": recurrent}, self.repeats,
                          "causal spiking attention (hebbian, decay 0.9, scale 1/d), fwd+bwd into q, k, v (0/1 spikes "
                          "at rate 0.1); ours impl='chunked'; baseline: materialised softmax attention (scale "
                          "1/sqrt(d)); peers: SDPA(is_causal=True), impl='recurrent'")

    def crossover(self) -> dict:
        sweep, found = {}, None
        for length in self.sizes.crossover_lengths:
            chunked, sdpa = self.attention_m(length, "chunked"), self.attention_m(length, "sdpa")
            sweep[str(length)] = {"chunked_seconds": chunked.get("seconds"), "sdpa_seconds": sdpa.get("seconds")}
            if found is None and not missing(chunked) and not missing(sdpa) and chunked["seconds"] < sdpa["seconds"]:
                found = length
        at = found if found is not None else self.sizes.crossover_lengths[-1]
        note = (f"chunked fwd+bwd is faster than SDPA from L = {found} on in this sweep" if found is not None
                else f"chunked fwd+bwd is not faster than SDPA at any L up to {at}")
        return make_entry("attention_crossover", self._attention_shape(at), self.attention_m(at, "chunked"), "sdpa",
                          self.attention_m(at, "sdpa"), {}, self.repeats,
                          note + "; seconds and memory are those at L = crossover_length (or the longest L)",
                          crossover_length=found, sweep=sweep)

    def attention_global(self) -> dict:
        impls = ("auto", "chunked", "recurrent")
        auto, chunked, recurrent = (self.m(("global", impl), _make_global_attention(self.sizes, impl, self.device))
                                    for impl in impls)
        t, b, n, h, d = self.sizes.global_shape
        return make_entry("attention_global_train", {"T": t, "B": b, "N": n, "H": h, "d": d, "spike_rate": 0.2},
                          auto, "chunked", chunked, {"recurrent": recurrent}, self.repeats,
                          "global-mode hebbian attention fwd+bwd into q, k, v and a learnable decay, at the shape of "
                          "a digits-loihi training step; ours impl='auto' (on CPU: the fused kernel), baseline "
                          "impl='chunked', peer impl='recurrent'")

    def event_rate(self, rate: float) -> dict:
        length, impls = self.sizes.event_length, ("event", "recurrent", "chunked")
        event, recurrent, chunked = (
            self.m(("event", rate, impl), _make_attention(self.sizes, length, impl, self.device, rate, train=False))
            for impl in impls)
        return make_entry(f"event_rate{rate:.2f}", self._attention_shape(length, rate), event, "recurrent", recurrent,
                          {"chunked": chunked}, self.repeats,
                          "inference (no_grad), causal hebbian; ours impl='event', baseline impl='recurrent' "
                          "(dense per step), peer impl='chunked'")

    # -- training

    def train_batch(self, name: str) -> dict:
        try:
            parts = _train_models(name, self.config_dir)
        except Exception as exc:  # noqa: BLE001 - a config that does not load is recorded
            failed = {"missing": reason(exc)}
            return make_entry(name, {"batch": self.sizes.train_batch}, failed, "ann", failed, {}, self.repeats,
                              "could not build the models")
        ms = {w: self.m(("train", name, w), _make_train_step(parts, w, self.sizes, self.device))
              for w in ("ours", "ann", "before")}
        cfg = parts["configs"]["ours"]
        shape = {"batch": self.sizes.train_batch, "tokens": cfg.task_shape()[0], "features": cfg.task_shape()[1],
                 "time_steps": cfg.time_steps, "dim": cfg.dim, "depth": cfg.depth, "heads": cfg.heads,
                 "head_dim": cfg.head_dim, "config": parts["path"].name}
        extra: dict[str, Any] = {"config_overrides": parts["overrides"]}
        for label, which in (("ours", "ours"), ("before", "before")):
            if not missing(ms[which]):
                extra[f"{label}_ms_per_batch"] = round(ms[which]["seconds"] * 1e3, 3)
        if not (missing(ms["ours"]) or missing(ms["before"])):
            extra["speedup_over_before"] = ms["before"]["seconds"] / ms["ours"]["seconds"]
        note = (f"one training step (forward, cross-entropy, backward, grad clip, AdamW) on {self.sizes.train_batch} "
                f"digits samples with {parts['path'].name}; ours: lif_impl fused, attention_impl auto (the default); baseline: "
                "the same config with model = 'ann'; peer 'before': every LIF impl='loop' and "
                "attention_impl='recurrent' (the code path before the fused kernels)")
        if name == "train_batch_digits_loihi":
            extra["before_issue_ms_per_batch"] = BEFORE_ISSUE_MS_PER_BATCH
            note += ("; before_issue_ms_per_batch: 117 ms, measured 2026-11-30 on this machine before the fused "
                     "kernels (a historical number, not measured in this run)")
        return make_entry(name, shape, ms["ours"], "ann", ms["ann"], {"before": ms["before"]}, self.repeats, note,
                          **extra)


PLUGIN_GROUP = "spikeformer.bench"  # entry points: lists of (name, build(sizes, config_dir, cache) -> entry)


def plugin_entries() -> list[tuple[str, Callable[[Sizes, Optional[Path], dict], dict]]]:
    """Entries other packages add (spikeformer never imports them: it finds them by entry point)."""
    from importlib.metadata import entry_points

    found: list[tuple[str, Callable[[Sizes, Optional[Path], dict], dict]]] = []
    for point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda p: p.name):
        found += point.load()
    return found


def plan(sizes: Sizes) -> list[tuple[str, Callable[[_Bench], dict]]]:
    """Every entry's name and how to build it, in run order."""
    items: list[tuple[str, Callable[[_Bench], dict]]] = []
    t = sizes.steps
    for n in sizes.lif_features:
        items.append((f"lif_neuron_n{n}_t{t}", lambda b, n=n: b.lif_neuron(n)))
    for n in sizes.lif_features:
        items.append((f"lif_fwd_bwd_n{n}_t{t}", lambda b, n=n: b.lif_fwd_bwd(n)))
        items.append((f"lif_floor_n{n}_t{t}", lambda b, n=n: b.lif_floor(n)))
    for length in sizes.attention_lengths:
        items.append((f"attention_l{length}", lambda b, L=length: b.attention(L)))
    items.append(("attention_crossover", lambda b: b.crossover()))
    items.append(("attention_global_train", lambda b: b.attention_global()))
    for rate in sizes.event_rates:
        items.append((f"event_rate{rate:.2f}", lambda b, r=rate: b.event_rate(r)))
    for name in CONFIGS:
        items.append((name, lambda b, name=name: b.train_batch(name)))
    for name, build in plugin_entries():  # e.g. the neuromorphic backends' (neuromorphic/bench.py)
        items.append((name, lambda b, build=build: build(b.sizes, b.config_dir, b.cache)))
    return items


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> Optional[list[float]]:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info(device: str, sizes_name: str, repeats: int) -> dict:
    info = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "device": device, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "sizes": sizes_name, "repeats": repeats,
        "peak_memory": PEAK_MEMORY_METHOD[device],
        "peers": {dist: _version(dist) for dist in ("snntorch", "norse", "spikingjelly")},
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise SpikeformerError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpikeformerError("--device cuda: CUDA is not available on this machine; use --device cpu")


def run_bench(sizes: Union[str, Sizes] = "full", repeats: Optional[int] = None, device: str = "cpu",
              only: Optional[str] = None, progress: bool = True, config_dir: Optional[Path] = None) -> dict:
    """Run the entries whose name contains ``only`` (all when None); returns the bench.json object."""
    sizes_name = sizes if isinstance(sizes, str) else "custom"
    if isinstance(sizes, str):
        if sizes not in SIZES:
            raise SpikeformerError(f"unknown bench sizes {sizes!r}; choose one of {sorted(SIZES)}")
        sizes = SIZES[sizes]
    check_device(device)
    repeats = sizes.repeats if repeats is None else repeats
    if repeats < 1:
        raise SpikeformerError(f"--repeats must be at least 1, got {repeats}")
    items = [(name, build) for name, build in plan(sizes) if not only or only in name]
    if not items:
        names = ", ".join(name for name, _ in plan(sizes))
        raise SpikeformerError(f"--only {only!r} matches no benchmark; names are: {names}")
    bench = _Bench(sizes, repeats, device, config_dir)
    from tqdm.auto import tqdm

    start, load_before = time.perf_counter(), _load_average()
    entries = []
    bar = tqdm(items, desc="bench", unit="entry", disable=not progress)
    for name, build in bar:
        bar.set_postfix_str(name)
        entries.append(build(bench))
    bar.close()
    result = {"machine": machine_info(device, sizes_name, repeats), "entries": entries}
    result["machine"]["seconds"] = round(time.perf_counter() - start, 2)
    # other processes on the machine slow every multi-threaded op down: judge the numbers by these
    result["machine"]["load_average_before"], result["machine"]["load_average_after"] = load_before, _load_average()
    return result


# ---------------------------------------------------------------- output


def _fmt(x: Optional[float], digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}"


def _peers_text(peers: dict) -> str:
    parts = []
    for name, p in peers.items():
        parts.append(f"{name}: missing ({p['missing']})" if "missing" in p
                     else f"{name}: {_fmt(p['seconds'])} s, {_fmt(p['peak_mem_mb'])} MB")
    return "; ".join(parts)


def render_markdown(result: dict) -> str:
    """bench.json as a Markdown table (one row per entry)."""
    m = result["machine"]
    lines = [f"# spikeformer bench ({m.get('sizes')})", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, device {m['device']}, "
             f"{m['date']}; median of {m['repeats']} repeats after one warm-up; ratio = baseline s / ours s "
             f"(> 1: ours faster); load average before/after {m.get('load_average_before')} / "
             f"{m.get('load_average_after')}.", "",
             "| name | ours s | baseline | baseline s | ratio | peak MB ours / baseline | peers |",
             "|---|---|---|---|---|---|---|"]
    for e in result["entries"]:
        mem = f"{_fmt(e['ours_peak_mem_mb'])} / {_fmt(e['baseline_peak_mem_mb'])}"
        peers = _peers_text(e.get("peers", {})).replace("|", "\\|")
        once = " (1 call)" if e.get("baseline_note", "").startswith("one call") else ""
        lines.append(f"| {e['name']} | {_fmt(e['ours_seconds'])} | {e['baseline']} | {_fmt(e['baseline_seconds'])}{once} "
                     f"| {_fmt(e['ratio'], 3)} | {mem} | {peers} |")
    return "\n".join(lines) + "\n"


def plot_ratios(result: dict, path: Path) -> None:
    """A bar chart of every entry's ratio (log scale, 1 = as fast as the baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(e["name"], e["ratio"]) for e in result["entries"] if e["ratio"]]
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * max(len(rows), 1) + 1.2), dpi=90)
    if rows:
        names, ratios = zip(*rows)
        ax.barh(range(len(rows)), ratios, color=["tab:green" if r >= 1 else "tab:red" for r in ratios])
        ax.set_yticks(range(len(rows)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("ratio = baseline s / ours s (log)")
    ax.set_title("spikeformer bench", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def output_paths(out: Union[str, Path]) -> tuple[Path, Path, Path]:
    """bench.json and the Markdown and PNG files beside it (bench.md, bench.png)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    return out, stem.with_name(stem.name + ".md"), stem.with_name(stem.name + ".png")


def check_out(out: Union[str, Path]) -> None:
    out = Path(out)
    if out.is_dir():
        raise SpikeformerError(f"--out {out} is a folder; give a file name such as {out / 'bench.json'}")
    if not out.parent.is_dir():
        raise SpikeformerError(f"--out {out}: the folder {out.parent} does not exist; "
                               "create it or choose another --out")


def write_outputs(result: dict, out: Union[str, Path]) -> tuple[Path, Path, Path]:
    """Write bench.json, its Markdown table and its ratio plot; returns the three paths."""
    from .checkpoint import atomic_write_json

    json_path, md_path, png_path = output_paths(out)
    # SPEC §4: bench.json is a list of entries; each carries the machine it was measured on
    atomic_write_json(json_path, [dict(entry, machine=result["machine"]) for entry in result["entries"]])
    md_path.write_text(render_markdown(result))
    plot_ratios(result, png_path)
    return json_path, md_path, png_path


def format_table(result: dict) -> str:
    """A short plain-text table for the terminal."""
    rows = [("name", "ours s", "baseline", "baseline s", "ratio")]
    for e in result["entries"]:
        rows.append((e["name"], _fmt(e["ours_seconds"]), e["baseline"], _fmt(e["baseline_seconds"]),
                     _fmt(e["ratio"], 3)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def summary_line(result: dict, json_path: Path) -> str:
    entries = result["entries"]
    absent = sorted({name for e in entries for name, p in e.get("peers", {}).items() if "missing" in p})
    no_ours = [e["name"] for e in entries if e["ours_seconds"] is None]
    text = (f"bench: {len(entries)} entries in {result['machine']['seconds']:.1f} s on "
            f"{result['machine']['device']} -> {json_path}")
    if no_ours:
        text += f"; ours missing in {len(no_ours)}"
    if absent:
        text += f"; peers missing somewhere: {', '.join(absent)}"
    return text
