"""The store under faults: one atomic driver claim, one line and exit 2 for every unusable store from both
CLIs, and read-only commands that leave any file exactly as it was."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from analysis.cli import main as analysis_main
from sweeps.cli import main as sweeps_main
from sweeps.definitions import SWEEPS, resolve
from sweeps.ledger import Ledger, SweepBusy
from sweeps.store import DriverRow

REPO = Path(__file__).resolve().parents[2]
ROOT = os.geteuid() == 0
NOT_AS_ROOT = "root ignores file permissions, so a read-only file or folder does not bite"

# ---------------------------------------------------------------- the single-driver claim


def _race(url: str, name: str = "dropout") -> list[object]:
    """Two drivers (threads, each with its own ledger) claim ``name`` at the same instant."""
    ledgers = [Ledger(url) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def driver(i: int) -> None:
        barrier.wait()
        try:
            ledgers[i].claim(name)
            outcomes[i] = "won"
        except SweepBusy as e:
            outcomes[i] = e
        except Exception as e:  # noqa: BLE001  (an IntegrityError here is the bug this test is about)
            outcomes[i] = e

    threads = [threading.Thread(target=driver, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for ledger in ledgers:
        ledger.close()
    return outcomes


def _exactly_one_wins(outcomes: list[object]) -> None:
    assert outcomes.count("won") == 1, outcomes
    loser = next(o for o in outcomes if o != "won")
    assert isinstance(loser, SweepBusy), repr(loser)
    assert "is being run right now" in str(loser) and "\n" not in str(loser)


def _dead_driver(url: str, name: str = "dropout") -> None:
    """A claim left by a driver that was killed: same host, a pid that no longer exists."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ledger = Ledger(url)
    ledger._write(lambda s: s.add(DriverRow(sweep=name, token="dead", host=os.uname().nodename, pid=gone.pid,
                                            heartbeat=0.0)))
    ledger.close()


@pytest.mark.parametrize("takeover", [False, True], ids=["fresh-store", "dead-driver"])
def test_two_racing_drivers_exactly_one_wins(db_url: str, takeover: bool) -> None:
    rounds = 25 if db_url.startswith("sqlite") else 10
    for i in range(rounds):
        name = f"race{i}"
        if takeover:
            _dead_driver(db_url, name)
        _exactly_one_wins(_race(db_url, name))
        left = Ledger(db_url)
        try:
            assert left.check_not_running(name) is None  # the winner released its claim on close
        finally:
            left.close()


