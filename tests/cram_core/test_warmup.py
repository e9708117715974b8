"""cram_core.warmup: which configs share a compiled graph, the entry point really filling the on-disk
compile cache that a later training process then hits, and the background launcher (Warmer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cram_core import warmup
from cram_core.config import apply_overrides
from cram_core.presets import get_preset

TINY = get_preset("tiny")


def _key(overrides: list[str]) -> str:
    return warmup.graph_key(apply_overrides(TINY, overrides))


def test_graph_key_ignores_what_never_reaches_the_graph() -> None:
    base = _key([])
    for same in (["optim.lr=1e-4"], ["train.schedule=cosine"], ["train.seed=3"], ["budget.tokens=1e6"],
                 ["model.init=scaled"], ["train.batch_size=64"], ["optim.name=lion"], ["train.warmup=0.1"]):
        assert _key(same) == base, same


def test_graph_key_changes_with_what_shapes_or_builds_the_graph() -> None:
    base = _key([])
    changed = [["model.norm_scheme=post"], ["train.micro_batch_size=4", "train.batch_size=8"],
               ["data.seq_len=32"], ["train.seq_len_curriculum=32:0.5"], ["impl.precision=bf16"],
               ["impl.compile_mode=max-autotune"], ["objective.mask_rate=0.4"], ["data.vocab_size=1024"]]
    keys = [_key(c) for c in changed]
    assert base not in keys and len(set(keys)) == len(keys)


def test_distinct_graphs_keeps_the_first_config_of_each_in_order() -> None:
    cfgs = [apply_overrides(TINY, o) for o in (["train.seed=1"], ["model.norm_scheme=post"], ["train.seed=2"],
                                                ["model.norm_scheme=post", "optim.lr=1e-4"])]
    assert warmup.distinct_graphs(cfgs) == [cfgs[0], cfgs[1]]


def test_the_vocabulary_is_the_prepared_datasets_when_cached(tmp_path: Path) -> None:
    from cram_core.data.pipeline import cache_key, cache_root
    from cram_core.data.sources import parse_sources

    cfg = apply_overrides(TINY, [f"data.cache_dir={tmp_path}"])
    assert warmup.expected_vocab_size(cfg) == 2048  # nothing prepared there yet: data.vocab_size
    entry = cache_root(cfg.data) / cache_key(cfg.data, parse_sources(cfg.data.source))
    entry.mkdir(parents=True)
    (entry / "stats.json").write_text('{"vocab_size": 1999}')  # a corpus that trained fewer tokens
    assert warmup.expected_vocab_size(cfg) == 1999
    assert warmup.graph_key(cfg, 1999) != warmup.graph_key(cfg, 2048)
    missing = apply_overrides(TINY, [f"data.source=jsonl:{tmp_path}/none-*.jsonl"])
    assert warmup.expected_vocab_size(missing) == TINY.data.vocab_size


def test_each_config_compiles_as_in_a_fresh_process(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    """Several configs in one process: Dynamo is reset before each (else the second shape compiles dynamic),
    and each line counts its own graph's cache events. Eager here (compile off), so it runs in a second."""
    import torch

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    cfgs = [apply_overrides(TINY, ["impl.threads=1", *extra]) for extra in ([], ["data.seq_len=32"])]
    assert warmup.main([json.dumps(c.to_dict()) for c in cfgs]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(resets) == 2 and [x["graph"] for x in lines] == [warmup.graph_key(c) for c in cfgs]
    assert all(not x["compiled"] and x["fxgraph_cache_miss"] == 0 for x in lines)


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.json").write_text('{"model": {"num_layerz": 2}}')
    for arg, match in (("{not json", "is not JSON"), (str(tmp_path / "missing.json"), "cannot read config"),
                       (str(tmp_path / "bad.json"), "num_layerz"), ('{"modle": {}}', "unknown config group")):
        assert warmup.main([arg]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("python -m cram_core.warmup: error:") and match in err and "\n" not in err, err


# ---------------------------------------------------------------- Warmer, with stand-in commands


def _warmer(monkeypatch: pytest.MonkeyPatch, script: str, cfgs: list, **kw) -> tuple[warmup.Warmer, list[str]]:
    monkeypatch.setattr(warmup, "COMMAND", [sys.executable, "-c", script])
    lines: list[str] = []
    return warmup.Warmer(cfgs, log=lines.append, **kw), lines


def test_warmer_runs_one_process_per_graph_at_most_parallel_at_a_time(monkeypatch, tmp_path: Path) -> None:
    # each stand-in records its start and end; the config file it was given must hold the graph's config
    script = (f"import json, os, sys, time; d = json.load(open(sys.argv[1])); t0 = time.time(); time.sleep(0.6); "
              f"open(os.path.join({str(tmp_path)!r}, str(os.getpid())), 'w').write(f'{{t0}} {{time.time()}}'); "
              f"print(json.dumps({{'graph': d['model']['norm_scheme'], 'compiled': True, 'fxgraph_cache_miss': 0}}))")
    cfgs = [apply_overrides(TINY, [f"model.norm_scheme={s}"]) for s in ("pre", "post", "sandwich", "post")]
    warmer, lines = _warmer(monkeypatch, script, cfgs, parallel=2)
    warmer.start()
    assert warmer.wait(60)
    report = warmer.stop()
    assert lines == [] and report.graphs == report.warmed == 3 and report.failed == 0 and report.cached == 3
    spans = [tuple(map(float, f.read_text().split())) for f in tmp_path.iterdir()]
    assert len(spans) == 3
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == 2  # two at once, never three
    assert not warmer.folder.exists()


def test_compile_workers_share_the_cores_among_the_warm_ups_running_at_once() -> None:
    post = apply_overrides(TINY, ["model.norm_scheme=post"])
    for cfgs, threads in (([TINY], "8"), ([TINY, post], "4"), ([TINY, post, TINY], "4")):
        warmer = warmup.Warmer(cfgs, parallel=4, compile_cores=8, log=print)
        assert warmer.env["TORCHINDUCTOR_COMPILE_THREADS"] == threads
        assert warmer.stop().warmed == 0  # never started: nothing to end


def test_a_failing_warm_up_is_one_logged_line(monkeypatch) -> None:
    warmer, lines = _warmer(monkeypatch, "import sys; print('Traceback ...'); print('RuntimeError: no\\n  luck'); "
                                         "sys.exit(1)", [TINY], parallel=1)
    warmer.start()
    assert warmer.wait(60)
    report = warmer.stop()
    assert report.failed == 1 and report.warmed == 0
    assert len(lines) == 1 and "graph 1/1 failed (exit 1): luck" in lines[0]


def test_stop_ends_running_warm_ups_and_their_children(monkeypatch) -> None:
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "time.sleep(60)")
    warmer, lines = _warmer(monkeypatch, script, [TINY, apply_overrides(TINY, ["model.norm_scheme=post"])],
                            parallel=2)
    warmer.start()
    deadline = time.monotonic() + 20
    while len(warmer._running) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    procs = [p for p, _ in warmer._running.values()]
    t0 = time.monotonic()
    report = warmer.stop()
    assert time.monotonic() - t0 < 10 and all(p.poll() is not None for p in procs)
    groups = {p.pid for p in procs}

    def alive_in_groups() -> list:  # the sessions' processes still running (a zombie has ended)
        found = []
        for q in psutil.process_iter(["status"]):
            try:
                if os.getpgid(q.pid) in groups and q.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(q)
            except (ProcessLookupError, psutil.Error):
                pass
        return found

    deadline = time.monotonic() + 5
    while alive_in_groups() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive_in_groups() == []  # the grandchildren (a warm-up's compile workers) too
    assert report.warmed == 0 and report.failed == 0 and "2 stopped" in report.describe()


def test_a_warm_up_ends_when_its_parent_is_killed() -> None:
    """--with-parent: a SIGKILLed driver (no stop()) leaves no warm-up compiling."""
    child = "import time; from cram_core.warmup import _exit_with_parent; _exit_with_parent(); time.sleep(60)"
    parent = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
              "print(p.pid, flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(Path(warmup.__file__).resolve().parents[1])}
    driver = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=env)
    pid = int(driver.stdout.readline())

    def running() -> bool:  # a zombie has ended
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    time.sleep(1.5)  # the child is up and watching
    assert running()
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running()


