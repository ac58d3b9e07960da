"""Run the ``spikeformer`` command line for a test: in this process (fast: no new interpreter, no
second import of torch), or as ``python -m spikeformer`` in a subprocess, the way a user runs it.
Both return a ``subprocess.CompletedProcess`` with the exit status and the captured output."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from spikeformer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, subprocess_run: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    """``spikeformer ARGS``; an exception that escapes ``main`` fails the test (a traceback)."""
    if subprocess_run:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.run([sys.executable, "-m", "spikeformer", *args], capture_output=True, text=True,
                              env=env, timeout=timeout)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["spikeformer", *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit status 2 and exactly one line ``error: ...`` naming every needle, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
