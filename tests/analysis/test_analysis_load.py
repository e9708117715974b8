import pytest

from analysis import load
from sweeps.store import StoreError


def test_trials_have_flattened_config(store_url):
    trials = load.load_trials(store_url, "lr_schedules")
    assert len(trials) == 17
    assert {"model.norm_scheme", "train.schedule", "budget.kind", "impl.compile"} <= set(trials.columns)
    one_cycle = trials[trials["variant"] == "one-cycle"]
    assert (one_cycle["train.schedule"] == "one-cycle").all()
    assert sorted(one_cycle["eval_loss"]) == pytest.approx([2.39, 2.40, 2.41])
    assert trials.loc[trials["variant"] == "baseline", "is_baseline"].all()


def test_all_sweeps_and_names(store_url):
    assert load.sweep_names(store_url) == ["lr_schedules", "single_seed", "empty_sweep", "no_trials",
                                           "group_ablation"]
    assert set(load.load_trials(store_url)["sweep"]) == {"lr_schedules", "single_seed", "empty_sweep",
                                                         "group_ablation"}


def test_metrics_keep_diverged_points_as_nan(store_url):
    metrics = load.load_metrics(store_url, "lr_schedules")
    ramp = metrics[metrics["variant"] == "ramp"]
    assert ramp["loss"].isna().any() and ramp["loss"].notna().any()
    assert (metrics.groupby("trial_id")["step"].apply(lambda s: s.is_monotonic_increasing)).all()
    assert {"progress", "tokens", "seconds", "lr", "batch_size", "tokens_per_second"} <= set(metrics.columns)


def test_evals_separate_pretraining_and_finetuning_seeds(store_url):
    evals = load.load_evals(store_url, "group_ablation")
    assert set(evals["task"]) == {"cola", "sst2", "rte"}
    assert set(evals["eval_seed"]) == set(range(5)) and set(evals["seed"]) == {0, 1}


def test_bare_path_is_sqlite(store_url):
    path = store_url.removeprefix("sqlite:///")
    assert load.sweep_names(path)[0] == "lr_schedules"


def test_missing_store_and_unknown_sweep(store_url, tmp_path):
    with pytest.raises(StoreError, match="no store"):
        load.load_trials(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()  # reading never creates a store
    with pytest.raises(load.UnknownSweepError, match="lr_schedules, single_seed"):
        load.load_sweep(store_url, "nope")


def test_flatten_config_nests():
    assert load.flatten_config({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    assert load.flatten_config(None) == {}
