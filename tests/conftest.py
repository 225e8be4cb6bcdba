import os
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory):
    """One dataset cache per test session: MNIST is decoded once, not once per test."""
    path = tmp_path_factory.mktemp("dataset-cache")
    os.environ["GANSTUDY_CACHE"] = str(path)  # inherited by CLI subprocesses too
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests track into their own stores only
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


@pytest.fixture(scope="session")
def smoke_study(ray_session, tmp_path_factory):
    """One smoke study per test session (search, confirmation, MLflow, report): many tests read
    it. Returns the study directory; the MLflow store and the reports sit beside it."""
    from study.run import main

    root = tmp_path_factory.mktemp("study")
    out = root / "smoke"
    assert main([str(ROOT / "search_spaces" / "smoke.yaml"), "--out", str(out),
                 "--reports-dir", str(root / "reports")]) == 0
    return out


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped, with the reason shown, on machines without it."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
