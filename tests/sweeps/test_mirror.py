"""The Optuna study a sweep is mirrored into: parameters, names, intermediate values, states, artifacts."""

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweeps.definitions import SWEEPS, Sweep, resolve
from sweeps.mirror import OBJECTIVE_NAME, OptunaMirror, artifact_dir, grid_space, knob_distribution, trial_attrs


@pytest.mark.parametrize("values,expected", [
    (["triangle", "cosine"], CategoricalDistribution(["cosine", "triangle"])),
    ([1e-3, 5e-4, 2e-3], FloatDistribution(5e-4, 2e-3, log=True)),
    ([0.98, 0.999], FloatDistribution(0.98, 0.999)),
    ([8, 128, 32], IntDistribution(8, 128, log=True)),
    ([2, 3], IntDistribution(2, 3)),
    ([0.0, 0.1], FloatDistribution(0.0, 0.1)),  # a zero rules out the log scale
    ([True, False], CategoricalDistribution([False, True])),
    ([None, 4], CategoricalDistribution([None, 4])),
])
def test_knob_distribution(values, expected):
    assert knob_distribution(values) == expected


def test_grid_space_turns_each_knob_and_the_seed_into_parameters():
    resolved = resolve(SWEEPS["lr_schedules"], preset="tiny")
    space = grid_space(resolved)
    assert set(space.distributions) == {"train.schedule", "seed"}
    assert space.distributions["seed"] == IntDistribution(min(resolved.seeds), max(resolved.seeds))
    assert space.params("baseline", 1) == {"train.schedule": resolved.base.train.schedule, "seed": 1}
    adam = grid_space(resolve(SWEEPS["adam_hparams"], preset="tiny"))
    assert adam.distributions["optim.eps"].log and not adam.distributions["optim.beta2"].log
    # every value is inside its distribution, so Optuna accepts every trial of the grid
    for values in [*space.values.values(), *adam.values.values()]:
        for key, value in values.items():
            dist = (space.distributions | adam.distributions)[key]
            assert dist._contains(dist.to_internal_repr(value))


def _mirror(tmp_path: Path) -> tuple[OptunaMirror, str]:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    resolved = resolve(SWEEPS["lr_schedules"], preset="tiny")
    return OptunaMirror(url, "lr_schedules", space=grid_space(resolved), attrs={"preset": "tiny"}), url


def test_trials_carry_knobs_names_and_held_out_curves(tmp_path):
    mirror, url = _mirror(tmp_path)
    tid, number = mirror.start("cosine", trial_attrs(variant="cosine", seed=1, config_hash="h"))
    # train-loss records are not intermediate values; records at an eval mark are, keyed by tokens
    mirror.report(tid, [{"tokens": 100.0, "loss": 7.0}, {"tokens": 200.0, "loss": 6.5, "eval_loss": 6.8}])
    mirror.close_curve(tid, {"tokens": 400.0, "eval_loss": 6.1})
    mirror.finish(tid, 6.1)
    study = optuna.load_study(study_name="lr_schedules", storage=url)
    t = study.trials[number]
    assert t.params == {"train.schedule": "cosine", "seed": 1}
    assert t.user_attrs["name"] == "cosine / seed 1"
    assert t.intermediate_values == {200: 6.8, 400: 6.1}
    assert study.metric_names == [OBJECTIVE_NAME]
    assert study.user_attrs["preset"] == "tiny" and "tokens" in study.user_attrs["intermediate_step"]


def test_a_cancelled_trial_is_pruned_and_a_crash_fails(tmp_path):
    mirror, url = _mirror(tmp_path)
    stopped, _ = mirror.start("baseline", trial_attrs(variant="baseline", seed=0, config_hash="h"))
    crashed, _ = mirror.start("cosine", trial_attrs(variant="cosine", seed=0, config_hash="h"))
    mirror.cancel(stopped)
    mirror.finish(crashed, None)
    trials = optuna.load_study(study_name="lr_schedules", storage=url).trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].user_attrs["status"] == "cancelled"


def test_a_changed_grid_keeps_its_knobs_as_user_attributes(tmp_path):
    mirror, url = _mirror(tmp_path)
    mirror.start("cosine", trial_attrs(variant="cosine", seed=0, config_hash="h"))
    # the same study, now with fewer schedules: Optuna refuses the narrower categorical
    fewer = Sweep(name="lr_schedules", section="training", axis="schedule",
                  variants={"cosine": {"train.schedule": "cosine"}})
    again = OptunaMirror(url, "lr_schedules", space=grid_space(resolve(fewer, preset="tiny")), attrs={})
    _, number = again.start("cosine", trial_attrs(variant="cosine", seed=1, config_hash="h"))
    t = optuna.load_study(study_name="lr_schedules", storage=url).trials[number]
    assert t.params == {} and t.user_attrs["train.schedule"] == "cosine" and t.user_attrs["seed"] == 1


def test_artifacts_live_beside_a_sqlite_store():
    assert artifact_dir("sqlite:////data/results.db") == Path("/data/results.db-artifacts")
    assert artifact_dir("postgresql://host/db") == Path("optuna-artifacts")
