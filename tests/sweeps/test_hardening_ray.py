"""The local Ray of a sweep: it listens on loopback only, keeps Ray's token auth, and goes down with a driver
killed by SIGKILL. One real `python -m sweeps run` (fake trainer) is observed while a trial runs, then killed."""

from __future__ import annotations

import ipaddress
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 20.0
"Ray's agents, left alone, outlive a SIGKILLed driver by 40-100 s"


def _running(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("select count(*) from cram_trials where status = 'running'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ray-hardening")
    db, home = tmp / "results.db", tmp / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_AUTH_MODE", None)  # as a user's shell has it: Ray decides (token auth for a new local cluster)
    log = (tmp / "driver.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sweeps", "run", "lr_schedules", "--backend", "sweeps.testing",
                             "--budget", "4s", "--seeds", "1", "--store", str(db)], cwd=tmp, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not _running(db):
            time.sleep(0.2)
        assert proc.poll() is None and _running(db), (tmp / "driver.log").read_text()
        driver = psutil.Process(proc.pid)
        for p in driver.children(recursive=True):
            seen[p.pid] = p
        listening = set()
        for p in seen.values():
            try:
                listening |= {(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections("inet")
                              if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                continue
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < GONE_WITHIN_S and any(p.is_running() for p in seen.values()):
            time.sleep(0.2)
        survivors = [f"{p.pid} {p.name()}" for p in seen.values() if p.is_running()]
        return {"listening": listening, "survivors": survivors, "processes": len(seen),
                "token": (home / ".ray" / "auth_token").is_file(), "log": (tmp / "driver.log").read_text()}
    finally:
        for p in seen.values():  # whatever the outcome, leave nothing running
            try:
                p.kill()
            except psutil.Error:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only(killed_sweep: dict) -> None:
    listening = killed_sweep["listening"]
    assert len(listening) >= 3, killed_sweep  # GCS, raylet, workers at least
    exposed = sorted(s for s in listening if not _loopback(s[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"


@pytest.mark.slow
def test_local_ray_keeps_token_auth(killed_sweep: dict) -> None:
    # before: RAY_AUTH_MODE=disabled was forced for every local sweep; now Ray's default stands
    assert killed_sweep["token"], killed_sweep["log"][-2000:]


@pytest.mark.slow
def test_sigkilled_driver_takes_its_local_ray_down(killed_sweep: dict) -> None:
    assert killed_sweep["processes"] >= 4
    assert not killed_sweep["survivors"], f"still running {GONE_WITHIN_S:.0f} s after the kill: " \
                                          f"{killed_sweep['survivors']}"
