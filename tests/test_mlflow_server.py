"""A smoke study tracked through a real `mlflow server` on 127.0.0.1, read back over HTTP, and
the server's UI loaded in headless Chromium."""

import html
import os
import re
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from study import browser, ui
from study.run import main
from study.screenshots import take

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    with ui.mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts",
                          root / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def served_study(ray_session, mlflow_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "smoke"
    assert main([str(ROOT / "search_spaces" / "smoke.yaml"), "--out", str(out),
                 "--mlflow-uri", mlflow_server, "--reports-dir", str(out.parent / "reports")]) == 0
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


def needs_chromium() -> None:
    if browser.chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI (.ci/run installs it)")
        pytest.skip("NOTICE: no chromium on this machine: the MLflow UI browser check did not run")


def test_mlflow_ui_lists_the_study_runs_in_a_browser(mlflow_server, served_study, tmp_path):
    needs_chromium()
    experiment = MlflowClient(mlflow_server).get_experiment_by_name("smoke")
    page = f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs"
    dom = browser.page_dom(page, width=1600)
    screenshot = browser.screenshot(page, tmp_path / "mlflow-ui-runs.png", width=1600)
    print(f"screenshot of the MLflow UI: {screenshot}")
    assert "smoke study" in dom  # the parent run, by name
    assert "matching runs" in dom
    assert screenshot.stat().st_size > 10_000


def test_the_parent_run_page_tells_the_verdict_and_serves_the_report(mlflow_server,
                                                                     served_study):
    """A reviewer who opens the study's run in the MLflow UI reads the verdict there, and the
    executed report opens from its artifacts."""
    needs_chromium()
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("smoke")
    parent = next(r for r in client.search_runs([experiment.experiment_id], max_results=1000)
                  if r.data.tags.get("ganstudy.role") == "study")
    note = parent.data.tags["mlflow.note.content"]
    verdict = next(line for line in note.splitlines() if line.startswith("**Verdict:**"))
    words = verdict.removeprefix("**Verdict:** ").split(" (")[0]  # before the numbers
    rid = parent.info.run_id
    dom = browser.page_dom(f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs/{rid}")
    assert "Verdict:" in dom and html.escape(words, quote=False) in dom
    # the UI's artifact view fetches the report and shows it in its sandboxed HTML frame
    view = browser.page_dom(f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs/{rid}"
                            "/artifacts/report/smoke.html")
    assert re.search(r'<iframe src="blob:[^"]+"[^>]*class="mlflow-html-iframe"', view)
    # which is the executed report (the server sends it as a download, so read it over HTTP)
    with urllib.request.urlopen(f"{mlflow_server}/get-artifact?path=report/smoke.html"
                                f"&run_uuid={rid}", timeout=60) as response:
        report = response.read().decode()
    assert "Leaderboard" in report and "Memorisation check" in report


def test_the_screenshot_script_shoots_the_study_run_its_list_and_report(mlflow_server,
                                                                       served_study, tmp_path):
    needs_chromium()
    shots = take("smoke", mlflow_server, tmp_path)
    assert [p.name for p in shots] == ["mlflow_smoke_study_run.png", "mlflow_smoke_runs.png",
                                       "report_smoke.png"]
    for path in shots:
        image = Image.open(path)
        assert image.size[0] == 1400
        assert len(set(image.convert("L").resize((64, 64)).getdata())) > 20  # not blank
