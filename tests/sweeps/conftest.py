import pytest

from sweeps.runner import start_ray


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every test that needs it: ray.init costs 10-20 s on a 2-core machine."""
    import ray

    started = start_ray(None, num_cpus=2)
    yield
    if started:
        ray.shutdown()
