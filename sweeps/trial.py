"""What runs inside a Ray worker: one trial. Kept apart from the driver's modules (store, Optuna, rich) so
a worker imports only the config and the trainer, which matters when every trial starts a worker."""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import importlib
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cram_core.config import RunConfig, apply_overrides
from sweeps.definitions import with_seed

# Metric records are batched per report: each tune.report is a round trip to the driver, and under a
# wall-clock budget the trial's clock runs while it waits.
REPORT_EVERY_S = 2.0
EVAL_MARKS = 8
"held-out evaluations during a trial (p = 1/8 ... 7/8, on train.mark_sequences; the final one, on all, makes 8)"


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


# ---------------------------------------------------------------- downstream


@dataclass(frozen=True)
class DownstreamSpec:
    """Fine-tune every completed trial on these eval tasks (GLUE-sane protocol, cram_core.downstream).

    Built and validated by the driver (`sweeps.runner.downstream_spec`); `data_root` is absolute so workers
    on any cwd read the same tasks.
    """

    tasks: tuple[str, ...]
    seeds: int = 1
    epochs: int = 5
    max_train: int | None = None
    max_dev: int | None = None
    data_root: str = ""

    def identity(self) -> dict[str, Any]:
        """What makes two sweeps' downstream scores comparable; compared on resume. The data root is left out:
        the same tasks moved to another folder (another machine of a cluster) are the same evaluation."""
        return {"tasks": list(self.tasks), "seeds": self.seeds, "epochs": self.epochs,
                "max_train": self.max_train, "max_dev": self.max_dev}

    def to_dict(self) -> dict[str, Any]:
        return {**self.identity(), "data_root": self.data_root}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DownstreamSpec:
        return cls(tasks=tuple(d["tasks"]), seeds=d["seeds"], epochs=d["epochs"], max_train=d.get("max_train"),
                   max_dev=d.get("max_dev"), data_root=d.get("data_root", ""))


def describe_downstream(d: dict[str, Any] | None) -> str:
    """One line for show / status / the Optuna study, from a spec's dict (as stored in the sweep definition)."""
    if not d:
        return "off"
    caps = ", ".join(f"{name} <= {d[key]}" for name, key in (("train", "max_train"), ("dev", "max_dev")) if d.get(key))
    seeds = d["seeds"]
    return (f"{','.join(d['tasks'])}: {seeds} fine-tuning seed{'s' if seeds != 1 else ''}"
            + (" (protocol: 5)" if seeds < 5 else "") + f", {d['epochs']} epoch{'s' if d['epochs'] != 1 else ''}"
            + (f", {caps}" if caps else ", all examples") + (f"; data {d['data_root']}" if d.get("data_root") else ""))


def downstream_scores(evals: list[dict[str, Any]]) -> dict[str, float]:
    """Per task: median over fine-tuning seeds (the paper's figure), mean over a task's metrics; as
    analysis.tables computes them, so the dashboard and the table agree. Empty without records."""
    import statistics

    by_metric: dict[tuple[str, str], list[float]] = {}
    for r in evals:
        value = r.get("value")
        if isinstance(value, (int, float)) and math.isfinite(value):
            by_metric.setdefault((r["task"], r["metric"]), []).append(float(value))
    per_task: dict[str, list[float]] = {}
    for (task, _), values in by_metric.items():
        per_task.setdefault(task, []).append(statistics.median(values))
    return {task: sum(v) / len(v) for task, v in per_task.items()}


