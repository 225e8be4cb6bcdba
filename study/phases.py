"""The study's phases as Tune experiments: search, confirmation and the final run, each started,
resumed where a killed or interrupted driver left it, or read back when done."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from study.interrupts import Interrupts
from study.space import FINAL_PHASE, hyperparameters, pbt_member, tune_param_space
from study.spec import PROGRESS, Asha, Pbt, StudySpec
from study.state import Experiment, Placement, StudyState


def build_searcher(spec: StudySpec, study_dir: Path, baseline: dict[str, Any],
                   extension: int = 0, trials: int | None = None):
    """Optuna on the study's storage. An extension (`--resume --trials N`) continues the same
    Optuna study, whose every trial its sampler sees; it is seeded anew (a random sampler with
    the first seed would propose the first trials again) and the baseline has run already."""
    import optuna

    from study.space import DefineByRun
    from study.tune_extensions import FinalResultSearch

    seed = spec.seed + extension
    if spec.searcher.type == "tpe":
        sampler = optuna.samplers.TPESampler(
            n_startup_trials=spec.searcher.startup_trials, multivariate=True, group=True,
            constant_liar=True, seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    return FinalResultSearch(
        space=DefineByRun(spec), metric=spec.targets if spec.objectives else spec.metric,
        mode=spec.directions if spec.objectives else spec.direction,
        points_to_evaluate=None if extension else [baseline], sampler=sampler,
        study_name=spec.name, storage=storage, trials=trials)


def build_scheduler(spec: StudySpec, baseline: dict[str, Any], study_dir: Path):
    from ray.tune.schedulers import FIFOScheduler

    from study.space import tune_domain
    from study.tune_extensions import RUNGS_FILE, StudyASHA, StudyPBT

    if isinstance(spec.scheduler, Pbt):
        return StudyPBT(
            baseline, time_attr="step", metric=spec.metric, mode=spec.direction,
            perturbation_interval=spec.scheduler.perturbation_interval,
            quantile_fraction=spec.scheduler.quantile_fraction,
            hyperparam_mutations={k: tune_domain(spec.space[k])
                                  for k in spec.scheduler.mutations})
    if isinstance(spec.scheduler, Asha):
        return StudyASHA(
            baseline, study_dir / RUNGS_FILE, time_attr=PROGRESS[spec.budget.unit],
            metric=spec.metric,
            mode=spec.direction, max_t=spec.budget.steps, grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor)
    return FIFOScheduler()


class StudyInterrupted(Exception):
    """SIGINT (Ctrl+C) stopped the study; Tune saved its state: --resume continues it."""


class StudyStopped(Exception):
    """Ray ended a run abnormally (a node lost, its OOM killer...): --resume continues it."""


def point_key(config: dict[str, Any]) -> str:
    """A confirmation run's identity: its configuration and seed (its label is its rank)."""
    return json.dumps({**hyperparameters(config), "seed": config.get("seed")}, sort_keys=True)


