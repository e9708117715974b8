"""The sweep's book-keeping in the results store: which (config hash, seed) trials exist, in what state.

The store is the source of truth for resume: a trial is keyed by (sweep, config hash, seed); completed
and diverged trials are final, interrupted ones go back to planned with their metric points deleted.
Only the driver process writes here (workers send their records through Ray), so one sweep never races
itself, and every write goes through `retry_on_locked` so a dashboard reading the file cannot fail it.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sqlalchemy import delete, func, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cram_core.config import ConfigError, RunConfig
from sweeps.definitions import BASELINE, PlannedTrial, ResolvedSweep, format_budget
from sweeps.gpu_monitor import GpuBusy
from sweeps.store import (
    SUMMARY_FIELDS,
    METRIC_FIELDS,
    DriverRow,
    EvalRow,
    GpuBusyRow,
    MetricRow,
    SweepRow,
    TrialRow,
    make_engine,
    metric_row,
    reset_trial_results,
    retry_on_locked,
    session_factory,
    to_json,
)
from sweeps.trial import DownstreamSpec, describe_downstream, objective, one_line

if TYPE_CHECKING:
    from analysis.stats import Best

FINAL_STATUSES = ("completed", "diverged")
"never rerun: a diverged trial is a result (that config is unstable), not an accident"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Progress:
    """What `status` and the live display show for one sweep."""

    name: str
    counts: dict[str, int]
    best: Best | None
    "the variant with the best mean objective over its completed seeds, with its CI (not the luckiest seed)"
    mean_trial_s: float | None
    running_elapsed_s: list[float]
    definition: dict[str, Any]

    @property
    def total(self) -> int:
        return sum(self.counts.values()) - self.counts.get("cancelled", 0)

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("completed", "diverged", "failed"))

    def eta_seconds(self, concurrency: int) -> float | None:
        if self.mean_trial_s is None:
            return None
        queued = self.counts.get("planned", 0)
        left_running = sum(max(0.0, self.mean_trial_s - e) for e in self.running_elapsed_s)
        return (queued * self.mean_trial_s + left_running) / max(1, concurrency)


class SweepMismatch(ConfigError):
    """The store already holds this sweep with another baseline (preset, budget or --set) or other
    downstream settings."""


def _clear_results(s: Session, trial_id: int) -> None:
    """Delete what a run of this trial streamed or scored, before it is run again."""
    s.execute(delete(MetricRow).where(MetricRow.trial_id == trial_id))
    s.execute(delete(EvalRow).where(EvalRow.trial_id == trial_id))


class SweepBusy(ConfigError):
    """Another live driver is running this sweep on this store."""


DRIVER_STALE_S = 60.0
"a driver on another host whose heartbeat is older than this is taken as dead"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return pid > 0


def _driver_alive(row: DriverRow) -> bool:
    age_s = time.time() - row.heartbeat
    if row.host == socket.gethostname():
        return _pid_alive(row.pid) and age_s < DRIVER_STALE_S * 10
    return age_s < DRIVER_STALE_S


def _busy(name: str, row: DriverRow) -> SweepBusy:
    age_s = time.time() - row.heartbeat
    return SweepBusy(f"sweep {name!r} is being run right now by pid {row.pid} on {row.host} (alive {age_s:.0f} s "
                     f"ago); see python -m sweeps status {name}")


class Ledger:
    def __init__(self, url: str, *, create: bool = True):
        """``create=False``: an existing store, opened read-only where the database allows (SQLite)."""
        self.url = url
        self.engine = make_engine(url, create=create)
        self._sessions = session_factory(self.engine)
        self._claim: tuple[str, str] | None = None
        "(sweep name, token) while this ledger is a sweep's live driver"

    def close(self) -> None:
        """Release this driver's claim, if it holds one, and the connections."""
        try:
            if self._claim is not None:
                self.release()
        finally:
            self.engine.dispose()

    # -------------------------------------------------------------- low level

    def _write(self, fn: Callable[[Session], Any]) -> Any:
        def attempt() -> Any:
            with self._sessions() as session:
                out = fn(session)
                session.commit()
                return out

        return retry_on_locked(attempt)

    def _read(self, fn: Callable[[Session], Any]) -> Any:
        def attempt() -> Any:
            with self._sessions() as session:
                return fn(session)

        return retry_on_locked(attempt)

    # -------------------------------------------------------------- sweeps

    def sweep_names(self) -> list[str]:
        return self._read(lambda s: list(s.scalars(select(SweepRow.name).order_by(SweepRow.created_at))))

    def sweep(self, name: str) -> SweepRow | None:
        return self._read(lambda s: s.scalars(select(SweepRow).where(SweepRow.name == name)).first())

    def definitions(self) -> dict[str, dict[str, Any]]:
        """Every stored sweep's definition by name: how an ad-hoc or file sweep is found again without its
        command line or file (see sweeps.adhoc)."""
        return self._read(lambda s: {r.name: r.definition or {} for r in s.execute(
            select(SweepRow.name, SweepRow.definition).order_by(SweepRow.created_at))})

    def check_compatible(self, resolved: ResolvedSweep, downstream: DownstreamSpec | None = None) -> None:
        """Refuse to mix trials of different baselines under one sweep name (their table would be meaningless),
        or of different downstream settings (finished trials are not rerun, so their scores, or their lack of
        any, would sit in one column with scores measured another way)."""
        row = self.sweep(resolved.name)
        if row is None:
            return
        old, new = row.definition, resolved.definition()
        old_ds = old.get("downstream")  # absent in sweeps stored before downstream existed: none
        old_id = DownstreamSpec.from_dict(old_ds).identity() if old_ds else None
        new_id = downstream.identity() if downstream else None
        if old_id != new_id:
            raise SweepMismatch(
                f"sweep {resolved.name!r} in this store was run with downstream {describe_downstream(old_id)}; "
                f"this run asks for {describe_downstream(new_id)}: use another --store, or the same options")
        if old.get("base_config_hash") != new["base_config_hash"]:
            raise SweepMismatch(
                f"sweep {resolved.name!r} in this store was run with preset {old.get('preset')}, budget "
                f"{old.get('budget', {}).get('text')}, overrides {old.get('base_overrides') or 'none'}; this run "
                f"differs (preset {new['preset']}, budget {new['budget']['text']}, overrides "
                f"{new['base_overrides'] or 'none'}): use another --store, or the same options"
            )

    def check_not_running(self, name: str) -> None:
        """Raise SweepBusy if a live driver holds ``name`` (a look only: `claim` is the atomic step)."""
        if not self._has_table(DriverRow):  # a store from before the claim table: nobody holds it
            return
        row = self._read(lambda s: s.get(DriverRow, name))
        if row is not None and _driver_alive(row):
            raise _busy(name, row)

    def claim(self, name: str) -> None:
        """Become the one live driver of sweep ``name``, or raise SweepBusy naming the live one.

        A second driver would mark the first one's running trials as interrupted. The claim is one atomic
        step on any database: the first claim is an INSERT on the sweep name (a primary key, so of two racing
        drivers one gets an IntegrityError and looks again), and taking over from a dead driver (killed,
        crashed) is an UPDATE conditional on the token that was read, which only one of two racers can match.
        """
        token = uuid.uuid4().hex
        mine = {"token": token, "host": socket.gethostname(), "pid": os.getpid()}

        def op(s: Session) -> DriverRow | bool:
            row = s.get(DriverRow, name)
            if row is None:
                s.add(DriverRow(sweep=name, heartbeat=time.time(), **mine))
                s.flush()
                return True
            if _driver_alive(row):
                s.expunge(row)
                return row
            taken = s.execute(update(DriverRow).where(DriverRow.sweep == name, DriverRow.token == row.token)
                              .values(heartbeat=time.time(), **mine).execution_options(synchronize_session=False))
            return taken.rowcount == 1

        for _ in range(20):  # a lost race is decided on the next look: the winner is alive
            try:
                outcome = self._write(op)
            except IntegrityError:
                continue
            if outcome is True:
                self._claim = (name, token)
                return
            if isinstance(outcome, DriverRow):
                raise _busy(name, outcome)
        raise SweepBusy(f"sweep {name!r}: could not claim it as its driver (another driver keeps taking it)")

    def release(self) -> None:
        """Give up this driver's claim (only its own: the token must still match)."""
        if self._claim is None:
            return
        name, token = self._claim
        self._claim = None
        self._write(lambda s: s.execute(delete(DriverRow).where(DriverRow.sweep == name, DriverRow.token == token)))

    def heartbeat(self, sweep_id: int, *, clear: bool = False) -> None:
        """Mark this process as the sweep's live driver (claiming it if this ledger does not hold it yet), or,
        with clear, as gone. A driver whose claim was taken over (it looked dead) stops with SweepBusy."""
        if clear:
            self.release()
            return
        if self._claim is None:
            self.claim(self._read(lambda s: s.get(SweepRow, sweep_id).name))
            return
        name, token = self._claim
        refreshed = self._write(lambda s: s.execute(
            update(DriverRow).where(DriverRow.sweep == name, DriverRow.token == token)
            .values(heartbeat=time.time()).execution_options(synchronize_session=False)).rowcount)
        if refreshed != 1:
            self._claim = None
            row = self._read(lambda s: s.get(DriverRow, name))
            raise _busy(name, row) if row is not None else SweepBusy(f"sweep {name!r}: this driver lost its claim")

    def upsert_sweep(self, resolved: ResolvedSweep, extra: dict[str, Any]) -> int:
        """Store the sweep's definition; ``extra["commands"]`` (the command line of this run) is added to the
        commands stored before, each distinct one kept once in first-run order (analysis results prints them)."""
        definition = to_json({**resolved.definition(), **extra})

        def op(s: Session) -> int:
            row = s.scalars(select(SweepRow).where(SweepRow.name == resolved.name)).first()
            if row is None:
                row = SweepRow(name=resolved.name, definition=definition)
                s.add(row)
            else:
                kept = (row.definition or {}).get("commands") or []
                commands = kept + [c for c in definition.get("commands") or [] if c not in kept]
                row.definition = {**definition, "commands": commands}
            s.flush()
            return row.id

        return self._write(op)

    # -------------------------------------------------------------- resume

    def recover_interrupted(self, sweep_id: int, *, search: bool) -> int:
        """Trials left `running` by a killed driver: their metric points go; grid trials are planned again,
        search trials are cancelled (TPE samples afresh; the Optuna record of the attempt stays as FAIL)."""
        def op(s: Session) -> int:
            rows = list(s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id,
                                                          TrialRow.status == "running")))
            for row in rows:
                _clear_results(s, row.id)
                reset_trial_results(row)
                row.status = "cancelled" if search else "planned"
                row.reason = "interrupted; not rerun (the search samples afresh)" if search else None
            return len(rows)

        return self._write(op)

    def plan(self, sweep_id: int, trials: Iterable[PlannedTrial], *, retry_failed: bool
             ) -> tuple[list[tuple[int, PlannedTrial]], int]:
        """Make sure every planned trial has a row; returns (trials to run with their row ids, number already done).

        Rows of this sweep that the current plan no longer contains (fewer seeds, a removed variant) and that
        never finished are marked cancelled, so `status` does not wait for them.
        """
        trials = list(trials)

        def op(s: Session) -> tuple[list[tuple[int, int]], int]:
            rows = s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id))
            existing = {(r.config_hash, r.seed): r for r in rows}
            todo, done, wanted = [], 0, set()
            for i, t in enumerate(trials):
                key = (t.config_hash, t.seed)
                wanted.add(key)
                row = existing.get(key)
                if row is None:
                    row = TrialRow(sweep_id=sweep_id, variant=t.variant, seed=t.seed, is_baseline=t.variant == BASELINE,
                                   config=t.config.to_dict(), config_hash=t.config_hash, status="planned")
                    s.add(row)
                elif row.status in FINAL_STATUSES or (row.status == "failed" and not retry_failed):
                    done += 1
                    continue
                else:
                    _clear_results(s, row.id)
                    reset_trial_results(row)
                    row.status, row.variant, row.is_baseline = "planned", t.variant, t.variant == BASELINE
                s.flush()
                todo.append((row.id, i))
            for key, row in existing.items():
                if key not in wanted and row.status in ("planned", "running"):
                    row.status, row.reason = "cancelled", "not in the latest plan of this sweep"
            return todo, done

        todo, done = self._write(op)
        return [(row_id, trials[i]) for row_id, i in todo], done

    def fail_unprepared(self, row_ids: list[int], reason: str) -> None:
        def op(s: Session) -> None:
            for row in s.scalars(select(TrialRow).where(TrialRow.id.in_(row_ids))):
                row.status, row.reason, row.finished_at = "failed", one_line(reason), _now()

        self._write(op)

    def cancel_unfinished(self, sweep_id: int, reason: str) -> int:
        """After the runner stops early (Ctrl-C): running trials become cancelled, their points deleted."""
        def op(s: Session) -> int:
            rows = list(s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.status == "running")))
            for row in rows:
                _clear_results(s, row.id)
                row.status, row.reason = "cancelled", reason
            return len(rows)

        return self._write(op)

    def search_state(self, sweep_id: int) -> tuple[int, bool]:
        """(finished search trials, whether the baseline point has finished)."""
        def op(s: Session) -> tuple[int, bool]:
            rows = list(s.execute(select(TrialRow.status, TrialRow.is_baseline).where(TrialRow.sweep_id == sweep_id)))
            finished = [r for r in rows if r.status in ("completed", "diverged", "failed")]
            return len(finished), any(r.is_baseline for r in finished)

        return self._read(op)

    def finished_optuna_trials(self, sweep_id: int) -> dict[int, TrialRow]:
        """Finished rows by Optuna trial number: what a resume needs to finish Optuna twins that a kill
        between the store write and the Optuna write left RUNNING."""
        def op(s: Session) -> dict[int, TrialRow]:
            rows = s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id,
                                                    TrialRow.status.in_(("completed", "diverged", "failed")),
                                                    TrialRow.optuna_trial_number.is_not(None)))
            return {r.optuna_trial_number: r for r in rows}

        return self._read(op)

    # -------------------------------------------------------------- a trial's life

    def add_search_trial(self, sweep_id: int, variant: str, cfg: RunConfig) -> int:
        """A row for a TPE sample; a repeat of an existing (hash, seed) reuses that row (and reruns it)."""
        h, seed = cfg.hash(), cfg.train.seed

        def op(s: Session) -> int:
            row = s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.config_hash == h,
                                                   TrialRow.seed == seed)).first()
            if row is None:
                row = TrialRow(sweep_id=sweep_id, variant=variant, seed=seed, is_baseline=variant == BASELINE,
                               config=cfg.to_dict(), config_hash=h, status="planned")
                s.add(row)
            else:
                _clear_results(s, row.id)
                reset_trial_results(row)
            s.flush()
            return row.id

        return self._write(op)

    def start(self, row_id: int, *, optuna_number: int | None, git: tuple[str | None, bool | None],
              budget: tuple[str, float]) -> None:
        def op(s: Session) -> None:
            row = s.get(TrialRow, row_id)
            row.status, row.started_at, row.optuna_trial_number = "running", _now(), optuna_number
            row.git_sha, row.git_dirty = git
            row.budget_kind, row.budget_amount = budget

        self._write(op)

    def add_metrics(self, row_id: int, records: list[dict[str, Any]]) -> None:
        if records:
            self._write(lambda s: s.add_all([metric_row(row_id, r) for r in records]))

    def finish(self, row_id: int, summary: dict[str, Any]) -> None:
        """Record the trainer's summary (or our failure summary) as the trial's final state."""
        def op(s: Session) -> None:
            row = s.get(TrialRow, row_id)
            row.status = summary.get("status") if summary.get("status") in ("completed", "diverged") else "failed"
            row.reason = one_line(summary["reason"]) if summary.get("reason") else None
            for name in SUMMARY_FIELDS:
                value = summary.get(name)
                setattr(row, name, None if isinstance(value, float) and not math.isfinite(value) else value)
            timings = summary.get("timings") or {}
            for name in ("prepare_s", "compile_s", "train_s", "eval_s"):
                setattr(row, name, timings.get(name))
            row.host = summary.get("host") or row.host
            row.hardware = summary.get("hardware")
            row.versions = summary.get("versions")
            if summary.get("budget"):
                row.budget_kind, row.budget_amount = summary["budget"]["kind"], summary["budget"]["amount"]
            row.summary = to_json(summary)
            row.finished_at = _now()
            # one row per (task, metric, fine-tuning seed); a non-finite score (a collapsed regression head)
            # stays in the summary only, since the column cannot hold it and the table skips it anyway
            s.execute(delete(EvalRow).where(EvalRow.trial_id == row_id))
            for r in summary.get("evals") or ():
                value = r.get("value")
                if isinstance(value, (int, float)) and math.isfinite(value):
                    s.add(EvalRow(trial_id=row_id, task=str(r["task"]), metric=str(r["metric"]),
                                  value=float(value), seed=int(r.get("seed", 0))))

        self._write(op)

    def restart(self, row_id: int) -> None:
        """Tune retries a trial whose worker died (a lost node): what the dead attempt streamed goes."""
        def op(s: Session) -> None:
            _clear_results(s, row_id)
            reset_trial_results(s.get(TrialRow, row_id))

        self._write(op)

    # -------------------------------------------------------------- reuse across sweeps

    def reuse_finished(self, sweep_id: int, todo: list[tuple[int, PlannedTrial]], rules: ReuseRules
                       ) -> tuple[list[tuple[int, PlannedTrial]], int, dict[str, int]]:
        """Link planned trials to a completed (config hash, seed) of another sweep instead of training them.

        The planned row takes the source's results as they are (its git SHA, host, hardware, versions, dates,
        metric points and eval rows), with `summary.reused_from` naming the source; the table and the
        dashboard then show it like any other trial. Only trials trained by their own sweep are sources.
        Returns (still to run, number reused, {stale reason: count} of stored results passed over).
        """
        if not todo:
            return todo, 0, {}

        def op(s: Session) -> tuple[set[int], dict[str, int]]:
            by_key = {(p.config_hash, p.seed): (row_id, p) for row_id, p in todo}
            candidates = s.execute(
                select(TrialRow, SweepRow.name, SweepRow.definition).join(SweepRow)
                .where(TrialRow.sweep_id != sweep_id, TrialRow.status == "completed",
                       TrialRow.config_hash.in_({h for h, _ in by_key}))
                .order_by(TrialRow.finished_at.desc()))
            linked, stale = set(), {}
            for source, sweep_name, definition in candidates:
                row_id, planned = by_key.get((source.config_hash, source.seed), (None, None))
                if row_id is None or row_id in linked or (source.summary or {}).get("reused_from"):
                    continue
                reason = rules.stale_reason(source, definition or {}, planned)
                if reason:
                    stale[reason] = stale.get(reason, 0) + 1
                    continue
                _link(s, s.get(TrialRow, row_id), source, sweep_name)
                linked.add(row_id)
            return linked, stale

        linked, stale = self._write(op)
        return [(r, p) for r, p in todo if r not in linked], len(linked), stale

    def reused_without_twin(self, sweep_id: int) -> list[tuple[TrialRow, list[dict[str, Any]]]]:
        """Linked trials of this sweep that have no Optuna trial yet, with their metric records."""
        def op(s: Session) -> list[tuple[TrialRow, list[dict[str, Any]]]]:
            rows = s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.status == "completed",
                                                    TrialRow.optuna_trial_number.is_(None)).order_by(TrialRow.id))
            out = []
            for row in rows:
                if (row.summary or {}).get("reused_from"):
                    points = s.scalars(select(MetricRow).where(MetricRow.trial_id == row.id).order_by(MetricRow.step))
                    out.append((row, [{k: getattr(m, k) for k in METRIC_FIELDS} for m in points]))
            return out

        return self._read(op)

    def set_optuna_number(self, row_id: int, number: int) -> None:
        def op(s: Session) -> None:
            s.get(TrialRow, row_id).optuna_trial_number = number

        self._write(op)

    # -------------------------------------------------------------- reading

    def record_gpu_busy(self, sweep_id: int, busy: GpuBusy) -> None:
        """Store one driver run's GPU busy (sweeps.gpu_monitor)."""
        self._write(lambda s: s.add(GpuBusyRow(sweep_id=sweep_id, host=socket.gethostname(), wall_s=busy.wall_s,
                                               busy=busy.busy, per_gpu=list(busy.per_gpu), names=list(busy.names),
                                               samples=busy.samples)))

    def _has_table(self, row_type: type) -> bool:
        """Whether the store has ``row_type``'s table: read-only commands open older stores, made before a
        table existed, without creating it (``sweeps run`` creates missing tables)."""
        return inspect(self.engine).has_table(row_type.__tablename__)

    def gpu_busy(self, name: str) -> list[GpuBusy]:
        """The sweep's GPU-busy records, one per driver run, oldest first."""
        if not self._has_table(GpuBusyRow):
            return []
        def op(s: Session) -> list[GpuBusy]:
            rows = s.scalars(select(GpuBusyRow).join(SweepRow, GpuBusyRow.sweep_id == SweepRow.id)
                             .where(SweepRow.name == name).order_by(GpuBusyRow.id))
            return [GpuBusy(wall_s=r.wall_s, per_gpu=tuple(r.per_gpu), names=tuple(r.names), samples=r.samples)
                    for r in rows]

        return self._read(op)

    def progress(self, name: str) -> Progress | None:
        def op(s: Session) -> Progress | None:
            sweep = s.scalars(select(SweepRow).where(SweepRow.name == name)).first()
            if sweep is None:
                return None
            counts = dict(s.execute(select(TrialRow.status, func.count()).where(TrialRow.sweep_id == sweep.id)
                                    .group_by(TrialRow.status)).all())
            rows = list(s.scalars(select(TrialRow).where(TrialRow.sweep_id == sweep.id,
                                                         TrialRow.status.in_(("completed", "running")))))
            values: dict[tuple[str | None, float | None], dict[str, list[float]]] = {}
            durations, running = [], []
            now = _now()
            for r in rows:
                if r.status == "running" and r.started_at:
                    running.append((now - _aware(r.started_at)).total_seconds())
                    continue
                if r.started_at and r.finished_at and r.status == "completed":
                    durations.append((_aware(r.finished_at) - _aware(r.started_at)).total_seconds())
                value = objective({"eval_loss": r.eval_loss, "final_loss": r.final_loss})
                if value is not None:
                    values.setdefault((r.budget_kind, r.budget_amount), {}).setdefault(r.variant, []).append(value)
            best = _best_at_largest_budget(values)
            mean = sum(durations) / len(durations) if durations else None
            return Progress(name, {k: counts.get(k, 0) for k in ("planned", "running", "completed", "diverged",
                                                                  "failed", "cancelled")},
                            best, mean, running, sweep.definition)

        return self._read(op)


