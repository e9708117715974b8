"""`python -m analysis report NAME`: one self-contained HTML file, and clean usage errors."""

from __future__ import annotations

import base64
import re

import pytest
from analysis_store import build_store
from sqlalchemy import create_engine, update

from analysis.cli import main
from analysis.report import config_diffs
from analysis.load import load_sweep
from sweeps.store import TrialRow


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    build_store(url)
    engine = create_engine(url)
    with engine.begin() as conn:  # the provenance a real run records
        conn.execute(update(TrialRow).values(git_sha="0123456789abcdef0123", git_dirty=False, host="node-1",
                                             hardware="CPU Test 9000", versions={"torch": "9.9", "python": "3.11"},
                                             budget_kind="tokens", budget_amount=1e6))
    engine.dispose()
    return url


def test_report_is_one_self_contained_file(url, tmp_path, capsys):
    out = tmp_path / "share" / "lr.html"
    assert main(["report", "lr_schedules", "--store", url, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    # no other file or network fetch: every image is inline, no stylesheet or script is linked
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [name for name, _ in images] == ["loss_vs_tokens", "loss_vs_seconds", "throughput"]
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    # the table, with its caption
    assert "<td>one-cycle</td>" in page and "helped" in page and "<caption>Sweep lr_schedules" in page
    # provenance
    for text in ("0123456789ab", "CPU Test 9000", "torch 9.9", "node-1", "0, 1, 2, 99"):
        assert text in page, text
    # each variant's config against the baseline
    assert "<h3>one-cycle</h3>" in page and "<td>train.schedule</td>" in page


def test_config_diff_lists_only_what_differs(url):
    frames = load_sweep(url, "lr_schedules")
    diffs = config_diffs(frames.trials, "baseline")
    assert diffs["cosine"] == [("train.schedule", "baseline", "cosine")]
    assert set(diffs) == {"one-cycle", "constant", "cosine", "inverse-sqrt", "ramp"}


def test_report_of_a_sweep_without_results_still_renders(url, tmp_path):
    out = tmp_path / "empty.html"
    assert main(["report", "empty_sweep", "--store", url, "--out", str(out)]) == 0
    page = out.read_text()
    assert "no logged loss points" in page and "<h2>Trials</h2>" in page


def test_default_path(url, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report", "single_seed", "--store", url]) == 0
    assert (tmp_path / "plots" / "single_seed" / "report.html").stat().st_size > 10_000


@pytest.mark.parametrize("argv,message", [
    (["report", "lr_schedule"], "unknown sweep 'lr_schedule'"),
    (["report", "lr_schedules", "--out", "{tmp}"], "is a folder; give a file name"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(url, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # where the default ./plots/NAME/report.html would go

    def files():  # reading SQLite in WAL mode leaves its -shm / -wal beside the store
        return sorted(p for p in tmp_path.rglob("*") if not p.name.endswith(("-shm", "-wal")))

    before = files()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--store", url]
    with pytest.raises(SystemExit) as e:
        code = main(argv)
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m analysis: error:") and message in err[0]
    assert files() == before
