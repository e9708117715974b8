"""`python -m analysis results NAME`: a sweep's Markdown page with its two loss figures, and the command line
`sweeps run` records for it."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from analysis_store import build_store
from PIL import Image
from sqlalchemy import create_engine, select, update

from analysis.cli import main
from sweeps.store import GpuBusyRow, SweepRow, TrialRow

COMMAND = "python -m sweeps run lr_schedules --preset tiny --seeds 3 --store 'my results.db'"
DEFINITION = {"section": "training", "axis": "LR schedule (budget-relative)", "preset": "tiny",
              "budget": {"kind": "tokens", "amount": 1e6, "text": "1Mtok"}, "seeds": [0, 1, 2],
              "base_overrides": ["budget.tokens=1000000.0", "data.source=sample"],
              "variants": {"baseline": {}, "one-cycle": {"train.schedule": "one-cycle"},
                           "constant": {"train.schedule": "constant"}},
              "placement": {"concurrency": 2, "cpus_per_trial": 1, "gpus_per_trial": 0.5, "threads": 1},
              "commands": [COMMAND]}


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    build_store(url)
    engine = create_engine(url)
    with engine.begin() as conn:  # what a real run records
        conn.execute(update(TrialRow).values(git_sha="0123456789abcdef0123", git_dirty=True, host="node-1",
                                             hardware="GPU Test 9000", versions={"torch": "9.9", "python": "3.11"},
                                             budget_kind="tokens", budget_amount=1e6))
        conn.execute(update(SweepRow).where(SweepRow.name == "lr_schedules").values(definition=DEFINITION))
        sweep_id = conn.execute(select(SweepRow.id).where(SweepRow.name == "lr_schedules")).scalar_one()
        conn.execute(GpuBusyRow.__table__.insert().values(sweep_id=sweep_id, host="node-1", wall_s=600.0, busy=0.8,
                                                          per_gpu=[0.8], names=["GPU Test 9000"], samples=1200))
    engine.dispose()
    return url


def _files(folder: Path) -> list[Path]:
    # reading SQLite in WAL mode leaves its -shm / -wal beside the store
    return sorted(p for p in folder.rglob("*") if not p.name.endswith(("-shm", "-wal")))


def test_the_page_has_provenance_command_table_figures_and_variants(url, tmp_path, capsys):
    out = tmp_path / "docs" / "results"
    assert main(["results", "lr_schedules", "--store", url, "--out", str(out), "--code-commit", "f5d7895"]) == 0
    names = ["lr_schedules.md", "lr_schedules-loss-tokens.png", "lr_schedules-loss-seconds.png"]
    assert capsys.readouterr().out.split() == [str(out / n) for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # PNG only, no SVG, no temporary file left
    page = (out / "lr_schedules.md").read_text()
    for text in ("- **section**: training", "- **preset**: tiny", "- **budget**: 1Mtok", "- **seeds**: 0, 1, 2",
                 "- **trials**: 13 completed, 3 diverged, 1 failed (of 17)", "0.5 GPU + 1 CPU",
                 "- **hardware**: GPU Test 9000", "- **hosts**: node-1", "80.0% of 10.0 min",
                 "recorded by the trials: 0123456789ab (dirty); code that ran: f5d7895", "python 3.11, torch 9.9"):
        assert text in page, text
    assert f"```bash\n{COMMAND}\n```" in page
    # the table `analysis table --format md` prints, its numbers and caption included
    assert main(["table", "lr_schedules", "--store", url, "--format", "md"]) == 0
    table = capsys.readouterr().out.strip()
    assert f"## Results\n\n{table}\n\n## Loss curves" in page
    assert "| one-cycle | 3/0/0 | 2.400 ± 0.025 | −0.100 ± 0.025 |" in page and "p (Holm)" in page
    assert page.index("## Provenance") < page.index("## Command") < page.index("## Results") \
        < page.index("## Loss curves") < page.index("## Variants")
    assert "](lr_schedules-loss-tokens.png)" in page and "](lr_schedules-loss-seconds.png)" in page
    assert "| one-cycle | `train.schedule=one-cycle` |" in page and "`data.source=sample`" in page
    assert "## Notes" not in page
    for name in names[1:]:
        with Image.open(out / name) as image:
            image.load()  # decodes every pixel
            assert image.format == "PNG" and image.width > 600


def test_the_page_is_the_same_bytes_when_regenerated(url, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        assert main(["results", "lr_schedules", "--store", url, "--out", str(folder), "--as", "lr_40M",
                     "--note", "What the table says."]) == 0
    assert (first / "lr_40M.md").read_bytes() == (second / "lr_40M.md").read_bytes()
    page = (first / "lr_40M.md").read_text()
    assert "](lr_40M-loss-tokens.png)" in page and page.endswith("## Notes\n\nWhat the table says.\n")


def test_command_lines_given_replace_the_recorded_one(url, tmp_path):
    assert main(["results", "lr_schedules", "--store", url, "--out", str(tmp_path), "--command", 'CORPUS="x"',
                 "--command", "python -m sweeps run lr_schedules --set data.source=$CORPUS"]) == 0
    page = (tmp_path / "lr_schedules.md").read_text()
    assert '```bash\nCORPUS="x"\npython -m sweeps run lr_schedules --set data.source=$CORPUS\n```' in page
    assert COMMAND not in page


def test_a_store_from_before_recorded_commands_reads_and_stays_byte_identical(tmp_path):
    # no commands in the definition and no cram_gpu_busy / cram_drivers table: a store made before either
    db = tmp_path / "old.db"
    build_store(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE cram_gpu_busy")
        con.execute("DROP TABLE cram_drivers")
    con.close()
    before = (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns)
    out = tmp_path / "out"
    assert main(["results", "single_seed", "--store", str(db), "--out", str(out)]) == 0
    assert (hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns) == before
    page = (out / "single_seed.md").read_text()
    assert "# not recorded: this store predates recorded commands (give --command)" in page
    assert "- **GPU busy**: not recorded" in page and "- **placement**: not recorded" in page
    # no declared variants: each one's config diff against the baseline instead
    assert "| pre-ln | `train.schedule=pre-ln` |" in page


@pytest.mark.parametrize("argv,message", [
    (["results", "lr_schedule"], "unknown sweep 'lr_schedule'; did you mean 'lr_schedules'?"),
    (["results", "lr_schedules", "--out", "{tmp}/a_file"], "a_file is a file, not a folder"),
    (["results", "lr_schedules", "--as", "../x"], "give a plain file name"),
    (["results", "lr_schedules", "--store", "{tmp}/missing.db"], "no store at"),
    (["results", "lr_schedules", "--store", "{tmp}/a_file"], "not a SQLite database"),
    (["results", "lr_schedules", "--store", "{tmp}/foreign.db"], "has no cram tables"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(url, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # where the default docs/results/ would go
    (tmp_path / "a_file").write_bytes(b"\x00not a database" * 64)
    with sqlite3.connect(tmp_path / "foreign.db") as con:
        con.execute("CREATE TABLE notes (id INTEGER)")
    con.close()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--store" not in argv:
        argv += ["--store", url]
    before = [(p, p.read_bytes()) for p in _files(tmp_path)]
    with pytest.raises(SystemExit) as exc:  # a path error leaves by SystemExit, a store error by return
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m analysis: error: ") and message in err, err
    assert [(p, p.read_bytes()) for p in _files(tmp_path)] == before


@pytest.mark.slow
def test_sweeps_run_records_its_command_line_and_the_page_prints_it(tmp_path, capsys):
    from sweeps.cli import main as sweeps_main

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run = ["run", "--name", "cmd_demo", "--vary", "optim.lr=1e-3,3e-3", "--preset", "tiny", "--budget", "1s",
           "--seeds", "1", "--store", url, "--backend", "sweeps.testing"]
    assert sweeps_main(run) == 0
    assert sweeps_main([*run, "--retry-failed"]) == 0  # a resume with another command line adds it
    assert sweeps_main(run) == 0  # the same one again is kept once
    engine = create_engine(url)
    with engine.connect() as conn:
        definition = conn.execute(select(SweepRow.definition).where(SweepRow.name == "cmd_demo")).scalar_one()
    engine.dispose()
    first = "python -m sweeps run --name cmd_demo --vary optim.lr=1e-3,3e-3 --preset tiny --budget 1s --seeds 1 " \
            f"--store {url} --backend sweeps.testing"
    assert definition["commands"] == [first, first + " --retry-failed"]
    capsys.readouterr()
    assert main(["results", "cmd_demo", "--store", url, "--out", str(tmp_path / "page")]) == 0
    assert f"```bash\n{first}\n{first} --retry-failed\n```" in (tmp_path / "page" / "cmd_demo.md").read_text()


def test_a_sweep_run_at_several_budgets_gets_its_scaling_page_or_one_budget_s_table(url, tmp_path, capsys):
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(TrialRow).where(TrialRow.seed == 0).values(budget_amount=2e6))
    engine.dispose()
    out = tmp_path / "out"
    assert main(["results", "lr_schedules", "--store", url, "--out", str(out)]) == 0  # tests/analysis/test_scaling
    assert "# Scaling sweep `lr_schedules`" in (out / "lr_schedules.md").read_text()
    assert main(["results", "lr_schedules", "--store", url, "--out", str(out), "--budget", "1Mtok"]) == 0
    assert "| one-cycle | 2/0/0 |" in (out / "lr_schedules.md").read_text()  # seeds 1 and 2 only
