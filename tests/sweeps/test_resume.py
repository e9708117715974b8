"""SIGKILL a running `python -m sweeps run`, run the same command again: the sweep finishes with every
(variant, seed) exactly once, stale metric points gone, and no Optuna trial left RUNNING; on SQLite and on
PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from servers import query, trial_counts  # tests/servers.py
from sweeps.definitions import SWEEPS, resolve
from sweeps.testing import NUM_RECORDS

REPO = Path(__file__).resolve().parents[2]


def _command(url: str) -> list[str]:
    # 1 s trials: still long enough that the kill lands with one running (at the kill: 1 completed, 1 running)
    return [sys.executable, "-m", "sweeps", "run", "lr_schedules", "--backend", "sweeps.testing", "--budget", "1s",
            "--seeds", "1", "--store", url]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.mark.slow
def test_sigkill_then_rerun_resumes(tmp_path: Path, db_url: str) -> None:
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_command(db_url), cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            c = trial_counts(db_url)
            # kill with a trial in flight, so the resume has an interrupted trial to redo
            if c.get("completed", 0) >= 1 and (c.get("running", 0) >= 1 or c.get("completed", 0) >= 3):
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"sweep ended before it could be killed:\n{(tmp_path / 'first.log').read_text()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        try:  # Ray's helpers were started by our driver, in its session: end them too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
    at_kill = trial_counts(db_url)
    assert at_kill.get("completed", 0) >= 1 and sum(at_kill.values()) == 11

    second = subprocess.run(_command(db_url), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    if at_kill.get("running"):
        assert "resuming" in second.stdout

    resolved = resolve(SWEEPS["lr_schedules"], preset="tiny", budget="1s", seeds=1)
    planned = {(t.variant, t.seed) for t in resolved.trials()}
    rows = query(db_url, "select id, variant, seed, status, optuna_trial_number from cram_trials")
    points = dict(query(db_url, "select trial_id, count(*) from cram_metrics group by trial_id"))
    assert sorted((v, s) for _, v, s, _, _ in rows) == sorted(planned)  # each exactly once
    assert all(status == "completed" for _, _, _, status, _ in rows)
    assert all(points.get(trial_id) == NUM_RECORDS for trial_id, *_ in rows)  # stale points removed

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="lr_schedules", storage=db_url)
    states = [t.state for t in study.get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(planned)
    orphans = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(orphans) >= at_kill.get("running", 0)  # the trials in flight at the kill
    assert all("interrupted" in t.user_attrs["status_reason"] for t in orphans)
    by_number = {t.number: t for t in study.get_trials()}
    for _, variant, _, _, number in rows:
        assert by_number[number].state == optuna.trial.TrialState.COMPLETE
        assert by_number[number].user_attrs["variant"] == variant
