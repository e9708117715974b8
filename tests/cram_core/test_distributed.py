"""Data-parallel training on CPU: gloo, 2 ranks, against 1 rank with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cram_core import distributed
from cram_core.budget import BudgetClock
from cram_core.config import BudgetConfig, ConfigError, apply_overrides
from cram_core.presets import get_preset
from cram_core.train import train

# 4 micro-batches of 4 at full batch; the ramp starts at 1 micro-batch, so rank 1 gets none early on
# (its gradients count zero). The checkpoint at p = 0.5 is where the resume test starts.
FLAGS = ["data.max_documents=400", "budget.tokens=12288", "impl.threads=1", "train.log_every=2",
         "train.eval_sequences=32", "train.batch_size=16", "train.micro_batch_size=4", "train.batch_ramp=0.5",
         "train.checkpoint_every=0.5"]


def torchrun(*args, ranks=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           "-m", "cram_core.train", "--preset", "tiny", "--quiet", *FLAGS, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One rank in-process; two ranks as a sweep trial runs them (this process rank 0, beside a child rank)."""
    from sweeps.trial import run_trial

    root = tmp_path_factory.mktemp("dp")
    cfg = apply_overrides(get_preset("tiny"), FLAGS)
    one = train(cfg, out_dir=root / "one", progress=False)
    records = []
    two = run_trial(cfg, backend="cram_core", callback=records.append, keep=root / "two", world_size=2)
    return root, one, two, records


def test_two_ranks_match_one_rank_with_the_same_global_batch(runs):
    root, one, two, records = runs
    assert two["status"] == one["status"] == "completed", two.get("reason")
    assert two["ranks"] == 2 and one["ranks"] == 1
    # the budget counts the global batch: same tokens, FLOPs and steps, so the same batch ramp and LR
    assert (two["tokens"], two["flops"], two["steps"]) == (one["tokens"], one["flops"], one["steps"])
    a, b = losses(root / "one"), losses(root / "two")
    assert len(a) == len(b) > 5
    assert b == pytest.approx(a, rel=1e-4, abs=1e-4)
    assert [r["loss"] for r in records] == b  # rank 0 kept the trial's callback
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-4)
    sizes = [r["batch_size"] for r in records]
    assert sizes[0] == 4 and sizes[-1] == 16  # the ramp really ran


def test_only_rank_zero_writes(runs):
    root, _, _, _ = runs
    assert sorted(p.name for p in (root / "two").iterdir()) == sorted(p.name for p in (root / "one").iterdir())
    # a second writer would have appended its own records and checkpoints
    assert len(losses(root / "two")) == len(losses(root / "one"))
    assert [p.name for p in (root / "two" / "checkpoints").iterdir()] == \
        [p.name for p in (root / "one" / "checkpoints").iterdir()]


def test_torchrun_resumes_two_ranks_like_the_uninterrupted_run(tmp_path):
    """With dropout on, so rank 1's own dropout stream must come back from the checkpoint too."""
    from sweeps.trial import run_trial

    dropout = ["model.dropout=0.1"]
    cfg = apply_overrides(get_preset("tiny"), FLAGS + dropout)
    two = run_trial(cfg, backend="cram_core", callback=None, keep=tmp_path / "two", world_size=2)
    (checkpoint,) = (tmp_path / "two" / "checkpoints").iterdir()
    stdout = torchrun("--out", str(tmp_path / "resumed"), "--resume", str(checkpoint), *dropout)
    assert stdout.count("status        completed") == 1  # rank 0 alone prints
    resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert resumed["ranks"] == 2
    assert (resumed["tokens"], resumed["steps"]) == (two["tokens"], two["steps"])
    assert resumed["final_loss"] == pytest.approx(two["final_loss"], rel=1e-5)
    assert resumed["eval_loss"] == pytest.approx(two["eval_loss"], rel=1e-5)


class _Rank1(distributed.Ranks):
    """Rank 1 of 2 whose broadcasts deliver a fixed 'rank 0 reading'."""

    def broadcast_float(self, value):
        return 42.0


def test_agreed_clock_reads_rank_zeros_seconds_between_steps():
    ticks = iter(range(1000))
    clock = distributed.AgreedClock(BudgetConfig(seconds=84.0), _Rank1(rank=1, world=2))
    clock._clock = lambda: float(next(ticks))  # this rank's own clock runs on
    clock.start()
    assert clock.seconds == clock.seconds == 42.0 and clock.progress == 0.5
    clock.add(1, 1.0)
    assert clock.seconds == 42.0 and not clock.done
    clock.load_state_dict({"seconds": 84.0, "tokens": 1, "flops": 1.0})
    assert clock.done
    assert isinstance(distributed.budget_clock(BudgetConfig(seconds=1.0), distributed.SINGLE), BudgetClock)


