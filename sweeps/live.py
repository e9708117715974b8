"""Live progress of a running sweep: one line per finished trial, and (on a terminal) a live panel of the
running trials (variant, seed, progress p, current loss) under a status line.

The number formats here (`format_loss`, `format_count`) are the ones the analysis tables print, so `status`,
the live lines and the what-worked table read the same.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

MISSING = "—"


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def format_loss(x: float | None) -> str:
    """A loss as every table prints it: three decimals."""
    return MISSING if _missing(x) else f"{x:.3f}"


def format_count(x: float | None) -> str:
    """Tokens, tokens/s: three significant figures with a k/M/G/T suffix (``11.4k``)."""
    if _missing(x):
        return MISSING
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= threshold:
            return f"{x / threshold:.3g}{suffix}"
    return f"{x:.3g}"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class RunningTrial:
    variant: str
    seed: int
    started: float
    progress: float = 0.0
    "budget fraction p of the latest metric record"
    loss: float | None = None
    "train loss of the latest metric record"
    tokens: float | None = None

    @property
    def label(self) -> str:
        return f"{self.variant} (seed {self.seed})"


class LiveProgress:
    def __init__(self, name: str, *, total: int, already_done: int, concurrency: int, console: Console,
                 estimate_trial_s: float | None):
        self.name, self.total, self.concurrency, self.console = name, total, concurrency, console
        self.done, self.failed, self.diverged = already_done, 0, 0
        self.running: dict[str, RunningTrial] = {}
        self.values: dict[str, list[float]] = {}
        "completed trials' objective per variant: the live 'best' is the best mean over seeds"
        self.durations: list[float] = []
        self.estimate_trial_s = estimate_trial_s
        self.started = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> LiveProgress:
        if self.console.is_terminal:
            self._live = Live(console=self.console, get_renderable=self.panel, refresh_per_second=2,
                              transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.stop()

    def trial_started(self, key: str, *, variant: str, seed: int) -> None:
        self.running[key] = RunningTrial(variant, seed, time.monotonic())

    def trial_metrics(self, key: str, records: list[dict[str, Any]]) -> None:
        """The latest of a batch of the trainer's metric records: where the trial is and its loss."""
        t = self.running.get(key)
        if t is None or not records:
            return
        last = records[-1]
        t.progress = float(last.get("progress") or t.progress)
        loss = last.get("loss")
        t.loss = float(loss) if isinstance(loss, (int, float)) else None
        t.tokens = last.get("tokens", t.tokens)

    def trial_finished(self, key: str, *, status: str, value: float | None, reason: str | None,
                       variant: str, seed: int, note: str | None = None) -> None:
        """`note`: appended to a completed trial's line (its downstream scores, or why it has none)."""
        t = self.running.pop(key, None) or RunningTrial(variant, seed, time.monotonic())
        wall = time.monotonic() - t.started
        self.done += 1
        if status == "completed":
            self.durations.append(wall)
        self.failed += status == "failed"
        self.diverged += status == "diverged"
        if value is not None:
            self.values.setdefault(variant, []).append(value)
        result = f"loss {format_loss(value)}" if value is not None else status + (f": {reason}" if reason else "")
        if note and value is not None:
            result += f" | {note}"
        style = {"completed": "green", "diverged": "yellow"}.get(status, "red")
        line = Text.assemble((f"[{self.done}/{self.total}] ", "dim"), (t.label, "bold"), "  ", (result, style),
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
        left_running = sum(max(0.0, mean - (now - t.started)) for t in self.running.values())
        return (max(0, queued) * mean + left_running) / max(1, self.concurrency)

    def status_line(self) -> Text:
        from analysis.stats import best_mean  # the CLI edge: scipy is already loaded by then

        best_variant = best_mean(self.values)
        best = best_variant.describe() if best_variant else MISSING
        return Text(
            f"{self.name}: {self.done}/{self.total} done, {len(self.running)} running, {self.failed} failed, "
            f"{self.diverged} diverged | best {best} | elapsed {format_seconds(time.monotonic() - self.started)}"
            f", ETA {format_seconds(self.eta_seconds())}"
        )

    def running_table(self) -> Table:
        """One row per running trial: variant, seed, a bar of p, current train loss, tokens, time so far."""
        table = Table(box=None, padding=(0, 1), header_style="bold dim", show_edge=False, pad_edge=False)
        for col, justify in (("running", "left"), ("seed", "right"), ("p", "left"), ("", "right"),
                             ("loss", "right"), ("tokens", "right"), ("time", "right")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        now = time.monotonic()
        for t in sorted(self.running.values(), key=lambda t: t.started):
            table.add_row(t.variant, str(t.seed), ProgressBar(total=1.0, completed=t.progress, width=20),
                          f"{t.progress:.0%}", format_loss(t.loss), format_count(t.tokens),
                          format_seconds(now - t.started))
        return table

    def panel(self) -> Group:
        if not self.running:
            return Group(self.status_line())
        return Group(self.running_table(), self.status_line())
