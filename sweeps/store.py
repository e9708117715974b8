"""The results store: SQLAlchemy 2.x models for sweeps, trials, metric points and eval results.

One SQLite file (``./results.db``, WAL mode) by default; any SQLAlchemy URL (PostgreSQL for clusters).
Our tables are prefixed ``cram_`` so they never collide with Optuna's, which live in the same database.
Every trial row describes itself: config JSON + hash, seed, git SHA + dirty flag, host, hardware,
library versions, budget, timings and final metrics.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

DEFAULT_STORE = "sqlite:///results.db"
TRIAL_STATUSES = ("planned", "running", "completed", "diverged", "failed", "cancelled")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class SweepRow(Base):
    __tablename__ = "cram_sweeps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    definition: Mapped[dict] = mapped_column(JSON)
    "the resolved sweep: preset, budget, seeds, variants with their overrides"
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    trials: Mapped[list[TrialRow]] = relationship(back_populates="sweep", cascade="all, delete-orphan")
    gpu_busy: Mapped[list[GpuBusyRow]] = relationship(cascade="all, delete-orphan")


class TrialRow(Base):
    __tablename__ = "cram_trials"
    __table_args__ = (UniqueConstraint("sweep_id", "config_hash", "seed", name="uq_trial_config_seed"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("cram_sweeps.id"), index=True)
    variant: Mapped[str] = mapped_column(String(200))
    seed: Mapped[int] = mapped_column(Integer)
    is_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[dict] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), default="planned")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # provenance
    git_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    git_dirty: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    hardware: Mapped[str | None] = mapped_column(String(200), nullable=True)
    versions: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    budget_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    budget_amount: Mapped[float | None] = mapped_column(Float, nullable=True)
    # timings (seconds); train_s is budget time, the others are outside the budget
    prepare_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    compile_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # final metrics
    final_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    flops: Mapped[float | None] = mapped_column(Float, nullable=True)
    steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    mfu: Mapped[float | None] = mapped_column(Float, nullable=True)
    params: Mapped[int | None] = mapped_column(Integer, nullable=True)
    summary: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    "the trainer's full summary, for anything not promoted to a column"
    optuna_trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    sweep: Mapped[SweepRow] = relationship(back_populates="trials")
    metrics: Mapped[list[MetricRow]] = relationship(back_populates="trial", cascade="all, delete-orphan")
    evals: Mapped[list[EvalRow]] = relationship(back_populates="trial", cascade="all, delete-orphan")


class MetricRow(Base):
    __tablename__ = "cram_metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("cram_trials.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    progress: Mapped[float] = mapped_column(Float)
    tokens: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    flops: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    lr: Mapped[float | None] = mapped_column(Float, nullable=True)
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seq_len: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    mfu: Mapped[float | None] = mapped_column(Float, nullable=True)
    trial: Mapped[TrialRow] = relationship(back_populates="metrics")


class EvalRow(Base):
    __tablename__ = "cram_evals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("cram_trials.id"), index=True)
    task: Mapped[str] = mapped_column(String(100))
    metric: Mapped[str] = mapped_column(String(50))
    value: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    trial: Mapped[TrialRow] = relationship(back_populates="evals")


class GpuBusyRow(Base):
    """One driver run's GPU busy (sweeps.gpu_monitor): NVML utilization integrated over the run's wall time,
    Ray's start and data preparation included. A resumed sweep gets one row per run."""

    __tablename__ = "cram_gpu_busy"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("cram_sweeps.id"), index=True)
    host: Mapped[str] = mapped_column(String(200))
    wall_s: Mapped[float] = mapped_column(Float)
    busy: Mapped[float] = mapped_column(Float)
    "mean over the GPUs of the busy fraction of wall_s, in [0, 1]"
    per_gpu: Mapped[list] = mapped_column(JSON)
    "busy fraction per GPU index"
    names: Mapped[list] = mapped_column(JSON)
    samples: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class DriverRow(Base):
    """The one live driver of a sweep. The primary key makes the first claim atomic, and a takeover from a dead
    driver is a conditional UPDATE on the token it read, so two drivers can never both hold a sweep."""

    __tablename__ = "cram_drivers"
    sweep: Mapped[str] = mapped_column(String(200), primary_key=True)
    token: Mapped[str] = mapped_column(String(32))
    "random per claim; every refresh or release names it, so a driver that lost its claim cannot touch another's"
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    heartbeat: Mapped[float] = mapped_column(Float)
    "time.time() of the driver's last sign of life"


