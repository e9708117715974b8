"""Runs a resolved sweep on Ray Tune, with the results store and the Optuna study kept in step.

Who does what:
- the driver (this process) validates, plans the trials in the store, prepares each distinct data config
  once, starts Ray, and is the only writer of the store and the Optuna study (a `tune.Callback`);
- each trial (a Ray worker) builds its RunConfig, trains, and sends its metric records and final summary
  back with `tune.report`; a worker killed with the driver therefore cannot write a stale row.

Resume: the store keys trials by (config hash, seed). Rerunning the same command skips completed and
diverged trials (and failed ones, unless --retry-failed), replans interrupted ones (their metric points
deleted), finishes Optuna twins the store already finished, and marks the other Optuna trials a killed
driver left RUNNING as FAIL. A live driver's heartbeat in the store keeps a second driver off the same
sweep. See `Ledger` and `OptunaMirror`.

The store's `config` and `config_hash` are the planned experiment: impl.threads, which this module sets
per trial from the packing, is placement and stays out of them (a resume on another machine must find
the same keys); the config exactly as run is in the trial's `summary`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.markup import escape

from cram_core.cli import unknown_name
from cram_core.config import ConfigError, DataConfig, RunConfig, apply_overrides
from sweeps.definitions import (BASELINE, ResolvedSweep, budget_conversion, search_label, search_overrides,
                                 trials_per_gpu, with_seed)
from sweeps.gpu_monitor import GpuBusy, GpuMonitor
from sweeps.ledger import Ledger, ReuseRules
from sweeps.live import LiveProgress, format_seconds
from sweeps.mirror import OptunaMirror, grid_space, trial_attrs
from sweeps.trial import (DownstreamSpec, describe_downstream, downstream_scores, fault_digest, fault_path,
                          load_backend, objective, one_line, read_fault, trial_main)

if TYPE_CHECKING:
    from analysis.stats import Best
    from cram_core.warmup import Warmer, WarmReport

RAY_TEMP_DIR = "/tmp/cram-ray"  # short: Ray's socket paths must stay under the 107-byte AF_UNIX limit
# Per-trial time outside the budget (data load, warm-up, eval) assumed for the ETA until a trial finishes.
OVERHEAD_GUESS_S = 10.0
# How often the driver marks itself alive in the store, so a second `run` of the same sweep can tell a live
# driver from a killed one.
HEARTBEAT_S = 10.0
# Retries of a trial whose worker died (a node lost, OOM-killed): a trainer error is a result, never retried.
MAX_FAILURES = 2

@dataclass(frozen=True)
class RunOptions:
    store_url: str
    address: str | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    backend: str = "cram_core"
    retry_failed: bool = False
    downstream: DownstreamSpec | None = None
    "fine-tune every completed trial on these tasks; part of the sweep's stored definition"
    keep_models: str | None = None
    "keep each trial's model under KEEP/<sweep>/<variant>-seed<k>/ (else a temp folder, removed)"
    rerun: bool = False
    "train every trial this sweep has not finished itself, even one another sweep in the store completed"
    storage_path: str | None = None
    "Tune's run folder: a path (or URI, s3://...) every node of the cluster shares; default a local temp folder"
    max_failures: int = MAX_FAILURES
    "times Tune retries a trial whose worker or node died (its partial points are deleted first)"
    command: str | None = None
    "the shell-quoted command line of this run, kept with the sweep's definition (analysis results prints it)"
    warm_compile: bool = True
    "compile the trials' distinct graphs ahead, in background processes (CUDA trials with compile on only)"


def downstream_spec(tasks: str | list[str], *, seeds: int = 1, epochs: int = 5, max_train: int | None = None,
                    max_dev: int | None = None, data_root: str | None = None) -> DownstreamSpec:
    """Validate downstream settings before anything is written: every task must exist in the eval data root
    and load (a malformed task file found after hours of pretraining would cost every trial its scores)."""
    from cram_core.downstream import DownstreamError, list_tasks, load_task, resolve_data_root

    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [t.strip() for t in tasks]
    names = list(dict.fromkeys(t for t in names if t))
    if not names:
        raise ConfigError("--downstream needs at least one task name, e.g. --downstream rt-polarity,sva")
    for flag, value in (("--downstream-seeds", seeds), ("--downstream-epochs", epochs),
                        ("--downstream-max-train", max_train), ("--downstream-max-dev", max_dev)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    try:
        root = resolve_data_root(data_root, flag="--downstream-data").resolve()
        available = list_tasks(root)
        unknown = [t for t in names if t not in available]
        if unknown:
            raise ConfigError(f"{unknown_name('downstream task', unknown[0], available)} (tasks in {root})")
        for name in names:
            load_task(root / name, max_train=max_train, max_dev=max_dev)
    except DownstreamError as e:
        raise ConfigError(str(e)) from None
    return DownstreamSpec(tuple(names), seeds, epochs, max_train, max_dev, str(root))


@dataclass(frozen=True)
class Placement:
    """How trials share the machine. On CPU, `threads` = cores / concurrency goes into impl.threads."""

    concurrency: int
    cpus_per_trial: float
    gpus_per_trial: float
    threads: int

    def describe(self) -> str:
        where = f"{self.gpus_per_trial:g} GPU + {self.cpus_per_trial:g} CPU" if self.gpus_per_trial else \
            f"{self.cpus_per_trial:g} CPU"
        return f"{self.concurrency} trial(s) at a time, each {where}, torch threads {self.threads}"


def place(num_trials: int, *, cpus: int, gpus: int, gpus_per_trial: float | None,
          max_concurrent: int | None, trials_per_gpu: int = 1) -> Placement:
    """Pack trials onto the machine by declared resources.

    `num_trials` is the whole sweep, not what is left, so a resumed sweep runs with the same threads per
    trial as the first attempt: under a wall-clock budget, threads are part of what a trial gets.
    `trials_per_gpu` is the preset's packing (definitions.TRIALS_PER_GPU), used when `gpus_per_trial` is None.
    """
    cpus = max(1, cpus)
    if gpus_per_trial is None:
        gpus_per_trial = 1.0 / trials_per_gpu if gpus >= 1 else 0.0
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    if gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial:g}")
    from cram_core.distributed import world_size_for

    world_size_for(gpus_per_trial)  # above 1: a whole number of data-parallel ranks
    if gpus_per_trial > 0:
        if gpus < gpus_per_trial:
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} but {gpus} GPU(s) visible; use --gpus-per-trial 0")
        slots = max(1, int(gpus // gpus_per_trial))
        concurrency = max(1, min(slots, num_trials, max_concurrent or slots))
        cpus_per_trial = max(1, cpus // slots)
        return Placement(concurrency, cpus_per_trial, gpus_per_trial, cpus_per_trial)
    concurrency = max(1, min(cpus, num_trials, max_concurrent or cpus))
    threads = max(1, cpus // concurrency)
    return Placement(concurrency, threads, 0.0, threads)


def local_resources() -> tuple[int, int]:
    import torch

    return os.cpu_count() or 1, torch.cuda.device_count()


# ---------------------------------------------------------------- the driver's Tune callback


def _callback_base() -> type:
    from ray import tune

    return tune.Callback


class _Driver:
    """Turns Tune events into store rows and Optuna trials; mixed into `tune.Callback` at run time so that
    importing this module does not import Ray."""

    def __init__(self, *, ledger: Ledger, mirror: OptunaMirror, resolved: ResolvedSweep, sweep_id: int,
                 grid_rows: list[tuple[int, Any]], git: tuple[str | None, bool | None], progress: LiveProgress,
                 placement: Placement):
        self.ledger, self.mirror, self.resolved, self.sweep_id = ledger, mirror, resolved, sweep_id
        self.grid_rows, self.git, self.progress, self.placement = grid_rows, git, progress, placement
        self.active: dict[str, dict[str, Any]] = {}
        "Tune trial id -> {row, optuna, variant, seed, hash, summarised}"
        self.search = resolved.sweep.is_search
        self.last_heartbeat = time.monotonic()
        self.fault_dir: str | None = None
        "where trial workers leave their Python stacks when a signal kills them (`_fit` sets it)"
        self.deaths: dict[str, list[dict[str, Any]]] = {}
        "Tune trial id -> what is known of each dead worker of its attempts: kept in the trial's final summary"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.active:  # the same Tune trial again: a restore we did not ask for
            self.on_trial_recover(iteration, trials, trial)
        budget = (self.resolved.base.budget.kind, self.resolved.base.budget.amount)
        if self.search:
            overrides = trial.config["overrides"]
            cfg = with_seed(apply_overrides(self.resolved.base, overrides), self.resolved.seeds[0])
            variant = BASELINE if _is_baseline(self.resolved.base, overrides) else \
                search_label(self.resolved.sweep, overrides)
            row_id = self.ledger.add_search_trial(self.sweep_id, variant, cfg)
            seed, h = cfg.train.seed, cfg.hash()
            optuna_id = self.mirror.trial_id(trial.config["_optuna_number"])
            self.mirror.set_attrs(optuna_id, trial_attrs(variant=variant, seed=seed, config_hash=h))
            number = trial.config["_optuna_number"]
            shown = variant
        else:
            row_id, planned = self.grid_rows[trial.config["index"]]
            variant, seed, h = planned.variant, planned.seed, planned.config_hash
            budget = (planned.config.budget.kind, planned.config.budget.amount)  # --budgets: its own
            optuna_id, number = self.mirror.start(variant, trial_attrs(variant=variant, seed=seed, config_hash=h))
            shown = variant  # the live view's name: with its budget under --budgets
            if planned.budget is not None:  # several budgets: what tells the trials of one (variant, seed) apart
                self.mirror.set_attrs(optuna_id, {"budget": planned.budget.label})
                shown = f"{variant} @ {planned.budget.text}"
        self.ledger.start(row_id, optuna_number=number, git=self.git, budget=budget)
        self.active[trial.trial_id] = {"row": row_id, "optuna": optuna_id, "variant": variant, "seed": seed,
                                       "hash": h, "summarised": False, "budget_text": self._budget_text(row_id),
                                       "shown": shown}
        self.progress.trial_started(trial.trial_id, variant=shown, seed=seed)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        t = self.active.get(trial.trial_id)
        if t is None:
            return
        if result.get("kind") == "metrics":
            self.ledger.add_metrics(t["row"], result["records"])
            self.mirror.report(t["optuna"], result["records"])
            self.progress.trial_metrics(trial.trial_id, result["records"])
        elif result.get("kind") == "summary":
            self._finish(trial.trial_id, result["summary"])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # reached only when the worker itself died (e.g. killed for memory): trial_main catches the rest
        if trial.trial_id not in self.active:  # it died before it started: give it its rows first
            self.on_trial_start(iteration, trials, trial)
        reason, note = self._death(trial)
        self._finish(trial.trial_id, {"status": "failed", "reason": f"worker error: {reason}; {note}"})

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Its worker or node died and Tune (FailureConfig) runs it again from the start: the attempt's points
        go; a grid trial's Optuna twin ends FAIL with the reason and the retry gets a new one (a search
        trial keeps its Optuna trial, which OptunaSearch owns)."""
        t = self.active.pop(trial.trial_id, None)
        if t is None or t["summarised"]:
            return
        self.ledger.restart(t["row"])
        reason, note = self._death(trial)
        if not self.search:
            self.mirror.set_attrs(t["optuna"], {"status": "failed", "status_reason": f"retried: {reason}; {note}"})
            self.mirror.finish(t["optuna"], None)
        self.progress.running.pop(trial.trial_id, None)  # not finished: it is queued again
        self.progress.console.print(f"[yellow]{escape(t['variant'])} (seed {t['seed']}): worker died, retrying: "
                                    f"{escape(note)}[/]", soft_wrap=True)

    def _death(self, trial: Any) -> tuple[str, str]:
        """(Tune's error line, one line on how the worker died) for a trial whose worker died; the full fault
        text, if its worker left one, is kept for the trial's summary (`worker_deaths`)."""
        error = trial.get_error()
        reason = one_line(str(error).strip().splitlines()[-1]) if error else "the trial's worker died"
        path = fault_path(self.fault_dir, trial.trial_id) if self.fault_dir else None
        fault = read_fault(path) if path else None
        if fault:
            note = fault_digest(fault)
        elif _raised_in_trial(trial):
            note = "an exception in the trial function, not a dead process"
        else:
            note = "no fault file, so no fatal signal Python saw: likely a SIGKILL (the OOM killer?) or a lost node"
        self.deaths.setdefault(trial.trial_id, []).append({"error": reason, "note": note, "fault": fault})
        return reason, note

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t = self.active.get(trial.trial_id)
        if t is not None and not t["summarised"]:
            self._finish(trial.trial_id, {"status": "failed", "reason": "trial ended without a summary"})

    def _finish(self, tune_id: str, summary: dict[str, Any]) -> None:
        t = self.active[tune_id]
        if t["summarised"]:
            return
        t["summarised"] = True
        if tune_id in self.deaths:  # the stacks its dead workers left, in the store with the trial
            summary = {**summary, "worker_deaths": self.deaths[tune_id]}
        if summary.get("budget"):  # the budget as the user gave it, and a DURATION@GPU budget's conversion
            summary = {**summary, "budget": {**summary["budget"], "text": t["budget_text"],
                                             **_conversion(t["budget_text"])}}
        self.ledger.finish(t["row"], summary)
        status = summary.get("status") if summary.get("status") in ("completed", "diverged") else "failed"
        value = objective(summary) if status == "completed" else None
        attrs = trial_attrs(variant=t["variant"], seed=t["seed"], config_hash=t["hash"], summary=summary,
                            gpus=self.placement.gpus_per_trial)
        self.mirror.set_attrs(t["optuna"], attrs)
        self.mirror.close_curve(t["optuna"], summary)
        if not self.search:  # OptunaSearch tells its own trials, from the same summary report
            self.mirror.finish(t["optuna"], value)
        self.progress.trial_finished(tune_id, status=status, value=value, reason=summary.get("reason"),
                                     variant=t["shown"], seed=t["seed"],
                                     note=_downstream_note(summary))

    def _budget_text(self, row_id: int) -> str:
        planned = next((p for r, p in self.grid_rows if r == row_id), None)  # None in a search sweep
        return planned.budget.label if planned is not None and planned.budget else self.resolved.budget_text

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self.last_heartbeat >= HEARTBEAT_S:
            self.ledger.heartbeat(self.sweep_id)
            self.last_heartbeat = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into its own experiment state for Tuner.restore, which we never use (the
        # store is how a sweep resumes); the live connections in here cannot be pickled, and need not be
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def unfinished(self) -> list[dict[str, Any]]:
        return [t for t in self.active.values() if not t["summarised"]]


def _raised_in_trial(trial: Any) -> bool:
    """Whether the trial's error is an exception its function raised (Ray wraps those in a RayTaskError), where
    a dead worker's is an actor's death (and a lost node's may have none stored)."""
    from ray.exceptions import RayTaskError

    return isinstance(trial.get_pickled_error(), RayTaskError)


def _conversion(label: str) -> dict[str, Any]:
    c = budget_conversion(label)
    return {"conversion": c} if c else {}


def _downstream_note(summary: dict[str, Any]) -> str | None:
    """What the live line adds for a completed trial: its downstream scores, or why there are none."""
    if "evals" not in summary:
        return None
    scores = downstream_scores(summary["evals"])
    if not scores:
        return summary.get("reason") or "no downstream scores"
    text = ", ".join(f"{task} {value:.3f}" for task, value in scores.items())
    return text + (f" (avg {sum(scores.values()) / len(scores):.3f})" if len(scores) > 1 else "")


def _is_baseline(base: RunConfig, overrides: dict[str, Any]) -> bool:
    return apply_overrides(base, overrides).hash() == base.hash()


def _baseline_point(resolved: ResolvedSweep) -> dict[str, Any]:
    """The baseline's values of the searched keys (parameter names are the override keys)."""
    import optuna

    keys = search_overrides(resolved.sweep, optuna.create_study().ask()).keys()
    d = resolved.base.to_dict()
    return {k: d[k.split(".")[0]][k.split(".")[1]] for k in keys}


def _optuna_search_class() -> type:
    from ray.tune.search.optuna import OptunaSearch

    class TellOnlyOptunaSearch(OptunaSearch):
        """OptunaSearch without its per-report intermediate values: our reports are batches of metric records
        (no objective), and the mirror records intermediate values keyed by tokens instead of iterations."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            return None

    return TellOnlyOptunaSearch


def _define_by_run(trial: Any, *, sweep: Any) -> dict[str, Any]:
    return {"overrides": search_overrides(sweep, trial), "_optuna_number": trial.number}


# ---------------------------------------------------------------- Ray


def _ray_env(local: bool) -> None:
    # before Ray is imported: these are read at import / init time
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment tables on our console
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the store is our log
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if local:
        # On Linux a local Ray takes the machine's network address as its node address, and its servers
        # (GCS, raylet, object manager, workers, agents) listen on every interface: anyone who can reach
        # the machine could run code on it. In "no cluster" mode (Ray's own mode on macOS/Windows) the node
        # address is loopback and every server binds there. Auth is left to Ray: with RAY_AUTH_MODE unset
        # it turns token auth on for a new local cluster; a user's RAY_AUTH_MODE is respected.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


_watchdog: Any = None
"the sweeps.raywatch process of the local Ray this process started"


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """A ConfigError unless something listens at a HOST:PORT (or ray://HOST:PORT) Ray address: ray.init
    would otherwise retry a wrong address for minutes. "auto" (the cluster this machine runs) is left to Ray."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or auto "
                          "(the head node's address, e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                          "`ray start --head`, or leave out --address to run Ray on this machine") from None


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to `address` or start a local Ray on loopback; returns whether we started (and must stop) it.

    The log level is WARNING so that Ray's own warnings (about authentication, for one) reach the user. A
    local Ray gets a watchdog (sweeps.raywatch) that takes it down if this process dies without stopping it.
    """
    global _watchdog
    _ray_env(local=address is None)
    import ray

    if ray.is_initialized():
        return False
    # Tune's result files are off on purpose (the store is our log): its warning that it cannot read them back
    # is noise, and only that logger is quietened
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if address:  # the cluster's own settings (and its auth) apply
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return True
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:  # Ray was imported before _ray_env could set the variable
        ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=RAY_TEMP_DIR, log_to_driver=False,
             logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    from sweeps import raywatch

    _watchdog = raywatch.start(RAY_TEMP_DIR)
    host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0].strip("[]")
    if not ipaddress.ip_address(host).is_loopback:
        stop_ray()
        raise RuntimeError(f"the local Ray came up on {host}, not on loopback; refusing to run trials on it")
    return True


def stop_ray() -> None:
    """Shut down (or disconnect from) Ray, and end the local Ray's watchdog."""
    global _watchdog
    import ray

    from sweeps import raywatch

    ray.shutdown()
    raywatch.stop(_watchdog)
    _watchdog = None


def cluster_resources() -> tuple[int, int]:
    import ray

    res = ray.cluster_resources()
    return int(res.get("CPU", 1)), int(res.get("GPU", 0))


# ---------------------------------------------------------------- running a sweep


@dataclass
class RunResult:
    name: str
    store_url: str
    ran: int
    skipped: int
    counts: dict[str, int]
    best: Best | None
    "the best mean over seeds with its CI (sweeps.ledger.Progress.best)"
    wall_s: float
    complete: bool
    "False when the run was stopped (Ctrl-C) with trials left: rerunning the command resumes"
    reused: int = 0
    "trials linked to a completed (config hash, seed) of another sweep instead of trained"
    gpu_busy: GpuBusy | None = None
    "this run's GPU busy (stored per sweep); None when no trial ran or NVML is unavailable"
    gpu_busy_off: str | None = None
    "why there is no GPU-busy figure, when NVML is unavailable"
    warm: WarmReport | None = None
    "the compile warm-up's graphs and wall time; None when there was none (CPU trials, --no-warm-compile)"
    prepare_s: float | None = None
    "wall time of data preparation and Ray start (they overlap), which the warm-up runs beside"


def run_sweep(resolved: ResolvedSweep, opts: RunOptions, *, console: Console | None = None) -> RunResult:
    console = console or Console()
    t_start = time.monotonic()
    sweep = resolved.sweep
    _, prepare = load_backend(opts.backend)
    ledger = Ledger(opts.store_url)
    started_ray, stopped, sweep_id, reused, warmer, prepare_s = False, 0, None, 0, None, None
    monitor = GpuMonitor().start()  # before Ray starts and data is prepared: those seconds count too
    try:
        ledger.check_compatible(resolved, opts.downstream)
        ledger.claim(resolved.name)  # atomic: of two drivers racing here, one gets SweepBusy
        if opts.address:
            started_ray = start_ray(opts.address)
            cpus, gpus = cluster_resources()
        else:
            cpus, gpus = local_resources()
        placement = place(resolved.num_trials, cpus=cpus, gpus=gpus, gpus_per_trial=opts.gpus_per_trial,
                          max_concurrent=opts.max_concurrent, trials_per_gpu=trials_per_gpu(resolved.preset))
        sweep_id = ledger.upsert_sweep(resolved, {
            "placement": dataclasses.asdict(placement), "backend": opts.backend,
            "downstream": opts.downstream.to_dict() if opts.downstream else None,
            "commands": [opts.command] if opts.command else []})
        ledger.heartbeat(sweep_id)
        space = None if sweep.is_search else grid_space(resolved)
        mirror = OptunaMirror(opts.store_url, resolved.name, space=space, attrs={
            "axis": sweep.axis, "preset": resolved.preset,
            "budget": resolved.budgets_text,
            "kind": "search" if sweep.is_search else "grid",
            "downstream": describe_downstream(opts.downstream.to_dict() if opts.downstream else None)})
        settled, orphans = mirror.recover(_finished_twins(ledger, sweep_id, placement))
        interrupted = ledger.recover_interrupted(sweep_id, search=sweep.is_search)
        if orphans or interrupted or settled:
            console.print(f"resuming: {interrupted} interrupted trial(s) replanned, {orphans} orphaned Optuna "
                          f"trial(s) marked FAIL, {settled} finished from the store")

        if sweep.is_search:
            finished, _ = ledger.search_state(sweep_id)
            todo_count, skipped, grid_rows = max(0, resolved.num_trials - finished), finished, []
            data_configs = {resolved.base.data: []} if todo_count else {}
        else:
            grid_rows, skipped = ledger.plan(sweep_id, resolved.trials(), retry_failed=opts.retry_failed)
            if not opts.rerun:
                grid_rows, reused, stale = ledger.reuse_finished(sweep_id, grid_rows, _reuse_rules(opts, placement))
                _mirror_reused(ledger, mirror, sweep_id, placement)
                if stale:
                    console.print("not reused (stale): " + ", ".join(f"{n} {why}" for why, n in stale.items()))
            todo_count = len(grid_rows)
            data_configs = {}
            for row_id, planned in grid_rows:
                data_configs.setdefault(planned.config.data, []).append(row_id)

        console.print(
            f"[bold]{resolved.name}[/]: {resolved.num_trials} trials ({skipped} already done, "
            + (f"{reused} reused from other sweeps, " if reused else "") + f"{todo_count} to run) "
            f"| preset {resolved.preset}, budget {resolved.budgets_text} | {placement.describe()}"
        )
        if opts.downstream:
            console.print(f"downstream after each completed trial (outside the budget): "
                          f"{describe_downstream(opts.downstream.to_dict())}")
        if todo_count:
            warmer = _start_warmer(_warm_configs(resolved, grid_rows, placement, opts), cpus, console)
            t_prepare = time.monotonic()
            # the local Ray starts while the data is prepared (each takes 10-50 s): the GPU waits for the slower
            # of the two, not for both one after the other. The preparation runs in child processes, not in a
            # thread of this one: the tokenizer trainer's native threads beside Ray's start crashed this
            # process (a segfault in train_from_iterator, 1 of 3 first runs on 2 cores).
            with ThreadPoolExecutor(1, thread_name_prefix="prepare-data") as pool:
                children = pool.submit(_prepare_in_children, opts.backend, list(data_configs), console)
                if not started_ray and not opts.address:
                    started_ray = start_ray(None, num_cpus=cpus)
                ready = children.result()
            grid_rows = _prepare_data(prepare, data_configs, grid_rows, ledger, console, ready=ready)
            prepare_s = time.monotonic() - t_prepare
            todo_count = len(grid_rows) if not sweep.is_search else todo_count
        if todo_count:
            git = _git_state()
            budget = resolved.base.budget
            estimate = budget.amount + OVERHEAD_GUESS_S if budget.kind == "seconds" else None
            progress = LiveProgress(resolved.name, total=resolved.num_trials, already_done=skipped + reused,
                                    concurrency=placement.concurrency, console=console, estimate_trial_s=estimate)
            driver = type("DriverCallback", (_Driver, _callback_base()), {})(
                ledger=ledger, mirror=mirror, resolved=resolved, sweep_id=sweep_id, grid_rows=grid_rows, git=git,
                progress=progress, placement=placement)
            with progress:
                _fit(resolved, opts, placement, grid_rows, todo_count, mirror, ledger, sweep_id, driver)
            for t in driver.unfinished():  # Ctrl-C: Tune stopped the running trials
                if mirror.is_running(t["optuna"]):
                    mirror.cancel(t["optuna"])
            stopped = ledger.cancel_unfinished(sweep_id, "sweep stopped before this trial finished; rerun to resume")
        final = ledger.progress(resolved.name)
        assert final is not None
        if sweep.is_search:
            complete = ledger.search_state(sweep_id)[0] >= resolved.num_trials
        else:
            complete = final.counts["planned"] == 0 and final.counts["running"] == 0 and not stopped
        busy = monitor.stop() if todo_count else None
        if busy is not None:
            ledger.record_gpu_busy(sweep_id, busy)
        return RunResult(resolved.name, opts.store_url, todo_count, skipped, final.counts, final.best,
                         time.monotonic() - t_start, complete, reused, busy, monitor.off_reason,
                         warmer.stop() if warmer else None, prepare_s)
    finally:
        monitor.stop()
        if warmer is not None:  # no compiler outlives the driver
            warmer.stop()
        if sweep_id is not None:
            ledger.heartbeat(sweep_id, clear=True)
        if started_ray:
            stop_ray()
        ledger.close()


def _finished_twins(ledger: Ledger, sweep_id: int, placement: Placement
                    ) -> dict[int, tuple[float | None, dict[str, Any]]]:
    out = {}
    for number, row in ledger.finished_optuna_trials(sweep_id).items():
        summary = row.summary or {"status": row.status, "reason": row.reason}
        value = objective(summary) if row.status == "completed" else None
        out[number] = (value, trial_attrs(variant=row.variant, seed=row.seed, config_hash=row.config_hash,
                                          summary=summary, gpus=placement.gpus_per_trial))
    return out


def _reuse_rules(opts: RunOptions, placement: Placement) -> ReuseRules:
    downstream = opts.downstream.identity() if opts.downstream else None
    names: dict[int, str | None] = {}

    def hardware(planned: Any) -> str | None:
        # on a cluster the trial may land on any node: only this machine's hardware is known here
        threads = planned.config.impl.threads or placement.threads
        if threads not in names:
            names[threads] = _trial_hardware(placement, threads)
        return names[threads]

    return ReuseRules(backend=opts.backend, downstream=downstream, hardware=hardware)


def _trial_hardware(placement: Placement, threads: int) -> str | None:
    """The hardware string a trial placed here records (cram_core.hardware.device_name in the worker)."""
    import torch

    from cram_core import hardware

    if placement.gpus_per_trial:
        return hardware.device_name(torch.device("cuda")) if torch.cuda.is_available() else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return hardware.device_name(torch.device("cpu"))
    finally:
        torch.set_num_threads(before)


def _mirror_reused(ledger: Ledger, mirror: OptunaMirror, sweep_id: int, placement: Placement) -> None:
    """Give every linked trial its Optuna twin in this sweep's study, finished with the stored result (also
    those a driver killed right after linking left without one)."""
    for row, records in ledger.reused_without_twin(sweep_id):
        summary = row.summary or {}
        attrs = trial_attrs(variant=row.variant, seed=row.seed, config_hash=row.config_hash, summary=summary,
                            gpus=placement.gpus_per_trial)
        attrs["reused_from"] = f"{summary['reused_from']['sweep']} trial {summary['reused_from']['trial_id']}"
        optuna_id, number = mirror.start(row.variant, attrs)
        mirror.report(optuna_id, records)
        mirror.close_curve(optuna_id, summary)
        mirror.finish(optuna_id, objective(summary))
        ledger.set_optuna_number(row.id, number)


def _announce_data(console: Console, i: int, n: int, data_cfg: DataConfig) -> None:
    console.print(f"preparing data {i}/{n} (source {data_cfg.source}, {data_cfg.tokenizer} {data_cfg.vocab_size})")


def _prepare_child(backend: str, data_cfg: DataConfig, progress: bool) -> None:
    """A child process's body: prepare one data config into the cache. Any error exits 1 quietly: the driver
    then prepares it itself, where the error surfaces with its own type and message."""
    try:
        load_backend(backend)[1](data_cfg, progress=progress)
    except BaseException:
        os._exit(1)


def _prepare_in_children(backend: str, data_cfgs: list[DataConfig], console: Console) -> set[DataConfig]:
    """Prepare each data config in a fresh (spawned) process, one after the other; the configs that ended
    ready in the cache. One that failed or crashed is left to `_prepare_data`, which redoes it here."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready: set[DataConfig] = set()
    for i, data_cfg in enumerate(data_cfgs, 1):
        t0 = time.monotonic()
        _announce_data(console, i, len(data_cfgs), data_cfg)
        child = ctx.Process(target=_prepare_child, args=(backend, data_cfg, console.is_terminal),
                            name="prepare-data", daemon=True)
        child.start()
        child.join()
        if child.exitcode == 0:
            ready.add(data_cfg)
            console.print(f"  ready in {format_seconds(time.monotonic() - t0)}")
        elif child.exitcode is not None and child.exitcode < 0:
            console.print(f"[yellow]  the preparing process died (signal {-child.exitcode}); preparing it again "
                          f"in this one[/]")
    return ready


def _prepare_data(prepare: Callable[..., Any], data_configs: dict[DataConfig, list[int]],
                  grid_rows: list[tuple[int, Any]], ledger: Ledger, console: Console,
                  ready: set[DataConfig] = frozenset()) -> list[tuple[int, Any]]:
    """Tokenize each distinct data config once, here, so trials find it cached instead of all building it
    at the same time. A config that fails fails its trials (with the reason) and the rest go on. Those in
    `ready` were prepared by `_prepare_in_children`: here they are a quiet cache hit."""
    failed_rows: set[int] = set()
    for i, (data_cfg, row_ids) in enumerate(data_configs.items(), 1):
        t0 = time.monotonic()
        announce = data_cfg not in ready
        if announce:
            _announce_data(console, i, len(data_configs), data_cfg)
        try:
            prepare(data_cfg, progress=console.is_terminal and announce)
        except Exception as e:
            reason = f"data preparation failed: {type(e).__name__}: {one_line(str(e))}"
            console.print(f"[red]{reason}[/]")
            if not row_ids:  # a search sweep: every trial needs the base data
                raise
            ledger.fail_unprepared(row_ids, reason)
            failed_rows.update(row_ids)
            continue
        if announce:
            console.print(f"  ready in {format_seconds(time.monotonic() - t0)}")
    return [(r, p) for r, p in grid_rows if r not in failed_rows]


WARM_PARALLEL_MAX = 4
"compile warm-up processes at a time, at most; fewer on small machines (a quarter of the cores)"


def _warm_configs(resolved: ResolvedSweep, grid_rows: list[tuple[int, Any]], placement: Placement,
                  opts: RunOptions) -> list[RunConfig]:
    """The configs whose graphs to compile ahead, in trial order: the cram_core trainer's trials on this
    machine's GPUs with compile on. None on CPU (compile is off there unless asked for), with another
    backend, or on a cluster (other machines' trials read their own caches). A search sweep's samples are
    not known yet: its baseline stands for them (its spaces vary LR and warm-up, which leave the graph)."""
    if not opts.warm_compile or not _trials_on_local_cuda(placement, opts):
        return []
    import torch

    from cram_core.hardware import should_compile

    cfgs = [resolved.base] if resolved.sweep.is_search else [planned.config for _, planned in grid_rows]
    # torch threads as the trial will have them (sweeps.trial): Inductor keys CPU-side kernels by thread count
    return [c if c.impl.threads else dataclasses.replace(c, impl=dataclasses.replace(c.impl, threads=placement.threads))
            for c in cfgs if c.impl.device != "cpu" and should_compile(c.impl, torch.device("cuda"))]


def _trials_on_local_cuda(placement: Placement, opts: RunOptions) -> bool:
    return opts.backend == "cram_core" and not opts.address and placement.gpus_per_trial > 0


def _start_warmer(cfgs: list[RunConfig], cpus: int, console: Console) -> Warmer | None:
    if not cfgs:
        return None
    from cram_core.warmup import Warmer, pin_cache_dir

    parallel = max(1, min(WARM_PARALLEL_MAX, cpus // 4))
    try:
        pin_cache_dir()  # before Ray starts: its workers inherit the driver's environment
        # half the cores for the warm-ups' compile workers, the rest for data preparation and Ray
        warmer = Warmer(cfgs, parallel=parallel, compile_cores=max(1, cpus // 2),
                        log=lambda line: console.print(f"[yellow]{line}[/]"))
    except Exception as e:  # it only saves compile time: the sweep runs without it
        console.print(f"[yellow]no compile warm-up: {type(e).__name__}: {one_line(str(e))}[/]")
        return None
    console.print(f"warming the compile cache while the data is prepared: {len(warmer.graphs)} distinct "
                  f"graph(s), {parallel} at a time (off with --no-warm-compile)")
    return warmer.start()


def _git_state() -> tuple[str | None, bool | None]:
    from cram_core import hardware

    return hardware.git_state()


def _fit(resolved: ResolvedSweep, opts: RunOptions, placement: Placement, grid_rows: list[tuple[int, Any]],
         todo_count: int, mirror: OptunaMirror, ledger: Ledger, sweep_id: int, driver: Any) -> None:
    import functools

    from ray import tune

    # cwd: trials resolve relative paths the user typed (data.source=jsonl:corpus/*.xz) as the driver did
    static: dict[str, Any] = {"backend": opts.backend, "threads": placement.threads, "cwd": os.getcwd(),
                              "gpus_per_trial": placement.gpus_per_trial,
                              "downstream": opts.downstream.to_dict() if opts.downstream else None}
    if opts.keep_models:
        static["keep_models"] = os.path.join(os.path.abspath(opts.keep_models), resolved.name)
    resources = {"cpu": placement.cpus_per_trial, "gpu": placement.gpus_per_trial}
    if resolved.sweep.is_search:
        # a diverged or crashed trial is told as NaN on purpose (Optuna records it FAIL); its warning is noise
        warnings.filterwarnings("ignore", message="The value nan is not acceptable")
        static.update(base=resolved.base.to_dict(), seed=resolved.seeds[0])
        _, baseline_done = ledger.search_state(sweep_id)
        points = [] if baseline_done or mirror.has_waiting() else [_baseline_point(resolved)]
        searcher = _optuna_search_class()(
            space=functools.partial(_define_by_run, sweep=resolved.sweep), metric="objective", mode="min",
            study_name=resolved.name, storage=mirror.storage, points_to_evaluate=points or None)
        tune_config = tune.TuneConfig(search_alg=searcher, num_samples=todo_count,
                                      max_concurrent_trials=placement.concurrency, reuse_actors=True)
        param_space = None
    else:
        static["configs"] = [planned.config.to_dict() for _, planned in grid_rows]
        static["labels"] = [f"{planned.variant}-seed{planned.seed}" for _, planned in grid_rows]
        tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=placement.concurrency, reuse_actors=True)
        param_space = {"index": tune.grid_search(list(range(len(grid_rows))))}
    # Tune's run folder must be storage every node shares once trials run on several machines (Ray >= 2.7);
    # a local folder is shared only on one machine. Its experiment state is not used for resume (the store
    # is), so a run's folder is removed afterwards: a unique name keeps two runs on one path apart.
    storage = opts.storage_path or tempfile.mkdtemp(prefix="cram-tune-")
    run_name = f"{resolved.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    # a worker killed by a signal leaves its Python stacks here (workers on this machine; on a cluster's other
    # nodes the file stays on that node); the driver moves each one into the trial's summary in the store
    driver.fault_dir = static["fault_dir"] = os.path.join(RAY_TEMP_DIR, "faults", run_name)
    trainable = tune.with_resources(tune.with_parameters(trial_main, static=static), resources)
    try:
        tuner = tune.Tuner(
            trainable, param_space=param_space, tune_config=tune_config,
            run_config=tune.RunConfig(name=run_name, storage_path=storage, verbose=0, callbacks=[driver],
                                      log_to_file=False,
                                      failure_config=tune.FailureConfig(max_failures=opts.max_failures)),
        )
        tuner.fit()
    finally:
        _remove_run_folder(storage, run_name, whole=opts.storage_path is None)
        shutil.rmtree(driver.fault_dir, ignore_errors=True)


def _remove_run_folder(storage: str, run_name: str, *, whole: bool) -> None:
    if whole:
        shutil.rmtree(storage, ignore_errors=True)
        return
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage) if "://" in storage else \
            (pyarrow.fs.LocalFileSystem(), os.path.abspath(storage))
        fs.delete_dir(f"{root.rstrip('/')}/{run_name}")
    except (OSError, FileNotFoundError) as e:  # the results are in the store; say what was left behind
        warnings.warn(f"Tune's run folder {storage}/{run_name} was not removed: {e}")


def estimate_wall_s(resolved: ResolvedSweep, placement: Placement, remaining: int | None = None) -> float | None:
    """Rough wall time for `show` and `--dry-run` (seconds budgets only)."""
    if resolved.base.budget.kind != "seconds":
        return None
    n = resolved.num_trials if remaining is None else remaining
    amounts = [p.to_dict()["amount"] for p in resolved.budgets] or [resolved.base.budget.amount]
    return math.ceil(n / placement.concurrency) * (sum(amounts) / len(amounts) + OVERHEAD_GUESS_S)
