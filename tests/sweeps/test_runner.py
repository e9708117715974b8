"""The runner on a real local Ray with the fake trainer backend (sweeps.testing): failures are results,
reruns skip what is done, and every store trial has its Optuna twin. One Ray start for the module."""

from __future__ import annotations

import io
import shutil
import math
from pathlib import Path

import optuna
import pytest
from rich.console import Console
from sqlalchemy import select

from sweeps.definitions import SWEEPS, Sweep, resolve
from sweeps.ledger import Ledger, SweepMismatch
from sweeps.runner import RunOptions, place, run_sweep
from sweeps.store import MetricRow, TrialRow
from sweeps.testing import NUM_RECORDS

FAILING = Sweep(
    name="failing", section="training", axis="fake failures", seeds=1,
    variants={
        "cosine": {"train.schedule": "cosine"},
        "diverges": {"optim.lr": 5.0},  # the fake trainer's NaN switch
        "crashes": {"optim.lr": 500.0},  # the fake trainer's exception switch
    },
)


def _run(sweep: Sweep, url: str, **kw) -> tuple:
    resolved = resolve(sweep, preset="tiny", budget="1s", **kw.pop("resolve", {}))
    console = Console(file=io.StringIO(), width=200)
    result = run_sweep(resolved, RunOptions(store_url=url, backend="sweeps.testing", **kw), console=console)
    return result, console.file.getvalue()


def _trials(url: str, name: str) -> list[TrialRow]:
    ledger = Ledger(url, create=False)
    try:
        return ledger._read(lambda s: list(s.scalars(select(TrialRow).order_by(TrialRow.id))))
    finally:
        ledger.close()


def _study(url: str, name: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url)


@pytest.fixture(scope="module")
def failing_store(ray_local, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('failing') / 'results.db'}"
    result, _ = _run(FAILING, url)
    assert result.ran == 4 and result.counts["completed"] == 2
    return url


def test_failures_are_recorded_and_the_sweep_goes_on(failing_store: str) -> None:
    rows = {r.variant: r for r in _trials(failing_store, "failing")}
    assert set(rows) == {"baseline", "cosine", "diverges", "crashes"}
    assert rows["baseline"].status == rows["cosine"].status == "completed"
    assert rows["diverges"].status == "diverged" and "non-finite loss" in rows["diverges"].reason
    crash = rows["crashes"]
    assert crash.status == "failed"
    assert crash.reason.startswith("RuntimeError: fake trainer crashed on purpose") and "\n" not in crash.reason
    for r in rows.values():  # provenance on every row, whatever its fate
        assert r.budget_kind == "seconds" and r.budget_amount == 1.0 and r.started_at and r.finished_at
        assert r.optuna_trial_number is not None and r.host
    assert rows["baseline"].eval_loss is not None and rows["baseline"].tokens > 0 and rows["baseline"].summary


def test_every_trial_has_its_optuna_twin(failing_store: str) -> None:
    rows = {r.variant: r for r in _trials(failing_store, "failing")}
    study = _study(failing_store, "failing")
    by_number = {t.number: t for t in study.get_trials()}
    assert len(by_number) == len(rows)
    for r in rows.values():
        t = by_number[r.optuna_trial_number]
        assert t.user_attrs["variant"] == r.variant and t.user_attrs["seed"] == r.seed
        assert t.user_attrs["config_hash"] == r.config_hash and t.user_attrs["status"] == r.status
        for key in ("tokens", "seconds", "tokens_per_second", "mfu", "status_reason"):
            assert key in t.user_attrs
        # the knobs the grid varies, with their values as run, and the seed: not one `variant` categorical
        assert set(t.params) == {"train.schedule", "optim.lr", "seed"} and t.params["seed"] == r.seed
        assert t.params["optim.lr"] == r.config["optim"]["lr"]
        assert t.params["train.schedule"] == r.config["train"]["schedule"]
        assert t.user_attrs["name"] == f"{r.variant} / seed {r.seed}"
    assert study.metric_names == ["held-out MLM loss"] and "tokens" in study.user_attrs["intermediate_step"]
    base = by_number[rows["baseline"].optuna_trial_number]
    assert base.state == optuna.trial.TrialState.COMPLETE and math.isclose(base.value, rows["baseline"].eval_loss)
    # held-out loss at the eval marks, keyed by tokens, ending with the objective itself
    assert len(base.intermediate_values) == NUM_RECORDS and min(base.intermediate_values) > 0
    assert base.intermediate_values[max(base.intermediate_values)] == base.value
    crash = rows["crashes"]
    crashed = by_number[crash.optuna_trial_number]
    assert crashed.state == optuna.trial.TrialState.FAIL and crashed.user_attrs["status_reason"] == crash.reason
    assert by_number[rows["diverges"].optuna_trial_number].state == optuna.trial.TrialState.FAIL