METRIC_FIELDS = ("step", "progress", "tokens", "seconds", "flops", "loss", "lr", "batch_size", "seq_len",
                 "tokens_per_second", "mfu")
SUMMARY_FIELDS = ("final_loss", "eval_loss", "tokens", "seconds", "flops", "steps", "tokens_per_second", "mfu",
                  "params")


class StoreError(RuntimeError):
    """The store cannot be opened or is not ours; the message is one line."""


OPTUNA_TABLES = frozenset({"studies", "study_directions", "study_system_attributes", "study_user_attributes",
                           "trial_heartbeats", "trial_intermediate_values", "trial_params", "trial_system_attributes",
                           "trial_user_attributes", "trial_values", "trials", "version_info", "alembic_version"})
"Optuna's RDB storage tables (optuna.storages._rdb.models, plus its Alembic version table)"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) never block our writes
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_read_only_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # no journal_mode here: setting it rewrites the file header, and a read-only command must leave it as it was
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def make_engine(url: str = DEFAULT_STORE, *, create: bool = True) -> Engine:
    """Engine for ``url``. Every way the store can be unusable is a one-line StoreError.

    ``create=True`` (``sweeps run``) creates a missing store and our tables, and refuses a database holding
    tables that are neither ours nor Optuna's. ``create=False`` (status, dashboard, analysis) needs an existing
    store with our tables and opens a SQLite file read-only (``mode=ro``), so it is never changed, not even the
    header; a file that is not a store is left exactly as it was.
    """
    path, shown = sqlite_path(url), shown_url(url)
    if path is not None:
        _check_sqlite_path(path, create=create)
        if path.exists():  # look before anything writes: a foreign or broken file stays exactly as it was
            probe = _open(_read_only_url(path), shown, read_only=True)
            _guarded(probe, shown, lambda: _check_tables(probe, shown, create=create))
            if not create:
                return probe
            probe.dispose()
    engine = _open(url, shown, read_only=False)
    if path is None:
        _guarded(engine, shown, lambda: _check_tables(engine, shown, create=create))
    if create:
        _guarded(engine, shown, lambda: Base.metadata.create_all(engine))
    return engine


def _open(url: str, shown: str, *, read_only: bool) -> Engine:
    try:
        engine = create_engine(url, future=True)
    except Exception as e:  # bad URL or missing driver: one line for the user
        raise StoreError(f"cannot open store {shown!r}: {_first_line(e)}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_read_only_pragmas if read_only else _sqlite_pragmas)
    return engine


def _guarded(engine: Engine, url: str, fn: Any) -> None:
    """Run ``fn``; on any failure the engine is disposed and a database error becomes a one-line StoreError."""
    try:
        fn()
    except SQLAlchemyError as e:
        engine.dispose()
        raise StoreError(_describe(url, e)) from None
    except BaseException:
        engine.dispose()
        raise


def _check_tables(engine: Engine, url: str, *, create: bool) -> None:
    names = set(inspect(engine).get_table_names())
    if create:
        foreign = sorted(names - set(Base.metadata.tables) - OPTUNA_TABLES)
        if foreign:
            raise StoreError(f"store {url!r} holds tables that are neither ours nor Optuna's "
                             f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): not a results "
                             "store; give another --store")
    elif TrialRow.__tablename__ not in names:
        raise StoreError(f"store {url!r} has no cram tables (not a results store?)")


