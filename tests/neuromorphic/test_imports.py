"""Without Lava (another Python) everything but the Lava backend still imports."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CORE = ["neuromorphic", "neuromorphic.ir", "neuromorphic.lower", "neuromorphic.simulate", "neuromorphic.quantize",
        "neuromorphic.fixed_ref", "neuromorphic.compare", "neuromorphic.validate", "neuromorphic.cli",
        "neuromorphic.lava", "spikeformer.cli"]


def test_core_modules_do_not_import_lava():
    code = ("import sys\n"
            f"for name in {CORE!r}: __import__(name)\n"
            "import spikeformer.cli as c; c._parser()\n"
            "bad = sorted(m for m in sys.modules if m == 'lava' or m.startswith('lava.'))\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr


def test_lava_missing_is_one_line_from_the_cli(tmp_path):
    """A Python where ``import lava`` fails: validate on a Lava backend prints one error line."""
    (tmp_path / "lava").mkdir()
    (tmp_path / "lava" / "__init__.py").write_text("raise ImportError('lava is broken here')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from neuromorphic.lava import require_lava, LavaUnavailable\n"
            "try:\n    require_lava()\nexcept LavaUnavailable as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "lava-nc is not installed or broken" in result.stdout


def test_lava_imports_after_a_progress_bar():
    """tqdm makes a multiprocessing lock, which fixes the start method before Lava sets it."""
    code = ("from tqdm import tqdm\n"
            "for _ in tqdm(range(2), disable=False): pass\n"
            "import multiprocessing as mp; assert mp.get_start_method(allow_none=True) == 'fork'\n"
            "from neuromorphic.lava import require_lava; require_lava()\n"
            "from lava.proc.dense.process import Dense\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
