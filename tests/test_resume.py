"""A study survives its driver: SIGKILL then --resume, SIGINT then --resume, --resume --trials N.

Each study runs in a subprocess with a Ray runtime of its own (a killed driver takes its runtime
with it), against real Ray, Optuna and MLflow stores, which the tests then count."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from study.confirm import confirmation_table
from study.spec import load_spec, parse_spec
from study.trainable import checkpoint_step

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVAL_EVERY = 100, 10
EVAL_STEPS = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))


def spec(name: str, trials: int, **extra) -> dict:
    return {"name": name, "seed": 0, "searcher": "tpe", "scheduler": {"type": "none"},
            "budget": {"trials": trials, "steps": STEPS, "eval_every": EVAL_EVERY},
            "max_concurrent": 2,
            # eval_n sets the time between checkpoints: at ~0.7 s, longer than Tune's snapshot
            # period (1 s) over two checkpoints, as real trials' minutes are.
            "fixed": {"arch": "mlp", "image_size": 28, "width": 8, "batch_size": 32,
                      "eval_n": 500, "final_n": 300},
            "space": {"lr_g": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
                      "lr_d": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
            **extra}


def start(args: list[str]) -> subprocess.Popen:
    # A session of its own: SIGKILL reaches the driver and the Ray runtime it started.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",
                                                            "MLFLOW_TRACKING_URI")}
    return subprocess.Popen([sys.executable, "-m", "study.run", *args, "--no-report"],
                            cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, code: int = 0) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == code, (out[-2000:], err[-3000:])
    return err


def trial_progress(trials: Path, evaluations: int,
                   snapshots: Path | None = None) -> tuple[int, int]:
    """(trials whose trainer finished, trials past `evaluations` evaluations and not finished),
    from the trials' folders; with `snapshots` (a local experiment folder of Tune's), only
    unfinished trials that Tune's latest snapshot of the experiment already names."""
    states = sorted(snapshots.glob("experiment_state-*.json")) if snapshots else []
    known = states[-1].read_text() if states else ""
    done = midway = 0
    for run in trials.glob("[!.]*"):
        if (run / "result.json").exists():
            done += 1
        elif (run / "metrics.jsonl").exists() and (snapshots is None or run.name in known):
            lines = (run / "metrics.jsonl").read_text().splitlines()
            midway += sum('"fid"' in line for line in lines) >= evaluations
    return done, midway


def wait_for(proc: subprocess.Popen, trials: Path, done: int, midway: int,
             evaluations: int = 2, snapshots: Path | None = None) -> None:
    deadline = time.time() + 300
    while True:
        now_done, now_midway = trial_progress(trials, evaluations, snapshots)
        if now_done >= done and now_midway >= midway:
            return
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the study never got there"
        time.sleep(0.1)


def replayed_rows(history: pd.DataFrame) -> pd.Series:
    """Which of a trial's results (Tune's records) were evaluations reported again."""
    marked = history.get("replayed", pd.Series(False, index=history.index))
    return marked.fillna(False).astype(bool)


def child_runs(study: Path, name: str) -> list:
    client = MlflowClient(f"sqlite:///{study.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], "tags.`ganstudy.role` = 'trial'",
                              max_results=1000)


