"""Finished trials reused across sweeps: a completed (config hash, seed) that another sweep in the store
trained is linked, not trained again, keeps its own provenance, and shows in the table and the Optuna study
like any other trial; --rerun trains it anyway; a stale result (see ReuseRules) is trained again."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from sqlalchemy import select

from analysis.tables import sweep_table
from sweeps.cli import main
from sweeps.definitions import SWEEPS, resolve
from sweeps.ledger import Ledger, ReuseRules
from sweeps.store import MetricRow, SweepRow, TrialRow
from sweeps.testing import NUM_RECORDS

FAKE = ["--backend", "sweeps.testing", "--seeds", "1"]


def _run(name: str, url: str, *extra: str, budget: str = "10ktok") -> int:
    return main(["run", name, *FAKE, "--budget", budget, "--store", url, *extra])


def _rows(url: str, sweep: str) -> dict[str, TrialRow]:
    ledger = Ledger(url, create=False)
    try:
        return ledger._read(lambda s: {r.variant: r for r in s.scalars(
            select(TrialRow).join(SweepRow).where(SweepRow.name == sweep))})
    finally:
        ledger.close()


def _points(url: str, trial_id: int) -> list[tuple]:
    ledger = Ledger(url, create=False)
    try:
        return ledger._read(lambda s: [(m.step, m.tokens, m.loss) for m in s.scalars(
            select(MetricRow).where(MetricRow.trial_id == trial_id).order_by(MetricRow.step))])
    finally:
        ledger.close()


def test_a_shared_baseline_is_linked_not_retrained(ray_local, db_url: str, capsys: pytest.CaptureFixture) -> None:
    assert _run("dropout", db_url) == 0
    capsys.readouterr()
    assert _run("norm_placement", db_url) == 0
    out = capsys.readouterr().out
    assert "5 trials (0 already done, 1 reused from other sweeps, 4 to run)" in out
    assert "(1 reused from other sweeps)" in out

    source, linked = _rows(db_url, "dropout")["baseline"], _rows(db_url, "norm_placement")["baseline"]
    assert linked.id != source.id and linked.status == "completed"
    assert linked.summary["reused_from"] == {"trial_id": source.id, "sweep": "dropout"}
    assert linked.reason == f"reused: trained by sweep 'dropout' (trial {source.id})"
    for name in ("git_sha", "git_dirty", "host", "hardware", "versions", "eval_loss", "tokens", "started_at",
                 "finished_at"):  # its own provenance, not this run's
        assert getattr(linked, name) == getattr(source, name), name
    assert _points(db_url, linked.id) == _points(db_url, source.id) and len(_points(db_url, source.id)) == NUM_RECORDS

    table = sweep_table(db_url, "norm_placement", fmt="csv")
    assert "baseline" in table and "post-LN" in table
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    twin = optuna.load_study(study_name="norm_placement", storage=db_url).trials[linked.optuna_trial_number]
    assert twin.state == optuna.trial.TrialState.COMPLETE and twin.value == pytest.approx(linked.eval_loss)
    assert twin.user_attrs["reused_from"] == f"dropout trial {source.id}" and twin.intermediate_values

    assert _run("norm_placement", db_url) == 0  # a rerun of the sweep: everything done, nothing linked twice
    assert "(5 already done, 0 to run)" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="norm_placement", storage=db_url).trials) == 5


def test_rerun_trains_it_again(ray_local, tmp_path, capsys: pytest.CaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert _run("dropout", url) == 0
    assert _run("norm_placement", url, "--rerun") == 0
    assert "(0 already done, 5 to run)" in capsys.readouterr().out
    linked = _rows(url, "norm_placement")["baseline"]
    assert linked.reason is None and "reused_from" not in linked.summary


def test_a_seconds_budget_on_other_hardware_is_stale(ray_local, tmp_path, capsys: pytest.CaptureFixture) -> None:
    # the fake trainer records hardware "fake", never this machine's: under a seconds budget that is stale
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert _run("dropout", url, budget="1s") == 0
    assert _run("norm_placement", url, budget="1s") == 0
    out = capsys.readouterr().out
    assert "not reused (stale): 1 seconds budget on other hardware" in out and "(0 already done, 5 to run)" in out


def _source(**kw) -> TrialRow:
    return TrialRow(variant="baseline", seed=0, config={}, config_hash="h", status="completed",
                    **{"budget_kind": "tokens", "hardware": "GPU A", "git_sha": "old", **kw})


def test_what_makes_a_stored_result_stale() -> None:
    resolved = resolve(SWEEPS["dropout"], preset="tiny", seeds=1, budget="10ktok")
    planned = resolved.trials()[0]
    rules = ReuseRules(backend="cram_core", downstream=None, hardware=lambda p: "GPU A")
    definition = {"backend": "cram_core", "downstream": None}
    assert rules.stale_reason(_source(), definition, planned) is None
    assert rules.stale_reason(_source(git_sha="new", git_dirty=True, versions={"torch": "0"}, host="other"),
                              definition, planned) is None  # provenance differs: kept on the row, not stale
    assert rules.stale_reason(_source(hardware="GPU B"), definition, planned) is None  # tokens: any machine
    assert rules.stale_reason(_source(budget_kind="seconds"), definition, planned) is None  # same hardware
    assert rules.stale_reason(_source(budget_kind="seconds", hardware="GPU B"), definition, planned) == \
        "seconds budget on other hardware"
    unknown = dataclasses.replace(rules, hardware=lambda p: None)
    assert unknown.stale_reason(_source(budget_kind="seconds"), definition, planned) == \
        "seconds budget on other hardware"
    assert rules.stale_reason(_source(), {**definition, "backend": "sweeps.testing"}, planned) == \
        "trained by backend sweeps.testing"
    assert rules.stale_reason(_source(), {}, planned) is None  # stored before backends were recorded: the real one
    downstream = {"tasks": ["sva"], "seeds": 1, "epochs": 5, "max_train": None, "max_dev": None}
    # a run without downstream takes a fine-tuned source (its pretraining result is the same); one with it, not
    assert rules.stale_reason(_source(), {**definition, "downstream": downstream}, planned) is None
    with_ds = dataclasses.replace(rules, downstream=downstream)
    assert with_ds.stale_reason(_source(), definition, planned) == "other downstream settings"
    assert with_ds.stale_reason(_source(), {**definition, "downstream": {**downstream, "epochs": 3}}, planned) == \
        "other downstream settings"
    assert with_ds.stale_reason(_source(), {**definition, "downstream": {**downstream, "data_root": "/x"}},
                                planned) is None


def test_only_trials_trained_by_their_own_sweep_are_sources(ray_local, tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert _run("dropout", url) == 0
    assert _run("norm_placement", url) == 0
    assert _run("attention_bias", url) == 0
    ledger = Ledger(url, create=False)
    try:
        rows = ledger._read(lambda s: list(s.scalars(select(TrialRow).where(TrialRow.variant == "baseline"))))
    finally:
        ledger.close()
    origins = {(r.summary or {}).get("reused_from", {}).get("trial_id") for r in rows} - {None}
    trained = [r for r in rows if not (r.summary or {}).get("reused_from")]
    assert len(trained) == 1 and origins == {trained[0].id}
