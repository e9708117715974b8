"""The fake trainer (sweeps.testing) with trials whose worker process dies of a signal, for tests of how the
driver reports a dead worker: ``--backend sweeps.testing_faults``. It lives in the package because Ray workers
must be able to import it.

Switches, as ordinary overrides: ``optim.lr=300`` kills the worker with SIGSEGV (as a crash in native code
would), ``optim.lr=400`` with SIGKILL (as the OOM killer would), after the first metric record; any other
value is sweeps.testing's trainer, with its own switches.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable

from cram_core.config import RunConfig
from sweeps.testing import prepare
from sweeps.testing import train as fake_train

__all__ = ["prepare", "train"]

SIGNALS = {300.0: signal.SIGSEGV, 400.0: signal.SIGKILL}
"optim.lr -> the signal that kills the trial's worker"


def train(cfg: RunConfig, *, callback: Callable[[dict[str, Any]], None] | None = None, **kw: Any) -> dict[str, Any]:
    sig = SIGNALS.get(cfg.optim.lr)
    if sig is None:
        return fake_train(cfg, callback=callback, **kw)
    if callback:
        callback({"step": 1, "progress": 0.1, "tokens": 1.0, "seconds": 0.1, "flops": 1.0, "loss": 8.0,
                  "lr": cfg.optim.lr, "batch_size": cfg.train.batch_size, "seq_len": cfg.data.seq_len,
                  "tokens_per_second": 10.0, "mfu": None, "memory_gb": None})
    if sig == signal.SIGSEGV:  # to this thread, as a bad memory access in native code here would be
        signal.pthread_kill(threading.get_ident(), sig)
    else:
        os.kill(os.getpid(), sig)
    raise AssertionError(f"still alive after signal {sig.name}")