def test_a_released_or_dead_claim_is_no_obstacle(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    first, second = Ledger(url), Ledger(url)
    first.claim("dropout")
    with pytest.raises(SweepBusy):
        second.claim("dropout")
    first.release()
    second.claim("dropout")
    first.close()
    second.close()
    _dead_driver(url, "lr_schedules")
    third = Ledger(url)
    third.claim("lr_schedules")
    third.close()


# ---------------------------------------------------------------- store faults, from both CLIs


def _random_bytes(d: Path) -> Path:
    p = d / "junk.db"
    p.write_bytes(os.urandom(65536))
    return p


def _zero_bytes(d: Path) -> Path:
    p = d / "empty.db"
    p.write_bytes(b"")
    return p


def _foreign(d: Path) -> Path:
    p = d / "other.db"
    con = sqlite3.connect(p)
    con.execute("create table people (name text)")
    con.execute("insert into people values ('ada')")
    con.commit()
    con.close()
    return p


def _directory(d: Path) -> Path:
    p = d / "folder.db"
    p.mkdir()
    return p


def _under_a_file(d: Path) -> Path:
    (d / "plain.txt").write_text("x")
    return d / "plain.txt" / "results.db"


def _read_only_file(d: Path) -> Path:
    p = d / "ro.db"
    Ledger(f"sqlite:///{p}").close()
    p.chmod(0o444)
    return p


def _under_read_only_folder(d: Path) -> Path:
    folder = d / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "results.db"


READ_FAULTS = {"random-bytes": _random_bytes, "zero-bytes": _zero_bytes, "foreign-sqlite": _foreign,
               "directory": _directory, "under-a-file": _under_a_file}
WRITE_FAULTS = {"random-bytes": _random_bytes, "foreign-sqlite": _foreign, "directory": _directory,
                "under-a-file": _under_a_file, "read-only-file": _read_only_file,
                "under-read-only-folder": _under_read_only_folder}
READ_COMMANDS = {
    "sweeps status": lambda s, out: (sweeps_main, ["status", "--store", s]),
    "sweeps status NAME": lambda s, out: (sweeps_main, ["status", "dropout", "--store", s]),
    "sweeps dashboard": lambda s, out: (sweeps_main, ["dashboard", "--store", s, "--port", "1"]),
    "analysis table": lambda s, out: (analysis_main, ["table", "dropout", "--store", s]),
    "analysis plot": lambda s, out: (analysis_main, ["plot", "dropout", "--store", s, "--out", out]),
    "analysis summary": lambda s, out: (analysis_main, ["summary", "--store", s, "--out", out]),
}


def _snapshot(folder: Path) -> dict[str, tuple[str, int] | None]:
    """Every path under ``folder`` with its content hash and mtime (None for folders)."""
    out: dict[str, tuple[str, int] | None] = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = None if p.is_dir() else (hashlib.sha256(p.read_bytes()).hexdigest(),
                                                                     p.stat().st_mtime_ns)
    return out


def _one_line_exit_2(code: int, capsys: pytest.CaptureFixture) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


@pytest.mark.parametrize("fault", READ_FAULTS)
@pytest.mark.parametrize("command", READ_COMMANDS)
def test_read_only_commands_on_a_bad_store_exit_2_and_change_nothing(tmp_path: Path, capsys, fault: str,
                                                                     command: str) -> None:
    folder = tmp_path / "stores"
    folder.mkdir()
    store = READ_FAULTS[fault](folder)
    before = _snapshot(folder)
    main, argv = READ_COMMANDS[command](str(store), str(tmp_path / "plots"))
    line = _one_line_exit_2(main(argv), capsys)
    assert "store" in line
    assert _snapshot(folder) == before  # bytes, mtime, and no -wal/-shm or other file appeared
    assert not (tmp_path / "plots").exists()


@pytest.mark.parametrize("fault", WRITE_FAULTS)
def test_run_on_a_bad_store_exits_2_and_changes_nothing(tmp_path: Path, capsys, fault: str) -> None:
    if fault.startswith(("read-only", "under-read-only")) and ROOT:
        pytest.skip(NOT_AS_ROOT)
    folder = tmp_path / "stores"
    folder.mkdir()
    store = WRITE_FAULTS[fault](folder)
    before = _snapshot(folder)
    code = sweeps_main(["run", "dropout", "--backend", "sweeps.testing", "--budget", "1s", "--seeds", "1",
                        "--store", str(store)])
    line = _one_line_exit_2(code, capsys)
    assert "store" in line
    if fault == "foreign-sqlite":
        assert "neither ours nor Optuna's" in line and "people" in line
    assert _snapshot(folder) == before


def _planned_dropout_store(tmp_path: Path) -> Path:
    """A real store holding the `dropout` sweep (tiny, one seed) with its trials planned."""
    db = tmp_path / "results.db"
    ledger = Ledger(f"sqlite:///{db}")
    resolved = resolve(SWEEPS["dropout"], preset="tiny", seeds=1)
    sweep_id = ledger.upsert_sweep(resolved, {})
    ledger.plan(sweep_id, resolved.trials(), retry_failed=False)
    ledger.close()
    return db


def test_a_real_store_read_by_status_and_analysis_is_byte_identical(tmp_path: Path, capsys) -> None:
    db = _planned_dropout_store(tmp_path)
    before = (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns)
    assert sweeps_main(["status", "dropout", "--store", str(db)]) == 0
    assert analysis_main(["table", "dropout", "--store", str(db)]) == 0
    capsys.readouterr()
    assert (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns) == before


def test_a_store_from_before_the_newer_tables_reads_and_stays_byte_identical(tmp_path: Path, capsys) -> None:
    # a results.db made by an earlier version has no cram_drivers / cram_gpu_busy table; before, `sweeps
    # status NAME` on it crashed with "no such table: cram_gpu_busy"
    import sqlite3

    db = _planned_dropout_store(tmp_path)
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE cram_gpu_busy")
        con.execute("DROP TABLE cram_drivers")
    con.close()
    before = (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns)
    assert sweeps_main(["status", "dropout", "--store", str(db)]) == 0
    assert sweeps_main(["status", "--store", str(db)]) == 0
    assert analysis_main(["table", "dropout", "--store", str(db)]) == 0
    assert "dropout" in capsys.readouterr().out
    assert (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns) == before
    old = Ledger(f"sqlite:///{db}", create=False)
    try:
        old.check_not_running("dropout")  # no claim table: nobody holds the sweep
        assert old.gpu_busy("dropout") == []
    finally:
        old.close()


@pytest.mark.parametrize("module", ["sweeps", "analysis"])
def test_random_bytes_store_is_one_line_exit_2_in_a_real_process(tmp_path: Path, module: str) -> None:
    store = _random_bytes(tmp_path)
    before = _snapshot(tmp_path)
    argv = ["status"] if module == "sweeps" else ["table", "dropout"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", module, *argv, "--store", str(store)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "not a SQLite database" in result.stderr
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("main,argv", [(sweeps_main, ["status"]), (analysis_main, ["table", "dropout"])],
                         ids=["sweeps status", "analysis table"])
def test_an_unreachable_server_is_one_line_without_the_password(capsys, main, argv) -> None:
    pytest.importorskip("psycopg")
    line = _one_line_exit_2(main([*argv, "--store", "postgresql://cram:s3cret@127.0.0.1:1/cram"]), capsys)
    assert "cram:***@127.0.0.1:1" in line and "s3cret" not in line
