"""A fake trainer backend for the sweep runner's own tests and smoke runs (``--backend sweeps.testing``).

It follows the `cram_core.train.train` contract (metrics records through the callback, the same summary
keys) but only sleeps, so a sweep's plumbing (Ray, the store, Optuna, resume) can be tested in seconds.
It lives in the package, not under tests/, because Ray workers must be able to import it.

Failure switches, chosen so a test sweep can ask for them with ordinary overrides:
``optim.lr >= 100`` raises (a crashing trial); ``1 <= optim.lr < 100`` turns the loss NaN half way (diverged).
"""

from __future__ import annotations

import hashlib
import math
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from cram_core.config import DataConfig, RunConfig

FAKE_TOKENS_PER_SECOND = 20_000.0
NUM_RECORDS = 8


@dataclass(frozen=True)
class FakePrepared:
    path: str
    vocab_size: int


PREPARE_LOG_ENV = "CRAM_FAKE_PREPARE_LOG"
"a file: each prepare() appends 'pid start end' and first sleeps CRAM_FAKE_PREPARE_S seconds (tests of the overlap)"
PREPARE_CRASH_ENV = "CRAM_FAKE_PREPARE_CRASH"
"set: prepare() in a child process kills it with SIGSEGV (tests of the driver's recovery)"


def prepare(cfg: DataConfig, *, progress: bool = True) -> FakePrepared:
    import multiprocessing
    import os
    import signal

    if os.environ.get(PREPARE_CRASH_ENV) and multiprocessing.parent_process() is not None:
        os.kill(os.getpid(), signal.SIGSEGV)
    if log := os.environ.get(PREPARE_LOG_ENV):
        t0 = time.monotonic()
        time.sleep(float(os.environ.get("CRAM_FAKE_PREPARE_S", "0")))
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {t0} {time.monotonic()}\n")
    return FakePrepared(path="/dev/null", vocab_size=cfg.vocab_size)


def _offset(cfg: RunConfig) -> float:
    """A stable per-config loss offset in [0, 1), so variants differ and seeds add a little noise."""
    digest = hashlib.sha256((cfg.hash() + str(cfg.train.seed)).encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32


def train(
    cfg: RunConfig,
    *,
    out_dir: Any = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    resume: Any = None,
    progress: bool = True,
    prepared: Any = None,
    eval_marks: int = 0,
) -> dict[str, Any]:
    lr = cfg.optim.lr
    if lr >= 100:
        raise RuntimeError(f"fake trainer crashed on purpose (optim.lr={lr:g})\nsecond line of the message")
    kind, amount = cfg.budget.kind, cfg.budget.amount
    seconds = amount if kind == "seconds" else min(amount / FAKE_TOKENS_PER_SECOND, 5.0)
    offset = _offset(cfg)
    status, reason, loss = "completed", None, float("nan")
    batch_tokens = cfg.train.batch_size * cfg.data.seq_len
    for i in range(1, NUM_RECORDS + 1):
        time.sleep(seconds / NUM_RECORDS)
        p = i / NUM_RECORDS
        loss = 4.0 + 4.0 * math.exp(-3 * p) + offset
        if 1 <= lr < 100 and p > 0.5:
            status, reason, loss = "diverged", f"non-finite loss at step {i * 10}", float("nan")
            break
        tokens = p * seconds * FAKE_TOKENS_PER_SECOND
        if callback:
            callback({
                "step": i * 10, "progress": p, "tokens": tokens, "seconds": p * seconds, "flops": tokens * 1e6,
                "loss": loss, "lr": lr, "batch_size": cfg.train.batch_size, "seq_len": cfg.data.seq_len,
                "tokens_per_second": FAKE_TOKENS_PER_SECOND, "mfu": None, "memory_gb": None,
                # a held-out value on every record but the last (the final eval is the summary's)
                **({"eval_loss": loss + 0.05} if eval_marks and i < NUM_RECORDS else {}),
            })
    tokens = seconds * FAKE_TOKENS_PER_SECOND if status == "completed" else None
    return {
        "status": status,
        "reason": reason,
        "final_loss": loss if status == "completed" else None,
        "eval_loss": loss + 0.05 if status == "completed" else None,
        "tokens": tokens,
        "seconds": seconds,
        "flops": tokens * 1e6 if tokens else None,
        "steps": NUM_RECORDS * 10,
        "tokens_per_second": FAKE_TOKENS_PER_SECOND,
        "mfu": None,
        "params": 1000,
        "timings": {"prepare_s": 0.0, "compile_s": 0.0, "train_s": seconds, "eval_s": 0.0},
        "config": cfg.to_dict(),
        "config_hash": cfg.hash(),
        "seed": cfg.train.seed,
        "hardware": "fake",
        "host": socket.gethostname(),
        "versions": {"fake": "1"},
        "budget": {"kind": kind, "amount": amount},
        "batch_tokens": batch_tokens,
    }
