"""The CI policy itself: under SPIKEFORMER_REQUIRE_BACKENDS=1 a skipped backend test fails."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
INNER = """
import pytest

@pytest.mark.backend
def test_backend_missing():
    pytest.importorskip("no_such_backend_package")

def test_plain_skip_is_still_a_skip():
    pytest.skip("not a backend test")
"""


def run_inner(pytester, monkeypatch, require: str):
    monkeypatch.setenv("SPIKEFORMER_REQUIRE_BACKENDS", require)
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    backend: needs a backend\n")
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest_subprocess("-q")


def test_skipped_backend_test_fails_when_backends_are_required(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, "1")
    result.assert_outcomes(failed=1, skipped=1)


def test_skipped_backend_test_is_a_skip_for_users(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, "0")
    result.assert_outcomes(skipped=2)
