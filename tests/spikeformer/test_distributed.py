"""Multi-process training (spikeformer/distributed.py): torchrun with gloo on CPU.

Two processes give the weights one process gives with the same global batch (BPTT and a local
rule); a killed rank stops the other with one line and the run resumes with one process; a batch
that does not divide over the ranks is refused in one line; the global-batch BatchNorm equals
BatchNorm in values and gradients."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from spikeformer import distributed
from spikeformer.checkpoint import load_checkpoint

TINY = """
task = "digits"
patch_size = 4
model = "spikeformer"
mode = "global"
variant = "hebbian"
dim = 32
heads = 2
head_dim = 8
depth = 1
time_steps = 2
encoder = "direct"
epochs = {epochs}
batch_size = {batch}
train_size = 150
lr = 3e-3
num_threads = 1
augment_shift = 1
rule = "{rule}"
"""


def write_config(folder: Path, epochs: int = 2, batch: int = 32, rule: str = "bptt") -> Path:
    path = folder / f"tiny-{rule}-{epochs}-{batch}.toml"
    path.write_text(TINY.format(epochs=epochs, batch=batch, rule=rule))
    return path


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("WORLD_SIZE", None)
    return env


def launch(processes: int, *args: str, wait: bool = True):
    """``python ARGS`` (one process) or ``torchrun --standalone --nproc_per_node N ARGS``; ARGS is a
    script or ``-m module ...``. Returns the finished run, or the running one with ``wait=False``."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    cmd = [sys.executable, *torchrun, *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
    return subprocess.run(cmd, capture_output=True, text=True, env=environment(), timeout=300)


def train_args(config: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "spikeformer", "train", "--config", str(config), "--out", str(out), "--quiet", *extra]


def one_process(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return launch(1, *train_args(config, out, *extra))


def torchrun(processes: int, config: Path, out: Path, *extra: str, wait: bool = True):
    return launch(processes, *train_args(config, out, *extra), wait=wait)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run)[1]


# Shifts the next BatchNorm removes: the biases of the norms that write the residual stream, and the
# running means of the norms that read it. Their gradient is 0 in exact arithmetic, so Adam, which
# steps by about lr whatever the gradient's size, moves them by rounding noise, differently in
# every run that sums in another order. They change no output (the history's losses below).
GAUGE = re.compile(r"(^stem\.embed|attn\.out|mlp\.fc2)\.norm\.bn\.bias$|(^|\.)norm[12]?\.bn\.running_mean$")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    compared = 0
    for name in wa:
        if not wa[name].is_floating_point():
            assert torch.equal(wa[name], wb[name]), name
        elif not GAUGE.search(name):
            torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
            compared += 1
    assert compared > 20
    history = [load_checkpoint(run)[0]["history"] for run in (a, b)]
    for row_a, row_b in zip(*history):
        for key in ("train_loss", "test_loss", "test_accuracy"):
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-5), key


WORKER = Path(__file__).with_name("distributed_worker.py")


def gradients(processes: int, config: Path, out: Path) -> dict[str, torch.Tensor]:
    done = launch(processes, str(WORKER), str(config), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    from safetensors.torch import load_file

    return load_file(str(out))


@pytest.mark.parametrize("rule", ["bptt", "eprop"])
@pytest.mark.parametrize("batch", [32, 31])  # 31: the ranks get 16 and 15 samples
def test_two_processes_compute_the_gradient_of_one(tmp_path, rule, batch):
    """One step: the gradient of the global batch (and the BatchNorm running statistics) that two
    processes leave on rank 0 equals one process's, to float32 rounding."""
    config = write_config(tmp_path, rule=rule, batch=batch)
    one, two = gradients(1, config, tmp_path / "one.st"), gradients(2, config, tmp_path / "two.st")
    assert one.keys() == two.keys() and len(one) > 10
    # float32 rounding against the largest gradient: the residual stream's norm biases have a true
    # gradient of 0 (the next BatchNorm removes any shift), so theirs is rounding noise on both sides
    scale = max(float(t.abs().max()) for name, t in one.items() if not name.startswith("buffer."))
    for name in one:
        atol = 1e-6 if name.startswith("buffer.") else 1e-5 * scale
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=atol, msg=lambda m: f"{name}: {m}")


# e-prop for one epoch (5 steps): its trajectories part later, once rounding has flipped a spike
# (a flipped spike changes the rule's weight change by a whole term); the gradient test above
# checks every step's arithmetic
@pytest.mark.parametrize("rule, epochs", [("bptt", 2), ("eprop", 1)])
def test_two_processes_train_what_one_process_trains(tmp_path, rule, epochs):
    config = write_config(tmp_path, rule=rule, epochs=epochs)
    single, double = one_process(config, tmp_path / "one"), torchrun(2, config, tmp_path / "two")
    assert single.returncode == 0, single.stderr[-2000:]
    assert double.returncode == 0, double.stderr[-2000:]
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    metrics = (tmp_path / "two" / "metrics.json").read_text()
    assert '"world_size": 2' in metrics and '"global_batch": 32' in metrics


