"""Link a sweep's analysis into optuna-dashboard: a markdown study note with the table and the figure's path.

Why a note and not a figure: optuna-dashboard can show custom figures (``save_plotly_graph_object``), but
they must be Plotly objects; Plotly is not a dependency and our figures are matplotlib. Uploading the PNG as an
Optuna artifact would need the dashboard started with an artifact store, which ``python -m sweeps dashboard``
does not configure. A study note (``optuna_dashboard.save_note``) needs nothing new: it is stored in Optuna's
own tables, shows on the study page, and carries the markdown table plus where the PNG lives (a browser will
not load a local file into the dashboard page, so the path is given as text, with the command that rebuilds it).

This is the one write the analysis package makes, and it goes through Optuna's API into Optuna's tables.
Each call saves a new note version, so re-plotting replaces what the dashboard shows.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import optuna
from optuna_dashboard import save_note
from sqlalchemy import inspect, text

from analysis import tables
from analysis.load import connect, normalize_url

OPTUNA_STUDIES_TABLE = "studies"


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


def note_body(store_url: str, sweep_name: str, png_path: Path | str) -> str:
    png = Path(png_path).resolve()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"## Sweep `{sweep_name}`: analysis",
        "",
        f"Loss curves, LR and batch size (PNG; the SVG is beside it): `{png}`",
        "",
        f"Rebuild: `python -m analysis plot {sweep_name} --store {store_url} --x tokens`",
        "",
        tables.sweep_table(store_url, sweep_name, fmt="md"),
        "",
        f"_Updated {stamp}._",
    ])


def attach(store_url: str, sweep_name: str, png_path: Path | str, *, study_name: str | None = None) -> bool:
    """Save the note on the Optuna study named like the sweep; False (nothing written) when there is none."""
    url = normalize_url(store_url)
    name = study_name or sweep_name
    if not study_exists(url, name):
        return False
    body = note_body(url, sweep_name, png_path)
    # skip_table_creation: the study exists, so its tables do; never let a read path migrate the schema
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        save_note(optuna.load_study(study_name=name, storage=storage), body)
    finally:
        storage.remove_session()
        storage.engine.dispose()
    return True
