"""Compile warm-ups run below the sweep's own priority, so the data preparation they overlap with comes first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cram_core import warmup
from cram_core.train import parse_config

pytestmark = pytest.mark.skipif(not hasattr(os, "nice"), reason="no os.nice on this OS")


def _niceness_gained(code: str) -> int:
    out = subprocess.run([sys.executable, "-c", "import os; before = os.nice(0); " + code
                          + "; print(os.nice(0) - before)"], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_lower_priority_raises_the_niceness_by_the_increment() -> None:
    assert _niceness_gained("from cram_core.warmup import lower_priority; lower_priority(3)") == 3
    assert _niceness_gained("from cram_core.warmup import lower_priority; lower_priority(0)") == 0


def test_the_warm_up_command_asks_for_the_lower_priority() -> None:
    assert warmup.WARMUP_NICENESS > 0
    at = warmup.COMMAND.index("--nice")
    assert int(warmup.COMMAND[at + 1]) == warmup.WARMUP_NICENESS


def test_main_applies_nice_before_compiling(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[int] = []
    monkeypatch.setattr(warmup, "lower_priority", seen.append)
    monkeypatch.setattr(warmup, "warm_one", lambda cfg, vocab: {"graph": "stub", "order": list(seen)})
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(parse_config("tiny", []).to_dict()))
    assert warmup.main(["--nice", "7", str(cfg)]) == 0
    assert seen == [7]
