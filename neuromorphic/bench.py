"""``spikeformer bench`` entries of the neuromorphic backends (registered under the
``spikeformer.bench`` entry point, so spikeformer never imports neuromorphic):

- ``lava_steps_per_s_digits_loihi``: digits-loihi on Lava fixed point; ours = the run's seconds
  (Lava's compile step apart, in ``compile_seconds``), baseline = the exact Brian2 rebuild on the
  same samples; ``steps_per_second`` and the issue's figure from before (33 steps/s).
- ``fixed_ref_vs_lava``: the integer reference ``fixed_ref`` against that Lava run, which it is
  checked against spike for spike (ratio = how many times faster the reference is).

The model is digits-loihi trained for one epoch: speed does not depend on accuracy. Each
simulator runs once (a Lava run is too slow to repeat).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from spikeformer.bench import Sizes, make_entry, missing, once, reason

BEFORE_ISSUE_LAVA_STEPS_PER_S = 33  # digits-loihi on Lava fixed point before issue 13 (this machine, the issue's text)
CACHE_KEY = ("neuromorphic",)


def _runs(sizes: Sizes, config_dir: Optional[Path], cache: dict) -> dict[str, Any]:
    """The ``validate`` records of Lava fixed point and Brian2 exact on ``sizes.lava_samples`` test
    samples of a freshly trained digits-loihi (shared by both entries through ``cache``), or
    ``{"missing": reason}``."""
    if CACHE_KEY in cache:
        return cache[CACHE_KEY]
    from spikeformer.config import load_config
    from spikeformer.train import train

    from .validate import validate

    try:
        folder = config_dir or Path(__file__).resolve().parents[1] / "demos"
        cfg = load_config(folder / "digits-loihi.toml", {"epochs": 1})
        with tempfile.TemporaryDirectory(prefix="spikeformer-bench-") as tmp:
            run = Path(tmp) / "digits-loihi"
            train(cfg, run, progress=False, log=lambda _: None)
            quiet: dict[str, Any] = {"progress": False, "log": lambda _: None}
            cache[CACHE_KEY] = {"lava": validate(run, "lava-fixed", sizes.lava_samples, **quiet),
                                "brian2": validate(run, "brian2", sizes.lava_samples, **quiet)}
    except Exception as exc:  # noqa: BLE001 - a backend that cannot run is recorded as missing
        cache[CACHE_KEY] = {"missing": reason(exc)}
    return cache[CACHE_KEY]


def _shape(sizes: Sizes) -> dict[str, Any]:
    return {"samples": sizes.lava_samples, "config": "digits-loihi.toml", "epochs_trained": 1}


def lava_steps(sizes: Sizes, config_dir: Optional[Path], cache: dict) -> dict:
    runs = _runs(sizes, config_dir, cache)
    name = "lava_steps_per_s_digits_loihi"
    note = ("digits-loihi on Lava fixed point (bit-accurate models): run seconds without the compile step; "
            "baseline: the exact Brian2 rebuild (numpy target) on the same samples; before_issue_steps_per_second: "
            f"{BEFORE_ISSUE_LAVA_STEPS_PER_S}, measured before issue 13 on this machine (a historical number, not "
            "measured in this run); one run each")
    if missing(runs):
        return make_entry(name, _shape(sizes), runs, "brian2", runs, {}, 1, note)
    lava, brian2 = runs["lava"], runs["brian2"]
    return make_entry(name, _shape(sizes), once(lava["run_seconds"]), "brian2", once(brian2["run_seconds"]), {}, 1,
                      note, steps_per_second=lava["steps_per_second"], compile_seconds=lava.get("compile_seconds"),
                      lava_processes=lava.get("lava_processes"), spike_agreement=lava["spike_agreement"],
                      brian2_steps_per_second=brian2["steps_per_second"],
                      brian2_spike_agreement=brian2["spike_agreement"],
                      before_issue_steps_per_second=BEFORE_ISSUE_LAVA_STEPS_PER_S,
                      speedup_over_before_issue=lava["steps_per_second"] / BEFORE_ISSUE_LAVA_STEPS_PER_S)


def fixed_ref(sizes: Sizes, config_dir: Optional[Path], cache: dict) -> dict:
    runs = _runs(sizes, config_dir, cache)
    name = "fixed_ref_vs_lava"
    note = ("the integer reference neuromorphic.fixed_ref against the Lava fixed-point run it is checked against "
            "spike for spike, on the same samples; one run each")
    if missing(runs):
        return make_entry(name, _shape(sizes), runs, "lava", runs, {}, 1, note)
    lava = runs["lava"]
    return make_entry(name, _shape(sizes), once(lava["fixed_ref_seconds"]), "lava", once(lava["run_seconds"]), {}, 1,
                      note, spike_agreement=lava["spike_agreement"])


ENTRIES: list[tuple[str, Callable[[Sizes, Optional[Path], dict], dict]]] = [
    ("lava_steps_per_s_digits_loihi", lava_steps),
    ("fixed_ref_vs_lava", fixed_ref),
]
