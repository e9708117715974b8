"""`python -m sweeps run --address` against a real two-node Ray cluster on one machine, with a PostgreSQL
store: trials run on both nodes and the store says which; a node killed mid-sweep has its trials retried
on the other, each (variant, seed) ending exactly once; a killed driver resumes against the same cluster
and store. The fake trainer (sweeps.testing) keeps each trial to about two seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from servers import query, ray_env, trial_counts  # tests/servers.py
from sweeps.definitions import SWEEPS, resolve
from sweeps.testing import NUM_RECORDS

REPO = Path(__file__).resolve().parents[2]
SWEEP, BUDGET = "norm_placement", "40ktok"  # 5 trials of 2 s each with the fake trainer


def _command(cluster, url: str, storage: Path) -> list[str]:
    return [sys.executable, "-m", "sweeps", "run", SWEEP, "--backend", "sweeps.testing", "--budget", BUDGET,
            "--seeds", "1", "--address", cluster.address, "--store", url, "--storage-path", str(storage)]


def _env() -> dict[str, str]:
    # the cluster's own settings (no auth: it is ours, on loopback), so the driver connects to it as started
    return {**ray_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _run(cluster, url: str, storage: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_command(cluster, url, storage), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=400)


def _start(cluster, url: str, storage: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(_command(cluster, url, storage), cwd=REPO, env=_env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(url: str, proc: subprocess.Popen, log: Path, ready, timeout_s: float = 240) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        c = trial_counts(url)
        if ready(c):
            return c
        time.sleep(0.1)
    raise AssertionError(f"sweep ended or stalled before the moment to act ({trial_counts(url)}):\n{log.read_text()}")


def _each_trial_once_and_completed(url: str) -> list:
    """Every planned (variant, seed) exactly once, completed, with exactly its own metric points."""
    planned = {(t.variant, t.seed) for t in resolve(SWEEPS[SWEEP], preset="tiny", budget=BUDGET, seeds=1).trials()}
    rows = query(url, "select id, variant, seed, status, summary from cram_trials")
    points = dict(query(url, "select trial_id, count(*) from cram_metrics group by trial_id"))
    assert sorted((v, s) for _, v, s, _, _ in rows) == sorted(planned)
    assert [status for *_, status, _ in rows] == ["completed"] * len(planned)
    assert all(points.get(row_id) == NUM_RECORDS for row_id, *_ in rows)
    return rows


def _nodes(rows: list) -> list[str]:
    return [summary["node"]["id"] for *_, summary in rows]


@pytest.mark.slow
def test_trials_run_on_both_nodes_and_the_store_says_which(ray_cluster, postgres_url: str, tmp_path: Path) -> None:
    nodes = ray_cluster.node_ids()
    shared = tmp_path / "tune"  # one machine: a local folder is shared by both nodes
    done = _run(ray_cluster, postgres_url, shared)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 trial(s) at a time, each 1 CPU" in done.stdout  # the cluster's 2 CPUs, not this machine's
    rows = _each_trial_once_and_completed(postgres_url)
    assert set(_nodes(rows)) == {nodes["head"], nodes["worker"]}
    assert shared.is_dir() and not any(shared.iterdir())  # Tune's run folder was there, and is cleaned up


@pytest.mark.slow
def test_a_killed_driver_resumes_against_the_same_cluster_and_store(ray_cluster, postgres_url: str,
                                                                   tmp_path: Path) -> None:
    log = tmp_path / "first.log"
    proc = _start(ray_cluster, postgres_url, tmp_path / "tune", log)
    try:
        at_kill = _wait_for(postgres_url, proc, log, lambda c: c.get("completed", 0) >= 1 and c.get("running", 0) >= 1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    second = _run(ray_cluster, postgres_url, tmp_path / "tune")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming:" in second.stdout and "interrupted trial(s) replanned" in second.stdout
    assert f"({at_kill['completed']} already done" in second.stdout or at_kill["completed"] < 5
    _each_trial_once_and_completed(postgres_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    states = [t.state for t in optuna.load_study(study_name=SWEEP, storage=postgres_url).trials]
    assert optuna.trial.TrialState.RUNNING not in states


@pytest.mark.slow
def test_a_killed_node_has_its_trials_retried_on_the_other(ray_cluster, postgres_url: str, tmp_path: Path) -> None:
    nodes = ray_cluster.node_ids()
    log = tmp_path / "sweep.log"
    proc = _start(ray_cluster, postgres_url, tmp_path / "tune", log)
    try:
        # one trial per node (1 CPU each): with two running, one of them is on the second node
        _wait_for(postgres_url, proc, log, lambda c: c.get("running", 0) >= 2)
        ray_cluster.worker.kill()
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert "worker died, retrying" in output
    rows = _each_trial_once_and_completed(postgres_url)
    assert nodes["head"] in _nodes(rows)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=SWEEP, storage=postgres_url).trials
    retried = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert retried and all(t.user_attrs["status_reason"].startswith("retried:") for t in retried)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == len(rows)


def test_bad_cluster_flags_are_one_line_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sweeps.cli import main

    db = tmp_path / "results.db"
    assert main(["run", SWEEP, "--backend", "sweeps.testing", "--max-failures", "-1", "--store", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-failures must be >= 0, got -1" in err
    assert not db.exists()


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:{port}", "no Ray cluster answers at 127.0.0.1:{port}"),
    ("ray://127.0.0.1:{port}", "no Ray cluster answers at ray://127.0.0.1:{port}"),
    ("headnode", "--address 'headnode' is not HOST:PORT, ray://HOST:PORT or auto"),
])
def test_an_address_without_a_cluster_fails_fast_and_writes_nothing(address: str, message: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    # before: ray.init retried for minutes (a 90 s timeout cut it short) and the store had been created
    from servers import free_port
    from sweeps.cli import main

    port = free_port()  # nothing listens there
    db = tmp_path / "results.db"
    t0 = time.monotonic()
    assert main(["run", SWEEP, "--backend", "sweeps.testing", "--address", address.format(port=port),
                 "--store", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(port=port) in err
    assert not db.exists() and time.monotonic() - t0 < 10
