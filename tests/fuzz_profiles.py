"""Shared set-up of the loader fuzz tests (``tests/*/test_fuzz_*.py``): example counts, byte and
JSON mutations, and the oracle every example is held to.

Profiles (one environment variable, read when a fuzz file is imported):

    quick  (default)                  each fuzz test runs its own small count (a few hundred
                                      examples per loader), so the four files add < 40 s on 2 cores
    slow   SPIKEFORMER_FUZZ_EXAMPLES=N  every fuzz test runs N examples (N >= 10000 for the
                                      recorded run in docs/benchmarks.md)

``SPIKEFORMER_FUZZ_REPORT=PATH`` appends one JSON line per fuzz test to PATH (examples, accepted,
rejected, seconds). The oracle (``Tally.check``): a loader either returns, or raises the project's
``SpikeformerError`` whose message is one non-empty line; any other exception, an example slower
than ``EXAMPLE_TIMEOUT_S`` (``guard``) or a peak memory growth above ``MAX_RSS_GROWTH_MB`` fails the test.
"""

from __future__ import annotations

import copy
import faulthandler
import json
import math
import os
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from spikeformer.errors import SpikeformerError

EXAMPLES = int(os.environ.get("SPIKEFORMER_FUZZ_EXAMPLES", "0") or 0)
PROFILE = "slow" if EXAMPLES else "quick"
REPORT = os.environ.get("SPIKEFORMER_FUZZ_REPORT", "")
EXAMPLE_TIMEOUT_S = 30  # a loader that takes longer on a damaged file hangs
MAX_RSS_GROWTH_MB = 1024  # a damaged file must not make a loader allocate this much


def fuzz_settings(quick: int) -> settings:
    """Hypothesis settings: ``quick`` examples, or SPIKEFORMER_FUZZ_EXAMPLES under the slow profile."""
    return settings(
        max_examples=EXAMPLES or quick, deadline=None, database=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
    )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


class _Timeout(Exception):
    """Raised in the main thread when one example runs past EXAMPLE_TIMEOUT_S (not a SpikeformerError)."""


@contextmanager
def guard(name: str) -> Iterator[None]:
    """Fail a slow example: SIGALRM raises _Timeout after EXAMPLE_TIMEOUT_S; a hang inside C code
    (where no Python signal handler runs: libhdf5 once looped forever on a damaged heap) ends the
    whole test process after 4x that, with every thread's traceback on stderr."""

    def expire(signum, frame):
        raise _Timeout(f"{name}: one example ran past {EXAMPLE_TIMEOUT_S} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(EXAMPLE_TIMEOUT_S)
    faulthandler.dump_traceback_later(4 * EXAMPLE_TIMEOUT_S, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Tally:
    """Counts accepted and rejected examples of one fuzz test and checks the oracle."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.accepted = 0
        self.rejected = 0
        self.reasons: Counter[str] = Counter()
        self.t0 = time.perf_counter()
        self.rss0 = _peak_rss_mb()

    def check(self, load: Callable[[], Any]) -> Any:
        """Run ``load()``: return its result, or None after a one-line SpikeformerError."""
        try:
            with guard(self.name):
                result = load()
        except SpikeformerError as exc:
            message = str(exc)
            assert message and "\n" not in message, f"{type(exc).__name__} message is not one line: {message!r}"
            self.rejected += 1
            self.reasons[type(exc).__name__] += 1
            return None
        self.accepted += 1
        return result

    def finish(self) -> dict[str, Any]:
        """Check the memory bound; print and (SPIKEFORMER_FUZZ_REPORT) record the counts."""
        growth = _peak_rss_mb() - self.rss0
        record = {"test": self.name, "profile": PROFILE, "examples": self.accepted + self.rejected,
                  "accepted": self.accepted, "rejected": self.rejected, "errors": dict(self.reasons),
                  "seconds": round(time.perf_counter() - self.t0, 1), "peak_rss_growth_mb": round(growth)}
        print(json.dumps(record))
        if REPORT:
            with open(REPORT, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        assert growth < MAX_RSS_GROWTH_MB, f"{self.name}: peak memory grew by {growth:.0f} MB"
        assert self.accepted + self.rejected > 0, f"{self.name}: no example ran"
        return record


# ---------------------------------------------------------------------------------------------
# byte mutations: truncation, bit flips, random bytes, insertions, deletions, duplicated ranges


@st.composite
def mutated_bytes(draw: st.DrawFn, blob: bytes, max_edits: int = 4) -> bytes:
    """``blob`` after 1..max_edits random edits (never equal to ``blob`` unless an edit undoes one)."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, max_edits))):
        n = len(data)
        op = draw(st.sampled_from(["truncate", "flip", "set", "insert", "delete", "duplicate"]))
        at = draw(st.integers(0, max(n - 1, 0)))
        if op == "truncate":
            del data[at:]
        elif op == "flip" and n:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("9"), ord('"'), ord("{"), ord("\n")])
                            | st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# JSON-tree mutations: wrong types, huge / negative / NaN numbers, extra and missing keys

