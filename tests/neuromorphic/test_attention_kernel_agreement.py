"""Brian2's attention strings against the shared kernel on random spikes (SPEC §2.3).

A graph whose q/k/v (and gate) LIFs copy random input spikes one step late (identity weights,
threshold 1/2, beta 0) feeds one attention node; the Brian2 exact network and ``run_graph``
(whose attention step is ``spikeformer.attention.spiking_attention`` itself) must give the
same target spikes and currents for every variant.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuromorphic.ir import Attention, Connection, Graph, Population
from spikeformer.variants import VARIANTS

HEADS, DIM, TOKENS, STEPS, BATCH = 2, 4, 3, 12, 3


def random_attention_graph(variant: str, seed: int) -> tuple[Graph, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = HEADS * DIM
    gated = VARIANTS[variant].modulated
    features = 3 * width + (HEADS if gated else 0)
    pops = [Population("input", "input", TOKENS, features)]
    conns = []
    roles = ["q", "k", "v"] + (["gate"] if gated else [])
    for r, role in enumerate(roles):
        size = HEADS if role == "gate" else width
        pops.append(Population(role, "lif", TOKENS, size, beta=0.0, threshold=0.5, bias=np.zeros((TOKENS, size))))
        weight = np.zeros((size, features))
        weight[:, r * width + np.arange(size)] = 1.0  # copy this role's slice of the input
        conns.append(Connection(f"copy_{role}", "input", role, "tokenwise", weight))
    pops.append(Population("out", "lif", TOKENS, width, beta=0.7, alpha=0.3, threshold=1.0,
                           bias=rng.uniform(-0.2, 0.2, (TOKENS, width))))
    pops.append(Population("readout", "readout", 1, 2, bias=np.zeros((1, 2))))
    conns.append(Connection("read", "out", "readout", "full", rng.normal(0, 1, (2, TOKENS * width))))
    plasticity = {p.name: rng.uniform(0.3, 0.9, HEADS) for p in VARIANTS[variant].parameters}
    att = Attention(name="att", query="q", key="k", value="v", target="out", heads=HEADS, head_dim=DIM,
                    variant=variant, decay=rng.uniform(0.6, 0.95, HEADS), scale=0.6,
                    out_scale=rng.uniform(0.5, 1.5, width), plasticity=plasticity,
                    modulator="gate" if gated else None)
    meta = {"mode": "global", "steps": STEPS, "window": STEPS, "latency": 2, "classes": 2}
    graph = Graph(pops, conns, [att], meta).validate()
    return graph, (rng.random((STEPS, BATCH, TOKENS, features)) < 0.35).astype(np.float64)


@pytest.mark.backend
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_brian2_attention_equals_the_shared_kernel_on_random_spikes(variant):
    from neuromorphic.brian2_ref import run_brian2
    from neuromorphic.simulate import run_graph

    graph, x_steps = random_attention_graph(variant, seed=len(variant))
    reference = run_graph(graph, x_steps)
    assert 0.05 < reference.spikes["out"].mean() < 0.95  # the target both fires and stays silent
    trace, _ = run_brian2(graph, x_steps, mode="exact")
    for name in reference.spikes:
        np.testing.assert_array_equal(trace.spikes[name], reference.spikes[name], err_msg=name)
    np.testing.assert_allclose(trace.readout, reference.readout, rtol=0, atol=1e-10)