def safe_name(text: str) -> str:
    """A variant name as one path component (variant names are free text: 'lr=1e-3, warmup 0.1')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "trial"


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

    keep = None
    if static.get("keep_models"):
        # grid trials by variant; a search trial's label is free-form and may repeat, its Optuna number not
        label = static["labels"][config["index"]] if "index" in config else \
            f"trial{config['_optuna_number']}-seed{cfg.train.seed}"
        keep = Path(static["keep_models"]) / safe_name(label)
    downstream = DownstreamSpec.from_dict(static["downstream"]) if static.get("downstream") else None
    gpus = static.get("gpus_per_trial", 0.0)  # above 1 a whole number (the driver's `place` checked)
    faults = fault_path(static["fault_dir"], tune.get_context().get_trial_id()) if static.get("fault_dir") else None
    with fault_file(faults):
        summary = run_trial(cfg, backend=static["backend"], callback=callback, downstream=downstream, keep=keep,
                            on_trained=flush, world_size=int(gpus) if gpus > 1 else 1)
        flush()
        summary = {k: _plain(v) for k, v in summary.items()}
        summary["node"] = _ray_node()
        summary["gpus"] = _gpu_ids()
        value = objective(summary) if summary.get("status") == "completed" else None
        # NaN, not None, for a trial without a result: OptunaSearch tells NaN as FAIL but None as PRUNED
        tune.report({"kind": "summary", "summary": summary, "objective": float("nan") if value is None else value})


# ---------------------------------------------------------------- a worker's death


FAULT_TEXT_MAX = 32_000
"characters of a fault file kept in the store (its end: the crashing thread comes last)"


def fault_path(fault_dir: str | Path, trial_id: str) -> Path:
    """The file where the worker running Tune trial ``trial_id`` leaves its Python stacks if it dies of a signal."""
    return Path(fault_dir) / f"{safe_name(trial_id)}.txt"


@contextlib.contextmanager
def fault_file(path: Path | None) -> Any:
    """While inside, a fatal signal (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL) writes the Python stack of every
    thread of this process to ``path`` before the process dies; the driver reads it when Tune reports the
    worker dead (`read_fault`). A SIGKILL (the OOM killer's) leaves the file empty. On the way out the file,
    empty, is removed, and faulthandler is back as it was (Ray's workers: the current thread, to stderr)."""
    if path is None:
        yield
        return
    was_on = faulthandler.is_enabled()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "w") as f:  # faulthandler writes to its descriptor: open for as long as it is on
            faulthandler.enable(file=f, all_threads=True)
            try:
                yield
            finally:
                if was_on:
                    faulthandler.enable(file=sys.stderr, all_threads=False)
                else:
                    faulthandler.disable()
    finally:
        path.unlink(missing_ok=True)


def read_fault(path: Path) -> str | None:
    """The text a dead worker's faulthandler left at ``path`` (at most FAULT_TEXT_MAX characters, its end);
    None when there is none. The file is removed: the text goes into the store."""
    try:
        text = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    if not text:
        return None
    return text if len(text) <= FAULT_TEXT_MAX else "..." + text[-FAULT_TEXT_MAX:]


def fault_digest(text: str) -> str:
    """One line of a faulthandler dump: the error and the innermost frame of the thread that crashed, e.g.
    'Fatal Python error: Segmentation fault, in File "x.py", line 12 in train'."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    error = one_line(next((line for line in lines if line.startswith("Fatal Python error")), lines[0] if lines else ""),
                     120)  # the frame must fit on the line too
    # the crashing thread is "Current thread ..." under all_threads, "Stack ..." otherwise
    heads = [i for i, line in enumerate(lines) if line.startswith(("Current thread", "Stack (most recent"))]
    start = heads[-1] + 1 if heads else 0
    frame = next((line for line in lines[start:] if line.startswith("File ")), None)
    return one_line(f"{error}, in {frame}" if frame else error)


def _gpu_ids() -> list[int]:
    """The GPUs Ray gave the trial (their indices on its node; data-parallel rank r runs on the r-th)."""
    import ray

    return [int(i) for i in ray.get_gpu_ids()]


def _ray_node() -> dict[str, str]:
    """Which Ray node ran the trial: on one machine several nodes share the IP, so the node id tells them apart."""
    import ray

    return {"id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}


def run_trial(cfg: RunConfig, *, backend: str, callback: Callable[[dict[str, Any]], None] | None,
              downstream: DownstreamSpec | None = None, keep: Path | None = None,
              on_trained: Callable[[], None] | None = None, world_size: int = 1) -> dict[str, Any]:
    """Train, then (completed trials only) fine-tune downstream; the summary, never an exception.

    `world_size` > 1 trains data-parallel: this process is rank 0 (it keeps the callback and `keep`), the
    other ranks are child processes (`cram_core.distributed.beside_ranks`), one GPU each on CUDA.

    Without downstream tasks or `keep` the trainer gets no out_dir, as before: nothing is written to disk.
    With them the model goes to `keep` or to a temporary folder removed here whatever happens.
    `on_trained` runs between the two (the worker flushes its last metric records, so the curve is
    complete in the store while fine-tuning runs).
    """
    out_dir: Path | None = None
    try:
        try:
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                out_dir = keep
            elif downstream is not None:
                out_dir = Path(tempfile.mkdtemp(prefix="cram-trial-"))
            train, _ = load_backend(backend)
            if backend == "cram_core":
                fresh_compiler_for(cfg)
            # held-out loss at fixed budget marks: the Optuna study's intermediate values
            with _ranks(cfg, world_size):
                summary = train(cfg, out_dir=out_dir, callback=callback, progress=False, eval_marks=EVAL_MARKS)
        except Exception as e:  # the trial's failure is its result; the sweep must go on
            summary = {"status": "failed", "reason": f"{type(e).__name__}: {one_line(str(e))}",
                       "seed": cfg.train.seed, "host": socket.gethostname(),
                       "budget": {"kind": cfg.budget.kind, "amount": cfg.budget.amount}}
        if on_trained is not None:
            on_trained()
        if downstream is not None and summary.get("status") == "completed":
            assert out_dir is not None
            summary = _evaluate_downstream(summary, out_dir, downstream, device=cfg.impl.device)
    finally:
        if out_dir is not None and keep is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    return summary


_last_graph: list[str] = []
"graph key of the previous trial in this worker process (Ray reuses workers across trials)"


def fresh_compiler_for(cfg: RunConfig) -> bool:
    """Reset the compiler when this trial's graph differs from the previous trial's in this process.

    Ray reuses a worker for the next trial, and torch's compiler keeps its per-code cache across trials:
    a trial of other shapes (another micro-batch, another architecture) would then get a recompiled
    dynamic-shape graph, slower and never warmed ahead (cram_core.warmup compiles static shapes in fresh
    processes). After a reset it compiles as a fresh process would: a hit in the on-disk cache. A trial of
    the same graph keeps the compiled function (no compile at all). True when it reset."""
    from cram_core.warmup import graph_key

    key = graph_key(cfg)
    changed = bool(_last_graph) and _last_graph[-1] != key
    if changed:
        import torch._dynamo

        torch._dynamo.reset()
    _last_graph[:] = [key]
    return changed


def _ranks(cfg: RunConfig, world_size: int) -> Any:
    """The other data-parallel ranks for the trial's duration; torch only imported when there are any."""
    if world_size == 1:
        return contextlib.nullcontext()
    from cram_core.distributed import beside_ranks

    return beside_ranks(cfg, world_size, eval_marks=EVAL_MARKS)


def _evaluate_downstream(summary: dict[str, Any], run_dir: Path, spec: DownstreamSpec, *,
                         device: str) -> dict[str, Any]:
    """Fine-tune the trial's saved model on every task and seed; after training, so outside the budget.

    A failure here (bad task file, out of memory while fine-tuning) must not cost the pretraining result,
    which took the budget to get: the trial stays completed, the reason says what went wrong, no records.
    """
    summary = dict(summary)
    t0 = time.perf_counter()
    try:
        from cram_core.downstream import evaluate_run

        # torch threads are already what the trainer set from impl.threads: fine-tuning shares the slot
        records = evaluate_run(run_dir, list(spec.tasks), data_root=spec.data_root or None, seeds=spec.seeds,
                               epochs=spec.epochs, max_train=spec.max_train, max_dev=spec.max_dev, device=device)
        summary["evals"] = [{k: _plain(v) for k, v in r.items()} for r in records]
    except Exception as e:
        summary["evals"] = []
        note = f"downstream evaluation failed: {type(e).__name__}: {one_line(str(e))}"
        summary["reason"] = f"{summary['reason']}; {note}" if summary.get("reason") else note
    summary["timings"] = {**(summary.get("timings") or {}), "downstream_s": time.perf_counter() - t0}
    return summary


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


