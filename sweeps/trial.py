"""What runs inside a Ray worker: one trial. Kept apart from the driver's modules (store, Optuna, rich) so
a worker imports only the config and the trainer, which matters when every trial starts a worker."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import socket
import time
from typing import Any, Callable

from cram_core.config import RunConfig, apply_overrides
from sweeps.definitions import with_seed

# Metric records are batched per report: each tune.report is a round trip to the driver, and under a
# wall-clock budget the trial's clock runs while it waits.
REPORT_EVERY_S = 2.0


def objective(summary: dict[str, Any]) -> float | None:
    """The number a sweep minimises: held-out eval loss when the trainer produced one, else final train loss."""
    for key in ("eval_loss", "final_loss"):
        value = summary.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------- backends


def load_backend(name: str) -> tuple[Callable[..., dict], Callable[..., Any]]:
    """(train, prepare) of a trainer backend: ``cram_core`` (the real one) or a module with both functions."""
    if name == "cram_core":
        from cram_core.data import prepare
        from cram_core.train import train

        return train, prepare
    module = importlib.import_module(name)
    return module.train, module.prepare


def trial_main(config: dict[str, Any], static: dict[str, Any]) -> None:
    """One trial: train, stream metric records to the driver, report the summary. Never raises for a
    training error: a crash becomes a `failed` summary with a one-line reason, and the sweep goes on."""
    from ray import tune

    cfg = _trial_config(config, static)
    if os.path.isdir(static.get("cwd", "")):  # a remote node without that folder keeps its own
        os.chdir(static["cwd"])
    buffer: list[dict[str, Any]] = []
    last_flush = [time.monotonic()]

    def flush() -> None:
        if buffer:
            # "objective" only because Tune insists every report of a searched trial carries the metric;
            # the searcher ignores these (see TellOnlyOptunaSearch)
            loss = buffer[-1].get("loss")
            tune.report({"kind": "metrics", "records": list(buffer),
                         "objective": loss if isinstance(loss, float) else float("nan")})
            buffer.clear()
        last_flush[0] = time.monotonic()

    def callback(record: dict[str, Any]) -> None:
        buffer.append({k: _plain(v) for k, v in record.items()})
        if time.monotonic() - last_flush[0] >= REPORT_EVERY_S:
            flush()

    try:
        train, _ = load_backend(static["backend"])
        summary = train(cfg, callback=callback, progress=False)
    except Exception as e:  # the trial's failure is its result; the sweep must go on
        summary = {"status": "failed", "reason": f"{type(e).__name__}: {one_line(str(e))}",
                   "seed": cfg.train.seed, "host": socket.gethostname(),
                   "budget": {"kind": cfg.budget.kind, "amount": cfg.budget.amount}}
    flush()
    summary = {k: _plain(v) for k, v in summary.items()}
    value = objective(summary) if summary.get("status") == "completed" else None
    # NaN, not None, for a trial without a result: OptunaSearch tells NaN as FAIL but None as PRUNED
    tune.report({"kind": "summary", "summary": summary, "objective": float("nan") if value is None else value})


def _trial_config(config: dict[str, Any], static: dict[str, Any]) -> RunConfig:
    if "index" in config:
        cfg = RunConfig.from_dict(static["configs"][config["index"]])
    else:
        cfg = with_seed(apply_overrides(RunConfig.from_dict(static["base"]), config["overrides"]), static["seed"])
    if cfg.impl.threads == 0:  # an explicit --set impl.threads wins over the packing
        cfg = dataclasses.replace(cfg, impl=dataclasses.replace(cfg.impl, threads=static["threads"]))
    return cfg


def _plain(value: Any) -> Any:
    """JSON-safe scalars (numpy, tensors) so reports pickle small and store cleanly."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


