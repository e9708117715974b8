"""The runner's own GPU-busy figure (sweeps.gpu_monitor) with a fake NVML: the integral over wall time, the
sampling rate, a host without NVML, the per-sweep store record, and the status / end-of-run lines."""

from __future__ import annotations

import io
import os
import time
from argparse import Namespace
from types import SimpleNamespace

import pytest
from rich.console import Console

from sweeps import runner
from sweeps.definitions import Sweep, resolve
from sweeps.gpu_monitor import GpuBusy, GpuMonitor
from sweeps.ledger import Ledger
from sweeps.runner import RunOptions, run_sweep


class FakeNvml:
    """pynvml's calls the monitor makes; ``utils[i]`` is GPU i's current utilization in percent."""

    def __init__(self, utils: list[float], *, fail_init: bool = False):
        self.utils, self.fail_init, self.fail_reads, self.reads, self.shut = list(utils), fail_init, False, 0, False

    def nvmlInit(self):
        if self.fail_init:
            raise OSError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self):
        return len(self.utils)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return "Fake H200"

    def nvmlDeviceGetUtilizationRates(self, h):
        if self.fail_reads:
            raise RuntimeError("GPU is lost")
        self.reads += 1
        return SimpleNamespace(gpu=self.utils[h], memory=0)

    def nvmlShutdown(self):
        self.shut = True


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_busy_is_utilization_integrated_over_wall_time_per_gpu() -> None:
    nvml, clock = FakeNvml([100, 50]), FakeClock()
    monitor = GpuMonitor(nvml=nvml, clock=clock, interval_s=3600).start()  # the test drives the samples
    for _ in range(3):  # GPU0 fully busy for 3 s ...
        clock.t += 1.0
        monitor._sample()
    nvml.utils = [0, 50]  # ... then idle for 1 s (read by the stop's final sample)
    clock.t += 1.0
    busy = monitor.stop()
    assert busy == GpuBusy(wall_s=4.0, per_gpu=(0.75, 0.5), names=("Fake H200", "Fake H200"), samples=4)
    assert busy.busy == pytest.approx(0.625) and nvml.shut
    assert busy.describe() == "62.5% of 0.1 min [GPU0 75.0%, GPU1 50.0%] (NVML at 1.0 Hz)"


def test_the_thread_samples_at_least_once_a_second() -> None:
    nvml = FakeNvml([80])
    with GpuMonitor(nvml=nvml, interval_s=0.02) as monitor:
        time.sleep(0.3)
    busy = monitor.result
    assert busy is not None and busy.per_gpu == pytest.approx((0.8,))
    assert busy.rate_hz >= 1.0 and busy.samples == nvml.reads >= 5
    assert monitor._thread is None  # stopped and joined


def test_default_rate_is_at_least_one_hertz() -> None:
    assert GpuMonitor().interval_s <= 1.0


def test_no_nvml_is_no_figure_and_no_error() -> None:
    monitor = GpuMonitor(nvml=FakeNvml([50], fail_init=True)).start()
    assert monitor.stop() is None and monitor.result is None
    assert monitor.off_reason == "NVML unavailable (OSError: NVML Shared Library Not Found)"
    no_gpu = GpuMonitor(nvml=FakeNvml([])).start()
    assert no_gpu.stop() is None and no_gpu.off_reason == "NVML sees no GPU"


def test_a_failing_read_keeps_what_was_measured() -> None:
    nvml, clock = FakeNvml([40]), FakeClock()
    monitor = GpuMonitor(nvml=nvml, clock=clock, interval_s=3600).start()
    clock.t += 2.0
    monitor._sample()
    nvml.fail_reads = True
    clock.t += 5.0
    assert monitor._sample() is False
    busy = monitor.stop()
    assert busy.wall_s == 2.0 and busy.per_gpu == (0.4,) and "sampling stopped" in monitor.off_reason


def test_store_keeps_one_record_per_run_and_status_shows_the_last(tmp_path, capsys) -> None:
    from sweeps.cli import cmd_status
    from sweeps.definitions import SWEEPS

    url = f"sqlite:///{tmp_path / 'results.db'}"
    resolved = resolve(SWEEPS["lr_schedules"], preset="tiny", budget="1s")
    ledger = Ledger(url)
    try:
        sweep_id = ledger.upsert_sweep(resolved, {})
        ledger.record_gpu_busy(sweep_id, GpuBusy(wall_s=600.0, per_gpu=(0.5,), names=("H200",), samples=1200))
        ledger.record_gpu_busy(sweep_id, GpuBusy(wall_s=120.0, per_gpu=(0.92,), names=("H200",), samples=240))
        assert [b.busy for b in ledger.gpu_busy("lr_schedules")] == [0.5, 0.92]
        assert ledger.gpu_busy("other") == []
    finally:
        ledger.close()
    cmd_status(Namespace(store=url, name=None))
    out = capsys.readouterr().out
    assert "GPU busy 92.0% of 2.0 min (NVML at 2.0 Hz) in the last of 2 runs" in out
    # the sweep's whole wall time: (0.5 * 600 + 0.92 * 120) / 720 = 0.57
    assert "all runs: 57.0% of 12.0 min (NVML at 2.0 Hz)" in out


