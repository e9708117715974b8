"""Every trial of a sweep mirrored into an Optuna study of the same name, in the same database.

Why a mirror and not Optuna as the scheduler: categorical ablation grids can't go through OptunaSearch
(no grid_search), scheduler-stopped trials and crashes are recorded wrongly, and the last report is not an
intermediate value. So the grid runs on Tune and the driver writes each trial into the study itself
through the storage API: created RUNNING when the trial starts (param ``variant``), intermediate values
keyed by tokens seen as metric records arrive, then COMPLETE with the objective or FAIL with a reason.
Search sweeps are different only in who creates and finishes the Optuna trial (OptunaSearch, which needs
the study for TPE); the mirror then only adds intermediate values and user attributes to that trial.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from sweeps.store import retry_on_locked
from sweeps.trial import downstream_scores

INTERRUPTED = "interrupted (the sweep driver stopped while this trial ran); rerun on resume"


def make_storage(url: str) -> optuna.storages.RDBStorage:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # the sqlite3 driver's timeout is SQLite's busy timeout: wait for the dashboard's read, don't fail
        kwargs = {"connect_args": {"timeout": 30}}
    return retry_on_locked(lambda: optuna.storages.RDBStorage(url, engine_kwargs=kwargs))


class OptunaMirror:
    def __init__(self, url: str, study_name: str, *, variants: list[str] | None, attrs: dict[str, Any]):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = make_storage(url)
        self.study = retry_on_locked(lambda: optuna.create_study(
            storage=self.storage, study_name=study_name, direction="minimize", load_if_exists=True))
        self.study_id = self.storage.get_study_id_from_name(study_name)
        self.variants = variants
        for key, value in attrs.items():
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
        """A RUNNING trial for a grid variant; returns (storage trial id, trial number)."""
        params, dists = {}, {}
        if self.variants and variant in self.variants:
            params, dists = {"variant": variant}, {"variant": CategoricalDistribution(self.variants)}
        template = create_trial(state=TrialState.RUNNING, params=params, distributions=dists, user_attrs=attrs)
        try:
            trial_id = self._do(self.storage.create_new_trial, self.study_id, template)
        except ValueError:
            # the sweep's variant list changed since the study began, and Optuna refuses a categorical whose
            # choices changed: keep the variant as a user attribute only (the table reads the store anyway)
            self.variants = None
            template = create_trial(state=TrialState.RUNNING, user_attrs=attrs)
            trial_id = self._do(self.storage.create_new_trial, self.study_id, template)
        return trial_id, self._do(self.storage.get_trial_number_from_id, trial_id)

    def trial_id(self, number: int) -> int:
        return self._do(self.storage.get_trial_id_from_study_id_trial_number, self.study_id, number)

    def set_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            self._do(self.storage.set_trial_user_attr, trial_id, key, value)

    def report(self, trial_id: int, records: list[dict[str, Any]]) -> None:
        """Intermediate values keyed by tokens seen, so curves of different batch sizes line up."""
        for r in records:
            loss, step = r.get("loss"), r.get("tokens")
            if step is None:
                step = r.get("step")
            if isinstance(loss, (int, float)) and math.isfinite(loss) and step is not None:
                self._do(self.storage.set_trial_intermediate_value, trial_id, int(step), float(loss))

    def finish(self, trial_id: int, value: float | None) -> None:
        """COMPLETE with the objective, or FAIL (diverged, crashed: the reason is in the user attributes)."""
        if value is None:
            self._do(self.storage.set_trial_state_values, trial_id, TrialState.FAIL, None)
        else:
            self._do(self.storage.set_trial_state_values, trial_id, TrialState.COMPLETE, [value])

    def is_running(self, trial_id: int) -> bool:
        return self._do(self.storage.get_trial, trial_id).state == TrialState.RUNNING


def trial_attrs(*, variant: str, seed: int, config_hash: str, status: str = "running",
                summary: dict[str, Any] | None = None, gpus: float = 0) -> dict[str, Any]:
    """The user attributes the dashboard shows next to each trial."""
    attrs: dict[str, Any] = {"variant": variant, "seed": seed, "config_hash": config_hash, "status": status}
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