def test_micro_batches_are_dealt_round_robin():
    r0, r1 = distributed.Ranks(rank=0, world=2), distributed.Ranks(rank=1, world=2)
    assert [i for i in range(5) if r0.owns(i)] == [0, 2, 4] and [i for i in range(5) if r1.owns(i)] == [1, 3]
    assert all(distributed.SINGLE.owns(i) for i in range(5))


def test_single_rank_keeps_gradients_and_dropout_stream_untouched():
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    grad = model.weight.grad.clone()
    loss = torch.tensor(1.5)
    assert distributed.SINGLE.reduce_gradients(model, loss) is loss
    assert torch.equal(model.weight.grad, grad)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    distributed.SINGLE.seed_dropout(1)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("gpus, world", [(0.0, 1), (0.5, 1), (1.0, 1), (2.0, 2), (4, 4)])
def test_world_size_per_trial(gpus, world):
    assert distributed.world_size_for(gpus) == world


def test_a_fractional_gpu_count_above_one_is_a_usage_error():
    with pytest.raises(ConfigError, match="whole number"):
        distributed.world_size_for(1.5)


@pytest.mark.parametrize("gpus, gpt, expected", [
    (8, None, (8, 1.0)),  # one trial per GPU
    (8, 2, (4, 2.0)),  # data-parallel trials of 2 ranks, 4 at a time
    (8, 8, (1, 8.0)),
])
def test_multi_gpu_placement(gpus, gpt, expected):
    from sweeps.runner import place

    p = place(22, cpus=64, gpus=gpus, gpus_per_trial=gpt, max_concurrent=None)
    assert (p.concurrency, p.gpus_per_trial) == expected


def test_placement_refuses_a_fractional_multi_gpu_trial():
    from sweeps.runner import place

    with pytest.raises(ConfigError, match="whole number"):
        place(22, cpus=64, gpus=8, gpus_per_trial=1.5, max_concurrent=None)


def test_a_trial_records_the_gpus_ray_gave_it(monkeypatch):
    import ray

    from sweeps import trial

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: ["3", "5"])
    assert trial._gpu_ids() == [3, 5]


RANK0 = """
import os, subprocess, sys, time
env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": sys.argv[2], "RANK": "1", "LOCAL_RANK": "1",
       "WORLD_SIZE": "2", "CRAM_RANK0_PID": str(os.getpid())}
child = subprocess.Popen([sys.executable, "-m", "cram_core.distributed", sys.argv[1]], env=env)
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_rank_dies_with_its_rank_zero(tmp_path):
    """rank 0 SIGKILLed (a lost Ray worker): its child rank, waiting for the rendezvous, goes too."""
    import signal
    import time

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": apply_overrides(get_preset("tiny"), FLAGS).to_dict(), "eval_marks": 0}))
    rank0 = subprocess.Popen([sys.executable, "-c", RANK0, str(config), str(distributed._free_port())],
                             stdout=subprocess.PIPE, text=True)
    child = int(rank0.stdout.readline())
    time.sleep(3)  # let the child get going (the test passes either side of its prctl)
    rank0.send_signal(signal.SIGKILL)
    rank0.wait()
    deadline = time.monotonic() + 60
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child rank outlived its rank 0")


def test_two_ranks_stop_together_under_a_seconds_budget():
    """Wall clocks differ per rank: without rank 0's seconds on both, one would stop first and leave the
    other waiting in its next all-reduce (the child's non-zero exit or a timeout would fail the trial)."""
    from sweeps.trial import run_trial

    cfg = apply_overrides(get_preset("tiny"), [f for f in FLAGS if not f.startswith(("budget.", "train.checkpoint"))] + ["budget.seconds=2"])
    summary = run_trial(cfg, backend="cram_core", callback=None, world_size=2)
    assert summary["status"] == "completed", summary.get("reason")
    assert summary["ranks"] == 2 and summary["steps"] > 0 and summary["seconds"] >= 2


def test_mfu_of_two_ranks_is_against_two_devices(monkeypatch):
    from types import SimpleNamespace

    from cram_core import hardware
    from cram_core.train import Logger

    monkeypatch.setattr(hardware, "peak_flops", lambda device: 1e12)
    parts = SimpleNamespace(device=torch.device("cpu"), ranks=distributed.Ranks(rank=0, world=2))
    assert Logger(parts, None, None, None).peak == 2e12
    assert distributed.SINGLE.peak_flops(1e12) == 1e12 and distributed.SINGLE.peak_flops(None) is None
