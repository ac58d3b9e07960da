"""The CI policy itself: under SPIKEFORMER_REQUIRE_BACKENDS=1 a skipped backend test fails,
and so does a module skipped as a whole while it is collected."""

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
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the inner runs need no installed plugins
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    backend: needs a backend\n")
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest_inprocess("-q")  # a fresh import of the conftest copy each run


def test_skipped_backend_test_fails_when_backends_are_required(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, "1")
    result.assert_outcomes(failed=1, skipped=1)


def test_skipped_backend_test_is_a_skip_for_users(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, "0")
    result.assert_outcomes(skipped=2)


MODULE_SKIP = """
import pytest

pytest.importorskip("no_such_backend_package")

def test_never_collected():
    pass
"""


def run_module_skip(pytester, monkeypatch, require: str):
    monkeypatch.setenv("SPIKEFORMER_REQUIRE_BACKENDS", require)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_backend_module=MODULE_SKIP, test_plain="def test_plain():\n    pass\n")
    return pytester.runpytest_inprocess("-q")  # a fresh import of the conftest copy each run


def test_module_level_skip_fails_when_backends_are_required(pytester, monkeypatch):
    result = run_module_skip(pytester, monkeypatch, "1")
    assert result.ret != 0
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_backend_module.py was skipped while collected*no_such_backend_package*"])


def test_module_level_skip_is_a_skip_for_users(pytester, monkeypatch):
    result = run_module_skip(pytester, monkeypatch, "0")
    assert result.ret == 0
    result.assert_outcomes(passed=1, skipped=1)
