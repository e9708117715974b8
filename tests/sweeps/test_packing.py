"""A preset too small for a GPU packs several trials on it by default (TRIALS_PER_GPU)."""

from __future__ import annotations

import pytest

from sweeps.definitions import TRIALS_PER_GPU, trials_per_gpu
from sweeps.runner import place


def test_gpu_sweep_packs_four_trials_per_gpu_by_default() -> None:
    assert trials_per_gpu("gpu-sweep") == TRIALS_PER_GPU["gpu-sweep"] == 4
    p = place(33, cpus=16, gpus=1, gpus_per_trial=None, max_concurrent=None, trials_per_gpu=trials_per_gpu("gpu-sweep"))
    assert (p.concurrency, p.gpus_per_trial, p.cpus_per_trial) == (4, 0.25, 4)


def test_other_presets_keep_one_trial_per_gpu_and_the_flag_wins() -> None:
    assert trials_per_gpu("crammed-bert-short") == 1
    p = place(33, cpus=16, gpus=2, gpus_per_trial=None, max_concurrent=None, trials_per_gpu=1)
    assert (p.concurrency, p.gpus_per_trial) == (2, 1.0)
    explicit = place(33, cpus=16, gpus=1, gpus_per_trial=0.5, max_concurrent=None, trials_per_gpu=4)
    assert (explicit.concurrency, explicit.gpus_per_trial) == (2, 0.5)


@pytest.mark.parametrize("packing", [1, 4])
def test_without_a_gpu_packing_is_ignored(packing: int) -> None:
    p = place(10, cpus=2, gpus=0, gpus_per_trial=None, max_concurrent=None, trials_per_gpu=packing)
    assert (p.concurrency, p.gpus_per_trial) == (2, 0.0)
