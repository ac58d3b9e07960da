"""Shared test set-up.

Under SPIKEFORMER_REQUIRE_BACKENDS=1 (set by .ci/run) a skipped test marked ``backend`` is
reported as a failure: CI must run the Lava, Brian2 and NIR tests (and the headless-browser
test of the compare page) for real. A module skipped
as a whole while it is collected (``pytest.importorskip`` at module level) never yields items,
so its markers cannot be read: under =1 EVERY collection-time skip becomes a collection error,
and pytest stops with a non-zero status. A module that must skip for another reason in CI
skips per test instead.
"""

from __future__ import annotations

import os

import pytest
import torch

REQUIRE_BACKENDS = os.environ.get("SPIKEFORMER_REQUIRE_BACKENDS") == "1"

# One torch thread per test process (and for the CLI subprocesses the tests start): the tests'
# tensors are small, and on 2 cores a second thread per op costs more than it gains (a local-rule
# training test took 72 s with torch's default threads beside another job, 6 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_BACKENDS and report.skipped and item.get_closest_marker("backend") is not None:
        report.outcome = "failed"
        report.longrepr = f"backend test {item.nodeid} was skipped, but SPIKEFORMER_REQUIRE_BACKENDS=1 requires it to run"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_BACKENDS and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid} was skipped while collected ({reason}), but "
                           "SPIKEFORMER_REQUIRE_BACKENDS=1 requires every backend test to run")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def count_calls(monkeypatch):
    """``count_calls(module, name)``: replace ``module.name`` by a spy that still calls it; returns
    the list that gains one entry per call."""
    def install(module, name: str) -> list:
        calls: list = []
        real = getattr(module, name)

        def spy(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
        return calls

    return install
