"""MLflow tracking of a study: one experiment per study, a parent run for the study, a child run
per trial, all written from the driver.

Trials report to Tune; a Tune callback in the driver (study.callbacks) turns each report into
MLflow writes through a StudyTracker, run by one writer thread (study.writer). One thread of one
process writes, so a SQLite store never sees two writers ("database is locked"), and a trial
process needs no MLflow connection at all. The child run holds everything needed to review a
trial without the study directory: its hyperparameters (named as in the YAML), a point per
evaluation for each metric, the sample grid of each evaluation as an image series, its status,
and the generator of its best checkpoint as an MLflow PyTorch model.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from gan.config import make_config
from gan.errors import ConfigError
from study.generator_model import log_generator_model
from study.image_series import SampleGrid, log_grid, logged_steps
from study.reported import ENDED, OBJECTIVES, QUALITY, TRAINING
from study.review import LEADERBOARD_FILE, run_name
from study.space import distributions, hyperparameters, is_baseline, is_final
from study.spec import StudySpec, length_text, trial_values

# What a report carries per evaluation step; everything else in it is Tune's bookkeeping.
STEP_METRICS = (*TRAINING, *QUALITY)
ROLE, TRIAL_ID = "ganstudy.role", "ganstudy.trial_id"
SUPERSEDED = "superseded"  # phase tag of confirmation runs an extended study no longer counts
SAMPLES_KEY = "samples"
GENERATOR_TAG = "generator_model_uri"  # the trial's MLflow model (models:/...)


def sample_images(client: MlflowClient, run_id: str) -> dict[int, str]:
    """The sample grids a run logged as its image series: artifact path by step."""
    return logged_steps(client, run_id, SAMPLES_KEY)


def default_tracking_uri(study_dir: Path) -> str:
    """SQLite beside the study directories (runs/mlflow.db by default), shared by all studies."""
    return f"sqlite:///{(study_dir.parent / 'mlflow.db').resolve()}"


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts next to a SQLite store (runs/mlartifacts), never ./mlartifacts of the working
    directory; a tracking server decides for itself."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:///"):
        root = artifact_root(tracking_uri).removeprefix("file://")
        return (f"mlflow ui --backend-store-uri {tracking_uri} --default-artifact-root {root} "
                "--host 127.0.0.1")
    return f"open {tracking_uri} in a browser"


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (log_model, load_model of models:/ URIs) pointed at `uri` for a while.
    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI to this process's environment, where
    the next study in the same process would take it for the user's choice: both are restored."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class StudyTracker:
    """The study's experiment and parent run, and the child run of every trial."""

    def __init__(self, spec: StudySpec, study_dir: Path, tracking_uri: str,
                 baseline: dict[str, Any], artifacts: str | None = None):
        self.spec, self.study_dir, self.uri = spec, study_dir, tracking_uri
        self.baseline, self.artifacts = baseline, artifacts
        self.client = MlflowClient(tracking_uri)
        experiment = self.client.get_experiment_by_name(spec.name)
        self.experiment_id = experiment.experiment_id if experiment else (
            self.client.create_experiment(spec.name, artifact_location=artifacts or (
                                              artifact_root(tracking_uri)),
                                          tags={"mlflow.experimentKind":
                                                "custom_model_development"}))
        self.parent_id = self._parent_run()
        self.children: dict[str, str] = {}  # trial id -> child run id
        self.phase_of: dict[str, str] = {}  # trial id -> phase tag
        self.last_step: dict[str, int] = {}  # child run id -> last step logged
        self.imaged: dict[str, set[int]] = {}  # child run id -> steps with a sample grid
        self.ended: set[str] = set()  # trial ids whose run holds its end (its status)
        self._load_children()

    def _load_children(self) -> None:
        """The trial runs as the store has them: those of an earlier driver, and those another
        tracker (the one Tuner.restore unpickled with its callback) has made since."""
        for run in self.client.search_runs(
                [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}'",
                max_results=10_000):
            tags, rid = run.data.tags, run.info.run_id
            self.children[tags[TRIAL_ID]], self.phase_of[tags[TRIAL_ID]] = rid, tags["phase"]
            if rid not in self.last_step:
                steps = [m.step for m in self.client.get_metric_history(rid, "loss_g")]
                self.last_step[rid] = max(steps, default=0)
                self.imaged[rid] = set(sample_images(self.client, rid))
            if tags.get("status") in ENDED:
                self.ended.add(tags[TRIAL_ID])

    # Tune pickles its callbacks with the experiment, and Tuner.restore unpickles them: a
    # tracker comes back by finding its runs again, not with the state it had when pickled.
    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "study_dir": self.study_dir, "tracking_uri": self.uri,
                "baseline": self.baseline, "artifacts": self.artifacts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def _parent_run(self) -> str:
        """This study directory's parent run: found again on resume, created otherwise."""
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{ROLE}` = 'study' and tags.`ganstudy.study_dir` = '{self.study_dir.resolve()}'",
            max_results=1)
        if found:
            return found[0].info.run_id
        spec = self.spec
        run = self.client.create_run(self.experiment_id, run_name=f"{spec.name} study", tags={
            ROLE: "study", "ganstudy.study_dir": str(self.study_dir.resolve()),
            "git_commit": git_commit(), "mlflow.note.content": study_note(spec)})
        rid = run.info.run_id
        self.client.log_batch(rid, params=[Param(k, str(v)) for k, v in {
            "seed": spec.seed, "dataset": spec.dataset, "metric": spec.metric,
            "mode": spec.direction, "objectives": ",".join(spec.targets),
            "trials": spec.budget.trials, "unit": spec.budget.unit,
            "steps": spec.budget.steps,
            "eval_every": spec.budget.eval_every, "scheduler": spec.scheduler.type,
            "searcher": spec.searcher.label, "cpu_per_trial": spec.resources.cpu,
            "gpu_per_trial": spec.resources.gpu, "max_concurrent": spec.max_concurrent,
        }.items()], synchronous=True)
        self.client.log_text(rid, (self.study_dir / "spec.yaml").read_text(), "spec.yaml")
        self.client.log_dict(rid, {"distributions": distributions(spec),
                                   "when": {k: p.when for k, p in spec.space.items() if p.when}},
                             "search_space.json")
        return rid

    # -- trials ----------------------------------------------------------------------------
    def start_trial(self, trial_id: str, config: dict[str, Any], phase: str) -> str:
        """A trial's run: made at its first start, the same run again at a retry or on resume.
        A run that already holds its end stays as it is: the driver was killed after the trial
        ended and before Tune's snapshot recorded it, and Tune runs its last steps again."""
        if trial_id in self.children:
            if trial_id not in self.ended:
                self.client.set_tag(self.children[trial_id], "status", "running")
            return self.children[trial_id]
        params = hyperparameters(config)
        label = config.get("label", "")
        values = trial_values(self.spec, params, config.get("seed"), final=is_final(config))
        run = self.client.create_run(
            self.experiment_id, run_name=run_name(phase, label, trial_id, params, self.spec),
            tags={"mlflow.parentRunId": self.parent_id, ROLE: "trial", TRIAL_ID: trial_id,
                  "phase": phase, "label": label, "status": "running",
                  "baseline": str(is_baseline(config, self.baseline)),
                  "searched": ",".join(params)})
        rid = run.info.run_id
        # Every TrainConfig field of the trial, under its YAML name; searched ones are tagged.
        # A config that cannot be built is the trial's to fail with (its trainable raises the
        # same error, which ends the run); the run keeps the values it was given.
        try:
            full = make_config(values, "trial config").model_dump()
        except ConfigError:
            full = values
        self.client.log_batch(rid, params=[Param(k, str(v)) for k, v in full.items()],
                              synchronous=True)
        self.children[trial_id], self.phase_of[trial_id] = rid, phase
        self.last_step[rid], self.imaged[rid] = 0, set()
        return rid

    def log_result(self, trial_id: str, result: dict[str, Any],
                   grid: SampleGrid | None = None) -> None:
        """One evaluation (metrics and its sample grid), or the trial's final result.
        A step already logged is not logged again (a trial restored from its checkpoint repeats
        the steps after it, with the same values); metrics and grid are checked apart, so a grid
        a killed driver missed after the step's metrics comes with the step's replay."""
        rid = self.children[trial_id]
        step = int(result.get("step", 0))
        if trial_id in self.ended:
            return
        if result.get("final"):
            # A final result logged before the driver was killed comes again on resume.
            if result.get("status") == "completed" and (
                    "best_step" not in self.client.get_run(rid).data.metrics):
                metrics = {f"final_{k}": result[k] for k in OBJECTIVES if k in result}
                metrics.update({f"{k}_floor": result[f"{k}_floor"] for k in QUALITY
                                if f"{k}_floor" in result})
                metrics["best_step"] = result.get("best_step", step)
                self._log_metrics(rid, metrics, step)
            return
        if step > self.last_step[rid]:
            self._log_metrics(rid, {k: result[k] for k in STEP_METRICS if k in result}, step)
            self.last_step[rid] = step
        if step not in self.imaged[rid] and grid is not None:
            log_grid(self.client, rid, SAMPLES_KEY, step, grid, first=not self.imaged[rid])
            self.imaged[rid].add(step)

    def _log_metrics(self, rid: str, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(rid, metrics=[Metric(k, float(v), now, step)
                                            for k, v in metrics.items()], synchronous=True)

    def note_failure(self, trial_id: str, reason: str) -> None:
        """A callback failed for this trial: say so on its run, if there is one to say it on."""
        with contextlib.suppress(Exception):
            if trial_id in self.children:
                self.client.set_tag(self.children[trial_id], "tracking_error", reason[:5000])

    def note_retry(self, trial_id: str) -> None:
        """The trial crashed and is restarted from its last checkpoint: count it."""
        rid = self.children[trial_id]
        retries = int(self.client.get_run(rid).data.tags.get("retries", 0)) + 1
        self.client.set_tag(rid, "retries", str(retries))

    def end_trial(self, trial_id: str, status: str, reason: str = "") -> None:
        if trial_id in self.ended:
            return
        rid = self.children[trial_id]
        run = self.client.get_run(rid)
        # The status tag goes last: a run whose status says ended holds everything else but a
        # completed trial's generator, which follows (log_generator).
        if reason:
            self.client.set_tag(rid, "reason", reason[:5000])
        value = run.data.metrics.get(f"final_{self.spec.metric}")
        if value is not None and f" · {self.spec.metric} " not in run.info.run_name:
            # the list of runs reads as a leaderboard: each name ends with its final metric
            self.client.set_tag(rid, "mlflow.runName",
                                f"{run.info.run_name} · {self.spec.metric} {value:.4g}")
        self.client.set_tag(rid, "status", status)
        self.client.set_terminated(rid, "FAILED" if status == "failed" else "FINISHED")
        self.ended.add(trial_id)

    def log_generator(self, trial_id: str, model_dir: Path) -> None:
        """A completed trial's best generator, saved by the trial as an MLflow model, logged
        once (study.generator_model)."""
        rid = self.children[trial_id]
        if GENERATOR_TAG in self.client.get_run(rid).data.tags or not model_dir.is_dir():
            return
        self.client.set_tag(rid, GENERATOR_TAG, log_generator_model(
            self.client, self.experiment_id, rid, model_dir))

    def without_generator(self) -> set[str]:
        """The trials whose run says completed and holds no generator yet."""
        missing = set()
        for run in self.client.search_runs(
                [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}' "
                "and tags.status = 'completed'", max_results=10_000):
            if GENERATOR_TAG not in run.data.tags:
                trial_id = run.data.tags[TRIAL_ID]
                self.children[trial_id] = run.info.run_id  # perhaps another tracker's run
                missing.add(trial_id)
        return missing

    def drop_orphans(self, phase: str, trial_ids: set[str]) -> None:
        """Delete the phase's runs of trials Tune has no record of: a driver killed after a
        trial started and before Tune's snapshot recorded it; its Optuna trial was taken over
        by a later trial, which has a run of its own."""
        self._load_children()
        for trial_id, rid in list(self.children.items()):
            if self.phase_of.get(trial_id) == phase and trial_id not in trial_ids:
                self.client.delete_run(rid)
                del self.children[trial_id]

    def relabel(self, trial_id: str, label: str | None) -> None:
        """A confirmation run under its configuration's current rank; None: its configuration
        left the top-k when the study was extended, and the run no longer counts."""
        rid = self.children.get(trial_id)
        if rid is None:
            return
        tags = self.client.get_run(rid).data.tags
        if label is None:
            if tags.get("phase") != SUPERSEDED:
                self.client.set_tag(rid, "phase", SUPERSEDED)
        elif tags.get("label") != label:
            self.client.set_tag(rid, "label", label)

    # -- the study ---------------------------------------------------------------------------
    def log_loop_hold(self, phase: str, timings: dict[str, float]) -> None:
        """How long the phase's tracking held Tune's loop and took to write, on the parent run
        (the latest session's, for a resumed phase)."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[
            Metric(f"{phase}_{k}", float(v), now, 0) for k, v in timings.items()],
            synchronous=True)

    def finish(self, sessions: list[float], best: Any, artifacts: list[Path], note: str = "",
               board: Any = None) -> None:
        """The study's outcome on its parent run: its description (`note`, Markdown), the
        leaderboard as an MLflow table, the files. `wall_s` is the study's wall time over all
        its sessions, logged at the session's index: a resumed study adds to it, never
        replaces it."""
        rid = self.parent_id
        if note:
            self.client.set_tag(rid, "mlflow.note.content", note)
        if board is not None:
            self.client.log_table(rid, board, LEADERBOARD_FILE)
        session = len(sessions) - 1
        self.client.log_metric(rid, "wall_s", sum(sessions), step=session, synchronous=True)
        self.client.log_metric(rid, "session_wall_s", sessions[-1], step=session,
                               synchronous=True)
        if best is not None:
            self.client.set_tag(rid, "best_trial_id", best["trial_id"])
            metric = self.spec.metric
            self.client.log_batch(rid, metrics=[
                Metric(f"best_{metric}", float(best[metric]), int(time.time() * 1000), 0),
                Metric(f"best_{metric}_floor", float(best[f"{metric}_floor"]),
                       int(time.time() * 1000), 0)], synchronous=True)
        for path in artifacts:
            if path.is_file():
                self.client.log_artifact(rid, str(path))
        self.client.set_terminated(rid, "FINISHED")


def attach_report(tracking_uri: str, run_id: str, paths: list[Path]) -> None:
    """The executed report (notebook and HTML) as artifacts of the study's parent run."""
    client = MlflowClient(tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), "report")


def study_note(spec: StudySpec) -> str:
    return (f"ganstudy study `{spec.name}` on {spec.dataset}: {spec.budget.trials} trials of "
            f"{length_text(spec.budget.steps, spec.budget.unit)}, {spec.searcher.label} search, "
            f"{spec.scheduler.type} scheduler, metric {spec.metric} ({spec.direction}).")
