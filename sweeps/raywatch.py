"""Takes a local Ray down when the driver that started it dies without shutting it down (SIGKILL, OOM).

Ray's GCS and raylet die with their parent (they are started with a parent-death signal), but the agents
the raylet starts (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) and workers are reparented and linger
for a minute or more, ignoring SIGTERM. ``ray stop`` is no remedy: it kills every Ray on the machine,
other users' included. So the driver starts this watchdog, in its own session (a Ctrl-C or a kill of the
driver's process group does not reach it), right after ``ray.init``. While the driver lives, the watchdog
notes every process of the driver's Ray: its children whose command line names the Ray temp folder, and all
their descendants. When the driver is gone it terminates those still running, kills what ignores that, and
exits. ``python -m sweeps.raywatch DRIVER_PID DRIVER_CREATE_TIME RAY_TEMP_DIR``
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 2.0
"after SIGTERM, how long a Ray process gets before SIGKILL"


def start(temp_dir: str) -> subprocess.Popen:
    """The watchdog for this process's local Ray (call right after ``ray.init``)."""
    me = psutil.Process()
    return subprocess.Popen([sys.executable, "-m", "sweeps.raywatch", str(me.pid), repr(me.create_time()), temp_dir],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def stop(watchdog: subprocess.Popen | None) -> None:
    """After a normal ``ray.shutdown()``: the watchdog has nothing left to do."""
    if watchdog is not None and watchdog.poll() is None:
        watchdog.terminate()
        try:
            watchdog.wait(timeout=5)
        except subprocess.TimeoutExpired:
            watchdog.kill()


def ray_processes(driver: psutil.Process, temp_dir: str) -> list[psutil.Process]:
    """The driver's Ray: its children naming ``temp_dir`` on their command line, and their descendants."""
    found = []
    for child in driver.children():
        try:
            if child.pid == os.getpid() or not any(temp_dir in arg for arg in child.cmdline()):
                continue
            found += [child, *child.children(recursive=True)]
        except psutil.Error:  # exited while we looked
            continue
    return found


def watch(driver_pid: int, driver_create_time: float, temp_dir: str) -> int:
    """Track the driver's Ray until the driver is gone, then end what is left of it; returns how many."""
    try:
        driver = psutil.Process(driver_pid)
        if abs(driver.create_time() - driver_create_time) > 1e-3:  # the pid is someone else's already
            return 0
    except psutil.NoSuchProcess:
        return 0
    tracked: dict[int, psutil.Process] = {}
    while True:
        try:
            if driver.status() == psutil.STATUS_ZOMBIE:
                break
            for p in ray_processes(driver, temp_dir):
                tracked.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    left = [p for p in tracked.values() if p.is_running()]  # is_running also checks the pid was not reused
    for p in left:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=GRACE_S)
    return len(left)


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGHUP):  # only the driver's death (or stop()'s SIGTERM) ends us
        signal.signal(sig, signal.SIG_IGN)
    driver_pid, create_time, temp_dir = int(argv[0]), float(argv[1]), argv[2]
    watch(driver_pid, create_time, temp_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
