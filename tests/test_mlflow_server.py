"""A smoke study tracked through a real `mlflow server` on 127.0.0.1, read back over HTTP, and
the server's UI loaded in headless Chromium."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from study.run import main

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer in {timeout_s} s")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # Job workers serve GenAI features this project does not use: 7 idle processes otherwise.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(
            [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", 180, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def served_study(ray_session, mlflow_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "smoke"
    assert main([str(ROOT / "search_spaces" / "smoke.yaml"), "--out", str(out),
                 "--mlflow-uri", mlflow_server, "--no-report"]) == 0
    return out


def test_study_through_a_server_reads_back_over_http(mlflow_server, served_study, capsys):
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    summary = pd.concat([pd.read_csv(served_study / name) for name in (
        "summary.csv", "confirmation.csv", "final.csv")])
    children = [r for r in runs if r.data.tags.get("ganstudy.role") == "trial"]
    assert len(children) == len(summary)
    assert {r.data.tags["status"] for r in children} == set(summary["status"])
    for run in children:
        history = client.get_metric_history(run.info.run_id, "fid")
        assert len(history) >= 1 and all(m.value > 0 for m in history)
    # artifacts go through the server's proxy, not a path on this machine
    parent = next(r for r in runs if r.data.tags.get("ganstudy.role") == "study")
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {"spec.yaml", "summary.csv"} <= {a.path for a in client.list_artifacts(
        parent.info.run_id)}


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_mlflow_ui_lists_the_study_runs_in_a_browser(mlflow_server, served_study, tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI (.ci/run installs it)")
        pytest.skip("NOTICE: no chromium on this machine: the MLflow UI browser check did not run")
    experiment = MlflowClient(mlflow_server).get_experiment_by_name("smoke")
    page = f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1600,1000", "--virtual-time-budget=20000"]
    screenshot = tmp_path / "mlflow-ui-runs.png"
    dom = subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'profile-a'}",
                          "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
    subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'profile-b'}",
                    f"--screenshot={screenshot}", page], capture_output=True, timeout=180)
    print(f"screenshot of the MLflow UI: {screenshot}")
    assert "smoke study" in dom  # the parent run, by name
    assert "matching runs" in dom
    assert screenshot.stat().st_size > 10_000
