"""Put a sweep's analysis into optuna-dashboard: its figures and table as study artifacts, and a study note.

Artifacts go to Optuna's ``FileSystemArtifactStore`` in a folder beside the database
(`sweeps.mirror.artifact_dir`); ``python -m sweeps dashboard`` serves the same folder, so they appear on the
study's page under "Artifacts" (PNG and SVG preview there, the table and the report download). Re-attaching
replaces an artifact of the same file name rather than piling up copies.

The note (``optuna_dashboard.save_note``, stored in Optuna's own tables) is what the study page shows first:
the loss figure inline (an image link to its artifact), the results table, and which trial is which variant
and seed, since the dashboard's trial list only says "Trial N".

These are the only writes the analysis package makes, and they go through Optuna's API into Optuna's tables
and its artifact folder.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact
from optuna_dashboard import save_note
from sqlalchemy import inspect, text

from analysis import tables
from analysis.load import connect, load_sweep, normalize_url
from sweeps.mirror import artifact_store

OPTUNA_STUDIES_TABLE = "studies"
ARTIFACT_ATTR_PREFIX = "artifacts:"  # where optuna.artifacts.upload_artifact keeps each artifact's metadata
TABLE_FILES = {"table.md": "md", "table.csv": "csv"}


def study_exists(store_url: str, study_name: str) -> bool:
    """Whether Optuna has a study of this name in the store, checked without creating Optuna's tables."""
    engine = connect(store_url)
    try:
        if not inspect(engine).has_table(OPTUNA_STUDIES_TABLE):
            return False
        with engine.connect() as conn:
            query = text(f"SELECT 1 FROM {OPTUNA_STUDIES_TABLE} WHERE study_name = :name")
            return conn.execute(query, {"name": study_name}).first() is not None
    finally:
        engine.dispose()


def study_artifacts(study: optuna.Study) -> dict[str, str]:
    """File name -> artifact id of the study's live artifacts (a removed one's metadata is JSON null)."""
    out = {}
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        meta = json.loads(value) if key.startswith(ARTIFACT_ATTR_PREFIX) else None
        if meta:
            out[meta["filename"]] = meta["artifact_id"]
    return out


def replace_artifacts(study: optuna.Study, store: object, files: list[Path]) -> dict[str, str]:
    """Upload ``files``, each replacing the study's artifact of the same name; returns name -> artifact id."""
    existing = study_artifacts(study)
    ids = {}
    for path in files:
        old = existing.get(path.name)
        if old is not None:
            # as the dashboard's own delete does: drop the bytes, then null the metadata
            store.remove(old)  # type: ignore[attr-defined]
            study._storage.set_study_system_attr(study._study_id, ARTIFACT_ATTR_PREFIX + old, json.dumps(None))
        ids[path.name] = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
    return ids


def trials_markdown(study: optuna.Study) -> str:
    """Which trial is which: number, variant / seed, state, objective."""
    lines = ["| trial | name | state | held-out loss |", "|---:|---|---|---:|"]
    for t in study.get_trials(deepcopy=False):
        value = f"{t.value:.4f}" if t.value is not None else "—"
        name = t.user_attrs.get("name") or t.user_attrs.get("variant", "")
        lines.append(f"| {t.number} | {name} | {t.state.name} | {value} |")
    return "\n".join(lines)


def note_body(store_url: str, sweep_name: str, study: optuna.Study, artifacts: dict[str, str],
              files: list[Path]) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    figure = next((name for name in ("loss_vs_tokens.png", "loss_vs_seconds.png") if name in artifacts), None)
    lines = [f"## Sweep `{sweep_name}`: analysis", ""]
    if figure is not None:
        lines += [f"![{figure}](/artifacts/{study._study_id}/{artifacts[figure]})", ""]
    lines += [
        "Figures and table are under **Study Artifacts** on the study's main page. Files on disk: "
        + ", ".join(f"`{p.resolve()}`" for p in files if p.suffix in (".png", ".html")),
        "",
        f"Rebuild: `python -m analysis plot {sweep_name} --store {store_url} --x both`",
        "",
        tables.sweep_table(store_url, sweep_name, fmt="md"),
        "",
        tables.best_line(load_sweep(store_url, sweep_name)) or "",
        "",
        "### Trials",
        "",
        trials_markdown(study),
        "",
        f"_Updated {stamp}._",
    ]
    return "\n".join(lines)


def attach(store_url: str, sweep_name: str, files: list[Path] | Path | str, *,
           study_name: str | None = None) -> bool:
    """Upload ``files`` and the sweep's table as artifacts of the Optuna study named like the sweep, and save
    the note; False (nothing written) when there is no such study."""
    url = normalize_url(store_url)
    name = study_name or sweep_name
    if not study_exists(url, name):
        return False
    files = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    # skip_table_creation: the study exists, so its tables do; never let a read path migrate the schema
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        with tempfile.TemporaryDirectory(prefix="cram-table-") as folder:
            table_files = []
            for filename, fmt in TABLE_FILES.items():
                path = Path(folder) / filename
                path.write_text(tables.sweep_table(url, sweep_name, fmt=fmt) + "\n")
                table_files.append(path)
            artifacts = replace_artifacts(study, artifact_store(url), files + table_files)
        save_note(study, note_body(url, sweep_name, study, artifacts, files))
    finally:
        storage.remove_session()
        storage.engine.dispose()
    return True
