"""Every trial of a sweep mirrored into an Optuna study of the same name, in the same database.

Why a mirror and not Optuna as the scheduler: categorical ablation grids can't go through OptunaSearch
(no grid_search), scheduler-stopped trials and crashes are recorded wrongly, and the last report is not an
intermediate value. So the grid runs on Tune and the driver writes each trial into the study itself
through the storage API: created RUNNING when the trial starts, intermediate values as metric records
arrive, then COMPLETE with the objective, FAIL with a reason, or PRUNED when the user stopped the sweep.
Search sweeps are different only in who creates and finishes the Optuna trial (OptunaSearch, which needs
the study for TPE); the mirror then only adds intermediate values and user attributes to that trial.

What the dashboard reads off the study:
- parameters: each knob the grid varies (``train.schedule``, ``optim.lr``, ...) with its real distribution,
  plus ``seed``, so importance, slice, contour and parallel coordinates are about the knobs (a single
  ``variant`` categorical made importance one bar and left the other plots empty);
- the objective's name (``set_metric_names``) and, per trial, ``name`` = "variant / seed k";
- intermediate values: the held-out loss at the trainer's eval marks, the step being tokens seen
  (the study attribute ``intermediate_step`` says so, since the dashboard's axis is labelled "Step");
- artifacts (figures, table, report) in a file-system store beside the database (`artifact_store`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeps.store import retry_on_locked
from sweeps.trial import EVAL_MARKS, downstream_scores

INTERRUPTED = "interrupted (the sweep driver stopped while this trial ran); rerun on resume"
CANCELLED = "sweep stopped by user"
OBJECTIVE_NAME = "held-out MLM loss"
STUDY_ATTRS = {
    "objective": "held-out MLM loss at the end of the budget (15% masking, the same sequences and masks in "
                 "every trial); final train loss where a trainer gives no held-out loss",
    "intermediate_step": "tokens seen (the dashboard's 'Step' axis)",
    "intermediate_value": f"held-out MLM loss at p = k/{EVAL_MARKS} of the budget, training clock paused, on "
                          "train.mark_sequences of the held-out sequences (the same in every trial); the last "
                          "value, at p = 1, is the objective on all of them",
}
# a spread of 4x or more between a numeric knob's values is read on a log scale (LR, batch, widths)
LOG_SCALE_RATIO = 4.0
ARTIFACTS_SUFFIX = "-artifacts"


# ---------------------------------------------------------------- the grid as Optuna parameters


@dataclass(frozen=True, kw_only=True, slots=True)
class GridSpace:
    """A grid sweep's knobs as Optuna parameters: one distribution per varied key, plus ``seed``."""

    distributions: dict[str, BaseDistribution]
    values: dict[str, dict[str, Any]]
    "variant -> {knob: value}, the seed excluded"

    def params(self, variant: str, seed: int) -> dict[str, Any]:
        return {**self.values[variant], "seed": seed}


def _param_value(value: Any) -> Any:
    # Optuna parameters are None, bool, int, float or str; anything else is shown as its text
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def knob_distribution(values: list[Any]) -> BaseDistribution:
    """The distribution a knob's values come from: numbers as a range (log when they span >= 4x), the rest
    (names, flags, None) as categories."""
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numeric and len(numeric) == len(values) and all(math.isfinite(v) for v in numeric):
        low, high = min(numeric), max(numeric)
        log = low > 0 and high / low >= LOG_SCALE_RATIO
        if all(isinstance(v, int) for v in numeric):
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    return CategoricalDistribution(sorted(set(values), key=lambda v: (type(v).__name__, str(v))))