def _workers(parent: int) -> list[int]:
    """The pids of ``parent``'s child processes (torchrun's workers)."""
    children = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(pid) for pid in text]
    return children


def test_a_killed_rank_stops_the_other_in_one_line_and_the_run_resumes(tmp_path):
    config = write_config(tmp_path, epochs=40)
    run = tmp_path / "run"
    launcher = torchrun(2, config, run, wait=False)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.json").exists():
            assert launcher.poll() is None, launcher.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
            time.sleep(0.2)
        workers = _workers(launcher.pid)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)  # not a hang
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("error: rank")]
    assert ours, err[-3000:]
    assert "--resume" in ours[0]
    epoch = load_checkpoint(run)[0]["epoch"]
    assert epoch < 39
    refused = one_process(config, run, "--resume", "--epochs", "41")  # another config is refused in one line
    assert refused.returncode != 0 and "keys differ" in refused.stderr.splitlines()[-1]
    resumed = one_process(config, run, "--resume")  # one process continues what two began
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(run)[0]["epoch"] == 39


def test_a_batch_that_does_not_divide_is_refused_in_one_line(tmp_path):
    config = write_config(tmp_path, batch=31)
    done = torchrun(2, config, tmp_path / "run")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines and "does not divide over 2 processes" in lines[0], done.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoint.json").exists()


def test_shards_cover_a_batch_once():
    for count in (1, 5, 32, 33):
        for size in (1, 2, 3, 4):
            parts = [distributed.shard(count, distributed.World(rank, size)) for rank in range(size)]
            covered = [i for part in parts for i in range(count)[part]]
            assert covered == list(range(count))
            assert max(len(range(count)[p]) for p in parts) - min(len(range(count)[p]) for p in parts) <= 1


def test_check_batch():
    distributed.check_batch(32, distributed.World(0, 4))
    distributed.check_batch(31, distributed.World(0, 1))
    with pytest.raises(distributed.ConfigError, match="multiple of 4"):
        distributed.check_batch(30, distributed.World(1, 4))


@pytest.fixture
def group(tmp_path):
    """A one-process gloo group, so that the collectives run for real."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield distributed.World(0, 1)
    dist.destroy_process_group()


def test_global_batch_norm_equals_batch_norm(group):
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm1d(7).double()
    synced = torch.nn.BatchNorm1d(7).double()
    for bn in (reference, synced):
        bn.weight.data = torch.linspace(0.5, 1.5, 7, dtype=torch.float64)
        bn.bias.data = torch.linspace(-1, 1, 7, dtype=torch.float64)
    x = (torch.randn(40, 7, dtype=torch.float64) * 3 + 2).requires_grad_(True)
    g = torch.randn(40, 7, dtype=torch.float64)
    y_ref = reference(x)
    grads_ref = torch.autograd.grad(y_ref, [x, reference.weight, reference.bias], g)
    y = distributed.batch_norm(x, synced)
    grads = torch.autograd.grad(y, [x, synced.weight, synced.bias], g)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(synced.running_mean, reference.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(synced.running_var, reference.running_var, rtol=1e-12, atol=1e-12)
    assert int(synced.num_batches_tracked) == 1


def test_collectives_of_one_process(group):
    assert distributed.agree(True, group) and not distributed.agree(False, group)
    assert distributed.all_sum([1.5, 2.0], group) == [1.5, 2.0]


def test_a_study_shares_its_cells_over_the_ranks(tmp_path):
    """Under torchrun each rank trains its share of the cells (one process each); the summary
    equals one process's, cell for cell (every cell trains on one thread, so bit for bit)."""
    config = str(Path(__file__).resolve().parents[2] / "demos" / "digits-eprop.toml")
    args = ["study", "--config", config, "--quick", "--rules", "bptt,eprop", "--workers", "1", "--quiet"]
    single = launch(1, "-m", "spikeformer", *args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-2000:]
    double = launch(2, "-m", "spikeformer", *args, "--out", str(tmp_path / "two"))
    assert double.returncode == 0, double.stderr[-2000:]
    import json

    one, two = (json.loads((tmp_path / name / "study.json").read_text()) for name in ("one", "two"))
    assert len(one["cells"]) == 4
    assert [c["accuracies"] for c in two["cells"]] == [c["accuracies"] for c in one["cells"]]


def test_a_rank_without_the_data_stops_every_rank_in_one_line(tmp_path):
    config = write_config(tmp_path)
    script = Path(__file__).with_name("distributed_no_data.py")
    done = launch(2, str(script), str(config), str(tmp_path / "run"))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert any("not installed on this rank" in line for line in errors), done.stderr[-2000:]
    assert any("another rank could not start" in line for line in errors), done.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoint.json").exists()
