"""Writes survive a reader (the dashboard) and a briefly locked database; a real error still surfaces."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from sweeps.definitions import SWEEPS, resolve
from sweeps.ledger import Ledger
from sweeps.store import retry_on_locked, store_url


def _ledger_with_trial(tmp_path: Path) -> tuple[Ledger, int, Path]:
    db = tmp_path / "results.db"
    ledger = Ledger(store_url(str(db)))
    resolved = resolve(SWEEPS["dropout"], preset="tiny", seeds=1)
    sweep_id = ledger.upsert_sweep(resolved, {})
    todo, _ = ledger.plan(sweep_id, resolved.trials(), retry_failed=False)
    return ledger, todo[0][0], db


def _record(step: int) -> dict:
    return {"step": step, "progress": step / 100, "tokens": step * 1000.0, "seconds": step / 10, "loss": 5.0}


def test_writes_go_on_while_a_reader_holds_a_snapshot(tmp_path: Path) -> None:
    ledger, row_id, db = _ledger_with_trial(tmp_path)
    reader = sqlite3.connect(db, timeout=0)
    reader.execute("begin")
    reader.execute("select count(*) from cram_metrics").fetchall()  # a long read transaction, as a dashboard does
    for step in range(50):
        ledger.add_metrics(row_id, [_record(step)])
    assert reader.execute("select count(*) from cram_metrics").fetchone()[0] == 0  # its snapshot
    reader.rollback()
    assert reader.execute("select count(*) from cram_metrics").fetchone()[0] == 50
    reader.close()
    ledger.close()


def test_a_write_waits_out_another_writer(tmp_path: Path) -> None:
    ledger, row_id, db = _ledger_with_trial(tmp_path)
    other = sqlite3.connect(db, timeout=0, check_same_thread=False)
    other.execute("begin immediate")  # holds the write lock
    release = threading.Timer(1.0, other.rollback)
    release.start()
    t0 = time.monotonic()
    ledger.add_metrics(row_id, [_record(1)])
    assert time.monotonic() - t0 >= 0.5
    release.join()
    other.close()
    ledger.close()


def test_retry_on_locked() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("insert", {}, sqlite3.OperationalError("database is locked"))
        return "ok"

    assert retry_on_locked(flaky) == "ok" and len(calls) == 3

    def broken() -> None:
        raise OperationalError("insert", {}, sqlite3.OperationalError("no such table: cram_trials"))

    with pytest.raises(OperationalError, match="no such table"):
        retry_on_locked(broken)
