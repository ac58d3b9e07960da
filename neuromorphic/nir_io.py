"""NIR interchange: IR ``Graph`` <-> NIR graph (neuroir.org), every conversion written out.

NIR nodes are continuous-time ODEs; the IR is discrete (SPEC §2.1, dt = 1 step). A NIR graph
means the IR exactly when a consumer integrates each node with forward Euler at the time step
``dt`` this module writes into the graph's metadata (``metadata["dt"]``, default 1e-3 s, the
default of Norse's importer), with the current updated before the membrane, ``v`` starting at
0, reset to ``v_reset`` in the step that spikes and a strict threshold. With ``k = dt / tau``:

    NIR LIF      tau dv/dt = (v_leak - v) + r I        ->  v[t] = (1 - k) v + k (v_leak + r I)
    NIR CubaLIF  tau_syn dI/dt = -I + w_in S;  tau_mem dv/dt = (v_leak - v) + r I
                 ->  I[t] = (1 - k_syn) I + k_syn w_in S[t];  v[t] = (1 - k_mem) v + k_mem (v_leak + r I[t])
    NIR IF       dv/dt = r I                           ->  v[t] = v + dt r I
    NIR Delay    y(t) = x(t - delay)                    ->  delay / dt whole steps
    IR  LIF      i[t] = alpha i + I_in;  v[t] = beta v (1 - s[t-1]) + i + bias;  s = v > threshold

Export (``graph_to_nir`` / ``export_nir``), per IR population of decay ``beta``:

- lif, alpha = 0, beta < 1: ``LIF(tau = dt / (1 - beta), r = 1, v_leak = 0, v_threshold =
  threshold, v_reset = 0)``; the factor ``1 / (1 - beta)`` that ``k r`` must cancel is folded
  into the incoming ``Affine`` weights, and the bias goes into the ``Affine`` bias (scaled the
  same way, delivered every step). With r = 1 the file means the same to a reader that honours
  ``r`` and to Norse, whose importer ignores ``r`` for LIF nodes.
- lif, beta = 1 (perfect integrator): ``IF(r = 1 / dt)``; weights and bias unscaled.
- lif, alpha > 0: ``CubaLIF(tau_syn = dt / (1 - alpha), tau_mem = dt / (1 - beta),
  w_in = 1 / (1 - alpha), r = 1 / (1 - beta), v_leak = bias / (1 - beta))``; weights unscaled,
  the bias in ``v_leak`` (it must not pass the synaptic filter).
- every Dense connection: ``source -> Delay(delay * dt) -> Affine -> target`` (one Delay node
  per source and delay, shared by its connections). The Delay sits before the Affine, so the
  Affine bias is delivered from step 0, as the IR bias is. A tokenwise ``[F_out, F_in]`` weight
  becomes the block-diagonal ``kron(I_N, W)`` over the token-major flattened grid (NIR neuron
  nodes are flat vectors); ``full`` weights (the readout) go as they are.
- a convolution (``Connection.conv``, between ``Population.image`` grids; the conv1d stem's are
  one pixel high, with k x k kernels: NIR's Conv2d infers shapes from square kernels): a ``Conv2d``
  whose kernel is read back off the unrolled weight (and checked against every entry); its
  ends become ``[C, H, W]`` nodes (metadata ``image``; ``Population.image_order`` maps the
  orders), an Affine reading one goes through a ``Flatten``, and a bias that varies over
  pixels goes into the LIF's ``v_leak = bias / (1 - beta)``.
- readout: the ``Output`` node receives the readout Affine directly, i.e. the readout current
  per step (``Trace.readout``); logits are the mean of the last ``window`` steps (written in
  ``metadata["ir_meta"]``). No ``I`` node: Norse cannot load one.
- attention: NIR has no node for the fast-weight memory (SPEC §2.3); a graph with an
  ``Attention`` raises ``LoweringError`` naming it. Fixed-point graphs raise too (NIR holds floats).

Import (``nir_to_graph``) reads LIF, CubaLIF, IF, Affine, Linear, Conv2d, Scale, Delay, Flatten, Input
and Output (fed by a neuron, a linear node, or an ``I`` integrator) with the inverse maps:
``beta = 1 - dt / tau``, ``alpha = 1 - dt / tau_syn``, input gain ``r dt / tau`` (LIF),
``(dt / tau_mem) r (dt / tau_syn) w_in`` (CubaLIF), ``dt r`` (IF, I), bias ``(dt / tau) v_leak``
plus the gained Affine biases; ``v_reset`` must be 0 (the IR resets to zero); per-neuron
thresholds fold into the inputs (threshold 1). NIR edges without a Delay deliver in the same
step, which the IR (every Dense has delay >= 1) cannot; the importer shifts each population
``P`` by ``shift[P]`` steps (``meta["nir_shift"]``, the least shift making every delay >= 1):
IR step ``t + shift[P]`` of ``P`` is NIR step ``t``. A bias that must start at a shifted step
(or pass a synaptic filter) is delivered by a ``nir.clock`` population (one neuron firing every
step from step 0) through a connection with that delay. ``to_source_time`` undoes the shift.
Re-exported, a population fed by its bias alone (the clock) gets a zero-weight Affine from the
input (``<input>-><population>.bias``), and an image population the clock feeds is written flat.
A ``Conv2d`` applied straight to a ``[C, H, W]`` node written by ``export_nir`` (metadata
``image``) into another keeps its geometry: the IR connection gets ``conv`` and its ends
``image`` (after checking that the composed weight still is that convolution), so a re-export
writes the same ``Conv2d``. A ``[C, H, W]`` node from another tool (no metadata; its shape
from NIR's type inference) becomes an image grid of one token per pixel and ``C`` features
(``image [H, W, 1]``), so its convolutions keep their geometry too; ``source_input`` turns input
in the graph's own ``[T, B, C, H, W]`` layout into the IR's ``[T, B, N, F]``.

Known library facts this module was checked against (installed sources): snnTorch's
``export_to_nir`` writes Leaky as ``LIF(tau = 1e-4 / (1 - beta), r = 1 / (1 - beta))`` with a
hard-coded dt = 1e-4, writes ``v_reset = 0`` even for its default subtractive reset, and needs
per-neuron (vector) beta and threshold or its type inference fails; import its graphs with
``dt=1e-4``; its ``import_from_nir`` has no Delay node, so it cannot load exported files.
Norse's ``to_nir`` writes ``tau = dt / tau_mem_inv`` (= dt * tau, norse/norse#411), so its
graphs are read with ``dt = dt_norse ** 2``; Norse's ``from_nir`` ignores ``r`` for LIF,
defaults dt = 1e-3, starts ``v`` at ``v_leak``, makes every parameter float32 and has no
Delay node (``norse_module`` adds one). docs/backends.md (NIR section) has the derivations.

Code: ``nir_base`` (constants, bounds, shared helpers), ``nir_export``, ``nir_import`` and
``nir_norse`` (the Norse runner); this module keeps every public name in one place.
"""

from .ir import IRError, LoweringError  # noqa: F401 (public through this module)
from .nir_base import (CLOCK, DEFAULT_DT, FORMAT, MAX_FILE_VALUES, MAX_GROUP_DEPTH, MAX_MATRIX,  # noqa: F401
                       MAX_NIR_NEURONS, MAX_WORK, NIR_IO_VERSION, SNNTORCH_DT, decay_to_tau, tau_to_decay)
from .nir_export import export_nir, graph_to_nir  # noqa: F401
from .nir_import import nir_to_graph, read_nir, source_input, to_source_time  # noqa: F401
from .nir_norse import norse_module, norse_trace, run_norse  # noqa: F401