def metric_steps(study: Path, run_id: str, key: str = "loss_g") -> list[int]:
    client = MlflowClient(f"sqlite:///{study.parent / 'mlflow.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def optuna_trials(study: Path, name: str) -> list:
    return optuna.load_study(study_name=name,
                             storage=f"sqlite:///{study / 'optuna.db'}").get_trials()


def tune_results(study: Path, experiment: str) -> dict[str, pd.DataFrame]:
    """Every result Tune recorded, per trial id (Ray's own files, read back)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    grid = ResultGrid(ExperimentAnalysis(str(study / "ray" / experiment)))
    return {r.metrics["trial_id"]: r.metrics_dataframe for r in grid}


def assert_complete(study: Path, name: str, trials: int) -> pd.DataFrame:
    """Every planned trial ended exactly once: no duplicates and no gaps anywhere."""
    summary = pd.read_csv(study / "summary.csv", keep_default_na=False)
    assert len(summary) == trials and summary["trial_id"].is_unique
    statuses = summary[["status", "reason"]].to_dict("records")
    assert (summary["status"] == "completed").all(), statuses
    ot = optuna_trials(study, name)
    assert len(ot) == trials and sorted(t.number for t in ot) == list(range(trials))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ot), [t.state for t in ot]
    assert sorted(t.value for t in ot) == pytest.approx(sorted(summary["fid"]))
    assert_tracked(study, name, summary)
    return summary


def assert_tracked(study: Path, name: str, summary: pd.DataFrame,
                   cloned: frozenset[str] = frozenset()) -> None:
    """MLflow holds one finished run per trial, each evaluation logged once. A PBT member that
    continued another's checkpoint (`cloned`) follows its lineage: from the donor's step on,
    skipping what the donor trained and what it had logged already."""
    runs = [r for r in child_runs(study, name) if r.data.tags["phase"] == "search"]
    assert sorted(r.data.tags["ganstudy.trial_id"] for r in runs) == sorted(summary["trial_id"])
    for run in runs:
        assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
        steps = metric_steps(study, run.info.run_id)
        if run.data.tags["ganstudy.trial_id"] in cloned:
            assert steps == sorted(set(steps)) and set(steps) <= set(EVAL_STEPS), steps
            assert steps[-1] == STEPS, (steps, summary.set_index("trial_id")["perturbations"]
                                        [run.data.tags["ganstudy.trial_id"]])
        else:
            assert steps == EVAL_STEPS  # each evaluation once
        assert metric_steps(study, run.info.run_id, "final_fid") == [STEPS]
        assert "generator_model_uri" in run.data.tags


def test_sigkill_then_resume_finishes_every_trial_once(tmp_path):
    name = "killed"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec(name, 6), sort_keys=False))
    study = tmp_path / "runs" / name
    proc = start([str(tmp_path / "spec.yaml"), "--out", str(study)])
    # a trial Tune's snapshot names continues from its checkpoint; one it does not, Tune has
    # no record of, and a new trial takes over its Optuna trial
    wait_for(proc, study / "trials", done=2, midway=1, snapshots=study / "ray" / "search")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()

    # What the kill left: trials that had finished, and trials cut off midway.
    finished = {run.name: run.joinpath("metrics.jsonl").read_text()
                for run in (study / "trials").glob("[!.]*") if (run / "result.json").exists()}
    cut = {run.name for run in (study / "trials").glob("[!.]*")
           if not (run / "result.json").exists()}
    assert len(finished) >= 2 and cut
    assert not (study / "summary.csv").exists()

    finish(start([str(study), "--resume"]))
    summary = assert_complete(study, name, 6)
    for trial_id, lines in finished.items():  # finished trials were not run again
        assert (study / "trials" / trial_id / "metrics.jsonl").read_text() == lines
    results = tune_results(study, "search")
    # A restored trial first reports the evaluations up to its checkpoint again, marked
    # replayed (what Tune's files hold of it before the kill depends on when Ray last synced
    # them to the storage).
    resumed = [t for t in cut if t in results and replayed_rows(results[t]).any()]
    assert resumed, "no trial cut off midway was continued"
    for trial_id in resumed:
        # The new process trained on from the last checkpoint, not from the first step.
        history = results[trial_id]
        later = history[history["pid"] == history[replayed_rows(history)]["pid"].iloc[0]]
        replayed = replayed_rows(later)
        assert later[~replayed]["step"].min() > EVAL_EVERY, history[["step", "pid"]]
        assert later[replayed]["step"].tolist() == list(
            range(EVAL_EVERY, later[~replayed]["step"].min(), EVAL_EVERY))
        assert trial_id in set(summary["trial_id"])


def test_sigint_stops_cleanly_then_resume_and_extend(tmp_path):
    name = "stopped"
    extra = {"confirm": {"top_k": 1, "seeds": 2},
             "final": {"steps": STEPS, "eval_every": 50, "cpu": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec(name, 4, **extra), sort_keys=False))
    study = tmp_path / "runs" / name
    proc = start([str(tmp_path / "spec.yaml"), "--out", str(study)])
    wait_for(proc, study / "trials", done=1, midway=1)
    os.kill(proc.pid, signal.SIGINT)
    err = finish(proc, 130)
    command = re.search(r"python -m study\.run (\S+) --resume", err)
    assert command and Path(command.group(1)) == study, err[-2000:]
    state = json.loads((study / "study.json").read_text())
    assert [(e["name"], e["done"]) for e in state["experiments"]] == [("search", False)]

    err = finish(start([str(study), "--resume"]))
    assert_complete(study, name, 4)
    # Tune's warning on frequent snapshots (they are intended) no longer floods the console.
    assert "snapshotting has been triggered" not in err
    first = pd.read_csv(study / "confirmation.csv", keep_default_na=False)
    assert len(first) == 4 and set(first["label"]) == {"baseline", "top-1"}
    first_final = pd.read_csv(study / "final.csv").iloc[0]
    assert first_final["status"] == "completed" and first_final["seed"] == 2000
    before = {p.name: p.joinpath("metrics.jsonl").read_text()
              for p in (study / "trials").glob("[!.]*")}

    # Extend the finished study: only the new trials run, in the same Optuna study.
    finish(start([str(study), "--resume", "--trials", "6"]))
    summary = assert_complete(study, name, 6)
    assert len(tune_results(study, "search-2")) == 2
    for trial_id, lines in before.items():
        assert (study / "trials" / trial_id / "metrics.jsonl").read_text() == lines
    ot = optuna_trials(study, name)
    old = [t.params for t in ot[:4]]
    assert all(t.params not in old for t in ot[4:])  # the extension's sampler is seeded anew
    # The baseline's confirmation runs were not made again (a new top-1 would get its own).
    again = pd.read_csv(study / "confirmation.csv", keep_default_na=False)
    base = lambda t: set(t[t["label"] == "baseline"]["trial_id"])  # noqa: E731
    assert base(again) == base(first) and len(again) == 4
    confirm_runs = [r for r in child_runs(study, name) if r.data.tags["phase"] == "confirm"]
    assert sorted(r.data.tags["ganstudy.trial_id"] for r in confirm_runs) == sorted(
        again["trial_id"])
    assert set(summary["trial_id"]) < set(p.name for p in (study / "trials").glob("[!.]*"))
    # One final run counts: the chosen configuration's. Its earlier one is reused when the
    # choice held, else kept in MLflow as superseded.
    final = pd.read_csv(study / "final.csv").iloc[0]
    chosen = again[again["label"] == confirmation_table(again, load_spec(study / "spec.yaml"))
                   .iloc[0]["label"]].iloc[0]
    assert final["param_lr_g"] == pytest.approx(chosen["param_lr_g"])
    runs = {r.data.tags["ganstudy.trial_id"]: r.data.tags["phase"] for r in child_runs(study, name)
            if r.data.tags["phase"] in ("final", "superseded")}
    assert [t for t, phase in runs.items() if phase == "final"] == [final["trial_id"]]
    if final["trial_id"] != first_final["trial_id"]:
        assert runs[first_final["trial_id"]] == "superseded"
    else:
        assert len(runs) == 1 and len(tune_results(study, "final")) == 1
    # Three sessions (interrupted, resumed, extended): the study's wall time is their sum,
    # logged on the parent run once per session, growing, never replaced by the last session's.
    sessions = json.loads((study / "study.json").read_text())["sessions"]
    assert len(sessions) == 3 and all(t > 0 for t in sessions)
    client = MlflowClient(f"sqlite:///{study.parent / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                "tags.`ganstudy.role` = 'study'")[0]
    history = sorted(client.get_metric_history(parent.info.run_id, "wall_s"),
                     key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2]  # the interrupted session never finished
    assert history[-1].value == pytest.approx(sum(sessions), abs=0.01)
    assert history[0].value < history[1].value == parent.data.metrics["wall_s"]


PBT = {"type": "pbt", "perturbation_interval": 20, "quantile_fraction": 0.25,
       "mutations": ["lr_g", "lr_d"]}


def test_pbt_checkpoints_only_where_a_clone_still_trains():
    """PBT clones a donor's latest checkpoint: one made at the last step would end the member
    that took it with no step trained under its perturbed values (seen in CI: a member ended
    at step 80 in MLflow, its lineage jumped to a finished donor's step 100)."""
    pbt = parse_spec(spec("pbt-steps", 4, searcher="random", scheduler=PBT), "test")
    assert [s for s in EVAL_STEPS if checkpoint_step(pbt, s)] == [20, 40, 60, 80]
    asha = parse_spec(spec("asha-steps", 4), "test")
    assert all(checkpoint_step(asha, s) for s in EVAL_STEPS)


def test_pbt_population_killed_then_resumed_finishes_once(tmp_path):
    """PBT's state is Ray's alone (no searcher, no rungs of ours): after a SIGKILL the
    population continues from Tune's checkpoints, each member finishes once, and the
    perturbation histories name only real exploits."""
    name = "pbt-killed"
    pbt = spec(name, 4, searcher="random", resources={"cpu": 0.5}, max_concurrent=4,
               scheduler=PBT)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(pbt, sort_keys=False))
    study = tmp_path / "runs" / name
    proc = start([str(tmp_path / "spec.yaml"), "--out", str(study)])
    # Past step 40 in half the population: PBT has checkpointed (steps 20, 40) and exploited.
    wait_for(proc, study / "trials", done=0, midway=2, evaluations=5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    killed_at = time.time()
    assert not (study / "summary.csv").exists()

    finish(start([str(study), "--resume"]))
    summary = pd.read_csv(study / "summary.csv", keep_default_na=False)
    assert len(summary) == 4 and summary["trial_id"].is_unique
    assert (summary["status"] == "completed").all(), summary[["status", "reason"]]
    assert not (study / "optuna.db").exists()
    assert_tracked(study, name, summary,
                   frozenset(summary[summary["perturbations"] != ""]["trial_id"]))
    assert summary[summary["baseline"]]["perturbations"].item() == ""
    ids = set(summary["trial_id"])
    for history in (json.loads(h) for h in summary["perturbations"] if h):
        for event in history:  # a member restored from its own checkpoint is no exploit
            assert event["from_trial"] in ids and event["step"] % 20 == 0 and event["changed"]
    # Each member's first evaluation after the kill follows a perturbation step: it continued
    # from one of Tune's checkpoints (or from the start, had it none yet).
    first_after = {}
    for trial_id, history in tune_results(study, "search").items():
        before, after = (history[history["reported_at"] < killed_at],
                         history[history["reported_at"] > killed_at])
        if len(before) and len(after):
            first_after[trial_id] = after["step"].min()
    assert all(step % 20 == EVAL_EVERY for step in first_after.values()), first_after
    assert max(first_after.values(), default=0) > 20, first_after