def shown_url(url: str) -> str:
    """``url`` as messages show it: a password in it is masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: the message about that shows it as given
        return url


def _check_sqlite_path(path: Path, *, create: bool) -> None:
    if path.is_dir():
        raise StoreError(f"store {path} is a directory; give a file in it, e.g. --store {path / 'results.db'}")
    if not path.exists():
        if not create:
            raise StoreError(f"no store at {path} (run a sweep first, or pass --store URL)")
        blocker = next((a for a in path.parents if a.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise StoreError(f"cannot create store {path}: {blocker} is a file, not a folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create store {path}: {e.strerror or e} ({path.parent})") from None
    folder = path.parent if str(path.parent) else Path(".")
    if create and not os.access(folder, os.W_OK):  # WAL mode writes -wal and -shm files beside the store
        raise StoreError(f"cannot write store {path}: its folder {folder} is read-only")
    if create and path.exists() and not os.access(path, os.W_OK):
        raise StoreError(f"cannot write store {path}: the file is read-only")


def _read_only_url(path: Path) -> str:
    # SQLite URI filename: the path percent-encoded, so '?' or '#' in a folder name cannot end it early
    return f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true"


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _describe(url: str, e: BaseException) -> str:
    """One line for a database error met while opening the store."""
    reason = _first_line(e)
    low = reason.lower()
    if "file is not a database" in low or "not a database" in low:
        return f"store {url!r} is not a SQLite database (a results store is a SQLite file or a SQLAlchemy URL)"
    if "readonly database" in low or "read-only" in low:
        return f"cannot write store {url!r}: it is read-only ({reason})"
    if "unable to open database file" in low:
        return f"cannot open store {url!r}: unable to open the file or create its journal (is its folder writable?)"
    return f"cannot open store {url!r}: {reason}"


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False, future=True)


def metric_row(trial_id: int, record: dict[str, Any]) -> MetricRow:
    return MetricRow(trial_id=trial_id, **{k: _finite(record.get(k)) for k in METRIC_FIELDS})


def _finite(v: Any) -> Any:
    # SQLite stores NaN as NULL anyway; make it explicit so diverged curves read back cleanly
    if isinstance(v, float) and v != v:
        return None
    return v


def to_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# ---------------------------------------------------------------- helpers added for the sweep runner

LOCK_RETRY_SECONDS = 120.0


def is_locked_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def retry_on_locked(fn: Any, *, max_seconds: float = LOCK_RETRY_SECONDS) -> Any:
    """Call ``fn()``; while SQLite says "database is locked", back off and call it again.

    busy_timeout covers most contention, but a reader holding a WAL snapshot (the dashboard) can still make
    a write transaction fail at commit; the write is then retried rather than lost. Any other error, or
    still locked after ``max_seconds``, propagates: a failed write is an error, never swallowed.
    """
    import random
    import time

    from sqlalchemy.exc import OperationalError

    deadline = time.monotonic() + max_seconds
    delay = 0.05
    while True:
        try:
            return fn()
        except OperationalError as e:
            if not is_locked_error(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)


def store_url(text: str) -> str:
    """A SQLAlchemy URL as given, or a plain file path turned into ``sqlite:///PATH``."""
    return text if "://" in text else f"sqlite:///{text}"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other databases or in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url.removeprefix("sqlite:///")
    return None if rest in ("", ":memory:") else Path(rest)


def reset_trial_results(trial: TrialRow) -> None:
    """Clear everything a run wrote into ``trial`` (the caller deletes its metric points)."""
    for name in ("reason", "git_sha", "git_dirty", "host", "hardware", "versions", "prepare_s", "compile_s",
                 "train_s", "eval_s", *SUMMARY_FIELDS, "summary", "optuna_trial_number", "started_at",
                 "finished_at"):
        setattr(trial, name, None)
