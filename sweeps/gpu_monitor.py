"""How busy the sweep kept its GPUs: NVML utilization sampled in a thread of the driver.

NVML's ``utilization.gpu`` is the percentage of the last sample period in which at least one kernel ran. The
monitor reads it for every GPU of this host about twice a second, from just before Ray starts until the last
trial has ended, and integrates it over wall time: busy = sum(utilization_i * dt_i) / wall, per GPU. So Ray's
start, data preparation, compiles and idle gaps between trials all count against the figure, as they count
against the budget.

On a host without NVML (no driver, no GPU, or ``nvidia-ml-py`` missing) the monitor is off and says why; it never
stops a sweep. The NVML module is a parameter so tests drive it with a fake.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

SAMPLE_INTERVAL_S = 0.5
"2 Hz: above the 1 Hz the figure needs, and cheap (one NVML call per GPU)"


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuBusy:
    """One driver run's GPU-busy record."""

    wall_s: float
    "seconds from the monitor's start to its stop"
    per_gpu: tuple[float, ...]
    "busy fraction of wall_s per GPU index, in [0, 1]"
    names: tuple[str, ...]
    "NVML's name of each GPU"
    samples: int
    "sampling rounds (one reading of every GPU each)"

    @property
    def busy(self) -> float:
        """Mean busy fraction over the GPUs."""
        return sum(self.per_gpu) / len(self.per_gpu)

    @property
    def rate_hz(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0

    def describe(self) -> str:
        """``91.2% of 13.5 min (NVML at 2.0 Hz)``, with one figure per GPU when there are several."""
        minutes = self.wall_s / 60
        per = "" if len(self.per_gpu) == 1 else " [" + ", ".join(
            f"GPU{i} {b:.1%}" for i, b in enumerate(self.per_gpu)) + "]"
        return f"{self.busy:.1%} of {minutes:.1f} min{per} (NVML at {self.rate_hz:.1f} Hz)"

    @classmethod
    def combine(cls, runs: list[GpuBusy]) -> GpuBusy:
        """A resumed sweep's runs as one record: busy seconds and wall seconds summed per GPU index, so the figure
        is the busy fraction of all the wall time the sweep took (each run's Ray start included)."""
        if not runs:
            raise ValueError("combine needs at least one run")
        width = max(len(r.per_gpu) for r in runs)
        wall = sum(r.wall_s for r in runs)
        busy_s = [sum(r.per_gpu[i] * r.wall_s for r in runs if i < len(r.per_gpu)) for i in range(width)]
        names = max((r.names for r in runs), key=len)
        return cls(wall_s=wall, per_gpu=tuple(b / wall if wall > 0 else 0.0 for b in busy_s), names=names,
                   samples=sum(r.samples for r in runs))

    def to_dict(self) -> dict[str, Any]:
        return {"wall_s": self.wall_s, "per_gpu": list(self.per_gpu), "names": list(self.names),
                "samples": self.samples}


def _load_nvml() -> ModuleType:
    import pynvml  # nvidia-ml-py

    return pynvml


class GpuMonitor:
    """``with GpuMonitor() as m: ...``; then ``m.result`` is a :class:`GpuBusy`, or None with ``m.off_reason``."""

    def __init__(self, *, interval_s: float = SAMPLE_INTERVAL_S, nvml: ModuleType | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.interval_s, self.clock = interval_s, clock
        self._nvml = nvml
        self._handles: list[Any] = []
        self._names: tuple[str, ...] = ()
        self._busy_s: list[float] = []
        self._samples = 0
        self._t0 = self._last = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.result: GpuBusy | None = None
        self.off_reason: str | None = None

    def start(self) -> GpuMonitor:
        try:
            nvml = self._nvml or _load_nvml()
            nvml.nvmlInit()
            self._nvml = nvml
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            self._names = tuple(str(nvml.nvmlDeviceGetName(h)) for h in self._handles)
        except Exception as e:  # noqa: BLE001 - any NVML failure only means no figure; the message says which
            self._off(f"NVML unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})")
            return self
        if not self._handles:
            self._off("NVML sees no GPU")
            return self
        self._busy_s = [0.0] * len(self._handles)
        self._t0 = self._last = self.clock()
        self._thread = threading.Thread(target=self._loop, name="gpu-monitor", daemon=True)
        self._thread.start()
        return self

    def _off(self, reason: str) -> None:
        self.off_reason = reason
        self._handles = []

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self._sample():
                return

    def _sample(self) -> bool:
        """One reading of every GPU, weighted by the time since the last one; False once NVML fails."""
        try:
            utils = [self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles]
        except Exception as e:  # noqa: BLE001 - keep what was measured; the record says sampling stopped
            self.off_reason = f"NVML sampling stopped ({type(e).__name__})"
            return False
        with self._lock:
            now = self.clock()
            dt, self._last = now - self._last, now
            for i, u in enumerate(utils):
                self._busy_s[i] += dt * min(max(float(u), 0.0), 100.0) / 100.0
            self._samples += 1
        return True

    def stop(self) -> GpuBusy | None:
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.off_reason is None:
            self._sample()  # the stretch since the last reading
        wall = self._last - self._t0
        if self._samples and wall > 0:
            self.result = GpuBusy(wall_s=wall, per_gpu=tuple(b / wall for b in self._busy_s), names=self._names,
                                  samples=self._samples)
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110 - shutting down a library we only read from
            pass
        return self.result

    def __enter__(self) -> GpuMonitor:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
