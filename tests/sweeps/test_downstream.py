"""Downstream scoring of sweep trials: validation before the store, eval rows and Optuna attributes, the
failure path (pretraining result kept), resume hygiene, and one real tiny sweep fine-tuned end to end."""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import shutil
from pathlib import Path

import optuna
import pytest
from rich.console import Console
from sqlalchemy import select

from sweeps.cli import main
from sweeps.definitions import Sweep, resolve
from sweeps.ledger import Ledger, SweepMismatch
from sweeps.mirror import trial_attrs
from sweeps.runner import RunOptions, downstream_spec, run_sweep
from sweeps.store import EvalRow, TrialRow, make_engine
from sweeps.trial import DownstreamSpec, run_trial

WORDS = ["the", "a", "movie", "film", "plot", "was", "is", "very", "long", "short", "and", "but", "dull", "story"]
ONE = Sweep(name="ds", section="training", axis="x", seeds=1, variants={"cosine": {"train.schedule": "cosine"}})


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        if i % 2:  # a keyword task: learnable, but here only the plumbing is under test
            words.insert(rng.randint(0, len(words)), "good")
        rows.append({"sentence": " ".join(words), "label": i % 2})
    return rows


def _write_task(root: Path, name: str, n_train: int = 64, n_dev: int = 32) -> None:
    """A task folder in the format cram_core.downstream reads (task.json + train/dev JSON Lines)."""
    task_dir = root / name
    task_dir.mkdir(parents=True)
    for split, rows in (("train", _rows(n_train, 1)), ("dev", _rows(n_dev, 2))):
        (task_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"name": name, "text_fields": ["sentence"], "label_field": "label", "labels": ["negative", "positive"],
            "metric": "accuracy"}
    (task_dir / "task.json").write_text(json.dumps(meta))


@pytest.fixture
def eval_root(tmp_path: Path) -> Path:
    root = tmp_path / "eval"
    _write_task(root, "keyword")
    _write_task(root, "other")
    return root


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- validation, before the store


@pytest.mark.parametrize("extra,match", [
    (["--downstream", "keyword,nope"], "unknown downstream task 'nope'; valid: "),
    (["--downstream-epochs", "2"], "--downstream-epochs, --downstream-data given without --downstream TASKS"),
    (["--downstream", "keyword", "--downstream-max-dev", "0"], "expected a positive integer"),
])
def test_bad_downstream_input_fails_before_the_store(eval_root: Path, tmp_path: Path, capsys, extra, match) -> None:
    for store in (tmp_path / "fresh.db", tmp_path / "existing.db"):
        if store.name == "existing.db":
            make_engine(f"sqlite:///{store}").dispose()
        before = _digest(store) if store.exists() else None
        with pytest.raises(SystemExit) as exc:
            raise SystemExit(main(["run", "dropout", "--preset", "tiny", "--store", str(store),
                                   "--downstream-data", str(eval_root), *extra]))
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and match in err, err
        if "unknown" in match:
            assert "keyword, other" in err  # the tasks that do exist
        assert (_digest(store) if store.exists() else None) == before


def test_show_and_dry_run_name_the_downstream_settings(eval_root: Path, tmp_path: Path, capsys) -> None:
    argv = ["--preset", "tiny", "--downstream", "keyword", "--downstream-data", str(eval_root),
            "--downstream-max-train", "10"]
    assert main(["show", "dropout", *argv]) == 0
    assert "keyword: 1 fine-tuning seed (protocol: 5), 5 epochs, train <= 10" in capsys.readouterr().out
    assert main(["run", "dropout", *argv, "--store", str(tmp_path / "r.db"), "--dry-run"]) == 0
    assert "downstream       keyword" in capsys.readouterr().out and not (tmp_path / "r.db").exists()


