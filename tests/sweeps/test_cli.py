"""The CLI without Ray: listing, showing, dry runs, and bad input failing in one line before any write."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    assert "55 (5 seeds)" in out  # lr_schedules: 11 variants x 5 seeds
    lr_line = next(line for line in out.splitlines() if line.startswith("lr_schedules"))
    assert "100ktok on tiny, 80Mtok on gpu-sweep; the preset's seconds elsewhere" in lr_line
    assert "100ktok in FLOPs on tiny" in next(line for line in out.splitlines() if line.startswith("model_shape"))


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
    # a check that needs the trials' device: CPU trials have no autocast dtype under impl.precision=auto
    (["run", "dropout", "--gpus-per-trial", "0", "--set", "impl.residual_dtype=autocast"],
     "impl.residual_dtype=autocast needs an autocast dtype and impl.precision=auto runs fp32 on cpu"),
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


# ---------------------------------------------------------------- issue 10: the CLI helps


@pytest.mark.parametrize("argv,match", [
    (["show", "norm_placment"], "unknown sweep 'norm_placment'; did you mean 'norm_placement'?"),
    (["show", "dropout", "--preset", "tny"], "unknown preset 'tny'; did you mean 'tiny'?"),
    (["show", "dropout", "--set", "model.norm_schme=post"], "unknown flag 'model.norm_schme'; did you mean "
                                                            "'model.norm_scheme'?"),
    (["show", "dropout", "--set", "modl.norm_scheme=post"], "did you mean 'model.norm_scheme'?"),
    (["show", "dropout", "--set", "model.norm_scheme=pots"], "unknown choice 'pots'; did you mean 'post'?"),
    (["lst"], "invalid choice 'lst'; did you mean 'list'?"),
    (["run", "dropout", "--budgt", "5m"], "unrecognized arguments: --budgt 5m; did you mean --budget?"),
    (["run", "dropout", "--dry-rn"], "did you mean --dry-run?"),
])
def test_unknown_names_suggest_the_nearest(capsys: pytest.CaptureFixture, argv: list[str], match: str) -> None:
    # before: `show norm_placment` listed all 28 sweeps, and a misspelt option or choice got no hint
    _fails_in_one_line(capsys, argv, match)


def test_a_name_with_nothing_close_still_lists_the_valid_ones(capsys: pytest.CaptureFixture) -> None:
    _fails_in_one_line(capsys, ["show", "nope"], "unknown sweep 'nope'; valid: lr_schedules")
    _fails_in_one_line(capsys, ["show", "dropout", "--set", "model.foo=1"], "valid model flags: model.num_layers")


def test_an_unknown_downstream_task_suggests_the_nearest(tmp_path: Path) -> None:
    from cram_core.config import ConfigError
    from sweeps.runner import downstream_spec

    for task in ("keyword", "count"):
        (tmp_path / task).mkdir()
        (tmp_path / task / "task.json").write_text("{}")
    with pytest.raises(ConfigError, match="unknown downstream task 'keywrd'; did you mean 'keyword'?"):
        downstream_spec("keywrd", data_root=str(tmp_path))


def test_the_downstream_error_names_the_flag_sweeps_run_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    # before: "pass --data-root or set CRAM_EVAL_DATA", and `sweeps run --data-root` is an unknown argument
    monkeypatch.setenv("CRAM_EVAL_DATA", str(tmp_path / "missing"))
    _fails_in_one_line(capsys, ["run", "dropout", "--downstream", "sva", "--store", str(tmp_path / "r.db")],
                       "pass --downstream-data DIR or set CRAM_EVAL_DATA")
    assert not (tmp_path / "r.db").exists()


def _cli_mains() -> dict[str, Any]:
    from analysis.cli import main as analysis_main
    from cram_core import bench, downstream, train
    from cram_core.data.__main__ import main as data_main

    return {"python -m sweeps": main, "python -m analysis": analysis_main, "python -m cram_core.train": train.main,
            "python -m cram_core.bench": bench.main, "python -m cram_core.data": data_main,
            "python -m cram_core.downstream": downstream.main}


@pytest.mark.parametrize("prog,argv", [
    ("python -m sweeps", ["show", "nope"]),
    ("python -m sweeps", ["show"]),
    ("python -m analysis", ["table", "x", "--store", "{tmp}/missing.db"]),
    ("python -m cram_core.train", ["--preset", "tiny", "model.norm=batchnorm"]),
    ("python -m cram_core.bench", ["model.norm=batchnorm"]),
    ("python -m cram_core.data", ["prepare", "model.num_layers=2"]),
    ("python -m cram_core.downstream", ["{tmp}/no-run", "--tasks", "x", "--threads", "-1"]),
    ("python -m sweeps", ["run", "--bogus"]),
    ("python -m cram_core.train", ["--bogus"]),
])
def test_every_cli_has_one_error_style(tmp_path: Path, capsys: pytest.CaptureFixture, prog: str,
                                       argv: list[str]) -> None:
    # before: errors began "sweeps: error:", "error:" or "python -m sweeps: error:" depending on where they arose
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(_cli_mains()[prog](argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}") and ": error: " in err, err


def _options(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, argparse.Action, str]]:
    out = []
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _options(sub, f"{path} {name}")
        elif action.option_strings and action.help is not argparse.SUPPRESS \
                and not isinstance(action, argparse._HelpAction):
            out.append((f"{path} {action.option_strings[-1]}", action, formatter._expand_help(action)))
    return out


def _parser_of(main_fn: Any, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser a CLI's main() builds, caught at its parse_args."""
    from cram_core.cli import OneLineParser

    class Caught(Exception):
        pass

    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        raise Caught(self)

    with monkeypatch.context() as m:
        m.setattr(OneLineParser, "parse_args", catch)
        m.setattr(OneLineParser, "parse_known_intermixed_args", catch)  # cram_core.train parses intermixed
        with pytest.raises(Caught) as exc:
            main_fn([])
    return exc.value.args[0]