def test_metric_points_are_stored_per_record(failing_store: str) -> None:
    ledger = Ledger(failing_store, create=False)
    points = ledger._read(lambda s: list(s.scalars(select(MetricRow))))
    ledger.close()
    per_trial = {}
    for p in points:
        per_trial[p.trial_id] = per_trial.get(p.trial_id, 0) + 1
    rows = {r.variant: r for r in _trials(failing_store, "failing")}
    assert per_trial[rows["baseline"].id] == per_trial[rows["cosine"].id] == NUM_RECORDS
    assert rows["crashes"].id not in per_trial
    assert all(p.tokens > 0 and p.loss > 0 for p in points)


def test_other_baseline_under_the_same_name_is_refused(failing_store: str) -> None:
    resolved = resolve(FAILING, preset="tiny", budget="2s")
    with pytest.raises(SweepMismatch, match="budget"):
        run_sweep(resolved, RunOptions(store_url=failing_store, backend="sweeps.testing"),
                  console=Console(file=io.StringIO()))


def test_rerun_skips_final_trials_and_retries_failed_on_request(failing_store: str) -> None:
    again, _ = _run(FAILING, failing_store)
    assert again.ran == 0 and again.skipped == 4 and len(_study(failing_store, "failing").trials) == 4
    retried, _ = _run(FAILING, failing_store, retry_failed=True)
    assert retried.ran == 1
    rows = _trials(failing_store, "failing")
    assert len(rows) == 4 and [r.status for r in rows if r.variant == "crashes"] == ["failed"]
    assert len(_study(failing_store, "failing").trials) == 5  # the retry is a new Optuna trial


