"""Data parallelism for one run: several processes (ranks), one device each, sharing one optimizer step.

How a step is shared. Every rank reads the same global batch from the loader and draws the masks of every
micro-batch from the shared ``masks`` stream, but runs forward/backward only on its own micro-batches
(index % world == rank); the gradients (each already scaled by 1 / micro-batches, as on one rank) are summed
over ranks. So N ranks train on exactly the sequences and masks one rank would, with the same global batch:
only the summation order differs. Loader, clock, schedules, averager and optimizer state stay identical on
every rank, which keeps the budget, the batch ramp, checkpoints and resume what they are on one rank; the
one per-rank state, each rank's dropout stream, is gathered into rank 0's checkpoints. Held-out batches are
dealt the same way.

Why not DistributedDataParallel: its bucketed all-reduce overlaps the backward pass, but it averages over
ranks (wrong when the batch ramp gives ranks unequal micro-batch counts), needs ``no_sync`` around gradient
accumulation, and wraps the module the compiled loss closes over. With accumulation, one flat all-reduce
per optimizer step is a small share of the step.

The budget: every rank counts the global batch's tokens and FLOPs (`Parts.step_work`), so token and FLOP
budgets agree by construction. Seconds are rank 0's, broadcast after every step (`AgreedClock`), so all
ranks read the same p: same LR, same stop, no rank left waiting in a collective.

Launching: ``torchrun --nproc-per-node N -m cram_core.train ...`` (ranks from the environment), or
`beside_ranks` from a process that is to be rank 0 itself (a sweep trial, which keeps its metrics callback).
Only rank 0 writes (metrics, summary, checkpoints, model) and reports.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from cram_core import rng
from cram_core.budget import BudgetClock
from cram_core.config import BudgetConfig, ConfigError, RunConfig

RANK0_PID = "CRAM_RANK0_PID"
"the environment variable that tells a child rank its parent, rank 0"
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
"how long a rank waits in a collective for the others (a crashed rank then fails the run instead of hanging)"


@dataclass(frozen=True, kw_only=True)
class Ranks:
    """This process's place in the run. ``world == 1`` is the plain single-process run: every method a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    clock_group: Any = None
    "a gloo group for the small CPU broadcasts (clock), whatever backend carries the gradients"

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes files and reports metrics."""
        return self.rank == 0

    def peak_flops(self, per_device: float | None) -> float | None:
        """The run's peak: the clock counts every rank's FLOPs, so MFU divides by every rank's device."""
        return per_device * self.world if per_device else per_device

    def owns(self, index: int) -> bool:
        """Whether micro-batch ``index`` of a step is this rank's to forward and backward."""
        return index % self.world == self.rank

    def reduce_gradients(self, model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """Sum gradients and the (already 1/micro-batches-scaled) loss over ranks; returns the global loss.

        A parameter with a gradient on no rank keeps ``grad = None``, as on one rank (optimizers skip it);
        one with a gradient on some ranks only (a rank that got no micro-batch early in the batch ramp)
        counts zero from the others.
        """
        if self.world == 1:
            return loss
        params = [p for p in model.parameters() if p.requires_grad]
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=loss.device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params] + [has_grad, loss.reshape(1).float()])
        dist.all_reduce(flat)
        sizes = [p.numel() for p in params]
        chunks = flat[: sum(sizes)].split(sizes)
        counts = flat[sum(sizes) : -1]
        for p, chunk, count in zip(params, chunks, counts.tolist()):
            p.grad = chunk.view_as(p).to(p.dtype) if count > 0 else None
        return flat[-1].to(loss.dtype)

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, src=0, group=self.clock_group)
        return float(t.item())

    def sum_floats(self, *values: float) -> tuple[float, ...]:
        """Each value summed over ranks (float64), the same on every rank."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.clock_group)
        return tuple(t.tolist())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.clock_group)

    def rank0_says(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a choice only rank 0 can make, such as whether to checkpoint)."""
        return bool(self.broadcast_float(float(flag)))

    def seed_dropout(self, seed: int, step: int = 0) -> None:
        """Rank r > 0 gets its own dropout stream (rank 0 keeps the single-rank one), derived from the seed;
        ``step`` > 0: a rank that resumes a checkpoint written by fewer ranks starts a stream of its own."""
        if self.rank > 0:
            torch.manual_seed(rng.stream_seed(seed, f"dropout:rank{self.rank}:step{step}" if step else
                                              f"dropout:rank{self.rank}"))

    def dropout_states(self) -> list[dict[str, Any]]:
        """Every rank's dropout stream (torch's CPU generator, and its own CUDA device's), for rank 0 to save."""
        mine = {"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}
        if self.world == 1:
            return [mine]
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, mine, group=self.clock_group)
        return states

    def restore_dropout(self, states: list[dict[str, Any]], seed: int, step: int) -> None:
        """This rank's stream from a checkpoint's `dropout_states`."""
        if self.rank >= len(states):
            self.seed_dropout(seed, step)
            return
        torch.set_rng_state(states[self.rank]["cpu"])
        if states[self.rank]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(states[self.rank]["cuda"])


