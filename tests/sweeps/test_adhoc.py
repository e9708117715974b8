"""Sweeps a user defines without editing the package (sweeps.adhoc): an ad-hoc --name/--vary grid and a
--sweeps-file of Sweep(...) definitions behave like built-in sweeps in list, show, run, status, resume, the
Optuna study and the analysis, and the store alone is enough to resume or analyse them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
from sqlalchemy import create_engine, text

from analysis.cli import main as analysis_main
from cram_core.config import ConfigError
from sweeps.adhoc import grid_sweep, load_sweeps_file, parse_vary
from sweeps.cli import main
from sweeps.definitions import resolve

FAKE = ["--backend", "sweeps.testing"]
GRID = ["--name", "my_lr", "--vary", "optim.lr=1e-3,3e-3", "--vary", "train.schedule=triangle,one-cycle"]
SWEEPS_FILE = '''
from sweeps.definitions import Sweep

CLIP = Sweep(name="my_clip", section="training", axis="gradient clipping", seeds=1,
             variants={"no clipping": {"optim.grad_clip": 0.0}, "clip 1.0": {"optim.grad_clip": 1.0}})
'''


def _statuses(url: str, sweep: str) -> dict[str, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as con:
            rows = con.execute(text("select t.variant, t.status from cram_trials t join cram_sweeps s "
                                    "on t.sweep_id = s.id where s.name = :n"), {"n": sweep}).fetchall()
    finally:
        engine.dispose()
    return dict(rows)


def _set_status(url: str, sweep: str, variant: str, status: str) -> None:
    engine = create_engine(url)
    with engine.begin() as con:
        con.execute(text("update cram_trials set status = :st where variant = :v and sweep_id = "
                         "(select id from cram_sweeps where name = :n)"), {"st": status, "v": variant, "n": sweep})
    engine.dispose()


# ---------------------------------------------------------------- no Ray


def test_vary_is_the_cartesian_product_against_the_preset() -> None:
    sweep = grid_sweep("my_lr", ["optim.lr=5e-4,1e-3,2e-3", "train.schedule=triangle,one-cycle"])
    assert len(sweep.variants) == 6 and sweep.section == "ad hoc"
    assert sweep.variants["lr=5e-4, schedule=one-cycle"] == {"optim.lr": "5e-4", "train.schedule": "one-cycle"}
    resolved = resolve(sweep, preset="tiny", seeds=1)
    # tiny's own LR is 2e-3 with the triangle schedule: that combination is the baseline, not run twice
    assert [v.name for v in resolved.variants if v.same_as] == ["lr=2e-3, schedule=triangle"]
    assert resolved.num_trials == 6
    assert parse_vary(["train.seq_len_curriculum=32:0.25,64:0.5;64:0.5"]) == {
        "train.seq_len_curriculum": ["32:0.25,64:0.5", "64:0.5"]}


@pytest.mark.parametrize("argv,match", [
    (["run", "--vary", "optim.lr=1e-3,2e-3"], "--vary needs --name NAME"),
    (["run", "--name", "x"], "--name needs at least one --vary"),
    (["run", "dropout", "--name", "x", "--vary", "optim.lr=1"], "not both"),
    (["run"], "which sweep?"),
    (["run", "--name", "lr_schedules", "--vary", "optim.lr=1e-3"], "'lr_schedules' is a built-in sweep"),
    (["run", "--name", "a b", "--vary", "optim.lr=1e-3"], "use letters, digits"),
    (["run", "--name", "x", "--vary", "optim.lr"], "bad --vary 'optim.lr'"),
    (["run", "--name", "x", "--vary", "optim.lr=1e-3,,2e-3"], "an empty value"),
    (["run", "--name", "x", "--vary", "optim.lr=1", "--vary", "optim.lr=2"], "--vary optim.lr given twice"),
    (["run", "--name", "x", "--vary", "optim.lrr=1e-3,2e-3"], "unknown flag 'optim.lrr'; did you mean 'optim.lr'?"),
    (["run", "--name", "x", "--vary", "optim.lr=fast,2e-3"], "optim.lr: expected a number"),
    (["run", "x", "--sweeps-file", "{tmp}/missing.py"], "--sweeps-file {tmp}/missing.py: no such file"),
    (["run", "x", "--sweeps-file", "{tmp}/syntax.py"], "(line 1): SyntaxError"),
    (["run", "x", "--sweeps-file", "{tmp}/raises.py"], "ZeroDivisionError: division by zero"),
    (["run", "x", "--sweeps-file", "{tmp}/empty.py"], "defines no Sweep(...)"),
    (["run", "x", "--sweeps-file", "{tmp}/builtin.py"], "sweep 'dropout' is a built-in sweep"),
    (["run", "my_clp", "--sweeps-file", "{tmp}/good.py"], "unknown sweep 'my_clp'; did you mean 'my_clip'?"),
])
def test_bad_ad_hoc_input_is_one_line_before_the_store(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       argv: list[str], match: str) -> None:
    (tmp_path / "syntax.py").write_text("Sweep(name=\n")
    (tmp_path / "raises.py").write_text("1 / 0\n")
    (tmp_path / "empty.py").write_text("X = 1\n")
    (tmp_path / "builtin.py").write_text("from sweeps.definitions import SWEEPS\nD = SWEEPS['dropout']\n")
    (tmp_path / "good.py").write_text(SWEEPS_FILE)
    store = tmp_path / "r.db"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([*argv, "--store", str(store), *FAKE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m sweeps: error: ")
    assert match.replace("{tmp}", str(tmp_path)) in err
    assert not store.exists()


def test_a_sweeps_file_is_listed_and_shown(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "my_sweeps.py"
    path.write_text(SWEEPS_FILE)
    assert list(load_sweeps_file(str(path))) == ["my_clip"]
    assert main(["list", "--sweeps-file", str(path), "--store", str(tmp_path / "none.db")]) == 0
    out = capsys.readouterr().out
    assert "my_clip" in out and "gradient clipping" in out and "lr_schedules" in out
    assert main(["show", "my_clip", "--sweeps-file", str(path), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "no clipping" in out and "optim.grad_clip=0" in out and "seeds            1" in out
    assert not (tmp_path / "none.db").exists()


# ---------------------------------------------------------------- on Ray, with the fake trainer


@pytest.fixture(scope="module")
def grid_store(ray_local, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('adhoc') / 'results.db'}"
    assert main(["run", *GRID, "--preset", "tiny", "--budget", "1s", "--seeds", "1", "--store", url, *FAKE]) == 0
    return url


def test_an_ad_hoc_grid_runs_like_a_built_in_sweep(grid_store: str, capsys: pytest.CaptureFixture) -> None:
    statuses = _statuses(grid_store, "my_lr")
    assert statuses == {"baseline": "completed", "lr=1e-3, schedule=triangle": "completed",
                        "lr=1e-3, schedule=one-cycle": "completed", "lr=3e-3, schedule=triangle": "completed",
                        "lr=3e-3, schedule=one-cycle": "completed"}
    study = optuna.load_study(study_name="my_lr", storage=grid_store)  # what the dashboard shows
    assert len(study.trials) == 5
    assert main(["status", "my_lr", "--store", grid_store]) == 0
    out = capsys.readouterr().out
    assert "5 completed" in out and "lr=3e-3, schedule=one-cycle" in out
    assert " 20k " in out  # tokens/s as the tables print it (before: 20000)
    assert main(["status", "my_l", "--store", grid_store]) == 2
    assert "unknown sweep 'my_l'; did you mean 'my_lr'?" in capsys.readouterr().err
    assert analysis_main(["table", "my_lr", "--store", grid_store]) == 0
    assert "| lr=1e-3, schedule=one-cycle |" in capsys.readouterr().out


def test_the_store_alone_lists_shows_and_resumes_an_ad_hoc_sweep(grid_store: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "--store", grid_store]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("my_lr"))
    assert "ad hoc" in line and "1s on tiny (stored)" in line and "optim.lr x train.schedule" in line
    assert main(["show", "my_lr", "--store", grid_store]) == 0  # no --vary, no --preset, no --budget
    out = capsys.readouterr().out
    assert "baseline preset  tiny" in out and "budget           1s per trial" in out
    assert "lr=3e-3, schedule=one-cycle" in out and "optim.lr=3e-3 train.schedule=one-cycle" in out
    # a trial that a killed driver left unfinished is rerun from the stored definition alone
    _set_status(grid_store, "my_lr", "lr=3e-3, schedule=triangle", "planned")
    assert main(["run", "my_lr", "--store", grid_store, *FAKE]) == 0
    out = capsys.readouterr().out
    assert "5 trials (4 already done, 1 to run)" in out
    assert set(_statuses(grid_store, "my_lr").values()) == {"completed"}


def test_the_run_ends_with_a_rich_table_and_hints(grid_store: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "my_lr", "--store", grid_store, *FAKE]) == 0
    out = capsys.readouterr().out
    assert "lr=1e-3, schedule=one-cycle" in out and "verdict" in out
    assert "|---" not in out and "--:|" not in out  # before: the final table was raw markdown
    for command in ("sweeps status my_lr", "sweeps dashboard", "analysis table my_lr", "analysis plot my_lr",
                    "analysis report my_lr"):
        assert command in out, command


def test_a_sweeps_file_sweep_runs_then_resumes_without_the_file(ray_local, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "my_sweeps.py"
    path.write_text(SWEEPS_FILE)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    argv = ["run", "my_clip", "--preset", "tiny", "--budget", "1s", "--store", url, *FAKE]
    assert main([*argv, "--sweeps-file", str(path)]) == 0
    assert set(_statuses(url, "my_clip")) == {"baseline", "no clipping", "clip 1.0"}
    path.unlink()
    capsys.readouterr()
    _set_status(url, "my_clip", "clip 1.0", "planned")
    assert main(["run", "my_clip", "--store", url, *FAKE]) == 0
    assert "3 trials (2 already done, 1 to run)" in capsys.readouterr().out
    assert set(_statuses(url, "my_clip").values()) == {"completed"}
    before = hashlib.sha256((tmp_path / "results.db").read_bytes()).hexdigest()
    # a different baseline under the same name is refused, as for a built-in sweep
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(["run", "my_clip", "--store", url, "--budget", "2s", *FAKE]))
    assert exc.value.code == 2 and "was run with preset tiny" in capsys.readouterr().err
    assert hashlib.sha256((tmp_path / "results.db").read_bytes()).hexdigest() == before


def test_grid_sweep_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        grid_sweep("x", ["optim.lr=1", "optim.lr=2"])


def test_a_search_sweep_from_a_file_runs_and_says_it_needs_its_file(ray_local, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "search_sweeps.py"
    path.write_text(
        "from sweeps.definitions import Sweep\n\n"
        "def space(trial):\n"
        "    return {'optim.lr': trial.suggest_float('optim.lr', 1e-4, 1e-2, log=True)}\n\n"
        "S = Sweep(name='my_lr_search', section='training', axis='peak LR (TPE)', search=space, num_trials=3)\n")
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert main(["run", "my_lr_search", "--sweeps-file", str(path), "--budget", "1s", "--store", url, *FAKE]) == 0
    statuses = _statuses(url, "my_lr_search")
    assert len(statuses) == 3 and set(statuses.values()) == {"completed"} and "baseline" in statuses
    capsys.readouterr()
    # a search space is code, so the store cannot rebuild it: one line saying what to pass
    assert main(["run", "my_lr_search", "--store", url, *FAKE]) == 2
    assert "is a TPE search" in capsys.readouterr().err
