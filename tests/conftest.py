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
