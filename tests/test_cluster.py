"""Studies on Ray clusters of their own (several nodes, fake GPUs), each in a subprocess: they
cannot share the session's Ray runtime."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

# Starts a ray.cluster_utils.Cluster of the given nodes, runs study.run against it, stops it.
DRIVER = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from study.run import main
nodes, args = json.loads(sys.argv[1]), sys.argv[2:]
cluster = Cluster(initialize_head=True, head_node_args=nodes[0])
for node in nodes[1:]:
    cluster.add_node(**node)
cluster.wait_for_nodes()
try:
    code = main([*args, "--address", cluster.address])
finally:
    ray.shutdown()
    cluster.shutdown()
sys.exit(code)
"""


def run_on_cluster(tmp_path: Path, nodes: list[dict], spec: dict) -> pd.DataFrame:
    import json

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / spec["name"]
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(nodes), str(spec_path),
                           "--out", str(out), "--no-report"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_csv(out / "summary.csv", keep_default_na=False)


def tiny_spec(name: str, trials: int, **extra) -> dict:
    return {"name": name, "seed": 0, "searcher": "random",
            "budget": {"trials": trials, "steps": 30, "eval_every": 10},
            "fixed": {"arch": "mlp", "image_size": 28, "width": 8, "batch_size": 32,
                      "eval_n": 200, "final_n": 300},
            "space": {"lr_g": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
            **extra}


def test_trials_spread_over_two_nodes_and_results_are_complete(tmp_path):
    summary = run_on_cluster(tmp_path, [{"num_cpus": 1}, {"num_cpus": 1}],
                             tiny_spec("two-nodes", 4))
    assert len(summary) == 4 and (summary["status"] == "completed").all()
    assert summary["node_id"].nunique() == 2  # the node of each trial is recorded
    assert (summary["fid"] > 0).all() and (summary["steps"] == 30).all()
    study = yaml.safe_load((tmp_path / "two-nodes" / "study.json").read_text())
    assert study["address"] and study["storage"].endswith("two-nodes/ray")


def test_fractional_fake_gpus_run_four_trials_at_once_on_cpu(tmp_path):
    spec = tiny_spec("fake-gpus", 4, resources={"cpu": 0.5, "gpu": 0.5}, max_concurrent=4)
    summary = run_on_cluster(tmp_path, [{"num_cpus": 2, "num_gpus": 2}], spec)
    assert len(summary) == 4 and (summary["status"] == "completed").all()
    starts, ends = summary["started_at"].astype(float), summary["ended_at"].astype(float)
    assert starts.max() < ends.min(), "all four trials ran at once"
    assert (summary["gpu_ids"].astype(str) != "").all()  # Ray gave each trial a GPU share
    assert (summary["device"] == "cpu").all()  # torch sees no CUDA: the trainer fell back
