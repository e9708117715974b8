"""The driver's compile warm-up (issue 9, sweep GPU busy): which of a sweep's trials share a compiled graph,
when the runner warms at all (CUDA trials with compile on, `--no-warm-compile` off), and that a failing
warm-up is one line while the sweep goes on. The runs use the fake trainer on the session's local Ray, with
the CUDA check and the warm-up command replaced (this machine has no GPU)."""

from __future__ import annotations

import dataclasses
import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from cram_core import warmup
from sweeps import runner
from sweeps.cli import main
from sweeps.definitions import SWEEPS, resolve
from sweeps.runner import Placement, RunOptions, _warm_configs

GPU_PACKED = Placement(concurrency=4, cpus_per_trial=4, gpus_per_trial=0.25, threads=4)
CPU = Placement(concurrency=2, cpus_per_trial=1, gpus_per_trial=0.0, threads=1)
OPTS = RunOptions(store_url="sqlite://")


def _graphs(name: str, preset: str = "gpu-sweep") -> list:
    return warmup.distinct_graphs(p.config for p in resolve(SWEEPS[name], preset=preset, seeds=3).trials())


def test_lr_schedules_is_one_graph() -> None:
    assert len(resolve(SWEEPS["lr_schedules"], preset="gpu-sweep", seeds=3).trials()) == 33
    assert len(_graphs("lr_schedules")) == 1


def test_norm_placement_is_four_graphs() -> None:
    # five variants, but "post-LN" and "post-LN, 10% warm-up" differ only in the LR schedule: one graph
    graphs = _graphs("norm_placement")
    assert sorted((g.model.norm_scheme, g.model.final_norm) for g in graphs) == [
        ("post", False), ("pre", False), ("pre", True), ("sandwich", True)]


def test_batch_size_sweep_has_a_graph_per_micro_batch() -> None:
    # gpu-sweep's batch is one micro-batch of 128: 0.25x and 0.5x shrink the micro-batch, 2x and 4x accumulate
    assert sorted(g.train.micro_batch_size for g in _graphs("batch_size")) == [32, 64, 128]


def test_the_runner_warms_only_cuda_trials_that_compile() -> None:
    resolved = resolve(SWEEPS["norm_placement"], preset="gpu-sweep", seeds=1)
    rows = list(enumerate(resolved.trials()))
    warm = _warm_configs(resolved, rows, GPU_PACKED, OPTS)
    # the trials' configs, with torch threads as each trial sets them from the packing (sweeps.trial)
    assert [dataclasses.replace(c, impl=dataclasses.replace(c.impl, threads=0)) for c in warm] == \
        [p.config for _, p in rows]
    assert {c.impl.threads for c in warm} == {GPU_PACKED.threads}
    given = resolve(SWEEPS["norm_placement"], preset="gpu-sweep", seeds=1, overrides=["impl.threads=2"])
    assert {c.impl.threads for c in _warm_configs(given, list(enumerate(given.trials())), GPU_PACKED, OPTS)} == {2}
    assert _warm_configs(resolved, rows, CPU, OPTS) == []  # CPU trials: compile is off by default
    for opts in (dataclasses.replace(OPTS, warm_compile=False), dataclasses.replace(OPTS, backend="sweeps.testing"),
                 dataclasses.replace(OPTS, address="10.0.0.5:6379")):
        assert _warm_configs(resolved, rows, GPU_PACKED, opts) == [], opts
    for off in ("impl.compile=off", "impl.device=cpu"):
        r = resolve(SWEEPS["norm_placement"], preset="gpu-sweep", seeds=1, overrides=[off])
        assert _warm_configs(r, list(enumerate(r.trials())), GPU_PACKED, OPTS) == [], off
    forced = resolve(SWEEPS["norm_placement"], preset="tiny", seeds=1, overrides=["impl.compile=on"])
    assert _warm_configs(forced, list(enumerate(forced.trials())), CPU, OPTS) == []  # CPU: never


def test_search_sweeps_warm_their_baseline() -> None:
    resolved = resolve(SWEEPS["peak_lr"], preset="gpu-sweep")
    [cfg] = _warm_configs(resolved, [], GPU_PACKED, OPTS)
    assert warmup.graph_key(cfg) == warmup.graph_key(resolved.base) and cfg.model == resolved.base.model


def test_a_warmer_that_cannot_start_is_one_line_and_no_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(warmup, "Warmer", broken)
    console = Console(file=io.StringIO(), width=200)
    assert runner._start_warmer([resolve(SWEEPS["lr_schedules"], preset="tiny").base], 16, console) is None
    assert console.file.getvalue().strip() == "no compile warm-up: OSError: No space left on device"


# ---------------------------------------------------------------- runs (fake trainer, local Ray)

FAKE = ["--backend", "sweeps.testing", "--preset", "tiny", "--budget", "1s", "--seeds", "1"]
OK_WARMUP = "import json; print(json.dumps({'graph': 'g', 'compiled': True, 'fxgraph_cache_miss': 2}))"


@pytest.fixture
def on_cuda(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The runner believes its trials run on CUDA; warm-ups run a stand-in command."""
    monkeypatch.setattr(runner, "_trials_on_local_cuda", lambda placement, opts: True)
    monkeypatch.setattr(warmup, "COMMAND", [sys.executable, "-c", OK_WARMUP])
    return monkeypatch


def _run(tmp_path: Path, name: str, *extra: str) -> int:
    return main(["run", "--name", name, "--vary", "model.norm_scheme=pre,post", "--vary",
                 "train.schedule=triangle,cosine", *FAKE, "--store", str(tmp_path / "results.db"), *extra])


def test_a_sweep_on_cuda_warms_each_graph_once_and_says_so(ray_local, on_cuda, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert _run(tmp_path, "warm_on") == 0
    out = capsys.readouterr().out
    assert "warming the compile cache while the data is prepared: 2 distinct graph(s)" in out
    line = next(x for x in out.splitlines() if x.startswith("compile cache warmed:"))
    assert "2 of 2 graph(s) in" in line and "data preparation and Ray start took" in line


def test_no_warm_compile_launches_nothing(ray_local, on_cuda, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    launched = []
    on_cuda.setattr(warmup.Warmer, "start", lambda self: launched.append(self) or self)
    assert _run(tmp_path, "warm_off", "--no-warm-compile") == 0
    out = capsys.readouterr().out
    assert launched == [] and "warming" not in out and "compile cache warmed" not in out


def test_a_failing_warm_up_does_not_fail_the_sweep(ray_local, on_cuda, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    on_cuda.setattr(warmup, "COMMAND", [sys.executable, "-c", "import sys; print('CUDA error: out of memory'); "
                                                              "sys.exit(1)"])
    assert _run(tmp_path, "warm_fails") == 0  # every trial completed
    out = capsys.readouterr().out
    assert out.count("failed (exit 1): CUDA error: out of memory; its trials compile it themselves") == 2
    assert "compile cache warmed: 0 of 2 graph(s)" in out and "2 failed" in out
    assert "4 completed, 0 diverged, 0 failed" in out