def test_other_downstream_settings_are_refused(eval_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    resolved = resolve(ONE, preset="tiny", budget="1s")
    spec = downstream_spec("keyword", epochs=1, data_root=str(eval_root))
    ledger = Ledger(url)
    ledger.upsert_sweep(resolved, {"downstream": spec.to_dict()})
    ledger.check_compatible(resolved, DownstreamSpec(**{**spec.to_dict(), "data_root": "/moved"}))  # same tasks
    for other in (None, downstream_spec("keyword", epochs=2, data_root=str(eval_root)),
                  downstream_spec("keyword,other", epochs=1, data_root=str(eval_root))):
        with pytest.raises(SweepMismatch, match="downstream"):
            run_sweep(resolved, RunOptions(store_url=url, backend="sweeps.testing", downstream=other),
                      console=Console(file=io.StringIO()))
    ledger.close()
    # and a sweep stored without downstream refuses a rerun that adds it
    plain = f"sqlite:///{tmp_path / 'plain.db'}"
    ledger = Ledger(plain)
    ledger.upsert_sweep(resolved, {})
    with pytest.raises(SweepMismatch, match="run with downstream off"):
        ledger.check_compatible(resolved, spec)
    ledger.close()


# ---------------------------------------------------------------- the trial, without Ray


def test_downstream_failure_keeps_the_pretraining_result(eval_root: Path, tmp_path: Path, monkeypatch) -> None:
    """The fake trainer saves no model, so fine-tuning fails: the trial must stay completed, with its loss,
    a reason naming the downstream error, no eval records, and its temporary model folder gone."""
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cfg = resolve(ONE, preset="tiny", budget="1s").base
    spec = downstream_spec("keyword", epochs=1, data_root=str(eval_root))
    summary = run_trial(cfg, backend="sweeps.testing", callback=None, downstream=spec)
    assert summary["status"] == "completed" and summary["eval_loss"] is not None
    assert summary["reason"].startswith("downstream evaluation failed: DownstreamError")
    assert "lacks" in summary["reason"] and summary["evals"] == []
    assert summary["timings"]["downstream_s"] >= 0 and summary["timings"]["train_s"] > 0
    assert list(scratch.iterdir()) == []  # the per-trial model folder was removed

    kept = tmp_path / "keep" / "ds" / "baseline-seed0"
    run_trial(cfg, backend="sweeps.testing", callback=None, downstream=spec, keep=kept)
    assert kept.is_dir()  # --keep-models: the folder stays

    url = f"sqlite:///{tmp_path / 'results.db'}"
    resolved = resolve(ONE, preset="tiny", budget="1s")
    ledger = Ledger(url)
    sweep_id = ledger.upsert_sweep(resolved, {"downstream": spec.to_dict()})
    (row_id, _), *_ = ledger.plan(sweep_id, resolved.trials(), retry_failed=False)[0]
    ledger.finish(row_id, summary)
    row = ledger._read(lambda s: s.get(TrialRow, row_id))
    assert row.status == "completed" and row.reason.startswith("downstream evaluation failed")
    assert ledger._read(lambda s: list(s.scalars(select(EvalRow)))) == []
    ledger.close()
    attrs = trial_attrs(variant="baseline", seed=0, config_hash="x", summary=summary)
    assert "downstream_avg" not in attrs and attrs["status"] == "completed"


def test_eval_rows_are_written_and_cleared_when_a_trial_is_replanned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    resolved = resolve(ONE, preset="tiny", budget="1s")
    ledger = Ledger(url)
    sweep_id = ledger.upsert_sweep(resolved, {})
    (row_id, _), *_ = ledger.plan(sweep_id, resolved.trials(), retry_failed=False)[0]
    evals = [{"task": "a", "metric": "accuracy", "value": v, "seed": s} for s, v in enumerate((0.5, 0.7, 0.6))]
    evals += [{"task": "b", "metric": "pearson", "value": 0.2, "seed": 0},
              {"task": "b", "metric": "pearson", "value": float("nan"), "seed": 1}]  # kept in the summary only
    summary = {"status": "completed", "eval_loss": 4.0, "evals": evals}
    ledger.finish(row_id, summary)
    rows = ledger._read(lambda s: list(s.scalars(select(EvalRow).order_by(EvalRow.id))))
    assert [(r.task, r.seed, r.value) for r in rows] == [("a", 0, 0.5), ("a", 1, 0.7), ("a", 2, 0.6), ("b", 0, 0.2)]
    attrs = trial_attrs(variant="baseline", seed=0, config_hash="x", summary=summary)
    assert attrs["downstream:a"] == 0.6 and attrs["downstream:b"] == 0.2  # median over fine-tuning seeds
    assert math.isclose(attrs["downstream_avg"], 0.4)
    # a driver killed while the trial ran again: the resume drops its rows with its metric points
    ledger.start(row_id, optuna_number=None, git=(None, None), budget=("seconds", 1.0))
    assert ledger.recover_interrupted(sweep_id, search=False) == 1
    assert ledger._read(lambda s: list(s.scalars(select(EvalRow)))) == []
    ledger.close()


# ---------------------------------------------------------------- one real sweep


def test_real_sweep_scores_every_trial_downstream(ray_local, eval_root: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("cram_core.train")
    from analysis.tables import sweep_table
    from cram_core.data.sources import SAMPLE_PATH

    (tmp_path / "corpus").mkdir()
    shutil.copy(SAMPLE_PATH, tmp_path / "corpus" / "part-00.jsonl.xz")
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    overrides = ["data.source=jsonl:corpus/*.jsonl.xz", "data.max_documents=40", "data.compressibility=none"]
    resolved = resolve(ONE, preset="tiny", budget="6ktok", overrides=overrides)
    spec = downstream_spec("keyword", epochs=1, max_train=48, max_dev=24, data_root=str(eval_root))
    console = Console(file=io.StringIO(), width=200)
    result = run_sweep(resolved, RunOptions(store_url=url, downstream=spec, keep_models="models"), console=console)
    log = console.file.getvalue()
    assert result.counts["completed"] == 2, log
    assert "downstream after each completed trial" in log and "keyword 0." in log  # the live line shows it

    ledger = Ledger(url, create=False)
    trials = ledger._read(lambda s: list(s.scalars(select(TrialRow))))
    evals = ledger._read(lambda s: list(s.scalars(select(EvalRow))))
    definition = ledger.sweep("ds").definition
    ledger.close()
    assert definition["downstream"]["tasks"] == ["keyword"] and definition["downstream"]["max_dev"] == 24
    for t in trials:
        mine = [e for e in evals if e.trial_id == t.id]
        assert [(e.task, e.metric, e.seed) for e in mine] == [("keyword", "accuracy", 0)], t.reason
        assert all(math.isfinite(e.value) and 0 <= e.value <= 1 for e in mine)
        assert t.reason is None and t.summary["timings"]["downstream_s"] > 0
        assert t.summary["evals"][0]["n_train"] == 48 and t.summary["evals"][0]["n_dev"] == 24
        assert (tmp_path / "models" / "ds" / f"{t.variant}-seed0" / "model.safetensors").is_file()

    table = sweep_table(url, "ds", fmt="md")
    header = next(line for line in table.splitlines() if line.startswith("| variant"))
    assert header.rstrip(" |").endswith("| keyword | avg"), table

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="ds", storage=url)
    assert study.user_attrs["downstream"].startswith("keyword: 1 fine-tuning seed")
    for t in study.trials:
        assert 0 <= t.user_attrs["downstream_avg"] <= 1 and t.user_attrs["downstream:keyword"] is not None
