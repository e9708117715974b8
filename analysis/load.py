"""Read the results store into pandas DataFrames (read-only; any SQLAlchemy URL).

Every public function takes ``store``: a URL string (``sqlite:///results.db``, ``postgresql://...``, or a plain
file path, read as SQLite) or an already open ``Engine``. A URL is opened with
``sweeps.store.make_engine(url, create=False)``, so a missing store is a one-line ``StoreError`` rather than a
fresh empty file, and the engine is disposed before returning.

Frames:
- trials: one row per trial; the sweep name, the trial columns of ``cram_trials`` and the config flattened
  to dotted columns (``model.norm_scheme``, ``train.schedule``, ...).
- metrics: one row per logged step, with the owning trial's ``variant``, ``seed`` and ``status``.
- evals: one row per fine-tuning result; ``seed`` is the pretraining seed of the trial and ``eval_seed`` the
  fine-tuning seed, so frames join on (variant, seed) without renaming.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from cram_core.cli import unknown_name
from sweeps.store import (METRIC_FIELDS, EvalRow, MetricRow, StoreError, SweepRow, TrialRow, make_engine,
                          shown_url)

TRIAL_FIELDS = ("variant", "seed", "is_baseline", "status", "reason", "final_loss", "eval_loss", "tokens",
                "seconds", "flops", "steps", "tokens_per_second", "mfu", "params", "budget_kind",
                "budget_amount", "train_s", "optuna_trial_number", "git_sha", "git_dirty", "hardware")
Store = str | Engine


class UnknownSweepError(StoreError):
    """The sweep name is not in the store; the message lists the names that are."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepFrames:
    name: str
    definition: dict
    "the resolved sweep definition as the runner stored it"
    trials: pd.DataFrame
    metrics: pd.DataFrame
    evals: pd.DataFrame


def normalize_url(store_url: str) -> str:
    # a bare path is what people type; SQLAlchemy needs the scheme
    return store_url if "://" in store_url else f"sqlite:///{store_url}"


def connect(store_url: str) -> Engine:
    """Open an existing store; every failure (missing file, no tables, bad URL, server down) is a StoreError."""
    url = normalize_url(store_url)
    try:
        return make_engine(url, create=False)
    except StoreError:
        raise
    except SQLAlchemyError as e:  # an unreachable server surfaces at inspect time, not create_engine time
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StoreError(f"cannot read store {shown_url(url)!r}: {first_line}") from None


@contextlib.contextmanager
def using_store(store: Store) -> Iterator[Engine]:
    """An engine for ``store``; one this opened from a URL is disposed on exit, a passed-in one is left open."""
    if isinstance(store, Engine):
        yield store
        return
    engine = connect(store)
    try:
        yield engine
    finally:
        engine.dispose()


def sweep_names(store: Store) -> list[str]:
    """Sweep names in creation order."""
    with using_store(store) as engine, engine.connect() as conn:
        return list(conn.scalars(select(SweepRow.name).order_by(SweepRow.created_at, SweepRow.id)))


def _sweep_row(conn: Any, name: str) -> Any:
    row = conn.execute(select(SweepRow.id, SweepRow.definition).where(SweepRow.name == name)).first()
    if row is None:
        names = list(conn.scalars(select(SweepRow.name).order_by(SweepRow.created_at, SweepRow.id)))
        if not names:
            raise UnknownSweepError(f"unknown sweep {name!r}; the store has no sweeps yet")
        raise UnknownSweepError(f"{unknown_name('sweep', name, names)} (in this store)")
    return row


def flatten_config(config: dict | None, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"norm_scheme": "pre"}}`` -> ``{"model.norm_scheme": "pre"}``; nested groups keep dotting."""
    flat: dict[str, Any] = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def load_trials(store: Store, sweep: str | None = None) -> pd.DataFrame:
    """All trials (of one sweep, or of every sweep), config flattened into dotted columns."""
    columns = [TrialRow.id.label("trial_id"), SweepRow.name.label("sweep"),
               *(getattr(TrialRow, f) for f in TRIAL_FIELDS), TrialRow.config]
    query = select(*columns).join(SweepRow, TrialRow.sweep_id == SweepRow.id).order_by(TrialRow.id)
    with using_store(store) as engine, engine.connect() as conn:
        if sweep is not None:
            _sweep_row(conn, sweep)
            query = query.where(SweepRow.name == sweep)
        rows = conn.execute(query).mappings().all()
    base_columns = ["trial_id", "sweep", *TRIAL_FIELDS]
    records = [{**{c: r[c] for c in base_columns}, **flatten_config(r["config"])} for r in rows]
    frame = pd.DataFrame.from_records(records, columns=None if records else base_columns)
    return _numeric(frame, ("final_loss", "eval_loss", "tokens", "seconds", "flops", "tokens_per_second", "mfu",
                            "params", "steps", "budget_amount", "train_s"))


def load_metrics(store: Store, sweep: str | None = None) -> pd.DataFrame:
    """Logged training points joined to their trial's sweep, variant, seed and status, in step order."""
    columns = [MetricRow.trial_id, SweepRow.name.label("sweep"), TrialRow.variant, TrialRow.seed,
               TrialRow.status, *(getattr(MetricRow, f) for f in METRIC_FIELDS)]
    query = (select(*columns).join(TrialRow, MetricRow.trial_id == TrialRow.id)
             .join(SweepRow, TrialRow.sweep_id == SweepRow.id).order_by(MetricRow.trial_id, MetricRow.step))
    names = ["trial_id", "sweep", "variant", "seed", "status", *METRIC_FIELDS]
    with using_store(store) as engine, engine.connect() as conn:
        if sweep is not None:
            _sweep_row(conn, sweep)
            query = query.where(SweepRow.name == sweep)
        rows = conn.execute(query).all()
    frame = pd.DataFrame.from_records(rows, columns=names)
    # NULL loss (a diverged step) must read back as NaN, not None, for plotting and means
    return _numeric(frame, [f for f in METRIC_FIELDS if f != "step"])


def load_evals(store: Store, sweep: str | None = None) -> pd.DataFrame:
    """Downstream fine-tuning results; ``seed`` = pretraining seed, ``eval_seed`` = fine-tuning seed."""
    columns = [EvalRow.trial_id, SweepRow.name.label("sweep"), TrialRow.variant, TrialRow.seed,
               TrialRow.status, EvalRow.task, EvalRow.metric, EvalRow.value, EvalRow.seed.label("eval_seed")]
    query = (select(*columns).join(TrialRow, EvalRow.trial_id == TrialRow.id)
             .join(SweepRow, TrialRow.sweep_id == SweepRow.id).order_by(EvalRow.trial_id, EvalRow.id))
    names = ["trial_id", "sweep", "variant", "seed", "status", "task", "metric", "value", "eval_seed"]
    with using_store(store) as engine, engine.connect() as conn:
        if sweep is not None:
            _sweep_row(conn, sweep)
            query = query.where(SweepRow.name == sweep)
        rows = conn.execute(query).all()
    return _numeric(pd.DataFrame.from_records(rows, columns=names), ("value",))


def load_sweep(store: Store, name: str) -> SweepFrames:
    """Everything about one sweep in one call (one engine, so one connection setup)."""
    with using_store(store) as engine:
        with engine.connect() as conn:
            definition = _sweep_row(conn, name).definition or {}
        return SweepFrames(name=name, definition=definition, trials=load_trials(engine, name),
                           metrics=load_metrics(engine, name), evals=load_evals(engine, name))


def _numeric(frame: pd.DataFrame, columns: Any) -> pd.DataFrame:
    for column in columns:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame
