"""A cluster that shares no disk: Ray's storage and MLflow's artifacts on an S3 server (moto,
started here on 127.0.0.1), trials writing to a scratch folder the driver never opens. Each
study runs in a subprocess that starts a 2-node ray.cluster_utils.Cluster and watches, with
an audit hook, every path its own process touches."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import mlflow
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

from gan.checkpoint import load_checkpoint
from study.tracking import fluent_tracking_uri
from tests.test_resume import (
    EVAL_STEPS,
    PBT,
    assert_complete,
    assert_tracked,
    spec,
    wait_for,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "ganstudy"

# A 2-node cluster of 1 CPU each, study.run against it; every path the driver process opens,
# lists or deletes under the scratch folder is written to the `touched` file as it happens.
DRIVER = """
import json, os, sys
scratch, touched = sys.argv[1], sys.argv[2]

def watch(event, args):
    if args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0]) if not isinstance(args[0], str) else args[0]
        if os.path.abspath(path).startswith(scratch):
            with open(touched, "a") as f:  # not under scratch: no recursion
                f.write(json.dumps([event, path]) + "\\n")

sys.addaudithook(watch)
import ray
from ray.cluster_utils import Cluster
from study.run import main
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
try:
    code = main([*sys.argv[3:], "--address", cluster.address])
finally:
    ray.shutdown()
    cluster.shutdown()
sys.exit(code)
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 server on 127.0.0.1 with one bucket; the environment that points boto3 (MLflow's
    artifacts) and pyarrow (Ray's storage) at it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3")
    for _ in range(100):
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:  # the server is still starting
            time.sleep(0.1)
    yield client
    server.terminate()
    server.wait()
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def start(tmp_path: Path, name: str, args: list[str]) -> subprocess.Popen:
    scratch, touched = tmp_path / "scratch", tmp_path / "touched.jsonl"
    stores = ["--storage", f"s3://{BUCKET}/{name}/ray", "--scratch", str(scratch),
              "--mlflow-artifacts", f"s3://{BUCKET}/{name}/mlartifacts", "--no-report"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(scratch), str(touched), *args,
         *(stores if "--resume" not in args else ["--no-report"])],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, (out[-2000:], err[-3000:])


def assert_no_shared_disk(tmp_path: Path, study: Path, client, name: str) -> None:
    """The driver never touched a trial's folder, which the trials did use; Ray's storage and
    MLflow's artifacts are in the bucket, and nothing of either on the driver's disk."""
    touched = tmp_path / "touched.jsonl"
    assert not touched.exists(), touched.read_text()[:2000]
    assert any((tmp_path / "scratch").glob("*/metrics.jsonl"))  # the trials' own writes
    assert not (study / "trials").exists() and not (study / "ray").exists()
    assert not (study.parent / "mlartifacts").exists()
    stored = keys(client, f"{name}/")
    assert any(k.startswith(f"{name}/ray/search/") for k in stored)
    assert any(k.startswith(f"{name}/mlartifacts/") and "/images/" in k for k in stored)


def test_asha_study_on_two_nodes_with_s3_and_no_shared_disk(tmp_path, s3):
    name = "s3-asha"
    asha = spec(name, 4, max_concurrent=2, confirm={"top_k": 1, "seeds": 2},
                scheduler={"type": "asha", "grace_period": 30, "reduction_factor": 2})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(asha, sort_keys=False))
    study = tmp_path / "runs" / name
    finish(start(tmp_path, name, [str(tmp_path / "spec.yaml"), "--out", str(study)]))

    assert_no_shared_disk(tmp_path, study, s3, name)
    summary = pd.read_csv(study / "summary.csv", keep_default_na=False)
    assert len(summary) == 4 and set(summary["status"]) <= {"completed", "pruned"}
    assert summary["node_id"].nunique() == 2
    # The baseline is confirmed, and the search's best other trial where one outlived ASHA.
    survivors = int(((summary["status"] == "completed") & ~summary["baseline"]).any())
    confirmed = pd.read_csv(study / "confirmation.csv")
    assert sorted(set(confirmed["label"])) == ["baseline"] + ["top-1"] * survivors
    assert len(confirmed) == 2 * (1 + survivors) and (confirmed["status"] == "completed").all()
    # The product came from the final trial's checkpoint in the bucket, and MLflow's copy of
    # each completed trial's generator loads from the bucket and samples.
    assert load_checkpoint(study / "best_generator.pt", full=False)["step"] > 0
    client = MlflowClient(f"sqlite:///{study.parent / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                              "tags.`ganstudy.role` = 'trial'")
    done = [r for r in runs if r.data.tags["status"] == "completed"]
    assert done and all(r.info.artifact_uri.startswith(f"s3://{BUCKET}/{name}/mlartifacts/")
                        for r in done)
    with fluent_tracking_uri(f"sqlite:///{study.parent / 'mlflow.db'}"):
        generator = mlflow.pytorch.load_model(done[0].data.tags["generator_model_uri"])
    images = generator(torch.zeros(2, int(done[0].data.params["latent_dim"])))
    assert images.shape[0] == 2 and torch.isfinite(images).all()


def test_sigkill_then_resume_with_s3_finishes_every_trial_once(tmp_path, s3):
    name = "s3-killed"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec(name, 6), sort_keys=False))
    study = tmp_path / "runs" / name
    proc = start(tmp_path, name, [str(tmp_path / "spec.yaml"), "--out", str(study)])
    wait_for(proc, tmp_path / "scratch", done=2, midway=1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (study / "summary.csv").exists()

    finish(start(tmp_path, name, [str(study), "--resume"]))
    assert_complete(study, name, 6)
    assert_no_shared_disk(tmp_path, study, s3, name)


def test_pbt_population_with_s3_clones_checkpoints_through_the_bucket(tmp_path, s3):
    name = "s3-pbt"
    pbt = spec(name, 4, searcher="random", resources={"cpu": 0.5}, max_concurrent=4,
               scheduler=PBT)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(pbt, sort_keys=False))
    study = tmp_path / "runs" / name
    finish(start(tmp_path, name, [str(tmp_path / "spec.yaml"), "--out", str(study)]))

    assert_no_shared_disk(tmp_path, study, s3, name)
    summary = pd.read_csv(study / "summary.csv", keep_default_na=False)
    assert len(summary) == 4 and (summary["status"] == "completed").all()
    cloned = summary[summary["perturbations"] != ""]
    assert len(cloned), "PBT exploited no member in 100 steps with perturbations every 20"
    assert_tracked(study, name, summary, frozenset(cloned["trial_id"]))
    for history in cloned["perturbations"]:
        for event in json.loads(history):  # each exploit took a checkpoint from the bucket
            assert event["from_trial"] in set(summary["trial_id"]) and event["changed"]
            assert event["step"] in EVAL_STEPS[:-1]
