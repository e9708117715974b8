"""The CLI without Ray: listing, showing, dry runs, and bad input failing in one line before any write."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.definitions import SWEEPS
from sweeps.store import make_engine

REPO = Path(__file__).resolve().parents[2]


def _fails_in_one_line(capsys: pytest.CaptureFixture, argv: list[str], match: str) -> None:
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert match in err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_list_shows_every_sweep(capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in SWEEPS:
        assert name in out
    assert "22 (2 seeds)" in out  # lr_schedules: 11 variants x 2 seeds


def test_show(capsys: pytest.CaptureFixture) -> None:
    assert main(["show", "norm_placement", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "post-LN" in out and "model.norm_scheme=post" in out and "baseline preset  tiny" in out


def test_dry_run_touches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "results.db"
    argv = ["run", "group_ablation", "--preset", "tiny", "--budget", "20s", "--seeds", "3",
            "--set", "optim.lr=0.003", "--store", str(store), "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "original BERT architecture" in out and "nothing was written" in out and "20s" in out
    assert "optim.lr=0.003" in out
    assert not store.exists()


@pytest.mark.parametrize("argv,match", [
    (["run", "nope"], "unknown sweep 'nope'; valid: lr_schedules"),
    (["run", "dropout", "--set", "model.foo=1"], "unknown flag 'model.foo'"),
    (["run", "dropout", "--set", "optim.lr=fast"], "optim.lr: expected a number"),
    (["run", "dropout", "--set", "nonsense"], "bad override 'nonsense'"),
    (["run", "dropout", "--budget", "10x"], "bad budget '10x'"),
    (["run", "dropout", "--preset", "huge"], "unknown preset 'huge'"),
    (["run", "dropout", "--seeds", "0"], "--seeds must be >= 1"),
    (["run", "dropout", "--max-concurrent", "0"], "--max-concurrent must be >= 1"),
    (["run", "dropout", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "dropout", "--set", "data.source=jsonl:/nonexistent/*.jsonl.xz"], "matches no file"),
    (["run", "dropout", "--set", "data.source=foo:bar"], "unknown source kind 'foo'"),
])
def test_bad_input_fails_before_the_store(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                          match: str) -> None:
    fresh = tmp_path / "fresh.db"
    _fails_in_one_line(capsys, [*argv, "--store", str(fresh)], match)
    assert not fresh.exists()
    existing = tmp_path / "existing.db"
    make_engine(f"sqlite:///{existing}").dispose()
    before = _digest(existing)
    _fails_in_one_line(capsys, [*argv, "--store", str(existing)], match)
    assert _digest(existing) == before


def test_status_and_dashboard_need_a_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing.db"
    _fails_in_one_line(capsys, ["status", "--store", str(missing)], "no store at")
    _fails_in_one_line(capsys, ["status", "lr_schedules", "--store", str(missing)], "no store at")
    _fails_in_one_line(capsys, ["dashboard", "--store", str(missing)], "no store at")
    assert not missing.exists()
    empty = tmp_path / "empty.db"
    make_engine(f"sqlite:///{empty}").dispose()
    _fails_in_one_line(capsys, ["status", "lr_schedules", "--store", str(empty)], "no sweep 'lr_schedules'")


def test_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sweeps", "run", "nope", "--store", str(tmp_path / "r.db")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown sweep 'nope'" in proc.stderr
    assert not (tmp_path / "r.db").exists()
