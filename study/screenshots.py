"""Screenshots of a study as a reviewer sees it, for README: its parent run's page in the MLflow
UI, the experiment's run list, and the top of its executed report.

    python -m study.screenshots dcgan [--mlflow-uri sqlite:///runs/mlflow.db] [--out docs]

A SQLite store is served by an `mlflow server` started on 127.0.0.1 for the shots; a tracking
server's URL is used as it is. Needs Chromium (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlencode

from mlflow import MlflowClient

from gan.errors import ConfigError
from study import browser, ui
from study.records import load_study

WIDTH = 1400


# The UI opens its assistant panel over a third of the page when served from localhost: the
# shots browse a store served here under another name, mapped to 127.0.0.1 for Chromium alone.
ALIAS = "mlflow-review"


def leaderboard_query(record) -> str:
    """The run list's URL query that makes it the search's leaderboard: its trials alone,
    best final metric first (their names carry the choices and the metric)."""
    spec = record.spec
    return urlencode({"searchFilter": "tags.phase = 'search'",
                      "orderByKey": f"metrics.`final_{spec.metric}`",
                      "orderByAsc": str(spec.direction == "min").lower()})


def take(name: str, tracking_uri: str, out: Path) -> list[Path]:
    """The three screenshots of study `name`, written into `out`."""
    with tempfile.TemporaryDirectory(prefix="ganstudy-shots-") as scratch:
        scratch = Path(scratch)
        remote = tracking_uri.startswith(("http://", "https://"))
        served = (nullcontext(tracking_uri) if remote
                  else ui.mlflow_server(tracking_uri, scratch / "artifacts",
                                        scratch / "server.log", alias=ALIAS))
        with served as url:
            record = load_study(name, url)
            eid, rid = record.parent.info.experiment_id, record.parent.info.run_id
            shown, hosts = (url, None) if remote else (
                url.replace("127.0.0.1", ALIAS), {ALIAS: "127.0.0.1"})
            shots = [
                browser.screenshot(f"{shown}/#/experiments/{eid}/runs/{rid}",
                                   out / f"mlflow_{name}_study_run.png", WIDTH, 1700,
                                   hosts=hosts),
                browser.screenshot(f"{shown}/#/experiments/{eid}/runs?{leaderboard_query(record)}",
                                   out / f"mlflow_{name}_runs.png", WIDTH, 900, hosts=hosts),
            ]
            report = MlflowClient(url).download_artifacts(rid, f"report/{name}.html", scratch)
        shots.append(browser.screenshot(Path(report).resolve().as_uri(),
                                        out / f"report_{name}.png", WIDTH, 1600, budget_ms=5000))
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.screenshots",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study's name (its MLflow experiment)")
    parser.add_argument("--mlflow-uri", default="sqlite:///runs/mlflow.db",
                        help="tracking store (default: sqlite:///runs/mlflow.db)")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    if browser.chromium() is None:
        print("error: chromium: not installed (Debian: apt-get install chromium)",
              file=sys.stderr)
        return 2
    try:
        shots = take(args.study, args.mlflow_uri, args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in shots:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
