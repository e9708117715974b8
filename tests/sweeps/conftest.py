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


@pytest.fixture(scope="module")
def ray_cluster():
    """A real two-node Ray cluster on this machine (`ray start --head` on 127.0.0.1, a second node joined with
    `ray start --address`, 1 CPU each, temp folders of its own); only its own processes are stopped."""
    import servers  # tests/servers.py, put on the path by tests/conftest.py

    cluster = servers.ray_cluster()
    yield cluster
    cluster.stop()
