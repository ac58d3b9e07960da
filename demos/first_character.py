"""Seconds from launching ``spikeformer generate`` to its first generated character (issue 14's
bar: within 2 s), median of repeats, as a user sees it: a new process, the run loaded from disk.

Usage: python demos/first_character.py RUN [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

PROMPT = "ROMEO:"


def first_character_seconds(run: str) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "spikeformer", "generate", run, "--prompt", PROMPT, "--chars", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = proc.stdout.read(len(PROMPT) + 1)  # the prompt is echoed first, then the first drawn character
    seconds = time.perf_counter() - start
    proc.wait()
    if proc.returncode != 0 or len(got) <= len(PROMPT):
        sys.exit(proc.stderr.read().decode().strip() or f"generate exited with {proc.returncode}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = [first_character_seconds(args.run) for _ in range(args.repeats)]
    print(f"first character after {statistics.median(times):.2f} s (median of {args.repeats}; "
          f"min {min(times):.2f}, max {max(times):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
