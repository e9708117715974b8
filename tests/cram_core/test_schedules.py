import dataclasses
import math
import typing

import pytest

from cram_core.config import Schedule, TrainConfig
from cram_core.schedules import SCHEDULES, batch_size_at, lr_factor, seq_len_at

POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)

# Hand-computed values of each closed form at POINTS, with the config fields the shape reads.
# A schedule added to the registry without an entry here fails test_schedule_matches_closed_form.
EXPECTED = {
    "constant": ({}, (1.0, 1.0, 1.0, 1.0, 1.0)),
    "linear": ({}, (1.0, 0.75, 0.5, 0.25, 0.0)),
    "cosine": ({}, (1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0)),
    # two cycles: restart to 1 at p = 0.5, end at 0 (p = 1 is not a restart)
    "cosine-restarts": ({"num_cycles": 2}, (1.0, 0.5, 1.0, 0.5, 0.0)),
    # 1 / sqrt(1 + 15 p)
    "inverse-sqrt": ({}, (1.0, 0.4588314677411235, 0.34299717028501764, 1 / 3.5, 0.25)),
    "one-cycle": ({}, (0.0, 0.5, 1.0, 0.5, 0.0)),
    "triangle": ({}, (0.25, 0.5, 0.75, 1.0, 0.0)),
    "ramp": ({}, (0.0, 0.25, 0.5, 0.75, 1.0)),
    "dive": ({"dive_at": 0.5}, (1.0, 1.0, 1.0, 0.5, 0.0)),
    "multi-cycle": ({"num_cycles": 2}, (0.0, 1.0, 0.0, 1.0, 0.0)),
    "polynomial": ({"power": 2.0}, (1.0, 0.5625, 0.25, 0.0625, 0.0)),
}


def test_registry_matches_config_choices():
    assert set(SCHEDULES) == set(typing.get_args(Schedule))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_matches_closed_form(name):
    assert name in EXPECTED, f"schedule {name!r} has no hand-computed expectations in this test"
    fields, values = EXPECTED[name]
    cfg = TrainConfig(schedule=name, **fields)
    got = [lr_factor(cfg, p) for p in POINTS]
    assert got == pytest.approx(values, abs=1e-12)


@pytest.mark.parametrize(
    "name, fields, p, expected",
    [
        ("cosine-restarts", {"num_cycles": 4}, 0.125, 0.5),
        ("cosine-restarts", {"num_cycles": 4}, 0.25, 1.0),
        ("multi-cycle", {"num_cycles": 4}, 0.125, 1.0),
        ("multi-cycle", {"num_cycles": 4}, 0.0625, 0.5),
        ("dive", {"dive_at": 0.25}, 0.625, 0.5),
        ("polynomial", {"power": 1.0}, 0.25, 0.75),
        ("triangle", {}, 0.875, 0.5),
    ],
)
def test_schedule_parameters(name, fields, p, expected):
    assert lr_factor(TrainConfig(schedule=name, **fields), p) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_progress_is_clamped(name):
    cfg = TrainConfig(schedule=name)
    assert lr_factor(cfg, -0.5) == lr_factor(cfg, 0.0)
    assert lr_factor(cfg, 1.5) == lr_factor(cfg, 1.0)


def test_warmup_multiplier():
    cfg = TrainConfig(schedule="constant", warmup=0.2)
    got = [lr_factor(cfg, p) for p in (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)]
    assert got == pytest.approx([0.0, 0.25, 0.5, 1.0, 1.0, 1.0])


def test_cooldown_multiplier():
    cfg = TrainConfig(schedule="constant", cooldown=0.2)
    got = [lr_factor(cfg, p) for p in (0.0, 0.5, 0.8, 0.9, 0.95, 1.0)]
    assert got == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.25, 0.0])


def test_warmup_and_cooldown_multiply_the_shape():
    cfg = TrainConfig(schedule="cosine", warmup=0.5, cooldown=0.5)
    assert lr_factor(cfg, 0.25) == pytest.approx(0.8535533905932737 * 0.5)
    assert lr_factor(cfg, 0.5) == pytest.approx(0.5)
    assert lr_factor(cfg, 0.75) == pytest.approx(0.14644660940672627 * 0.5)


def test_unknown_schedule_lists_valid_names():
    cfg = dataclasses.replace(TrainConfig(), schedule="bogus")
    with pytest.raises(ValueError, match="unknown schedule 'bogus'; valid: constant, linear"):
        lr_factor(cfg, 0.5)


def test_nan_progress_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        lr_factor(TrainConfig(), math.nan)


# ---------------------------------------------------------------- batch ramp


def test_batch_ramp_values():
    # 8 micro-batches at full size; line from 1 micro at p=0 to 8 at p=0.5: floor(1 + 14 p) micro-batches
    cfg = TrainConfig(batch_size=1024, micro_batch_size=128, batch_ramp=0.5)
    cases = {0.0: 128, 0.05: 128, 0.1: 256, 1 / 14: 256, 0.25: 512, 0.4: 768, 0.49: 896, 0.5: 1024, 0.9: 1024}
    for p, expected in cases.items():
        assert batch_size_at(cfg, p) == expected, p


def test_batch_ramp_paper_recipe():
    cfg = TrainConfig()  # 8192 in micro-batches of 128, ramped to p = 0.6: floor(1 + 105 p) micro-batches
    assert batch_size_at(cfg, 0.0) == 128
    assert batch_size_at(cfg, 0.3) == 32 * 128
    assert batch_size_at(cfg, 0.59) == 62 * 128
    assert batch_size_at(cfg, 0.6) == 8192
    # p where the line lands exactly on 32 micro-batches, but 63 * p / 0.6 rounds to 30.999999999999996
    assert batch_size_at(cfg, 0.6 * 31 / 63) == 32 * 128


@pytest.mark.parametrize("batch, micro, ramp", [(8192, 128, 0.6), (1024, 128, 0.5), (512, 256, 0.3), (96, 32, 1.0)])
def test_batch_ramp_invariants(batch, micro, ramp):
    cfg = TrainConfig(batch_size=batch, micro_batch_size=micro, batch_ramp=ramp)
    sizes = [batch_size_at(cfg, i / 1000) for i in range(1001)]
    assert all(s % micro == 0 and micro <= s <= batch for s in sizes)
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    assert sizes[0] == micro
    assert all(s == batch for i, s in enumerate(sizes) if i / 1000 >= ramp)


def test_no_ramp_is_constant():
    cfg = TrainConfig(batch_size=1024, micro_batch_size=128, batch_ramp=0.0)
    assert {batch_size_at(cfg, i / 10) for i in range(11)} == {1024}


# ---------------------------------------------------------------- sequence-length curriculum


def test_curriculum_stages():
    cfg = TrainConfig(seq_len_curriculum="32:0.25,64:0.5")
    cases = {0.0: 32, 0.2499: 32, 0.25: 64, 0.4999: 64, 0.5: 128, 0.9: 128, 1.0: 128}
    for p, expected in cases.items():
        assert seq_len_at(cfg, p, 128) == expected, p


def test_curriculum_to_the_end_still_finishes_at_full_length():
    cfg = TrainConfig(seq_len_curriculum="16:1.0")
    assert seq_len_at(cfg, 0.999, 128) == 16
    assert seq_len_at(cfg, 1.0, 128) == 128


def test_no_curriculum_is_full_length():
    assert {seq_len_at(TrainConfig(), i / 10, 128) for i in range(11)} == {128}
