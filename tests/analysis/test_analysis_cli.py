import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from analysis_store import build_store
from optuna_dashboard import get_note

from analysis import dashboard
from analysis.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_table_prints_markdown(store_url, capsys):
    assert main(["table", "lr_schedules", "--store", store_url]) == 0
    assert "| one-cycle |" in capsys.readouterr().out


def test_table_empty_sweep_is_one_line_and_succeeds(store_url, capsys):
    assert main(["table", "empty_sweep", "--store", store_url]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no completed trials" in out


@pytest.mark.parametrize("sweep", ["empty_sweep", "no_trials"])
def test_csv_of_an_empty_sweep_is_its_header_with_the_message_on_stderr(store_url, capsys, sweep):
    # before: the message itself was printed as the "CSV", so a script reading it got no columns
    assert main(["table", "lr_schedules", "--store", store_url, "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert main(["table", sweep, "--store", store_url, "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out == header + "\n"
    assert captured.err.count("\n") == 1 and f"sweep {sweep!r}: no" in captured.err


def test_unknown_sweep_lists_valid_names(store_url, capsys):
    assert main(["table", "nope", "--store", store_url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "lr_schedules, single_seed, empty_sweep" in captured.err


def test_a_misspelt_sweep_gets_the_nearest_name(store_url, capsys):
    assert main(["table", "lr_schedule", "--store", store_url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m analysis: error: unknown sweep 'lr_schedule'; did you mean 'lr_schedules'?")


def test_missing_store_exits_2_in_a_real_process(tmp_path):
    # the only subprocess test: it proves `python -m analysis` wiring and the exit status end to end
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "analysis", "table", "x", "--store", str(tmp_path / "no.db")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no store" in result.stderr
    assert not (tmp_path / "no.db").exists()


def test_plot_writes_png_and_svg_and_notes_the_optuna_study(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    build_store(url)
    assert not dashboard.study_exists(url, "lr_schedules")
    optuna.create_study(study_name="lr_schedules", storage=url)
    out = tmp_path / "figs"
    assert main(["plot", "lr_schedules", "--store", url, "--x", "seconds", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    names = {"loss_vs_seconds.png", "loss_vs_seconds.svg", "throughput.png", "throughput.svg"}
    assert {Path(line).name for line in printed if line.endswith((".png", ".svg"))} == names
    for name in names:
        assert (out / name).stat().st_size > 1000
    assert (out / "loss_vs_seconds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "saved on Optuna study 'lr_schedules'" in printed[-1]
    note = get_note(optuna.load_study(study_name="lr_schedules", storage=url))
    assert str((out / "loss_vs_seconds.png").resolve()) in note
    assert "| one-cycle |" in note


def test_plot_default_out_dir_without_study_and_empty_sweep(store_url, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "single_seed", "--store", store_url]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(Path("plots") / "single_seed" / "loss_vs_tokens.png")
    assert printed[-1] == "no Optuna study named 'single_seed'; skipped dashboard note"
    assert (tmp_path / "plots" / "single_seed" / "loss_vs_tokens.svg").stat().st_size > 1000
    assert main(["plot", "empty_sweep", "--store", store_url]) == 0
    assert "no logged loss points" in capsys.readouterr().out


def test_summary_figure(store_url, tmp_path, capsys):
    assert main(["summary", "--store", store_url, "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "summary.png"), str(tmp_path / "summary.svg")]
    assert (tmp_path / "summary.png").stat().st_size > 1000


@pytest.mark.parametrize("argv", [["table"], ["plot", "x", "--x", "flops"], ["nope"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
