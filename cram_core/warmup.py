"""Fill torch's on-disk compile caches ahead of training: ``python -m cram_core.warmup CONFIG_JSON ...``.

A compiled trainer spends its first 20-40 s in Dynamo, Inductor and Triton. Inductor's FX graph cache,
the AOTAutograd cache and Triton's kernel cache live on disk (TORCHINDUCTOR_CACHE_DIR, default a per-user
folder under the temp dir), so a process that compiles the same graph later finds it there and only
traces. This module compiles each config's graph the way a trial will (`build_parts` + `warm_up` + one
optimizer step, on random token ids of the trial's shapes), with Dynamo reset before each config: otherwise
a second shape of the same code would turn its automatic dynamic shapes on and compile a graph no trial uses.

`Warmer` runs these processes in the background, a few at a time; the sweep driver starts it while it
prepares the data, when trials will compile on CUDA.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from cram_core.cli import OneLineParser, run_main
from cram_core.config import ConfigError, DataConfig, RunConfig

GRAPH_FREE_MODEL_FIELDS = ("init", "init_std")
"model fields that only set initial values, which enter the compiled graph as inputs, not as its code"
WARMUP_NICENESS = 10
"""how much lower than the sweep's own processes warm-ups run: the data preparation they overlap with is what
trials wait for, so it gets the cores first; a warm-up only saves a trial compile time it would spend anyway"""
GRAPH_FREE_IMPL_FIELDS = ("threads", "fused_optimizer")
"impl fields outside the compiled step (the optimizer step is not compiled); every other one can change it"
COMMAND = [sys.executable, "-m", "cram_core.warmup", "--with-parent", "--nice", str(WARMUP_NICENESS)]
"what `Warmer` runs, with one config file after it"
CACHE_COUNTERS = (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"),
                  ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"))


def graph_key(cfg: RunConfig, vocab_size: int | None = None) -> str:
    """What the compiled step function depends on: the model's code and sizes, the objective (it is compiled
    with the model), micro-batch and sequence lengths, vocabulary, and the impl group (precision, compile mode, stream dtype, ...). LR, schedule,
    batch ramp, optimizer, seed and budget stay out: they never reach the compiled graph."""
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in GRAPH_FREE_MODEL_FIELDS}
    shapes = {"micro_batch_size": cfg.train.micro_batch_size,
              "lengths": sorted({cfg.data.seq_len} | {n for n, _ in cfg.train.curriculum()}),
              "vocab_size": vocab_size or cfg.data.vocab_size}
    impl = {k: v for k, v in dataclasses.asdict(cfg.impl).items() if k not in GRAPH_FREE_IMPL_FIELDS}
    blob = json.dumps({"model": model, "objective": dataclasses.asdict(cfg.objective), **shapes, **impl},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def distinct_graphs(cfgs: Iterable[RunConfig]) -> list[RunConfig]:
    """The first config of every distinct compiled graph, in the order the configs come (trials that run
    first get their graph warmed first)."""
    seen: dict[str, RunConfig] = {}
    vocab: dict[DataConfig, int] = {}  # one cache lookup per data config, not per trial
    for cfg in cfgs:
        if cfg.data not in vocab:
            vocab[cfg.data] = expected_vocab_size(cfg)
        seen.setdefault(graph_key(cfg, vocab[cfg.data]), cfg)
    return list(seen.values())


def expected_vocab_size(cfg: RunConfig) -> int:
    """The vocabulary the trial's model will have: the prepared dataset's when it is in the cache, else
    data.vocab_size (a corpus too small for it trains fewer tokens; the warm-up then compiles a graph of the
    wrong size, and the trial compiles its own)."""
    from cram_core.data.pipeline import cache_key, cache_root
    from cram_core.data.sources import parse_sources

    try:
        stats = cache_root(cfg.data) / cache_key(cfg.data, parse_sources(cfg.data.source)) / "stats.json"
        return int(json.loads(stats.read_text())["vocab_size"])
    except Exception:  # a guess: no cache entry (or an unreadable one, or a source that won't resolve here)
        return cfg.data.vocab_size


def warm_one(cfg: RunConfig, vocab_size: int | None = None) -> dict[str, Any]:
    """Compile ``cfg``'s step as a fresh trial process does and run one optimizer step; weights are thrown
    away. Returns the graph key, the seconds it took and torch's compile-cache counters for this graph."""
    import torch
    from torch._dynamo.utils import counters

    from cram_core.train import build_parts, optimizer_step, warm_up

    vocab = vocab_size or expected_vocab_size(cfg)
    torch._dynamo.reset()  # as in a new process: an earlier config's shapes must not make this one's dynamic
    before = {name: int(counters[group][name]) for group, name in CACHE_COUNTERS}
    t0 = time.perf_counter()
    parts = build_parts(cfg, vocab)
    gen = torch.Generator(device=parts.device).manual_seed(0)
    shape = (cfg.train.micro_batch_size, cfg.data.seq_len)
    sample = torch.randint(5, vocab, shape, device=parts.device, generator=gen)  # ids 0-4 are special tokens
    warm_up(parts, sample)
    optimizer_step(parts, [sample], cfg.optim.lr)
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
    return {"graph": graph_key(cfg, vocab), "compiled": parts.compiled, "seconds": time.perf_counter() - t0,
            **{name: int(counters[group][name]) - before[name] for group, name in CACHE_COUNTERS}}