def grid_space(resolved: Any) -> GridSpace:
    """Parameters of a resolved grid sweep: every override key any variant sets, valued from each variant's
    config (so a ``Derived`` value is the number that ran), keys equal in every variant left out."""
    variants = resolved.runnable_variants()
    keys = list(dict.fromkeys(k for v in variants for k in v.overrides))
    values: dict[str, dict[str, Any]] = {v.name: {} for v in variants}
    distributions: dict[str, BaseDistribution] = {}
    for key in keys:
        group, name = key.split(".", 1)
        per_variant = {v.name: _param_value(v.config.to_dict()[group][name]) for v in variants}
        if len(set(map(str, per_variant.values()))) < 2:
            continue
        distributions[key] = knob_distribution(list(per_variant.values()))
        for variant, value in per_variant.items():
            values[variant][key] = value
    distributions["seed"] = IntDistribution(min(resolved.seeds), max(resolved.seeds))
    return GridSpace(distributions=distributions, values=values)


def trial_name(variant: str, seed: int) -> str:
    return f"{variant} / seed {seed}"


# ---------------------------------------------------------------- artifacts


def artifact_dir(url: str) -> Path:
    """Where a store's Optuna artifacts live: beside a SQLite file (results.db -> results.db-artifacts/), or
    ./optuna-artifacts for a server database (a cluster shares it through the working folder)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///") + ARTIFACTS_SUFFIX)
    return Path("optuna" + ARTIFACTS_SUFFIX)


def artifact_store(url: str) -> Any:
    from optuna.artifacts import FileSystemArtifactStore

    folder = artifact_dir(url)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def make_storage(url: str) -> optuna.storages.RDBStorage:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # the sqlite3 driver's timeout is SQLite's busy timeout: wait for the dashboard's read, don't fail
        kwargs = {"connect_args": {"timeout": 30}}
    return retry_on_locked(lambda: optuna.storages.RDBStorage(url, engine_kwargs=kwargs))


class OptunaMirror:
    def __init__(self, url: str, study_name: str, *, space: GridSpace | None, attrs: dict[str, Any]):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = make_storage(url)
        self.study = retry_on_locked(lambda: optuna.create_study(
            storage=self.storage, study_name=study_name, direction="minimize", load_if_exists=True))
        self.study_id = self.storage.get_study_id_from_name(study_name)
        self.space = space
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what the dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._do(self.study.set_metric_names, [OBJECTIVE_NAME])
        for key, value in {**STUDY_ATTRS, **attrs}.items():
            self._do(self.storage.set_study_user_attr, self.study_id, key, value)

    @staticmethod
    def _do(fn: Any, *args: Any) -> Any:
        return retry_on_locked(lambda: fn(*args))

    def recover(self, finished: dict[int, tuple[float | None, dict[str, Any]]]) -> tuple[int, int]:
        """Settle the RUNNING trials a killed driver left behind; returns (finished from the store, failed).

        A trial the store already records as finished (the kill fell between the two writes) is finished
        here from the store's values: the store is the truth and will not rerun it. Any other RUNNING trial
        can never finish: FAIL, with the reason, and the store reruns its (config, seed) as a new trial.
        """
        settled = failed = 0
        for t in self._do(self.study.get_trials, False, (TrialState.RUNNING,)):
            if t.number in finished:
                value, attrs = finished[t.number]
                self.set_attrs(t._trial_id, attrs)
                self.finish(t._trial_id, value)
                settled += 1
            else:
                self._do(self.storage.set_trial_user_attr, t._trial_id, "status_reason", INTERRUPTED)
                self._do(self.storage.set_trial_state_values, t._trial_id, TrialState.FAIL, None)
                failed += 1
        return settled, failed

    def has_waiting(self) -> bool:
        return bool(self._do(self.study.get_trials, False, (TrialState.WAITING,)))

    def start(self, variant: str, attrs: dict[str, Any]) -> tuple[int, int]:
        """A RUNNING trial for a grid variant (its knobs and seed as parameters); returns (trial id, number)."""
        params, dists = {}, {}
        if self.space is not None and variant in self.space.values:
            params = self.space.params(variant, attrs["seed"])
            dists = {k: self.space.distributions[k] for k in params}
        template = create_trial(state=TrialState.RUNNING, params=params, distributions=dists, user_attrs=attrs)
        try:
            trial_id = self._do(self.storage.create_new_trial, self.study_id, template)
        except ValueError:
            # the sweep's variants changed since the study began, and Optuna refuses a parameter whose
            # distribution changed: keep the knobs as user attributes only (the table reads the store anyway)
            self.space = None
            template = create_trial(state=TrialState.RUNNING, user_attrs={**attrs, **params})
            trial_id = self._do(self.storage.create_new_trial, self.study_id, template)
        return trial_id, self._do(self.storage.get_trial_number_from_id, trial_id)

    def trial_id(self, number: int) -> int:
        return self._do(self.storage.get_trial_id_from_study_id_trial_number, self.study_id, number)

    def set_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self._do(self.storage.set_trial_user_attr, trial_id, key, value)

    def report(self, trial_id: int, records: list[dict[str, Any]]) -> None:
        """Intermediate values: the held-out loss of the records at an eval mark, keyed by tokens seen (so
        curves of different batch sizes line up). Train loss is not one: it is not what the objective is."""
        for r in records:
            self._intermediate(trial_id, r.get("tokens"), r.get("eval_loss"))

    def _intermediate(self, trial_id: int, tokens: Any, loss: Any) -> None:
        if isinstance(loss, (int, float)) and math.isfinite(loss) and isinstance(tokens, (int, float)):
            self._do(self.storage.set_trial_intermediate_value, trial_id, int(tokens), float(loss))

    def close_curve(self, trial_id: int, summary: Mapping[str, Any]) -> None:
        """The final held-out loss as the last intermediate value, at the tokens the trial saw."""
        self._intermediate(trial_id, summary.get("tokens"), summary.get("eval_loss"))

    def finish(self, trial_id: int, value: float | None) -> None:
        """COMPLETE with the objective, or FAIL (diverged, crashed: the reason is in the user attributes)."""
        if value is None:
            self._do(self.storage.set_trial_state_values, trial_id, TrialState.FAIL, None)
        else:
            self._do(self.storage.set_trial_state_values, trial_id, TrialState.COMPLETE, [value])

    def cancel(self, trial_id: int) -> None:
        """PRUNED, so the dashboard shows a stopped trial apart from a crashed (FAIL) one."""
        self.set_attrs(trial_id, {"status": "cancelled", "status_reason": CANCELLED})
        self._do(self.storage.set_trial_state_values, trial_id, TrialState.PRUNED, None)

    def is_running(self, trial_id: int) -> bool:
        return self._do(self.storage.get_trial, trial_id).state == TrialState.RUNNING


def trial_attrs(*, variant: str, seed: int, config_hash: str, status: str = "running",
                summary: dict[str, Any] | None = None, gpus: float = 0) -> dict[str, Any]:
    """The user attributes the dashboard shows next to each trial."""
    attrs: dict[str, Any] = {"name": trial_name(variant, seed), "variant": variant, "seed": seed,
                             "config_hash": config_hash, "status": status}
    if summary is not None:
        attrs["status"] = summary.get("status", status)
        attrs["status_reason"] = summary.get("reason") or ""
        for key in ("tokens", "seconds", "tokens_per_second", "mfu", "flops", "final_loss", "eval_loss", "steps"):
            value = summary.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            attrs[key] = value
        seconds = attrs["seconds"]
        attrs["gpu_seconds"] = seconds * gpus if gpus and isinstance(seconds, (int, float)) else None
        # downstream is the headline number (and the only fair one across data / tokenizer variants), so the
        # dashboard shows it beside the loss: per task the median over fine-tuning seeds, then their mean
        evals = summary.get("evals") or []
        scores = downstream_scores(evals)
        for task, value in scores.items():
            attrs[f"downstream:{task}"] = value
        if scores:
            # as in the table: no average when a task has no finite score, it would not be comparable
            complete = len(scores) == len({r["task"] for r in evals})
            attrs["downstream_avg"] = sum(scores.values()) / len(scores) if complete else None
    return attrs
