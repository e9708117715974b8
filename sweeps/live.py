"""Live progress of a running sweep: one line per finished trial, plus a status line (rich, on a terminal)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class LiveProgress:
    def __init__(self, name: str, *, total: int, already_done: int, concurrency: int, console: Console,
                 estimate_trial_s: float | None):
        self.name, self.total, self.concurrency, self.console = name, total, concurrency, console
        self.done, self.failed, self.diverged = already_done, 0, 0
        self.running: dict[str, tuple[str, float]] = {}
        self.best: tuple[str, int, float] | None = None
        self.durations: list[float] = []
        self.estimate_trial_s = estimate_trial_s
        self.started = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> LiveProgress:
        if self.console.is_terminal:
            self._live = Live(console=self.console, get_renderable=self.status_line, refresh_per_second=2,
                              transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.stop()

    def trial_started(self, key: str, label: str) -> None:
        self.running[key] = (label, time.monotonic())

    def trial_finished(self, key: str, *, status: str, value: float | None, reason: str | None,
                       variant: str, seed: int, note: str | None = None) -> None:
        """`note`: appended to a completed trial's line (its downstream scores, or why it has none)."""
        label, t0 = self.running.pop(key, (f"{variant} (seed {seed})", time.monotonic()))
        wall = time.monotonic() - t0
        self.done += 1
        if status == "completed":
            self.durations.append(wall)
        self.failed += status == "failed"
        self.diverged += status == "diverged"
        if value is not None and (self.best is None or value < self.best[2]):
            self.best = (variant, seed, value)
        result = f"loss {value:.4f}" if value is not None else status + (f": {reason}" if reason else "")
        if note and value is not None:
            result += f" | {note}"
        style = {"completed": "green", "diverged": "yellow"}.get(status, "red")
        line = Text.assemble((f"[{self.done}/{self.total}] ", "dim"), (label, "bold"), "  ", (result, style),
                             (f"  ({format_seconds(wall)})", "dim"))
        self.console.print(line)
        if self._live is None:
            self.console.print(self.status_line(), style="dim")

    def eta_seconds(self) -> float | None:
        mean = sum(self.durations) / len(self.durations) if self.durations else self.estimate_trial_s
        if mean is None:
            return None
        now = time.monotonic()
        queued = self.total - self.done - len(self.running)
        left_running = sum(max(0.0, mean - (now - t0)) for _, t0 in self.running.values())
        return (max(0, queued) * mean + left_running) / max(1, self.concurrency)

    def status_line(self) -> Text:
        best = f"{self.best[0]} (seed {self.best[1]}) {self.best[2]:.4f}" if self.best else "-"
        return Text(
            f"{self.name}: {self.done}/{self.total} done, {len(self.running)} running, {self.failed} failed, "
            f"{self.diverged} diverged | best {best} | elapsed {format_seconds(time.monotonic() - self.started)}"
            f", ETA {format_seconds(self.eta_seconds())}"
        )