class Phases:
    """The study's Tune experiments, phase by phase: each one started, resumed or read back."""

    def __init__(self, spec: StudySpec, place: Placement, state: StudyState, tracker,
                 baseline: dict[str, Any], interrupts: Interrupts | None = None):
        self.spec, self.place, self.state = spec, place, state
        self.tracker, self.baseline = tracker, baseline
        self.interrupts = interrupts or Interrupts()

    def search(self) -> list:
        """Every search trial: the earlier experiments' (resumed if unfinished), then new ones
        up to budget.trials. The searcher of an extension continues from all trials in the
        Optuna storage."""
        from ray.tune.search import BasicVariantGenerator

        from study.summary import result_trial_id

        spec, earlier = self.spec, self.state.of_phase("search")
        results = [r for e in earlier for r in self.resume(e)]
        planned = sum(e.trials for e in earlier)
        if planned < spec.budget.trials:
            if isinstance(spec.scheduler, Pbt):
                # Ray runs no searcher beside PBT: a seeded random population, the baseline first.
                search_alg = BasicVariantGenerator(points_to_evaluate=[self.baseline],
                                                   random_state=spec.seed,
                                                   max_concurrent=spec.max_concurrent)
                param_space = tune_param_space(spec)
            else:
                search_alg = build_searcher(spec, self.place.study_dir, self.baseline,
                                            extension=len(earlier),
                                            trials=spec.budget.trials - planned)
                param_space = None
            results += self.fit("search", spec.budget.trials - planned, search_alg,
                                build_scheduler(spec, self.baseline, self.place.study_dir),
                                spec.budget.time_limit_s, param_space)
        self.tracker.drop_orphans("search", {result_trial_id(r) for r in results})
        return results

    def confirm(self, board) -> Any:
        """The confirmation runs of the current top-k and the baseline. Runs an earlier
        confirmation already made (same configuration and seed) are reused under their new
        label; runs of configurations no longer in the top-k are marked superseded."""
        from ray.tune.search import BasicVariantGenerator

        from study.confirm import confirmation_points
        from study.summary import result_trial_id, trial_rows

        spec = self.spec
        points = confirmation_points(board, self.baseline, spec)
        results = [r for e in self.state.of_phase("confirm") for r in self.resume(e)]
        made = {point_key(r.config) for r in results}
        missing = [p for p in points if point_key(p) not in made]
        if missing:
            # Tune fills preset points only into keys the param space declares.
            keys = dict.fromkeys(k for point in missing for k in point)
            results += self.fit("confirm", len(missing), BasicVariantGenerator(
                points_to_evaluate=missing, max_concurrent=spec.max_concurrent), None, None,
                param_space=keys)
        self.tracker.drop_orphans("confirm", {result_trial_id(r) for r in results})
        labels = {point_key(p): p["label"] for p in points}
        for r in results:
            self.tracker.relabel(result_trial_id(r), labels.get(point_key(r.config)))
        wanted = [r for r in results if point_key(r.config) in labels]
        runs = trial_rows(wanted, spec, self.baseline)
        runs["label"] = [labels[point_key(r.config)] for r in wanted]
        return runs

    def final(self, best) -> Any:
        """The final run of the chosen configuration `best` (a summary row): one trial, FIFO,
        with the resources of a whole node. A final run an earlier session made of the same
        configuration is reused; one of a configuration no longer chosen (the study was
        extended since) is marked superseded."""
        from ray.tune.search import BasicVariantGenerator

        from study.final import final_point
        from study.summary import result_trial_id, trial_rows

        point = final_point(best, self.spec)
        results = [r for e in self.state.of_phase("final") for r in self.resume(e)]
        if not any(point_key(r.config) == point_key(point) for r in results):
            results += self.fit("final", 1, BasicVariantGenerator(
                points_to_evaluate=[point], max_concurrent=1), None, None,
                param_space=dict.fromkeys(point))
        self.tracker.drop_orphans("final", {result_trial_id(r) for r in results})
        for r in results:
            self.tracker.relabel(result_trial_id(r), "final" if point_key(r.config) == point_key(
                point) else None)
        wanted = [r for r in results if point_key(r.config) == point_key(point)]
        return trial_rows(wanted, self.spec, self.baseline)

    def trainable(self, phase: str):
        """run_trial with the phase's resources: a trial's, or the final run's (a whole node),
        whose CPUs are its torch threads."""
        import ray
        from ray import tune

        from study.final import final_resources
        from study.trainable import run_trial

        trials_dir = self.place.trials_dir.resolve()
        resources = {"cpu": self.spec.resources.cpu, "gpu": self.spec.resources.gpu}
        if phase == "final":
            resources = final_resources(self.spec, [n["Resources"].get("CPU", 0)
                                                    for n in ray.nodes() if n["Alive"]])
        return tune.with_resources(
            tune.with_parameters(run_trial, spec=self.spec, trials_dir=str(trials_dir),
                                 cpu=resources["cpu"]), resources)

    def fit(self, phase: str, trials: int, search_alg, scheduler,
            time_budget_s: float | None, param_space: dict[str, Any] | None = None) -> list:
        """A new Tune experiment of `trials` trials of `run_trial`, recorded in study.json
        before it starts, every trial tracked in MLflow from this process."""
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback
        from ray.tune.search import BasicVariantGenerator

        from study.callbacks import MlflowCallback

        spec = self.spec
        experiment = self.state.add(phase, trials)
        # PBT clones other trials' checkpoints, perhaps long after they were made: it keeps them
        # all (reported at perturbation steps only); otherwise the latest two (the latest holds
        # the trial's best.pt). Tune snapshots the experiment whenever a trial has made
        # num_to_keep checkpoints since the last snapshot: with 1, after nearly every result.
        keep = None if isinstance(spec.scheduler, Pbt) else 2
        tuner = tune.Tuner(
            self.trainable(phase), param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, scheduler=scheduler, num_samples=trials,
                # a Searcher is limited here; BasicVariantGenerator by its own max_concurrent
                max_concurrent_trials=None if isinstance(search_alg, BasicVariantGenerator)
                else spec.max_concurrent, time_budget_s=time_budget_s,
                # a new trial takes over a finished one's worker process (same resources):
                # no process start and no imports of torch per trial
                reuse_actors=True),
            run_config=tune.RunConfig(
                name=experiment.name, storage_path=self.place.storage,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
                # Tune's result.json is what a resume and ExperimentAnalysis read; its CSV and
                # TensorBoard copies of every result are left out (TUNE_ENVIRONMENT): MLflow
                # holds the results, and the driver has every result to absorb
                callbacks=[MlflowCallback(self.tracker, phase, replayed=not pbt_member(
                    spec, phase == FINAL_PHASE)), JsonLoggerCallback()],
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                verbose=1),
        )
        return self.run(tuner, experiment, time_budget_s)

    def resume(self, experiment: Experiment) -> list:
        """An earlier experiment's trials: read back if it finished, else resumed (finished
        trials stay as they are, unfinished ones continue from their last checkpoint)."""
        from ray import tune

        from study.trainable import refill_deleted_checkpoints

        path = f"{self.place.storage.rstrip('/')}/{experiment.name}"
        if experiment.done:
            analysis = tune.ExperimentAnalysis(path, default_metric=self.spec.metric,
                                               default_mode=self.spec.direction)
            return list(tune.ResultGrid(analysis))
        if "://" not in path:
            refill_deleted_checkpoints(Path(path))
        tuner = tune.Tuner.restore(path, self.trainable(experiment.phase),
                                   resume_unfinished=True)
        return self.run(tuner, experiment, None)

    def run(self, tuner, experiment: Experiment, time_budget_s: float | None) -> list:
        from ray.tune.error import TuneError

        from study.callbacks import log_generators

        if self.interrupts.received:
            raise StudyInterrupted(experiment.name)
        t0 = time.time()
        try:
            with tune_environment():
                grid = tuner.fit()
        except (RuntimeError, TuneError) as err:  # e.g. Ray's OOM killer took a trial's worker
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StudyStopped(f"{experiment.name}: Ray stopped the run: {first}") from err
        unfinished = len(grid) - grid.num_terminated - grid.num_errors
        out_of_time = time_budget_s is not None and time.time() - t0 >= time_budget_s
        if (self.interrupts.received or unfinished
                or (len(grid) < experiment.trials and not out_of_time)):
            raise StudyInterrupted(experiment.name)
        log_generators(self.tracker, list(grid))
        self.state.finish(experiment)
        return list(grid)


# Tune snapshots the experiment (trial states, the searcher) at most every 10 s by default: a
# driver killed between two snapshots would lose what happened in between. A snapshot costs
# Tune ~0.1 s at 300 trials and ~0.3 s at 1000 (benchmarks/RESULTS.md, cluster_scale.py).
# With num_to_keep, Tune also forces a snapshot after that many checkpoints of a trial and warns,
# that snapshots come often: here that is the intent, and the warning buried the progress table.
TUNE_ENVIRONMENT = {"TUNE_GLOBAL_CHECKPOINT_S": "1", "TUNE_DISABLE_SIGINT_HANDLER": "1",
                    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
                    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


@contextmanager
def tune_environment() -> Iterator[None]:
    """Tune reads these settings from the environment; a user's own setting wins."""
    added = [k for k in TUNE_ENVIRONMENT if k not in os.environ]
    os.environ.update({k: TUNE_ENVIRONMENT[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)

