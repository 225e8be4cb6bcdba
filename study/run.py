"""Run a study: `python -m study.run search_spaces/dcgan.yaml [--out DIR] [--smoke]`.

YAML -> validated StudySpec -> Optuna (define-by-run, TPE or random, seeded, baseline first)
-> Ray Tune trials of `gan.train` (ASHA at equal generator updates) -> summary.csv,
best_config.yaml, best_generator.pt in the study directory (default runs/<name>/).
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from gan.config import make_config
from gan.data import check_available, folder_root
from gan.errors import ConfigError, DatasetError, GanError
from gan.fileio import atomic_write_text
from gan.metrics.evaluate import Evaluator
from gan.train import OneLineParser
from study.confirm import best_choice
from study.space import baseline_params, hyperparameters, tune_param_space
from study.spec import Asha, Pbt, StudySpec, load_spec, parse_spec, trial_values
from study.state import STATE_FILE, Experiment, Placement, StudyState, load_state

SMOKE_FIXED = {"width": 8, "batch_size": 32, "eval_n": 200, "final_n": 300}


def smoke_spec(spec: StudySpec) -> StudySpec:
    """The same study shrunk to a few trials of a few steps: seconds per trial."""
    data = spec.model_dump()
    data["budget"].update(trials=min(spec.budget.trials, 6), steps=60, eval_every=10,
                          time_limit_s=None)
    if isinstance(spec.scheduler, Asha):
        data["scheduler"].update(grace_period=10, reduction_factor=2)
    if isinstance(spec.scheduler, Pbt):
        data["scheduler"].update(perturbation_interval=20)
    space = {k: v for k, v in data["space"].items() if k not in SMOKE_FIXED}
    data["space"], data["fixed"] = space, {**data["fixed"], **SMOKE_FIXED}
    if data["confirm"]:
        data["confirm"] = {"top_k": 1, "seeds": 2}
    data["name"] = f"{spec.name}-smoke"
    return parse_spec(data, "--smoke")


def build_searcher(spec: StudySpec, study_dir: Path, baseline: dict[str, Any],
                   extension: int = 0):
    """Optuna on the study's storage. An extension (`--resume --trials N`) continues the same
    Optuna study, whose every trial its sampler sees; it is seeded anew (a random sampler with
    the first seed would propose the first trials again) and the baseline has run already."""
    import optuna

    from study.space import DefineByRun
    from study.trainable import FinalResultSearch

    seed = spec.seed + extension
    if spec.searcher.type == "tpe":
        sampler = optuna.samplers.TPESampler(
            n_startup_trials=spec.searcher.startup_trials, multivariate=True, group=True,
            constant_liar=True, seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    return FinalResultSearch(
        space=DefineByRun(spec), metric=spec.metric, mode=spec.direction,
        points_to_evaluate=None if extension else [baseline], sampler=sampler,
        study_name=spec.name, storage=storage)


def build_scheduler(spec: StudySpec, baseline: dict[str, Any], study_dir: Path):
    from ray.tune.schedulers import FIFOScheduler

    from study.space import tune_domain
    from study.trainable import RUNGS_FILE, StudyASHA, StudyPBT

    if isinstance(spec.scheduler, Pbt):
        return StudyPBT(
            baseline, time_attr="step", metric=spec.metric, mode=spec.direction,
            perturbation_interval=spec.scheduler.perturbation_interval,
            quantile_fraction=spec.scheduler.quantile_fraction,
            hyperparam_mutations={k: tune_domain(spec.space[k])
                                  for k in spec.scheduler.mutations})
    if isinstance(spec.scheduler, Asha):
        return StudyASHA(
            baseline, study_dir / RUNGS_FILE, time_attr="step", metric=spec.metric,
            mode=spec.direction, max_t=spec.budget.steps, grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor)
    return FIFOScheduler()


TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def validate(spec_path: Path, smoke: bool, out: Path | None, tracking_uri: str | None,
             trials: int | None = None, dataset: str | None = None) -> tuple[StudySpec, Path]:
    """Everything that can reject the input, before Ray starts and before anything is written
    (but the caches: a folder's decoded images and label-free feature network)."""
    spec = load_spec(spec_path)
    if dataset is not None:
        spec = with_dataset(spec, dataset, spec_path)
    if spec.dataset.startswith("folder:"):  # trials run in folders of their own: no relative path
        spec = with_dataset(spec, f"folder:{folder_root(spec.dataset)}", spec_path)
    if smoke:
        spec = smoke_spec(spec)
    if trials is not None:
        spec = with_trials(spec, trials, spec_path)
    study_dir = out or Path("runs") / spec.name
    if (study_dir / "spec.yaml").exists():
        raise ConfigError(f"{study_dir}: already holds a study; continue it with --resume, or "
                          "choose another --out")
    check_ready(spec, spec_path)
    check_writable(study_dir)
    if tracking_uri is not None and tracking_uri.split(":", 1)[0].split("+")[0] not in (
            TRACKING_SCHEMES):
        raise ConfigError(f"--mlflow-uri {tracking_uri}: expected a tracking server "
                          "(http://host:port) or a database (sqlite:///path/mlflow.db)")
    return spec, study_dir


def check_ready(spec: StudySpec, spec_path: Path) -> None:
    """The data is here, the baseline fits the space, and its samples can be scored: the feature
    space is made here, once, before any trial (a folder's label-free network is trained now,
    not by every trial at once), and with it the cached real-data reference."""
    try:
        check_available(spec.dataset)
        baseline = baseline_params(spec)  # the reference configuration must fit the space
        cfg = make_config(trial_values(spec, baseline), f"{spec_path}: baseline")
        _scorable(cfg.dataset, cfg.image_size, cfg.channels, cfg.feature_net,
                  cfg.inception_weights)
    except GanError as err:
        raise ConfigError(f"{spec_path}: dataset: {err}" if isinstance(err, DatasetError)
                          else f"{spec_path}: {err}") from None


@functools.lru_cache(maxsize=16)
def _scorable(dataset: str, image_size: int, channels: int, feature_net: str,
              inception_weights: str | None) -> None:
    """Once per process and evaluation setting: its feature space and reference are on disk."""
    Evaluator(dataset, image_size, "cpu", channels, feature_net,
              inception_weights=inception_weights)


def with_dataset(spec: StudySpec, dataset: str, source: Any) -> StudySpec:
    data = spec.model_dump()
    data["dataset"] = dataset
    return parse_spec(data, f"{source} with --dataset {dataset}")


def with_trials(spec: StudySpec, trials: int, source: Any) -> StudySpec:
    data = spec.model_dump()
    data["budget"]["trials"] = trials
    return parse_spec(data, f"{source} with --trials {trials}")


def study_dir_of(spec_path: Path, smoke: bool, out: Path | None) -> Path:
    """Where the study named by the command line lives: a study directory given as such, else
    --out, else runs/<name> of the spec (shrunk with --smoke)."""
    if spec_path.is_dir():
        return spec_path
    if out is not None:
        return out
    spec = load_spec(spec_path)
    return Path("runs") / (smoke_spec(spec) if smoke else spec).name


def validate_resume(study_dir: Path, trials: int | None, tracking_uri: str | None,
                    storage: str | None, address: str | None) -> tuple[StudySpec, StudyState]:
    """A study to continue: its own spec.yaml and study.json, with more trials if asked. Its
    stores stay where they are; only the Ray cluster's address may change."""
    state = load_state(study_dir)
    spec_path = study_dir / "spec.yaml"
    spec = load_spec(spec_path)
    place = state.place
    for flag, given, recorded in (("--mlflow-uri", tracking_uri, place.tracking_uri),
                                  ("--storage", storage, place.storage)):
        if given is not None and given != recorded:
            raise ConfigError(f"{flag} {given}: the study at {study_dir} records {recorded} "
                              "(study.json); a resumed study keeps its stores")
    if trials is not None:
        if isinstance(spec.scheduler, Pbt) and trials != spec.budget.trials:
            raise ConfigError(f"--trials {trials}: a PBT population cannot grow; start a new "
                              "study instead")
        if trials < spec.budget.trials:
            raise ConfigError(f"--trials {trials}: the study already plans "
                              f"{spec.budget.trials} trials; --trials can only extend it")
        spec = with_trials(spec, trials, spec_path)
    check_ready(spec, spec_path)
    state.place = replace(place, study_dir=study_dir, address=address or place.address)
    return spec, state


def check_writable(path: Path) -> None:
    """The study directory can be created where asked: its nearest existing ancestor is a
    writable directory."""
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--out {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {path}: {ancestor} is not writable")


def start_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)


def check_resources(spec: StudySpec, spec_path: str) -> None:
    """A trial must fit on one node of the live cluster, or Tune would wait for it forever."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    for kind, need in (("CPU", spec.resources.cpu), ("GPU", spec.resources.gpu)):
        most = max((n.get(kind, 0) for n in nodes), default=0)
        if need > most:
            raise ConfigError(f"{spec_path}: resources.{kind.lower()}: {need} per trial, but no "
                              f"node of the Ray cluster has more than {most:g}")


class StudyInterrupted(Exception):
    """SIGINT (Ctrl+C) stopped the study; Tune saved its state: --resume continues it."""


class StudyStopped(Exception):
    """Ray ended a run abnormally (a node lost, its OOM killer...): --resume continues it."""


def run_study(spec: StudySpec, place: Placement, spec_text: str, spec_path: str = "spec",
              state: StudyState | None = None) -> dict[str, Any]:
    """Search, then confirm; return the rows, tables and best trial for the report.

    With the state of a study run before (`--resume`), its finished experiments are read back,
    its unfinished ones resumed where Tune's last snapshot left them, and new trials run only
    where the spec now plans more than were started."""
    from study.confirm import confirmation_table, verdict
    from study.summary import leaderboard, trial_rows, write_outputs
    from study.tracking import StudyTracker

    start_ray(place.address)
    check_resources(spec, spec_path)  # against the live cluster: the last check, still unwritten
    study_dir = place.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(study_dir / "spec.yaml", spec_text)
    state = state or StudyState(place)
    state.begin_session()
    baseline = baseline_params(spec)
    tracker = StudyTracker(spec, study_dir, place.tracking_uri, baseline)
    interrupts = Interrupts()
    phases = Phases(spec, place, state, tracker, baseline, interrupts)
    trials_dir = study_dir / "trials"
    with interrupts.installed():
        rows = trial_rows(phases.search(), spec, baseline, trials_dir)
        out: dict[str, Any] = {"rows": rows, "baseline": baseline, "confirm_runs": None,
                               "confirm_table": None, "verdict": None}
        board = leaderboard(rows, spec)
        if spec.confirm and not board.empty:
            runs = phases.confirm(board)
            table = confirmation_table(runs, spec)
            out.update(confirm_runs=runs, confirm_table=table, verdict=verdict(table, spec))
        if interrupts.received:
            raise StudyInterrupted("the study's last steps")
    out["best"] = write_outputs(rows, spec, study_dir, out["confirm_runs"], out["confirm_table"],
                                best_choice(out["confirm_table"], spec))
    state.save()
    out["sessions"] = list(state.sessions)
    tracker.finish(state.sessions, out["best"], [study_dir / name for name in (
        "summary.csv", "confirmation.csv", "best_config.yaml")])
    return out


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
                                            extension=len(earlier))
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
        runs = trial_rows(wanted, spec, self.baseline, self.place.study_dir / "trials")
        runs["label"] = [labels[point_key(r.config)] for r in wanted]
        return runs

    def trainable(self):
        from ray import tune

        from study.trainable import run_trial

        trials_dir = (self.place.study_dir / "trials").resolve()
        return tune.with_resources(
            tune.with_parameters(run_trial, spec=self.spec, trials_dir=str(trials_dir)),
            {"cpu": self.spec.resources.cpu, "gpu": self.spec.resources.gpu})

    def fit(self, phase: str, trials: int, search_alg, scheduler,
            time_budget_s: float | None, param_space: dict[str, Any] | None = None) -> list:
        """A new Tune experiment of `trials` trials of `run_trial`, recorded in study.json
        before it starts, every trial tracked in MLflow from this process."""
        from ray import tune
        from ray.tune.search import BasicVariantGenerator

        from study.callbacks import MlflowCallback

        spec = self.spec
        experiment = self.state.add(phase, trials)
        trials_dir = (self.place.study_dir / "trials").resolve()
        # PBT clones other trials' checkpoints, perhaps long after they were made: it keeps them
        # all (reported at perturbation steps only); otherwise the latest, which holds the
        # trial's best.pt too.
        keep = None if isinstance(spec.scheduler, Pbt) else 1
        tuner = tune.Tuner(
            self.trainable(), param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, scheduler=scheduler, num_samples=trials,
                # a Searcher is limited here; BasicVariantGenerator by its own max_concurrent
                max_concurrent_trials=None if isinstance(search_alg, BasicVariantGenerator)
                else spec.max_concurrent, time_budget_s=time_budget_s),
            run_config=tune.RunConfig(
                name=experiment.name, storage_path=self.place.storage,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
                callbacks=[MlflowCallback(self.tracker, phase, trials_dir)],
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
            refill_deleted_checkpoints(Path(path), self.place.study_dir / "trials")
        tuner = tune.Tuner.restore(path, self.trainable(), resume_unfinished=True)
        return self.run(tuner, experiment, None)

    def run(self, tuner, experiment: Experiment, time_budget_s: float | None) -> list:
        from ray.tune.error import TuneError

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
        self.state.finish(experiment)
        return list(grid)


class Interrupts:
    """SIGINT (Ctrl+C) during a study. The first asks the running Tune experiment to stop after
    saving its state (through Tune's own SIGUSR1 handler) and is remembered, so that the study
    stops there and not one phase later; a second one stops at once.

    Tune's own SIGINT handler is kept out: it stays installed after a run it did not stop,
    swallowing a later Ctrl+C, and a run it stops may still end with every trial finished (it
    lets running trials report for a few seconds), which would look like a finished phase."""

    def __init__(self) -> None:
        self.received = False

    def handle(self, signum: int, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        stop_tune = signal.getsignal(signal.SIGUSR1)
        if callable(stop_tune):
            stop_tune(signum, frame)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may handle signals; Tune then handles none either
            return
        before = signal.signal(signal.SIGINT, self.handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, before)


# Tune snapshots the experiment (trial states, the searcher) at most every 10 s by default: a
# driver killed between two snapshots would lose what happened in between. 1 s costs a few ms.
# With num_to_keep, Tune also forces a snapshot after each checkpoint and warns, on every one,
# that snapshots come often: here that is the intent, and the warning buried the progress table.
TUNE_ENVIRONMENT = {"TUNE_GLOBAL_CHECKPOINT_S": "1", "TUNE_DISABLE_SIGINT_HANDLER": "1",
                    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


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


def print_report(out: dict[str, Any], spec: StudySpec, study_dir: Path,
                 tracking_uri: str) -> None:
    from study.summary import leaderboard
    from study.tracking import ui_command

    rows = out["rows"]
    columns = [c for c in rows.columns if c.startswith("param_")] + [
        "fid", "kid", "precision", "recall", "steps", "status"]
    board = leaderboard(rows, spec)
    sessions = out["sessions"]
    each = (f" over {len(sessions)} sessions ({' + '.join(f'{t / 60:.1f}' for t in sessions)})"
            if len(sessions) > 1 else "")
    print(f"\nstudy {spec.name}: {len(rows)} trials in {sum(sessions) / 60:.1f} min{each}; "
          + ", ".join(f"{n} {s}" for s, n in rows["status"].value_counts().items()))
    print("\ntop 5 by final", spec.metric)
    print(board[columns].head(5).to_string(index=False))
    base = rows[rows["baseline"]]
    print("\nbaseline (reference configuration)")
    print(base[columns].to_string(index=False))
    if out["confirm_table"] is not None:
        print(f"\nconfirmation: mean and sd of final {spec.metric} over "
              f"{spec.confirm.seeds} new seeds")
        print(out["confirm_table"].to_string(index=False))
        print(out["verdict"])
    if out["best"] is not None:
        print(f"\nbest generator: {study_dir / 'best_generator.pt'}")
        print(f"best config:    {study_dir / 'best_config.yaml'}\n"
              f"                ({best_choice(out['confirm_table'], spec)})")
    print(f"\nMLflow: experiment {spec.name!r} at {tracking_uri}; to browse it:\n"
          f"  {ui_command(tracking_uri)}")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path,
                        help="study YAML (see search_spaces/); with --resume, or a study directory")
    parser.add_argument("--out", type=Path, help="study directory (default runs/<name>)")
    parser.add_argument("--smoke", action="store_true", help="a few short trials, for a try")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study in its directory: finished trials are kept, "
                        "unfinished ones continue from their last checkpoint")
    parser.add_argument("--dataset", help="the dataset to study instead of the spec's, e.g. "
                        "folder:path/to/images (a new study only)")
    parser.add_argument("--trials", type=int, help="number of search trials (overrides "
                        "budget.trials; with --resume, extends a study to this many)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                        "else sqlite:///<study dir's parent>/mlflow.db, e.g. runs/mlflow.db)")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a "
                        "runtime started on this machine)")
    parser.add_argument("--storage", help="where Ray keeps trial results and checkpoints: a path "
                        "or URI every node can reach (default <study dir>/ray)")
    parser.add_argument("--no-report", action="store_true",
                        help="skip building the report notebook at the end")
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"),
                        help="where the report notebook goes (default reports/)")
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        parser.error(f"--trials {args.trials}: expected a positive number of trials")
    address = args.address or os.environ.get("RAY_ADDRESS")
    study_dir = None
    try:
        if args.resume:
            if args.dataset is not None:
                raise ConfigError("--dataset: a resumed study keeps its dataset (spec.yaml)")
            study_dir = study_dir_of(args.spec, args.smoke, args.out)
            spec, state = validate_resume(study_dir, args.trials, args.mlflow_uri, args.storage,
                                          address)
            place = state.place
        else:
            uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
            spec, study_dir = validate(args.spec, args.smoke, args.out, uri, args.trials,
                                       args.dataset)
            from study.tracking import default_tracking_uri  # imports MLflow: after validation

            place = Placement(study_dir, uri or default_tracking_uri(study_dir),
                              args.storage or str((study_dir / "ray").resolve()), address)
            state = None
        spec_text = yaml.safe_dump(spec.model_dump(), sort_keys=False)
        out = run_study(spec, place, spec_text, str(args.spec), state)
    except GanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (StudyInterrupted, KeyboardInterrupt) as err:
        if study_dir is None or not (study_dir / STATE_FILE).exists():
            print("\ninterrupted before the study started", file=sys.stderr)
        else:
            print(f"\ninterrupted{f' during {err}' if str(err) else ''}; the study is saved. "
                  f"Continue it with:\n  {resume_command(study_dir)}", file=sys.stderr)
        return 130
    except StudyStopped as err:
        print(f"error: {err}\nthe study is saved; continue it with:\n  "
              f"{resume_command(study_dir)}", file=sys.stderr)
        return 1
    print_report(out, spec, study_dir, place.tracking_uri)
    if not args.no_report:
        from study.report import build_report

        paths = build_report([spec.name], place.tracking_uri, args.reports_dir)
        print(f"report: {paths[0]} and {paths[1]}")
    return 0


def resume_command(study_dir: Path) -> str:
    return f"python -m study.run {shlex.quote(str(study_dir))} --resume"


if __name__ == "__main__":
    sys.exit(main())