def test_combine_weights_runs_by_wall_time_per_gpu() -> None:
    a = GpuBusy(wall_s=100.0, per_gpu=(1.0, 0.0), names=("A", "B"), samples=200)
    b = GpuBusy(wall_s=300.0, per_gpu=(0.5, 1.0), names=("A", "B"), samples=600)
    both = GpuBusy.combine([a, b])
    assert both.wall_s == 400.0 and both.samples == 800
    assert both.per_gpu == pytest.approx((250.0 / 400, 300.0 / 400))
    assert GpuBusy.combine([a]) == a
    with pytest.raises(ValueError):
        GpuBusy.combine([])


def test_run_sweep_measures_stores_and_reports_gpu_busy(ray_local, tmp_path, monkeypatch) -> None:
    nvml = FakeNvml([90])
    monkeypatch.setattr(runner, "GpuMonitor", lambda: GpuMonitor(nvml=nvml, interval_s=0.05))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    sweep = Sweep(name="busy", section="training", axis="fake", seeds=1,
                  variants={"cosine": {"train.schedule": "cosine"}})
    resolved = resolve(sweep, preset="tiny", budget="1s")
    result = run_sweep(resolved, RunOptions(store_url=url, backend="sweeps.testing"),
                       console=Console(file=io.StringIO()))
    assert result.gpu_busy is not None and result.gpu_busy.per_gpu == pytest.approx((0.9,))
    assert result.gpu_busy.wall_s <= result.wall_s and result.gpu_busy.rate_hz >= 1.0
    ledger = Ledger(url, create=False)
    try:
        assert ledger.gpu_busy("busy") == [result.gpu_busy]
    finally:
        ledger.close()
    # a rerun with nothing left to train adds no record
    again = run_sweep(resolved, RunOptions(store_url=url, backend="sweeps.testing"), console=Console(file=io.StringIO()))
    assert again.ran == 0 and again.gpu_busy is None
    ledger = Ledger(url, create=False)
    try:
        assert len(ledger.gpu_busy("busy")) == 1
    finally:
        ledger.close()


def test_data_is_prepared_while_ray_starts(ray_local, tmp_path, monkeypatch) -> None:
    # before: Ray started only after every data config was prepared, the GPU idle through both
    import sweeps.testing

    spans: dict[str, tuple[float, float]] = {}

    def timed(name, fn, seconds):
        def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            time.sleep(seconds)
            out = fn(*args, **kwargs)
            spans[name] = (t0, time.monotonic())
            return out
        return wrapper

    log = tmp_path / "prepare.log"  # the preparing child process writes its span here (sweeps.testing)
    monkeypatch.setenv(sweeps.testing.PREPARE_LOG_ENV, str(log))
    monkeypatch.setenv("CRAM_FAKE_PREPARE_S", "1.0")
    monkeypatch.setattr(runner, "start_ray", timed("ray", runner.start_ray, 1.0))
    sweep = Sweep(name="overlap", section="training", axis="fake", seeds=1,
                  variants={"cosine": {"train.schedule": "cosine"}})
    result = run_sweep(resolve(sweep, preset="tiny", budget="1s"),
                       RunOptions(store_url=f"sqlite:///{tmp_path / 'results.db'}", backend="sweeps.testing"),
                       console=Console(file=io.StringIO()))
    assert result.counts["completed"] == result.ran == 2  # the baseline and the variant
    spans_by_pid = [line.split() for line in log.read_text().splitlines()]
    child = [(float(a), float(b)) for pid, a, b in spans_by_pid if int(pid) != os.getpid()]
    assert len(child) == 1 and len(spans_by_pid) == 2  # prepared in a child, then a cache hit here
    (p0, p1), (r0, r1) = child[0], spans["ray"]
    assert p0 < r1 and r0 < p1  # the two overlapped


def test_a_preparing_process_that_crashes_is_redone_by_the_driver(ray_local, tmp_path, monkeypatch) -> None:
    # the tokenizer trainer once segfaulted the driver while Ray started; now only a child can crash
    import sweeps.testing

    monkeypatch.setenv(sweeps.testing.PREPARE_CRASH_ENV, "1")
    out = io.StringIO()
    sweep = Sweep(name="crashprep", section="training", axis="fake", seeds=1,
                  variants={"cosine": {"train.schedule": "cosine"}})
    result = run_sweep(resolve(sweep, preset="tiny", budget="1s"),
                       RunOptions(store_url=f"sqlite:///{tmp_path / 'results.db'}", backend="sweeps.testing"),
                       console=Console(file=out, width=200))
    assert result.counts["completed"] == result.ran == 2
    text = out.getvalue()
    assert "the preparing process died (signal 11); preparing it again in this one" in text
    assert text.count("preparing data 1/1") == 2 and "ready in" in text
