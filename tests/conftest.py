import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory):
    """One dataset cache per test session: MNIST is decoded once, not once per test."""
    path = tmp_path_factory.mktemp("dataset-cache")
    os.environ["GANSTUDY_CACHE"] = str(path)  # inherited by CLI subprocesses too
    return path


def tiny(**overrides):
    """Values for a run of a few steps on tiny networks: each test states what it varies."""
    return {"width": 8, "batch_size": 16, "steps": 4, "log_every": 2, "sample_every": 4,
            "checkpoint_every": 4, "threads": 1, "eval_every": 0, **overrides}


@pytest.fixture(scope="session")
def ray_session(dataset_cache):
    """One Ray runtime for the whole test session: it takes seconds to start, CI has 2 cores."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
