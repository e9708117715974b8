"""A trial whose worker dies of a signal says why: faulthandler leaves every thread's Python stack in a
per-trial file, and the driver puts it in the live line (one line) and the trial's summary (the full text).
Unit tests of the fault file, then the runner on a real local Ray with sweeps.testing_faults."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import select

from sweeps.definitions import Sweep, resolve
from sweeps.ledger import Ledger
from sweeps.runner import RAY_TEMP_DIR, RunOptions, run_sweep
from sweeps.store import TrialRow
from sweeps.trial import FAULT_TEXT_MAX, fault_digest, fault_file, read_fault

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import faulthandler, os, signal, threading, time
from pathlib import Path
from sweeps.trial import fault_file

threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
fault = Path({fault!r})

def crash():
    os.kill(os.getpid(), signal.SIGSEGV)

faulthandler.enable()  # as Ray's workers have it: the current thread, to stderr
with fault_file(fault):
{inside}
{after}
"""


def _child(fault: Path, inside: str, after: str = "") -> subprocess.CompletedProcess:
    code = CHILD.format(fault=str(fault), inside=textwrap.indent(textwrap.dedent(inside), "    "),
                        after=textwrap.dedent(after))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_a_segfault_leaves_every_threads_stack_and_the_digest_names_the_crashing_frame(tmp_path):
    fault = tmp_path / "faults" / "trial_1.txt"
    proc = _child(fault, "crash()")
    assert proc.returncode == -11, proc.stderr
    text = read_fault(fault)
    assert not fault.exists()  # read once: the text goes into the store
    assert text.startswith("Fatal Python error: Segmentation fault")
    assert text.count("(most recent call first)") == 2 and "threading.py" in text  # the sleeping thread too
    assert fault_digest(text) == 'Fatal Python error: Segmentation fault, in File "<string>", line 10 in crash'


def test_a_trial_that_ends_removes_its_empty_fault_file_and_gives_faulthandler_back(tmp_path):
    fault = tmp_path / "trial_2.txt"
    proc = _child(fault, 'print("inside", fault.exists(), faulthandler.is_enabled())',
                  'print("after", fault.exists(), faulthandler.is_enabled())\ncrash()')
    assert proc.stdout.split() == ["inside", "True", "True", "after", "False", "True"]
    # Ray's handler again: the crash goes to stderr, the current thread only
    assert proc.returncode == -11 and "Fatal Python error: Segmentation fault" in proc.stderr
    assert proc.stderr.count("(most recent call first)") == 1
    assert read_fault(fault) is None and read_fault(tmp_path / "never-written.txt") is None


def test_a_long_fault_text_keeps_its_end(tmp_path):
    fault = tmp_path / "t.txt"
    stack = 'Current thread 0x1 (most recent call first):\n  File "a.py", line 3 in f\n'
    fault.write_text("x" * FAULT_TEXT_MAX + "\n" + stack)
    text = read_fault(fault)
    assert text.startswith("...") and text.endswith("line 3 in f") and len(text) == FAULT_TEXT_MAX + 3
    assert fault_digest(text).endswith('in File "a.py", line 3 in f')


DYING = Sweep(
    name="dying", section="training", axis="dead workers", seeds=1,
    variants={
        "segfaults": {"optim.lr": 300.0},  # sweeps.testing_faults: the worker kills itself with SIGSEGV
        "killed": {"optim.lr": 400.0},  # with SIGKILL, as the OOM killer would
    },
)


@pytest.mark.slow  # ~25 s on 2 cores: four worker deaths and their restarts
def test_a_dead_worker_is_reported_with_its_stack_or_as_killed(ray_local, tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    console = Console(file=io.StringIO(), width=300)
    before = set(os.listdir(Path(RAY_TEMP_DIR) / "faults")) if (Path(RAY_TEMP_DIR) / "faults").is_dir() else set()
    result = run_sweep(resolve(DYING, preset="tiny", budget="1s"),
                       RunOptions(store_url=url, backend="sweeps.testing_faults", max_failures=1), console=console)
    output = console.file.getvalue()
    assert result.counts["completed"] == 1 and result.counts["failed"] == 2, output
    lines = output.splitlines()
    segv = [line for line in lines if line.startswith("segfaults (seed 0): worker died, retrying: ")]
    assert len(segv) == 1 and "Fatal Python error: Segmentation fault, in File " in segv[0], output
    assert "testing_faults.py" in segv[0] and segv[0].endswith(" in train")
    killed = [line for line in lines if line.startswith("killed (seed 0): worker died, retrying: ")]
    assert len(killed) == 1 and "no fault file" in killed[0] and "SIGKILL" in killed[0], output

    ledger = Ledger(url, create=False)
    try:
        rows = {r.variant: r for r in ledger._read(lambda s: list(s.scalars(select(TrialRow))))}
    finally:
        ledger.close()
    assert rows["baseline"].status == "completed" and "worker_deaths" not in rows["baseline"].summary
    segfaults, killed_row = rows["segfaults"], rows["killed"]
    assert segfaults.status == "failed" and segfaults.reason.startswith("worker error: ")
    assert "Fatal Python error: Segmentation fault, in File " in segfaults.reason
    deaths = segfaults.summary["worker_deaths"]  # the retried attempt's and the last one's, full text
    assert len(deaths) == 2
    for death in deaths:
        assert death["fault"].startswith("Fatal Python error: Segmentation fault")
        assert "Current thread" in death["fault"] and "in trial_main" in death["fault"]
    assert killed_row.status == "failed" and "no fault file" in killed_row.reason
    assert [d["fault"] for d in killed_row.summary["worker_deaths"]] == [None, None]
    after = set(os.listdir(Path(RAY_TEMP_DIR) / "faults"))
    assert after <= before  # this run's fault folder is gone: its text is in the store
