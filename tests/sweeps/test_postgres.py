"""The results store on a real PostgreSQL server, side by side with SQLite: the ledger's life of a trial,
a sweep through the runner and the CLI, the analysis table, and the Optuna dashboard reading it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from sqlalchemy import select

from analysis.tables import sweep_table
from sweeps.cli import main
from sweeps.definitions import SWEEPS, resolve
from sweeps.ledger import Ledger
from sweeps.store import MetricRow, TrialRow

REPO = Path(__file__).resolve().parents[2]


def _record(step: int) -> dict:
    return {"step": step, "progress": step / 4, "tokens": step * 1000.0, "seconds": step / 2, "loss": 6.0 - step / 10}


def test_store_runs_on_the_server_it_is_given(db_url: str) -> None:
    ledger = Ledger(db_url)
    try:
        assert ledger.engine.dialect.name == db_url.split(":")[0]
    finally:
        ledger.close()


def test_a_trials_life_and_its_resume(db_url: str) -> None:
    ledger = Ledger(db_url)
    resolved = resolve(SWEEPS["dropout"], preset="tiny", seeds=1, budget="1s")
    sweep_id = ledger.upsert_sweep(resolved, {"backend": "sweeps.testing"})
    todo, done = ledger.plan(sweep_id, resolved.trials(), retry_failed=False)
    assert done == 0 and len(todo) == resolved.num_trials
    (first, planned), (second, _) = todo[0], todo[1]
    for row_id in (first, second):
        ledger.start(row_id, optuna_number=None, git=("abc", False), budget=("seconds", 1.0))
        ledger.add_metrics(row_id, [_record(i) for i in range(1, 5)])
    ledger.finish(first, {"status": "completed", "eval_loss": 5.5, "final_loss": 5.4, "tokens": 4000.0,
                          "hardware": "fake", "versions": {"fake": "1"}, "timings": {"train_s": 1.0},
                          "evals": [{"task": "sva", "metric": "accuracy", "value": 0.75, "seed": 0}]})
    # the driver dies with `second` running: a resume replans it and deletes its points
    assert ledger.recover_interrupted(sweep_id, search=False) == 1
    todo, done = ledger.plan(sweep_id, resolved.trials(), retry_failed=False)
    assert done == 1 and second in [r for r, _ in todo] and first not in [r for r, _ in todo]
    rows = ledger._read(lambda s: {r.id: r for r in s.scalars(select(TrialRow))})
    points = ledger._read(lambda s: [m.trial_id for m in s.scalars(select(MetricRow))])
    assert rows[first].status == "completed" and rows[first].eval_loss == 5.5 and rows[first].versions == {"fake": "1"}
    assert rows[first].started_at.tzinfo is not None or db_url.startswith("sqlite")
    assert rows[second].status == "planned" and points.count(second) == 0 and points.count(first) == 4
    p = ledger.progress("dropout")
    assert p.counts["completed"] == 1 and p.counts["planned"] == resolved.num_trials - 1
    assert (p.best.variant, p.best.mean, p.best.num_seeds) == (planned.variant, 5.5, 1)
    ledger.close()


def test_a_sweep_end_to_end_then_status_and_table(ray_local, db_url: str, capsys: pytest.CaptureFixture) -> None:
    args = ["run", "dropout", "--backend", "sweeps.testing", "--budget", "1s", "--seeds", "1", "--store", db_url]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 trials (0 already done, 3 to run)" in out and "3 completed, 0 diverged, 0 failed" in out
    assert main(args) == 0  # a rerun finds everything done
    assert "(3 already done, 0 to run)" in capsys.readouterr().out
    assert main(["status", "dropout", "--store", db_url]) == 0
    assert "3 completed, 0 running, 0 planned" in capsys.readouterr().out
    table = sweep_table(db_url, "dropout", fmt="md")
    assert "baseline" in table and "dropout 0.1, no attention dropout" in table
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="dropout", storage=db_url)
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE] * 3


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_dashboard_serves_the_store(ray_local, db_url: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "dropout", "--backend", "sweeps.testing", "--budget", "1s", "--seeds", "1",
                 "--store", db_url]) == 0
    capsys.readouterr()
    sys.path.insert(0, str(REPO / "tests"))
    from servers import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "sweeps", "dashboard", "--store", db_url, "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                studies = _get(f"http://127.0.0.1:{port}/api/studies")
                break
            except OSError:
                time.sleep(0.3)
        assert studies is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 60 s"
        [summary] = studies["study_summaries"]
        assert summary["study_name"] == "dropout"
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        assert len(detail["trials"]) == 3
        assert {a["key"] for a in detail["trials"][0]["user_attrs"]} >= {"variant", "seed", "config_hash"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_postgres_runs_in_ci() -> None:
    """In CI the PostgreSQL cases must have a server: .ci/run starts one and says where."""
    if os.environ.get("CI") != "true":
        pytest.skip("only checked in CI")
    assert os.environ.get("CRAM_TEST_POSTGRES_URL", "").startswith("postgresql://")