SINGLE = Ranks()


class AgreedClock(BudgetClock):
    """A budget clock whose seconds are rank 0's on every rank, refreshed after every step and at stop."""

    def __init__(self, cfg: BudgetConfig, ranks: Ranks) -> None:
        super().__init__(cfg)
        self.ranks = ranks
        self._agreed = 0.0

    def _agree(self) -> None:
        self._agreed = self.ranks.broadcast_float(BudgetClock.seconds.fget(self))

    def start(self) -> None:
        super().start()
        self._agree()

    def add(self, tokens: int, flops: float) -> None:
        super().add(tokens, flops)
        self._agree()

    def stop(self) -> None:
        super().stop()
        self._agree()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._agreed = float(state["seconds"])  # the same checkpoint on every rank

    @property
    def seconds(self) -> float:
        return self._agreed


def budget_clock(cfg: BudgetConfig, ranks: Ranks) -> BudgetClock:
    return BudgetClock(cfg) if ranks.world == 1 else AgreedClock(cfg, ranks)


# ---------------------------------------------------------------------------------------------- setup


def _env_world() -> int:
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={raw!r} is not a whole number; launch with torchrun --nproc-per-node N") from None


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched as a rank)."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def joined(device_kind: str) -> Iterator[Ranks]:
    """The run's ranks: an already-initialised process group (`beside_ranks`), or one this call sets up from
    torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and tears down at the end."""
    owned = False
    if not dist.is_initialized():
        if _env_world() == 1:
            yield SINGLE
            return
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        owned = True
    try:
        group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        yield Ranks(rank=dist.get_rank(), world=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), clock_group=group)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_size_for(gpus_per_trial: float) -> int:
    """Ranks of a trial that declares ``gpus_per_trial``: one per whole GPU; a fraction of one GPU is one rank."""
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g}: above 1 it must be a whole number "
                          "(one data-parallel rank per GPU); valid: a fraction up to 1, or 2, 3, 4, ...")
    return max(1, int(gpus_per_trial))


@contextmanager
def beside_ranks(cfg: RunConfig, world: int, *, eval_marks: int = 0) -> Iterator[Ranks]:
    """Make this process rank 0 of ``world`` and start ranks 1..world-1 as child processes training ``cfg``.

    Rank 0 keeps whatever the caller wires into `train` (callback, out_dir); the children write nothing.
    On CUDA, rank r uses visible device r (a Ray trial's CUDA_VISIBLE_DEVICES lists its GPUs). The children
    are waited for (then killed) on the way out, whatever happened.
    """
    if world <= 1:
        yield SINGLE
        return
    from cram_core import hardware

    device = hardware.resolve_device(cfg.impl)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="cram-ranks-") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps({"config": cfg.to_dict(), "eval_marks": eval_marks}))
        children = []
        try:
            for r in range(1, world):
                env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r),
                       "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), RANK0_PID: str(os.getpid())}
                children.append(subprocess.Popen([sys.executable, "-m", "cram_core.distributed", str(config_path)],
                                                 env=env, stdin=subprocess.DEVNULL))
            if device.type == "cuda":
                torch.cuda.set_device(0)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                    rank=0, world_size=world, timeout=COLLECTIVE_TIMEOUT)
            try:
                with joined(device.type) as ranks:
                    yield ranks
            finally:
                dist.destroy_process_group()
            for child in children:
                code = child.wait(timeout=COLLECTIVE_TIMEOUT.total_seconds())
                if code != 0:
                    raise RuntimeError(f"data-parallel rank {children.index(child) + 1} exited with status {code}")
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()


def _die_with_rank0() -> None:
    """A child rank must not outlive its rank 0 (a Ray trial's worker killed): it would hold its GPU and
    wait in a collective. On Linux the kernel kills it when its parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if str(os.getppid()) != os.environ.get(RANK0_PID):  # rank 0 died before the line above took effect
        os._exit(1)


def _child_main(config_path: str) -> int:
    """A rank started by `beside_ranks`: train the given config, write and report nothing."""
    _die_with_rank0()
    from cram_core.train import train

    spec = json.loads(Path(config_path).read_text())
    summary = train(RunConfig.from_dict(spec["config"]), progress=False, eval_marks=spec["eval_marks"])
    return 0 if summary["status"] in ("completed", "diverged") else 1


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