# ---------------------------------------------------------------- the real entry point (CPU inductor)

TRAIN_SCRIPT = """
import json, sys
from torch._dynamo.utils import counters
from cram_core.config import RunConfig
from cram_core.train import train
from cram_core.warmup import CACHE_COUNTERS
summary = train(RunConfig.from_dict(json.load(open(sys.argv[1]))), progress=False)
print(json.dumps({"status": summary["status"], "compile_s": summary["timings"]["compile_s"],
                  **{name: int(counters[group][name]) for group, name in CACHE_COUNTERS}}))
"""


@pytest.mark.slow
def test_warm_up_fills_the_compile_cache_that_training_then_hits(tmp_path: Path) -> None:
    """A warm-up process compiles (cache misses) into a fresh cache dir; a training process of the same
    config afterwards finds every graph there: FX graph cache hits and no miss. ~1-2 min on 2 cores."""
    from cram_core.data import prepare

    cfg = apply_overrides(TINY, ["impl.compile=on", "impl.threads=1", "model.num_layers=1",
                                 "budget.tokens=2048", "train.eval_sequences=16"])
    prepare(cfg.data, progress=False)  # the vocabulary the warm-up reads, as a driver's data preparation leaves it
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "train.py").write_text(TRAIN_SCRIPT)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "PYTHONPATH": str(Path(warmup.__file__).resolve().parents[1])}

    def run(*argv: str) -> dict:
        done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    warm = run("-m", "cram_core.warmup", str(tmp_path / "cfg.json"))
    assert warm["compiled"] and warm["fxgraph_cache_miss"] > 0 and warm["graph"] == warmup.graph_key(
        cfg, warmup.expected_vocab_size(cfg))
    trial = run(str(tmp_path / "train.py"), str(tmp_path / "cfg.json"))
    assert trial["status"] == "completed"
    assert trial["fxgraph_cache_hit"] >= 1 and trial["fxgraph_cache_miss"] == 0, (warm, trial)
