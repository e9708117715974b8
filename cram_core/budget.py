"""The budget clock: turns training seconds, tokens or FLOPs into progress p in [0, 1].

It is the only place that reads a wall clock during training. Time spent inside ``paused()``
(evaluation, checkpointing, logging) does not count. Every run records all three measures, whichever
one the budget is expressed in, so runs under different budget kinds can still be compared.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from cram_core.config import BudgetConfig


class BudgetClock:
    def __init__(self, cfg: BudgetConfig, clock: Callable[[], float] = time.perf_counter) -> None:
        self.cfg = cfg
        self._clock = clock
        self._started = False
        self._stopped = False
        self._pause_depth = 0
        self._seconds_banked = 0.0  # counted time from intervals that have ended (or from a checkpoint)
        self._interval_start: float | None = None  # clock reading when the current counted interval began
        self._tokens = 0
        self._flops = 0.0

    def start(self) -> None:
        """Begin counting; call after compilation and warm-up so they stay outside the budget."""
        if self._started:
            raise RuntimeError("BudgetClock.start() called twice")
        self._started = True
        if self._pause_depth == 0:
            self._interval_start = self._clock()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time inside does not count. Nesting is safe: only the outermost pause stops and restarts."""
        if self._pause_depth == 0:
            self._bank()
        self._pause_depth += 1
        try:
            yield
        finally:
            self._pause_depth -= 1
            if self._pause_depth == 0 and self._started and not self._stopped:
                self._interval_start = self._clock()

    def stop(self) -> None:
        """End of training: ``seconds`` stays fixed from here on, so evaluation and saving never count."""
        self._bank()
        self._stopped = True

    def _bank(self) -> None:
        if self._interval_start is not None:
            self._seconds_banked += self._clock() - self._interval_start
            self._interval_start = None

    def add(self, tokens: int, flops: float) -> None:
        """Record one optimizer step's work."""
        if tokens < 0 or flops < 0:
            raise ValueError(f"BudgetClock.add: tokens and flops must be >= 0, got {tokens}, {flops}")
        self._tokens += int(tokens)
        self._flops += float(flops)

    @property
    def seconds(self) -> float:
        """Unpaused training seconds since start (plus any restored from a checkpoint)."""
        if self._interval_start is None:
            return self._seconds_banked
        return self._seconds_banked + (self._clock() - self._interval_start)

    @property
    def tokens(self) -> int:
        return self._tokens

    @property
    def flops(self) -> float:
        return self._flops

    @property
    def progress(self) -> float:
        """Fraction of the budget used, clipped to [0, 1]."""
        used = {"seconds": self.seconds, "tokens": self.tokens, "flops": self.flops}[self.cfg.kind]
        return min(max(used / self.cfg.amount, 0.0), 1.0)

    @property
    def done(self) -> bool:
        return self.progress >= 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "tokens": self._tokens, "flops": self._flops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the measures; a running clock keeps counting from the restored seconds."""
        self._seconds_banked = float(state["seconds"])
        self._tokens = int(state["tokens"])
        self._flops = float(state["flops"])
        if self._interval_start is not None:
            self._interval_start = self._clock()
