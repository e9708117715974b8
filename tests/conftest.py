import os
import tempfile

# Keep prepared-data caches of the test session out of the user's ~/.cache and shared between tests.
os.environ.setdefault("CRAM_CACHE", os.path.join(tempfile.gettempdir(), "cram-test-cache"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
