"""DURATION@GPU budgets: datasheet peak x utilisation x time, against hand arithmetic."""

import pytest

from cram_core import budget_units
from cram_core.config import ConfigError
from sweeps.definitions import budget_conversion, budget_label, parse_budget


def test_one_day_on_a_2080ti_by_hand():
    # 86,400 s x 53.8e12 FLOP/s (fp16 tensor, fp32 accumulate) x 0.35 MFU
    c = budget_units.convert("1day@2080ti")
    assert c.flops == pytest.approx(86_400 * 53.8e12 * 0.35) == pytest.approx(1.626912e18)
    assert parse_budget("1day@2080ti") == {"budget.flops": pytest.approx(1.626912e18)}


@pytest.mark.parametrize("text, flops", [
    ("8h@a100", 8 * 3600 * 312e12 * 0.35),
    ("1d@h200:0.5", 86_400 * 989e12 * 0.5),
    ("30min@V100:40%", 1800 * 125e12 * 0.40),
    ("2 days @ RTX A6000", 2 * 86_400 * 154.8e12 * 0.35),
    ("1h@a4000", 3600 * 76.7e12 * 0.35),
    ("1h@h100", 3600 * 989e12 * 0.35),
])
def test_every_card_and_syntax(text, flops):
    assert budget_units.convert(text).flops == pytest.approx(flops)


def test_the_table_names_the_seven_cards():
    assert set(budget_units.GPU_PEAKS) == {"2080ti", "a4000", "a6000", "v100", "a100", "h100", "h200"}


def test_the_conversion_is_recorded_in_words_and_numbers():
    label = budget_label("1day@2080ti")
    assert label.startswith("1day@2080ti = 1.63e+18 FLOP") and "53.8 TFLOP/s" in label and "35% MFU" in label
    c = budget_conversion(label)
    assert c["gpu"] == "RTX 2080 Ti" and c["seconds"] == 86_400 and c["utilisation"] == 0.35
    assert c["flops"] == pytest.approx(1.626912e18)
    assert budget_conversion("60s") is None and budget_label("60s") == "60s"


@pytest.mark.parametrize("text, words", [
    ("1day@3090ti", "valid: 2080ti"),
    ("1fortnight@a100", "DURATION@GPU"),
    ("1d@a100:1.5", "utilisation must be in (0, 1]"),
    ("0d@a100", "must be > 0"),
])
def test_bad_budgets_are_one_line_naming_what_is_valid(text, words):
    with pytest.raises(ConfigError) as e:
        parse_budget(text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_bad_gpu_from_the_cli_is_exit_2_and_writes_nothing(tmp_path, capsys):
    from sweeps.cli import main

    store = tmp_path / "s.db"
    assert main(["run", "norm_placement", "--budget", "1day@2090ti", "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "2080ti, a4000, v100" in err and not store.exists()