def _load_config(text: str) -> RunConfig:
    """A config as inline JSON (``{"model": ...}``) or the path of a JSON file, as RunConfig.to_dict writes."""
    try:
        data = json.loads(text if text.lstrip().startswith("{") else Path(text).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {text!r}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config {text[:60]!r} is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {text[:60]!r} is not a JSON object of config groups")
    try:
        return RunConfig.from_dict(data)
    except TypeError as e:  # an unknown field inside a group
        raise ConfigError(f"config {text[:60]!r}: {e}") from None


def _exit_with_parent() -> None:
    """End this process when the one that started it is gone (a killed sweep driver leaves no compilers)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def lower_priority(increment: int) -> None:
    """os.nice(increment) where the OS has it; a priority is a courtesy, so failing to lower it is not an error."""
    if increment > 0 and hasattr(os, "nice"):
        try:
            os.nice(increment)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m cram_core.warmup", description="Compile each config's training step "
                           "once, so that later processes find it in torch's on-disk compile caches.")
    parser.add_argument("configs", nargs="+", metavar="CONFIG_JSON",
                        help="a RunConfig as JSON (RunConfig.to_dict), inline or a file path; one graph each")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="vocabulary of the model (default: the prepared dataset's, else data.vocab_size)")
    parser.add_argument("--with-parent", action="store_true", help="exit when the parent process exits")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="lower this process's CPU priority by N (its compile workers inherit it)")
    args = parser.parse_args(argv)
    try:
        cfgs = [_load_config(text) for text in args.configs]
    except ConfigError as e:
        return parser.fail(e)
    if args.with_parent:
        _exit_with_parent()
    lower_priority(args.nice)
    for cfg in cfgs:  # one JSON line per graph, read by Warmer
        print(json.dumps(warm_one(cfg, args.vocab_size)), flush=True)
    return 0


# ---------------------------------------------------------------- running warm-ups in the background


def pin_cache_dir() -> str:
    """Set TORCHINDUCTOR_CACHE_DIR to the folder torch would use anyway, unless the user set it: processes
    started from here on (warm-ups, a local Ray's workers) then share one cache even if one of them sees
    another temp dir. Triton's kernels go under it too, unless TRITON_CACHE_DIR says otherwise."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = default_cache_dir()
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


@dataclass(frozen=True)
class WarmReport:
    graphs: int
    "distinct graphs the warm-up was given"
    warmed: int
    "graphs compiled (or found already cached) by a warm-up process"
    failed: int
    cached: int
    "of the warmed, those the cache already held (nothing was compiled)"
    seconds: float
    "from the first process started to the last one ended (or to stop)"

    def describe(self) -> str:
        left = self.graphs - self.warmed - self.failed
        return (f"{self.warmed} of {self.graphs} graph(s) in {self.seconds:.0f} s"
                + (f" ({self.cached} already cached)" if self.cached else "")
                + (f", {self.failed} failed" if self.failed else "") + (f", {left} stopped" if left > 0 else ""))


class Warmer:
    """Runs one ``python -m cram_core.warmup`` process per distinct graph of ``cfgs``, at most ``parallel`` at
    a time, from a background thread; ``compile_cores`` caps their Inductor compile workers, all together.
    A failed warm-up is one line through ``log``, never an exception; `stop` ends the processes still
    running (with their compile workers) and starts no more."""

    def __init__(self, cfgs: Iterable[RunConfig], *, parallel: int, log: Callable[[str], None],
                 compile_cores: int | None = None):
        self.graphs = distinct_graphs(cfgs)
        self.parallel = max(1, parallel)
        self.log = log
        self.command = list(COMMAND)
        self.env = dict(os.environ)
        # the child imports this checkout's cram_core whatever the driver's cwd
        package_root = str(Path(__file__).resolve().parents[1])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, self.env.get("PYTHONPATH")) if p)
        if compile_cores:  # shared by the processes running at once; not part of any cache key
            at_once = max(1, min(self.parallel, len(self.graphs)))
            self.env["TORCHINDUCTOR_COMPILE_THREADS"] = str(max(1, compile_cores // at_once))
        self.folder: Path | None = None
        "the processes' config files and output, from start to stop"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[int, tuple[subprocess.Popen, Path]] = {}
        self._results: dict[int, dict[str, Any] | None] = {}  # graph index -> its JSON line, None = failed
        self._t0: float | None = None
        self._t1: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="compile-warmup")

    def start(self) -> Warmer:
        self.folder = Path(tempfile.mkdtemp(prefix="cram-warmup-"))
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _launch(self, index: int) -> None:
        assert self.folder is not None
        cfg_path = self.folder / f"graph-{index}.json"
        cfg_path.write_text(json.dumps(self.graphs[index].to_dict()))
        out = self.folder / f"graph-{index}.log"
        try:
            with open(out, "wb") as sink:  # own session: stop() ends its compile workers with it
                proc = subprocess.Popen([*self.command, str(cfg_path)], stdout=sink, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        except OSError as e:
            self._results[index] = None
            self.log(f"compile warm-up of graph {index + 1}/{len(self.graphs)} could not start: {e}")
            return
        self._running[index] = (proc, out)

    def _run(self) -> None:
        try:
            self._launch_and_collect()
        except Exception as e:  # a warm-up only saves time: whatever goes wrong here, training goes on
            self.log(f"compile warm-up stopped: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
        finally:
            self._t1 = time.monotonic()

    def _launch_and_collect(self) -> None:
        pending = list(range(len(self.graphs)))
        while (pending or self._running) and not self._stop.is_set():
            with self._lock:
                while pending and len(self._running) < self.parallel and not self._stop.is_set():
                    self._launch(pending.pop(0))
                for index, (proc, out) in list(self._running.items()):
                    if proc.poll() is not None:
                        del self._running[index]
                        self._results[index] = self._result(index, proc.returncode, out)
            self._stop.wait(0.2)

    def _result(self, index: int, code: int, out: Path) -> dict[str, Any] | None:
        lines = out.read_text(errors="replace").strip().splitlines()
        if code == 0 and lines:
            try:
                return json.loads(lines[-1])
            except json.JSONDecodeError:
                pass
        last = " ".join(lines[-1].split())[:200] if lines else "no output"
        self.log(f"compile warm-up of graph {index + 1}/{len(self.graphs)} failed (exit {code}): {last}; "
                 "its trials compile it themselves")
        return None

    def wait(self, timeout: float | None = None) -> bool:
        """True once every graph's process has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> WarmReport:
        self._stop.set()
        with self._lock:
            for proc, _ in self._running.values():
                _end(proc)
        if self._thread.ident is not None:  # started
            self._thread.join()
        for index, (proc, out) in self._running.items():  # ended on its own just before the stop
            if proc.returncode == 0:
                self._results[index] = self._result(index, 0, out)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        return self.report()

    def report(self) -> WarmReport:
        done = [r for r in self._results.values() if r is not None]
        end = self._t1 if self._t1 is not None else time.monotonic()
        return WarmReport(graphs=len(self.graphs), warmed=len(done),
                          failed=sum(r is None for r in self._results.values()),
                          cached=sum(1 for r in done if r.get("compiled") and r.get("fxgraph_cache_miss") == 0
                                     and r.get("autograd_cache_miss", 0) == 0),
                          seconds=end - (self._t0 or end))


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    run_main(main)