def test_search_sweep_runs_tpe_from_the_baseline(ray_local, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    result, _ = _run(SWEEPS["peak_lr"], url, resolve={"num_trials": 3})
    rows = _trials(url, "peak_lr")
    assert len(rows) == 3 and all(r.status == "completed" for r in rows)
    baseline = [r for r in rows if r.is_baseline]
    assert len(baseline) == 1 and baseline[0].variant == "baseline"
    assert baseline[0].config["optim"]["lr"] == resolve(SWEEPS["peak_lr"], preset="tiny").base.optim.lr
    assert all(r.variant.startswith("lr ") for r in rows if not r.is_baseline)  # readable labels
    study = _study(url, "peak_lr")
    assert len(study.trials) == 3
    for r in rows:
        t = study.trials[r.optuna_trial_number]
        assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["variant"] == r.variant
        assert set(t.params) == {"optim.lr", "train.warmup"} and len(t.intermediate_values) == NUM_RECORDS
        assert math.isclose(t.value, r.eval_loss)
    more, _ = _run(SWEEPS["peak_lr"], url, resolve={"num_trials": 4})
    assert more.ran == 1 and len(_study(url, "peak_lr").trials) == 4


@pytest.mark.parametrize("trials,cpus,gpus,gpt,cap,expected", [
    (22, 2, 0, None, None, (2, 1, 0.0, 1)),  # the 2-core laptop: two 1-thread trials
    (1, 2, 0, None, None, (1, 2, 0.0, 2)),
    (22, 16, 0, None, 4, (4, 4, 0.0, 4)),
    (22, 16, 2, None, None, (2, 8, 1.0, 8)),  # one GPU per trial
    (22, 16, 2, 0, None, (16, 1, 0.0, 1)),  # --gpus-per-trial 0 on a GPU box: CPU trials
])
def test_placement(trials, cpus, gpus, gpt, cap, expected) -> None:
    p = place(trials, cpus=cpus, gpus=gpus, gpus_per_trial=gpt, max_concurrent=cap)
    assert (p.concurrency, p.cpus_per_trial, p.gpus_per_trial, p.threads) == expected


def test_resume_finishes_optuna_twins_the_store_already_finished(tmp_path: Path) -> None:
    """A kill between the store write and the Optuna write: the store says completed, Optuna RUNNING.
    The resume must finish the twin from the store (not FAIL it, not rerun the trial)."""
    from sweeps.mirror import OptunaMirror, grid_space, trial_attrs
    from sweeps.runner import _finished_twins

    url = f"sqlite:///{tmp_path / 'results.db'}"
    resolved = resolve(FAILING, preset="tiny", budget="1s")
    ledger = Ledger(url)
    sweep_id = ledger.upsert_sweep(resolved, {})
    todo, _ = ledger.plan(sweep_id, resolved.trials(), retry_failed=False)
    mirror = OptunaMirror(url, "failing", space=grid_space(resolved), attrs={})
    done_row, cut_row = todo[0][0], todo[1][0]
    for row_id, planned in (todo[0], todo[1]):
        _, number = mirror.start(planned.variant, trial_attrs(variant=planned.variant, seed=0, config_hash="x"))
        ledger.start(row_id, optuna_number=number, git=(None, None), budget=("seconds", 1.0))
    ledger.finish(done_row, {"status": "completed", "eval_loss": 4.5, "final_loss": 4.4, "seconds": 1.0})
    # driver killed here: `done` is final in the store, `cut` was mid-training
    placement = place(4, cpus=2, gpus=0, gpus_per_trial=None, max_concurrent=None)
    settled, failed = mirror.recover(_finished_twins(ledger, sweep_id, placement))
    assert (settled, failed) == (1, 1)
    assert ledger.recover_interrupted(sweep_id, search=False) == 1
    trials = _study(url, "failing").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert trials[0].value == 4.5 and trials[0].user_attrs["status"] == "completed"
    todo, skipped = ledger.plan(sweep_id, resolved.trials(), retry_failed=False)
    assert skipped == 1 and cut_row in {r for r, _ in todo} and done_row not in {r for r, _ in todo}
    ledger.close()


def test_real_trainer_end_to_end(ray_local, tmp_path: Path, monkeypatch) -> None:
    """The wiring with cram_core's trainer: data prepared by the driver, real metric records and summary.

    The corpus is given as a path relative to the working directory, as users type it: trials must
    resolve it as the driver did (Ray would otherwise run them in per-trial directories).
    """
    pytest.importorskip("cram_core.train")
    from cram_core.data.sources import SAMPLE_PATH

    (tmp_path / "corpus").mkdir()
    shutil.copy(SAMPLE_PATH, tmp_path / "corpus" / "part-00.jsonl.xz")
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    sweep = Sweep(name="real", section="training", axis="x", seeds=1, variants={"cosine": {"train.schedule": "cosine"}})
    # a small corpus slice keeps the tokenizer training short; 3 optimizer steps of 32 x 64 tokens
    overrides = ["data.source=jsonl:corpus/*.jsonl.xz", "data.max_documents=40", "data.compressibility=none",
                 "train.log_every=1"]
    resolved = resolve(sweep, preset="tiny", budget="6ktok", overrides=overrides)
    console = Console(file=io.StringIO(), width=200)
    result = run_sweep(resolved, RunOptions(store_url=url), console=console)
    assert result.counts["completed"] == 2, console.file.getvalue()
    rows = _trials(url, "real")
    for r in rows:
        assert r.eval_loss is not None and r.tokens >= 6000 and r.steps >= 3 and r.params > 0
        assert r.hardware.startswith("CPU") and r.versions["torch"] and r.compile_s is not None
        assert r.summary["config"]["impl"]["threads"] == 1  # packed: 2 trials on 2 cores
    study = _study(url, "real")
    assert all(len(t.intermediate_values) >= 3 for t in study.trials)


def test_a_second_driver_on_a_live_sweep_is_refused(tmp_path: Path) -> None:
    from sweeps.ledger import SweepBusy

    url = f"sqlite:///{tmp_path / 'results.db'}"
    resolved = resolve(FAILING, preset="tiny", budget="1s")
    ledger = Ledger(url)
    sweep_id = ledger.upsert_sweep(resolved, {})
    ledger.heartbeat(sweep_id)  # this test process plays the live driver
    with pytest.raises(SweepBusy, match="being run right now"):
        run_sweep(resolved, RunOptions(store_url=url, backend="sweeps.testing"), console=Console(file=io.StringIO()))
    ledger.heartbeat(sweep_id, clear=True)
    ledger.check_not_running("failing")  # gone: no obstacle
    ledger.close()
