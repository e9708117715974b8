"""The fine-tuning loop of the "GLUE sane" protocol: train a fresh classifier per (task, seed), score dev.

Speed without changing the protocol (batch 16, AdamW, cosine with warm-up, 5 epochs, score after the last):
- batches are bucketed by length (:func:`length_batches`) and padded only to their longest sequence;
- on CUDA: bf16 autocast, fused AdamW, and each full-size batch shape captured once as a CUDA graph of the whole
  step (forward, backward, optimizer) and replayed: a 16-row step of a BERT-base-sized encoder is hundreds of
  small kernels, whose launches, not their arithmetic, set the pace;
- no host sync per step (pinned batches copied asynchronously, the loss summed on the device, the LR a device
  tensor), and evaluation in large length-sorted batches;
- seeds side by side: :func:`evaluate_run` can run several (task, seed) jobs at once in worker processes that
  share the device, since one batch-16 run leaves most of a large GPU idle.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cram_core.cli import unknown_name
from cram_core.downstream.classifier import PretrainedRun, SequenceClassifier, build_classifier, load_run
from cram_core.downstream.encoding import PairEncoder, collate, length_batches
from cram_core.downstream.errors import DownstreamError
from cram_core.downstream.metrics import get_metric
from cram_core.downstream.tasks import Task, list_tasks, load_task, resolve_data_root

EVAL_BATCH_SIZE = 256
CUDA_PAD_MULTIPLE = 16
"pad lengths on CUDA are multiples of this: at most 8 graph shapes up to 128 tokens"
CUDA_DEFAULT_PARALLEL = 4
"fine-tuning jobs run side by side on one GPU by default (see :func:`evaluate_run`)"



def lr_factor(step: int, total_steps: int, warmup: float = 0.1) -> float:
    """Multiplier of the peak LR for the update with 0-based index ``step``: linear warm-up over the first
    ``warmup`` fraction of updates, then cosine decay towards 0 at ``total_steps``."""
    warm = int(round(warmup * total_steps))
    if step < warm:
        return (step + 1) / warm  # (step + 1): the first update is not wasted at LR 0
    if total_steps <= warm:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / (total_steps - warm)))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DownstreamError("device cuda requested but CUDA is not available; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise DownstreamError(f"unknown device {device!r}; valid: auto, cpu, cuda")
    return torch.device(device)


def _autocast(device: torch.device, *, cache: bool = True):
    # bf16 on GPUs as in pretraining; CPU bf16 autocast is slower than fp32 on most CPUs. A CUDA graph capture
    # needs the autocast cache off (cached casts would be freed memory at replay).
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return torch.autocast("cpu", enabled=False)


def _pad_multiple(device: torch.device) -> int:
    return CUDA_PAD_MULTIPLE if device.type == "cuda" else 1


@torch.no_grad()
def predict(model: SequenceClassifier, sequences: Sequence[Sequence[int]], *, regression: bool,
            batch_size: int = EVAL_BATCH_SIZE, pad_to: int | None = None, limit: int | None = None) -> np.ndarray:
    """Class ids (or regression outputs) in input order. Batches are formed by length to waste little
    compute on padding, which is safe because the encoder masks pad tokens; one device-to-host copy at the end."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    values = []
    for start in range(0, len(order), batch_size):
        ids, mask = collate([sequences[i] for i in order[start : start + batch_size]], pad_to,
                            multiple=_pad_multiple(device), limit=limit)
        with _autocast(device):
            logits = model(ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)).float()
        values.append(logits[:, 0] if regression else logits.argmax(dim=-1))
    out = np.empty(len(sequences), dtype=np.float64 if regression else np.int64)
    out[order] = torch.cat(values).cpu().numpy()
    return out