def _best_at_largest_budget(values: dict[tuple[str | None, float | None], dict[str, list[float]]]) -> Any:
    """The best mean over seeds; in a sweep run at several budgets (--budgets), among the trials at the largest
    budget with results so far, which it names (mixing budgets would read them as extra seeds)."""
    from analysis.stats import best_mean  # scipy: paid only by the commands that read progress

    if len(values) <= 1:
        return best_mean(next(iter(values.values()), {}))
    kind, amount = max(values, key=lambda budget: budget[1] or 0.0)
    at = format_budget(kind or "", amount or 0.0)
    return best_mean({f"{variant} at {at}": v for variant, v in values[(kind, amount)].items()})


def _aware(t: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; we only ever write UTC
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------- reuse across sweeps

REUSED_COPY_FIELDS = ("git_sha", "git_dirty", "host", "hardware", "versions", "budget_kind", "budget_amount",
                      "prepare_s", "compile_s", "train_s", "eval_s", *SUMMARY_FIELDS, "started_at", "finished_at")
"what a linked trial takes from its source: its results and its own provenance (git SHA, hardware, dates)"


@dataclass(frozen=True, kw_only=True)
class ReuseRules:
    """When a completed trial of another sweep, with the same (config hash, seed), stands in for one here.

    The config hash fixes the experiment (every config group, the budget included), so the question is only
    what else would make the stored number differ from the one this run would measure. Stale, not reused:
    - another trainer backend (the fake one of the tests must never stand in for real training);
    - other downstream settings, where this run fine-tunes (the trial's scores would sit in a column measured
      another way). A run without downstream takes a fine-tuned source as it is: fine-tuning runs after the
      budget, so the pretraining result is the one this run would measure, and the scores are extra columns;
    - under a seconds budget, other hardware (the hardware string holds the device and, on CPU, the torch
      threads): what a second buys depends on the machine. Token and FLOP budgets are machine-independent.
    Not stale: another git SHA or a dirty tree, other library versions, another host. These stay on the
    linked row for anyone to check, and `--rerun` trains such trials afresh.
    """

    backend: str
    downstream: dict[str, Any] | None
    "the run's DownstreamSpec.identity(), or None"
    hardware: Callable[[PlannedTrial], str | None]
    "the hardware string this run's trial would record (None: unknown, so a seconds budget is stale)"

    def stale_reason(self, source: TrialRow, definition: dict[str, Any], planned: PlannedTrial) -> str | None:
        if definition.get("backend", "cram_core") != self.backend:
            return f"trained by backend {definition.get('backend', 'cram_core')}"
        ds = definition.get("downstream")
        if self.downstream is not None and (DownstreamSpec.from_dict(ds).identity() if ds else None) != self.downstream:
            return "other downstream settings"
        if source.budget_kind == "seconds":
            here = self.hardware(planned)
            if here is None or source.hardware != here:
                return "seconds budget on other hardware"
        return None


def _link(s: Session, row: TrialRow, source: TrialRow, sweep_name: str) -> None:
    _clear_results(s, row.id)
    reset_trial_results(row)
    for name in REUSED_COPY_FIELDS:
        setattr(row, name, getattr(source, name))
    row.status = "completed"
    row.reason = f"reused: trained by sweep {sweep_name!r} (trial {source.id})"
    row.summary = {**(source.summary or {}), "reused_from": {"trial_id": source.id, "sweep": sweep_name}}
    for m in s.scalars(select(MetricRow).where(MetricRow.trial_id == source.id)):
        s.add(MetricRow(trial_id=row.id, **{k: getattr(m, k) for k in METRIC_FIELDS}))
    for e in s.scalars(select(EvalRow).where(EvalRow.trial_id == source.id)):
        s.add(EvalRow(trial_id=row.id, task=e.task, metric=e.metric, value=e.value, seed=e.seed))
