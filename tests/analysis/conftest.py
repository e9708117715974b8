"""Puts the repository root and this folder on the path, and builds one synthetic store per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in (HERE.parents[1], HERE):  # plain `pytest` (not `python -m pytest`) puts neither on the path
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from analysis_store import build_store  # noqa: E402


@pytest.fixture(scope="session")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'results.db'}"
    build_store(url)
    return url