NASTY: list[Any] = [
    None, True, False, 0, 1, -1, 2, 3, 10 ** 9, 10 ** 12, -10 ** 12, 2 ** 63, 2 ** 64 + 1, 10 ** 30, 10 ** 400,
    0.5, -0.5, 1e-300, 1e308, float("nan"), float("inf"), float("-inf"),
    "", "x", "1", "nan", "none", "\n", "a\nb", "\x00", "é" * 3, [], [1], [[1, 2], [3, 4]], {}, {"array": "x"},
    {"a": 1},
]


def json_values() -> st.SearchStrategy:
    """Scalars and small containers of the kinds a JSON (or TOML) file can hold, nasty ones first."""
    scalars = st.sampled_from(NASTY) | st.integers() | st.floats() | st.text(max_size=20) | st.booleans()
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into a JSON tree, the root included."""
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out += _paths(value, prefix + (i,))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _number_edits(value: Any) -> list[Any]:
    """Damaging edits of a number: off by one, negated, scaled up, huge, NaN, as a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    edits: list[Any] = [value + 1, value - 1, -value, value * 1000, value * 10 ** 9]
    if isinstance(value, int):
        edits += [str(value)] + ([float(value)] if abs(value) < 2 ** 1000 else [])
    else:
        edits += [repr(value)] + ([int(value)] if math.isfinite(value) else [])
    return edits


@st.composite
def mutated_json(draw: st.DrawFn, tree: Any, max_edits: int = 3, protect: tuple = ()) -> Any:
    """A deep copy of ``tree`` after 1..max_edits edits at random paths: replace a value (nasty
    value, number edit, wrapped in a list), delete a key or item, add an unknown key.
    Paths starting with a key in ``protect`` are left alone (e.g. a hash the caller recomputes)."""
    tree = json.loads(json.dumps(tree))
    for _ in range(draw(st.integers(1, max_edits))):
        paths = [p for p in _paths(tree) if not (p and p[0] in protect)]
        path = draw(st.sampled_from(paths))
        value = _get(tree, path)
        ops = ["replace", "nasty", "wrap"] + (["number"] if _number_edits(value) else [])
        if path:
            ops.append("delete")
        if isinstance(value, dict):
            ops.append("add_key")
        if isinstance(value, list) and value:
            ops += ["drop_item", "dup_item"]
        op = draw(st.sampled_from(ops))
        if op == "replace":
            new = copy.deepcopy(draw(json_values()))  # NASTY's lists and dicts are shared: never edit them
        elif op == "nasty":
            new = copy.deepcopy(draw(st.sampled_from(NASTY)))
        elif op == "wrap":
            new = [value]
        elif op == "number":
            new = draw(st.sampled_from(_number_edits(value)))
        elif op == "add_key":
            key = draw(st.sampled_from(["colour", "", "extra", "0"]) | st.text(max_size=6))
            value[key] = copy.deepcopy(draw(json_values()))
            continue
        elif op == "drop_item":
            del value[draw(st.integers(0, len(value) - 1))]
            continue
        elif op == "dup_item":
            value.append(json.loads(json.dumps(value[draw(st.integers(0, len(value) - 1))])))
            continue
        else:  # delete
            parent = _get(tree, path[:-1])
            del parent[path[-1]]
            continue
        if not path:
            tree = new
        else:
            _get(tree, path[:-1])[path[-1]] = new
    return tree


def in_folder(files: dict[str, bytes | None], load: Callable[[Path], Any]) -> Any:
    """Write ``files`` (name -> bytes; None: left out) into a fresh folder and return ``load(folder)``."""
    with tempfile.TemporaryDirectory() as tmp:  # hypothesis reuses fixtures: one folder per example
        folder = Path(tmp)
        for name, data in files.items():
            if data is not None:
                (folder / name).write_bytes(data)
        return load(folder)
