"""The MLflow UI on 127.0.0.1 over a tracking store: started for a look, a test or a screenshot,
and stopped after it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path, timeout_s: float = 180,
                  alias: str | None = None) -> Iterator[str]:
    """`mlflow server` on a free port of 127.0.0.1 over backend_uri; yields its URL. New
    artifacts go to `artifacts` through the server; runs logged before keep their own store.
    `alias`: a host name the server also answers to (a browser told to map it to 127.0.0.1)."""
    port = free_port()
    hosts = (["--allowed-hosts", f"127.0.0.1:{port},localhost:{port},{alias}:{port}",
              "--cors-allowed-origins", f"http://{alias}:{port}"] if alias else [])
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # Job workers serve GenAI features this project does not use: 7 idle processes otherwise.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", backend_uri,
             "--artifacts-destination", str(artifacts), *hosts],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", timeout_s, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
