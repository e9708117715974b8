"""End to end in headless Chromium: a sweep's report file, and the running `python -m sweeps dashboard`.

Chromium is Debian's (`apt-get install chromium`), driven by playwright with `executable_path`, so no browser
download is needed; `.ci/run` installs both. Without them the test skips, except in CI (CI=true, or
CRAM_BROWSER_TESTS=required as `.ci/run` sets), where it fails: the check must not silently stop running there.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console

from analysis.cli import main as analysis_main
from sweeps.definitions import Sweep, resolve
from sweeps.runner import RunOptions, run_sweep

pytestmark = pytest.mark.slow  # a small sweep on Ray, then a dashboard server and a browser: ~1 min on 2 cores
SHOTS = os.environ.get("CRAM_SCREENSHOTS")  # a folder to keep the screenshots in, for a person to look at
SWEEP = Sweep(name="browser_demo", section="training", axis="learning-rate schedule", seeds=2,
              variants={"cosine": {"train.schedule": "cosine"}, "one-cycle": {"train.schedule": "one-cycle"}})
NAMES = [f"{v} / seed {s}" for v in ("baseline", "cosine", "one-cycle") for s in (0, 1)]


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "playwright is not installed (pip install playwright)"
    if path is None:
        problem = "no chromium on PATH (apt-get install chromium)"
    if problem:
        if os.environ.get("CI") == "true" or os.environ.get("CRAM_BROWSER_TESTS") == "required":
            pytest.fail(f"the browser test is required here (CI / .ci/run) but {problem}")
        pytest.skip(problem)
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_local):
    """A small finished sweep (fake trainer) with its figures attached to the study and its report."""
    folder = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{folder / 'results.db'}"
    result = run_sweep(resolve(SWEEP, preset="tiny", budget="1s"),
                       RunOptions(store_url=url, backend="sweeps.testing"), console=Console(file=io.StringIO()))
    assert result.counts["completed"] == 6
    assert analysis_main(["plot", SWEEP.name, "--store", url, "--x", "both", "--out", str(folder / "plots")]) == 0
    assert analysis_main(["report", SWEEP.name, "--store", url, "--out", str(folder / "report.html")]) == 0
    return url, folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(swept):
    url, folder = swept
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "sweeps", "dashboard", "--store", url, "--port", str(port)],
                              cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dashboard did not start: {server.stdout.read().decode()[-2000:]}")
                time.sleep(0.3)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), headless=True)
        yield b
        b.close()


def _shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def _image_widths(page, selector: str = "img") -> list[int]:
    return page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")


def test_report_shows_its_table_and_figures(swept, browser):
    _, folder = swept
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto((folder / "report.html").as_uri())
    assert page.title() == f"Sweep {SWEEP.name}: report"
    results = page.locator("section", has_text="Results").locator("table").first
    assert results.locator("tbody tr").count() == 3  # baseline, cosine, one-cycle
    assert "one-cycle" in results.inner_text()
    widths = _image_widths(page)
    assert len(widths) == 3 and all(w > 0 for w in widths)  # inline PNGs that decoded
    assert "train.schedule" in page.locator("section", has_text="Config of each variant").inner_text()
    _shot(page, "report")


def test_dashboard_lists_trials_by_variant_and_shows_the_figures(dashboard, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{dashboard}/dashboard/studies/1/note")
    page.get_by_text("one-cycle / seed 1").wait_for(timeout=30_000)
    text = page.inner_text("body")
    for name in NAMES:  # the study note's trial list: which trial is which variant and seed
        assert name in text, name
    page.wait_for_function("() => [...document.images].some(i => i.complete && i.naturalWidth > 0)")
    _shot(page, "dashboard_note")

    page.goto(f"{dashboard}/dashboard/studies/1")
    page.get_by_text("Study Artifacts").wait_for(timeout=30_000)
    page.get_by_text("loss_vs_tokens.png").wait_for(timeout=30_000)
    text = page.inner_text("body")
    assert "held-out MLM loss" in text and "train.schedule" in text  # named objective, real parameters
    assert "table.csv" in text
    _shot(page, "dashboard_study")

    page.goto(f"{dashboard}/dashboard/studies/1/smartSelection")  # the dashboard's trial table
    page.get_by_text("UserAttribute name").wait_for(timeout=30_000)
    text = page.inner_text("body")
    assert all(name in text for name in NAMES)
    _shot(page, "dashboard_trials")
