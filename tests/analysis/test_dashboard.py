"""`analysis plot` puts figures and table into the Optuna study: artifacts beside the store, and a note."""

from __future__ import annotations

import optuna
from analysis_store import build_store
from optuna.artifacts import download_artifact
from optuna_dashboard import get_note

from analysis import dashboard
from analysis.cli import main
from sweeps.mirror import artifact_dir, artifact_store, trial_attrs


def test_plot_uploads_figures_and_table_as_artifacts_and_replaces_them(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    build_store(url)
    study = optuna.create_study(study_name="lr_schedules", storage=url)
    study.add_trial(optuna.trial.create_trial(value=2.5, user_attrs=trial_attrs(variant="cosine", seed=1,
                                                                                  config_hash="h")))
    out = tmp_path / "figs"
    for _ in range(2):  # a second plot replaces the artifacts instead of adding copies
        assert main(["plot", "lr_schedules", "--store", url, "--x", "both", "--out", str(out)]) == 0
    assert "artifacts" in capsys.readouterr().out.splitlines()[-1]
    artifacts = dashboard.study_artifacts(optuna.load_study(study_name="lr_schedules", storage=url))
    expected = {f"{stem}.{ext}" for stem in ("loss_vs_tokens", "loss_vs_seconds", "throughput")
                for ext in ("png", "svg")} | {"table.md", "table.csv"}
    assert set(artifacts) == expected
    assert artifact_dir(url) == tmp_path / "results.db-artifacts"
    assert len(list(artifact_dir(url).iterdir())) == len(expected)  # the replaced ones' bytes are gone
    fetched = tmp_path / "table.csv"
    download_artifact(artifact_store=artifact_store(url), artifact_id=artifacts["table.csv"], file_path=str(fetched))
    assert "one-cycle" in fetched.read_text()
    note = get_note(optuna.load_study(study_name="lr_schedules", storage=url))
    # the study page: the loss figure inline, the table, and which trial is which variant and seed
    assert f"(/artifacts/{study._study_id}/{artifacts['loss_vs_tokens.png']})" in note
    assert "| one-cycle |" in note and "| 0 | cosine / seed 1 | COMPLETE | 2.5000 |" in note