def test_every_option_has_help_and_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # before: --port, --format, --x, --epochs, --lr and others had no help text, several no stated default
    options = []
    for prog, main_fn in _cli_mains().items():
        options += _options(_parser_of(main_fn, monkeypatch), prog)
    assert len(options) > 60
    missing = [name for name, action, text in options
               if not action.help or not ("default" in text or "(required)" in text)]
    assert not missing, missing


def test_list_flags_honours_the_preset(capsys: pytest.CaptureFixture) -> None:
    # before: --list-flags --preset tiny printed crammed-bert's defaults (16 layers)
    from cram_core import train

    def num_layers(argv: list[str]) -> str:
        assert train.main(argv) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("model.num_layers"))
        return line.split("default=")[1].split()[0]

    assert num_layers(["--list-flags", "--preset", "tiny"]) == "2"
    assert num_layers(["--list-flags", "--preset", "small"]) != num_layers(["--list-flags"]) == "16"


@pytest.mark.parametrize("argv", [["cram_core.train", "--list-flags"], ["sweeps", "list"]])
def test_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    # `--list-flags | head`: the reader is gone before we write. Before: a BrokenPipeError traceback
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == ""


def _readme_commands(section: str) -> list[list[str]]:
    import shlex

    text = (REPO / "README.md").read_text()
    body = text[text.index(f"## {section}\n"):]
    body = body[: body.find("\n## ", 3)]  # up to the next section
    commands = []
    for block in body.split("```")[1::2]:
        for line in block.splitlines():
            if line.startswith("python -m "):
                commands.append(shlex.split(line, comments=True))
    return commands


def test_the_readme_tour_and_own_ablation_commands_parse_and_dry_run(tmp_path: Path, monkeypatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    # before: `--format md|csv|latex` and `--x tokens|seconds` were shell pipes, and --downstream worked only
    # beside this repository's ../shared; every sweeps/analysis command of the README must run as written
    from analysis.cli import _parser as analysis_parser

    eval_root = REPO.parent / "shared" / "data" / "eval"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_sweeps.py").write_text(
        "from sweeps.definitions import Sweep\n"
        "MY_CLIP = Sweep(name='my_clip', section='training', axis='clip', variants={'c': {'optim.grad_clip': 0.0}})\n")
    commands = _readme_commands("Tour") + _readme_commands("Your own ablation")
    assert len(commands) > 20
    for argv in commands:
        module, args = argv[2], [a.replace("my_eval", str(eval_root)) for a in argv[3:]]
        if module == "analysis":
            analysis_parser().parse_args(args)
        elif module == "sweeps" and args[0] in ("run", "show", "list"):
            if "--downstream-data" in args and not eval_root.is_dir():
                continue
            extra = ["--dry-run", "--store", str(tmp_path / "r.db")] if args[0] == "run" else []
            assert main([*args, *extra]) == 0, argv
    assert not (tmp_path / "r.db").exists()
    capsys.readouterr()
