import os
import tempfile

# Keep prepared-data caches of the test session out of the user's ~/.cache and shared between tests.
os.environ.setdefault("CRAM_CACHE", os.path.join(tempfile.gettempdir(), "cram-test-cache"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/servers.py, under --import-mode=importlib
import servers  # noqa: E402


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL server for this session: .ci/run's (CRAM_TEST_POSTGRES_URL), else one started
    here in a temp folder. Without PostgreSQL the cases skip locally, but fail in CI (CI=true)."""
    given = os.environ.get("CRAM_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's driver for postgresql:// URLs)

        url, folder = servers.postgres_start()
    except (ImportError, servers.ServerError) as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no PostgreSQL server could be started: {e}")
        pytest.skip(f"no PostgreSQL server: {e}")
    yield url
    servers.postgres_stop(folder)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server, dropped afterwards."""
    name = f"cram_test_{uuid.uuid4().hex[:12]}"
    url = servers.create_database(postgres_server, name)
    yield url
    servers.drop_database(postgres_server, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty results store, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("postgres_url")
