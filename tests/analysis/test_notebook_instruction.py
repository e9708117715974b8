"""The notebook's own "Run headless" instruction works as written (nbconvert from the dev extra)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO_ROOT / "analysis" / "notebooks" / "sweep_report.ipynb"


def test_the_notebooks_run_instruction_works(store_url, tmp_path):
    intro = nbformat.read(NOTEBOOK, as_version=4).cells[0].source
    command = re.search(r"`(CRAM_SWEEP=\S+ jupyter nbconvert [^`]+)`", intro).group(1)
    words = shlex.split(command)
    env_words = [w for w in words if re.match(r"^[A-Z_]+=", w)]
    argv = words[len(env_words):]
    # as written, but on the test store, for a sweep it has, and into a temp folder instead of ./plots/
    assert argv[-2:] == ["--output-dir", "plots/"]
    argv[-1] = str(tmp_path / "out")
    env = {**os.environ, "CRAM_STORE": store_url, "CRAM_SWEEP": "lr_schedules", "CRAM_PLOTS": str(tmp_path / "p")}
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    page = (tmp_path / "out" / "sweep_report.html").read_text()
    assert "| one-cycle |" in page or "<td>one-cycle</td>" in page
    assert "data:image/png;base64," in page  # the figures, inline
    assert not (NOTEBOOK.parent / "sweep_report.nbconvert.ipynb").exists()  # nothing left in the checkout