def finetune(run: PretrainedRun, task: Task, *, seed: int = 0, epochs: int = 5, batch_size: int = 16,
             lr: float = 4e-5, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
             weight_decay: float = 0.0, warmup: float = 0.1, dropout: float = 0.1, device: str = "auto",
             encoded: tuple[list[list[int]], list[list[int]]] | None = None, cuda_graphs: bool = True,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune a fresh copy of the pretrained encoder on ``task.train``; score ``task.dev`` after the last epoch.

    ``encoded`` = (train ids, dev ids) from :class:`PairEncoder` lets several seeds share one tokenisation.
    ``cuda_graphs`` = False runs every CUDA step eagerly (same arithmetic; for checking the graphs).
    """
    if epochs < 1 or batch_size < 1:
        raise DownstreamError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if not 0.0 <= warmup <= 1.0:
        raise DownstreamError(f"warmup must be in [0, 1], got {warmup}")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    if encoded is None:
        encoder = PairEncoder(run.tokenizer_path, run.max_length)
        encoded = (encoder.encode(task.train.texts), encoder.encode(task.dev.texts))
    train_ids, dev_ids = encoded

    # forked so that seeding dropout here leaves the caller's RNG streams untouched
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model = build_classifier(run, task.num_labels, dropout=dropout, seed=seed).to(dev)
        stepper = _Stepper(model, task.regression, dev, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                           graphs=cuda_graphs and dev.type == "cuda", full_batch=batch_size)
        last_loss, train_seconds = _train(stepper, run, task, train_ids, seed=seed, epochs=epochs,
                                          batch_size=batch_size, lr=lr, warmup=warmup, log=log, t0=t0)
    predictions = predict(model, dev_ids, regression=task.regression, pad_to=run.pad_to, limit=run.max_length)
    value = get_metric(task.metric)(predictions, np.asarray(task.dev.labels))
    return {
        "task": task.name,
        "metric": task.metric,
        "value": value,
        "seed": seed,
        "train_loss": last_loss,
        "n_train": len(train_ids),
        "n_dev": len(dev_ids),
        "epochs": epochs,
        "max_length": run.max_length,
        "seconds": time.perf_counter() - t0,
        "train_examples_per_second": epochs * len(train_ids) / train_seconds,
        "weights": run.weights_path.name,
    }


class _Stepper:
    """Forward, backward and AdamW update of one batch, eagerly or, on CUDA, by replaying a CUDA graph captured
    once per full-size batch shape (rows, padded length). The short last batch of an epoch runs eagerly."""

    def __init__(self, model: SequenceClassifier, regression: bool, device: torch.device, *, lr: float,
                 betas: tuple[float, float], eps: float, weight_decay: float, graphs: bool, full_batch: int):
        self.model, self.regression, self.device = model, regression, device
        self.graphs_on, self.full_batch = graphs, full_batch
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = {}
        cuda = device.type == "cuda"
        # a device tensor LR (fused, capturable AdamW) is set without a host sync and read by the graphs
        self.lr = torch.tensor(lr, device=device) if cuda else lr
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, betas=betas, eps=eps,
                                           weight_decay=weight_decay, fused=cuda, capturable=cuda)
        if graphs:
            self._init_state()

    def _init_state(self) -> None:
        # graphs need the AdamW state and the grads to exist before capture: one update at LR 0 on zero grads
        # leaves the weights exactly as they are; the step count is then reset
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)
        self.lr.fill_(0.0)
        self.optimizer.step()
        for state in self.optimizer.state.values():
            state["step"].zero_()

    def set_lr(self, value: float) -> None:
        if isinstance(self.lr, torch.Tensor):
            self.lr.fill_(value)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = value

    def _loss(self, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model(ids, mask).float()
        return F.mse_loss(logits[:, 0], y) if self.regression else F.cross_entropy(logits, y)

    def _eager(self, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # grads stay allocated when graphs read them; otherwise freed as usual
        self.optimizer.zero_grad(set_to_none=not self.graphs_on)
        with _autocast(self.device):
            loss = self._loss(ids, mask, y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _capture(self, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor):
        static = (ids.clone(), mask.clone(), y.clone())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph (cuBLAS workspaces, lazy inits); no update
                self.optimizer.zero_grad(set_to_none=False)
                with _autocast(self.device, cache=False):
                    self._loss(*static).backward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.optimizer.zero_grad(set_to_none=False)
            with _autocast(self.device, cache=False):
                loss = self._loss(*static)
            loss.backward()
            self.optimizer.step()
        return graph, static, loss.detach()

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss, left on the device."""
        if not self.graphs_on or ids.shape[0] != self.full_batch:
            return self._eager(ids, mask, y)
        key = tuple(ids.shape)
        if key not in self.graphs:
            self.graphs[key] = self._capture(ids, mask, y)
        graph, static, loss = self.graphs[key]
        for buffer, value in zip(static, (ids, mask, y)):
            buffer.copy_(value, non_blocking=True)
        graph.replay()
        return loss


def _epoch_batches(run: PretrainedRun, train_ids: list[list[int]], targets: torch.Tensor, batch_size: int,
                   generator: torch.Generator, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """One epoch's padded batches (ids, mask, targets), pinned on CUDA so that copies to the device are async."""
    batches = []
    for idx in length_batches([len(s) for s in train_ids], batch_size, generator):
        ids, mask = collate([train_ids[i] for i in idx], run.pad_to, multiple=_pad_multiple(device),
                            limit=run.max_length)
        batch = (ids, mask, targets[idx])
        batches.append(tuple(t.pin_memory() for t in batch) if device.type == "cuda" else batch)
    return batches


def _train(stepper: _Stepper, run: PretrainedRun, task: Task, train_ids: list[list[int]], *, seed: int,
           epochs: int, batch_size: int, lr: float, warmup: float, log: Callable[[str], None] | None,
           t0: float) -> tuple[float, float]:
    """Train; return the last epoch's mean train loss and the seconds spent training."""
    dev = stepper.device
    targets = torch.tensor(task.train.labels, dtype=torch.float32 if task.regression else torch.long)
    order_gen = torch.Generator().manual_seed(seed)
    n = len(train_ids)
    total_steps = epochs * math.ceil(n / batch_size)
    step, last_loss, t_train = 0, float("nan"), time.perf_counter()
    for epoch in range(epochs):
        stepper.model.train()
        loss_sum = torch.zeros((), device=dev)
        for batch in _epoch_batches(run, train_ids, targets, batch_size, order_gen, dev):
            ids, mask, y = (t.to(dev, non_blocking=True) for t in batch)
            stepper.set_lr(lr * lr_factor(step, total_steps, warmup))
            loss_sum += stepper(ids, mask, y) * ids.shape[0]
            step += 1
        last_loss = float(loss_sum) / n  # one host sync per epoch
        if log:
            log(f"{task.name} seed {seed} epoch {epoch + 1}/{epochs}: train loss {last_loss:.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    return last_loss, time.perf_counter() - t_train


def default_parallel(device: str, num_jobs: int) -> int:
    """How many (task, seed) jobs :func:`evaluate_run` runs at once by default: on CUDA up to
    ``CUDA_DEFAULT_PARALLEL``, since a batch-16 step leaves most of a large GPU idle; on CPU 1, since the cores
    are already shared by one job's threads."""
    return min(num_jobs, CUDA_DEFAULT_PARALLEL) if resolve_device(device).type == "cuda" else 1


def evaluate_run(run_dir: str | Path, tasks: Sequence[str], *, data_root: str | Path | None = None,
                 seeds: int | Iterable[int] = 1, epochs: int = 5, max_train: int | None = None,
                 max_dev: int | None = None, device: str = "auto", batch_size: int = 16, lr: float = 4e-5,
                 warmup: float = 0.1, weights: str = "auto", parallel: int | None = None,
                 log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Fine-tune ``run_dir`` on each task for each seed; one record per (task, seed), in task then seed order:
    ``task, metric, value, seed`` plus ``train_loss, n_train, n_dev, epochs, max_length, seconds,
    train_examples_per_second, weights``.

    ``seeds`` is a count (seeds 0..N-1) or explicit seeds. Everything is validated (run files, task names,
    task files) before any fine-tuning starts, so a typo fails in seconds, not after the first task.

    ``parallel`` > 1 fine-tunes that many jobs at once on the same device, each in a spawned worker process of
    one pool (CUDA context, kernels and the run's files are loaded once per worker, not per seed; each seed
    still captures its own CUDA graphs, of its own model). Every job runs the computation it runs alone (bit
    for bit on CPU at equal thread counts; CPU workers get cores / parallel threads each).
    Default (None): :func:`default_parallel`, i.e. at most 4 on CUDA and 1 on CPU; with 1 no process is started.
    The default stays modest because a packed sweep (``gpu-sweep``: 4 trials per GPU) already runs that many
    trials' fine-tuning side by side. ``log`` gets the progress lines of jobs run in this process; workers print
    theirs to stderr when ``log`` is given.
    """
    run = load_run(run_dir, weights=weights)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise DownstreamError("need at least one fine-tuning seed")
    names = list(dict.fromkeys(tasks))
    if not names:
        raise DownstreamError("no tasks given")
    root = resolve_data_root(data_root)
    available = list_tasks(root)
    unknown = [t for t in names if t not in available]
    if unknown:
        raise DownstreamError(f"{unknown_name('task', unknown[0], available)} (tasks in {root})")
    resolve_device(device)
    num_jobs = len(names) * len(seed_list)
    if parallel is None:
        parallel = default_parallel(device, num_jobs)
    if not isinstance(parallel, int) or parallel < 1:
        raise DownstreamError(f"parallel must be an integer >= 1, got {parallel!r}")
    loaded = [load_task(root / name, max_train=max_train, max_dev=max_dev) for name in names]

    encoder = PairEncoder(run.tokenizer_path, run.max_length)
    options = dict(epochs=epochs, batch_size=batch_size, lr=lr, warmup=warmup, device=device)
    jobs = []  # (task dir name, task, encoded, seed)
    for name, task in zip(names, loaded):
        encoded = (encoder.encode(task.train.texts), encoder.encode(task.dev.texts))
        jobs.extend((name, task, encoded, seed) for seed in seed_list)
    if min(parallel, num_jobs) == 1:
        records = [finetune(run, task, seed=seed, encoded=encoded, log=log, **options)
                   for _, task, encoded, seed in jobs]
    else:
        records = _finetune_in_workers(run_dir, weights, jobs, options, workers=min(parallel, num_jobs),
                                       verbose=log is not None)
    for (name, *_), record in zip(jobs, records):
        record["task"] = name  # the directory name is what the caller asked for
    return records


_WORKER_RUN: PretrainedRun | None = None
"the pretrained run of this worker process, loaded once by :func:`_init_worker`"


def _init_worker(run_dir: str | Path, weights: str, threads: int | None) -> None:
    global _WORKER_RUN
    if threads is not None:
        torch.set_num_threads(threads)
    _WORKER_RUN = load_run(run_dir, weights=weights)


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _worker_job(task: Task, encoded: tuple[list[list[int]], list[list[int]]], seed: int, options: dict[str, Any],
                verbose: bool) -> dict[str, Any]:
    assert _WORKER_RUN is not None, "_init_worker did not run"
    return finetune(_WORKER_RUN, task, seed=seed, encoded=encoded, log=_stderr_log if verbose else None,
                    **options)


def _finetune_in_workers(run_dir: str | Path, weights: str, jobs: list[tuple[str, Task, Any, int]],
                         options: dict[str, Any], *, workers: int, verbose: bool) -> list[dict[str, Any]]:
    # CPU: the cores are split between the workers
    cpu = resolve_device(options["device"]).type == "cpu"
    threads = max(1, len(os.sched_getaffinity(0)) // workers) if cpu else None
    return _run_pool(_worker_job, [(task, encoded, seed, options, verbose) for _, task, encoded, seed in jobs],
                     [f"{name} seed {seed}" for name, _, _, seed in jobs], workers=workers,
                     initializer=_init_worker, initargs=(str(run_dir), weights, threads))


POOL_POLL_S = 0.5
"seconds between looks for a dead worker while fine-tuning jobs run side by side"


def _run_pool(work: Callable[..., Any], calls: list[tuple[Any, ...]], labels: list[str], *, workers: int,
              initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()) -> list[Any]:
    """``[work(*args) for args in calls]``, computed by ``workers`` spawned processes. The first failure stops
    the pool (running calls are killed, queued ones dropped) and is raised as one DownstreamError line that
    names the call by its label."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer, initargs=initargs)
    try:
        futures = [pool.submit(work, *args) for args in calls]
        while wait(futures, timeout=POOL_POLL_S, return_when=FIRST_EXCEPTION)[1]:
            if any(f.done() and f.exception() is not None for f in futures):
                break
            # a worker that died (killed, out of memory, os._exit): on Python 3.11 the executor notices only
            # after every other worker has finished its call, so look at the processes here
            dead = [p.exitcode for p in list((pool._processes or {}).values()) if p.exitcode not in (None, 0)]
            if dead:
                raise DownstreamError(f"fine-tuning failed: BrokenProcessPool: a worker process died (exit code "
                                      f"{dead[0]}) while running one of: {', '.join(labels)}")
        for label, future in zip(labels, futures):
            if future.done() and future.exception() is not None:
                error = future.exception()
                message = " ".join(str(error).split())  # one line, whatever the worker's message was
                raise DownstreamError(f"fine-tuning {label} failed: {type(error).__name__}: {message}") from error
        results = [f.result() for f in futures]
    except BaseException:
        # shutdown() alone would let the running calls finish first: kill them (the executor has no public way
        # to end its workers before Python 3.14), then drop the queued ones
        for process in list(pool._processes.values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def summarize(results: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: metric, the median over seeds (the paper's reported figure), and the individual values."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        entry = out.setdefault(r["task"], {"metric": r["metric"], "values": [], "seeds": []})
        entry["values"].append(r["value"])
        entry["seeds"].append(r["seed"])
    for entry in out.values():
        entry["median"] = statistics.median(entry["values"])
    return out


