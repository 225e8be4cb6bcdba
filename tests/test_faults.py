"""Trials that diverge or crash: recorded as such, told to Optuna, and the study goes on."""

import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from study.report import build_report
from study.reported import WORST
from study.run import main
from study.tracking import default_tracking_uri

pytestmark = pytest.mark.slow

# seed 5: the random searcher draws faults none (the baseline), raise, nan, none
SPEC = {
    "name": "faults", "seed": 5, "searcher": "random", "max_failures": 1,
    "budget": {"trials": 4, "steps": 40, "eval_every": 10},
    "fixed": {"arch": "mlp", "image_size": 28, "width": 8, "batch_size": 32, "eval_n": 200,
              "final_n": 300, "fault_step": 25},
    "space": {"fault": {"type": "categorical", "choices": ["none", "raise", "nan"]},
              "lr_g": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
}


@pytest.fixture(scope="module")
def fault_study(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    spec_path = root / "faults.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    out = root / "faults"
    assert main([str(spec_path), "--out", str(out), "--no-report"]) == 0
    return out, pd.read_csv(out / "summary.csv", keep_default_na=False)


def test_faults_end_as_diverged_or_failed_and_the_study_goes_on(fault_study):
    _, summary = fault_study
    assert len(summary) == 4
    by_fault = {f: summary[summary["param_fault"] == f] for f in ("none", "raise", "nan")}
    assert all(len(rows) for rows in by_fault.values()), "the seed must draw every fault"
    assert (by_fault["none"]["status"] == "completed").all()
    assert (by_fault["raise"]["status"] == "failed").all()
    assert by_fault["raise"]["reason"].str.contains("injected fault at step 25").all()
    diverged = by_fault["nan"]
    assert (diverged["status"] == "diverged").all() and (diverged["steps"] == 25).all()
    assert diverged["reason"].str.contains("training diverged at step 25: loss_d = nan").all()


def test_optuna_is_told_diverged_as_worst_and_crashed_as_failed(fault_study):
    out, summary = fault_study
    trials = optuna.load_study(study_name="faults",
                               storage=f"sqlite:///{out / 'optuna.db'}").trials
    by_fault: dict[str, list] = {}
    for t in trials:
        by_fault.setdefault(t.params["fault"], []).append(t)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in by_fault["raise"])
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.value == WORST
               for t in by_fault["nan"])
    assert all(t.value < WORST for t in by_fault["none"])


def test_mlflow_and_the_report_show_both(fault_study, tmp_path):
    out, summary = fault_study
    uri = default_tracking_uri(out)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("faults")
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("ganstudy.role") == "trial"]
    by_fault = {r.data.params["fault"]: r for r in runs}
    crashed, diverged = by_fault["raise"], by_fault["nan"]
    assert crashed.data.tags["status"] == "failed" and crashed.info.status == "FAILED"
    assert crashed.data.tags["retries"] == "1"  # max_failures: restarted once, then failed
    assert "injected fault" in crashed.data.tags["reason"]
    assert diverged.data.tags["status"] == "diverged"
    assert "diverged at step 25" in diverged.data.tags["reason"]
    ipynb, html = build_report(["faults"], uri, tmp_path)
    text = html.read_text()
    assert "diverged" in text and "failed" in text and "injected fault" in text
