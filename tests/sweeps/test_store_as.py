"""`sweeps run NAME --as OTHER`: the same sweep at another budget (or preset) in one store."""

from __future__ import annotations

import pytest

from sweeps.cli import main

FAKE = ["--backend", "sweeps.testing"]


def _completed(url: str, name: str, capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    assert main(["status", name, "--store", url]) == 0
    return capsys.readouterr().out


def test_one_sweep_at_two_budgets_in_one_store_then_resumed_by_its_new_name(
        ray_local, tmp_path, capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    common = ["--preset", "tiny", "--seeds", "1", "--store", url, *FAKE]
    assert main(["run", "dropout", "--budget", "1s", *common]) == 0
    capsys.readouterr()
    # before: the built-in name only, so a second budget was "this run differs: use another --store"
    assert main(["run", "dropout", "--budget", "2s", *common]) == 2
    assert "use another --store" in capsys.readouterr().err
    assert main(["run", "dropout", "--as", "dropout_2s", "--budget", "2s", *common]) == 0
    for name in ("dropout", "dropout_2s"):  # both complete, each with the three variants
        out = _completed(url, name, capsys)
        assert "3 completed" in out and "dropout 0.1, no attention dropout" in out
    assert main(["list", "--store", url]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("dropout_2s"))
    assert "2s on tiny (stored)" in line
    assert main(["run", "dropout_2s", "--store", url, *FAKE]) == 0  # no options: resumes as it was run
    assert "3 trials (3 already done, 0 to run)" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["show", "dropout", "--as", "norm_placement"], "--as 'norm_placement' is a built-in sweep"),
    (["show", "dropout", "--as", "bad name"], "--as 'bad name': use letters, digits"),
    (["show", "--name", "x", "--vary", "optim.lr=1e-3,2e-3", "--as", "y"], "--as renames a named sweep"),
])
def test_bad_new_names_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
