"""Run a study: `python -m study.run search_spaces/dcgan.yaml [--out DIR] [--smoke]`.

YAML -> validated StudySpec -> Optuna (define-by-run, TPE or random, seeded, baseline first)
-> Ray Tune trials of `gan.train` (ASHA at equal generator updates) -> summary.csv,
best_config.yaml, best_generator.pt in the study directory (default runs/<name>/).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from gan.data import check_available
from gan.errors import ConfigError, DatasetError, GanError
from gan.fileio import atomic_write_text
from gan.metrics.features import weights_path
from gan.train import OneLineParser
from study.space import baseline_params, tune_param_space
from study.spec import Asha, Pbt, StudySpec, load_spec, parse_spec

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


def build_searcher(spec: StudySpec, study_dir: Path, baseline: dict[str, Any]):
    import optuna

    from study.space import DefineByRun
    from study.trainable import FinalResultSearch

    if spec.searcher == "tpe":
        sampler = optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                             seed=spec.seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    return FinalResultSearch(
        space=DefineByRun(spec), metric=spec.metric, mode=spec.direction,
        points_to_evaluate=[baseline], sampler=sampler, study_name=spec.name, storage=storage)


def build_scheduler(spec: StudySpec, baseline: dict[str, Any]):
    from ray.tune.schedulers import FIFOScheduler

    from study.space import tune_domain
    from study.trainable import StudyASHA, StudyPBT

    if isinstance(spec.scheduler, Pbt):
        return StudyPBT(
            baseline, time_attr="step", metric=spec.metric, mode=spec.direction,
            perturbation_interval=spec.scheduler.perturbation_interval,
            quantile_fraction=spec.scheduler.quantile_fraction,
            hyperparam_mutations={k: tune_domain(spec.space[k])
                                  for k in spec.scheduler.mutations})
    if isinstance(spec.scheduler, Asha):
        return StudyASHA(
            baseline, time_attr="step", metric=spec.metric, mode=spec.direction,
            max_t=spec.budget.steps, grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor)
    return FIFOScheduler()


TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def validate(spec_path: Path, smoke: bool, out: Path | None,
             tracking_uri: str | None) -> tuple[StudySpec, Path]:
    """Everything that can reject the input, before Ray starts and before anything is written."""
    spec = load_spec(spec_path)
    if smoke:
        spec = smoke_spec(spec)
    try:
        check_available(spec.dataset)
        weights_path(spec.dataset)  # no feature network, no metric
        baseline_params(spec)  # the reference configuration must be expressible in the space
    except GanError as err:
        raise ConfigError(f"{spec_path}: dataset: {err}" if isinstance(err, DatasetError)
                          else f"{spec_path}: {err}") from None
    study_dir = out or Path("runs") / spec.name
    if (study_dir / "spec.yaml").exists():
        raise ConfigError(f"{study_dir}: already holds a study; choose another --out")
    check_writable(study_dir)
    if tracking_uri is not None and tracking_uri.split(":", 1)[0].split("+")[0] not in (
            TRACKING_SCHEMES):
        raise ConfigError(f"--mlflow-uri {tracking_uri}: expected a tracking server "
                          "(http://host:port) or a database (sqlite:///path/mlflow.db)")
    return spec, study_dir


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


@dataclass(frozen=True)
class Placement:
    """Where a study runs and writes; recorded in <study dir>/study.json."""

    study_dir: Path
    tracking_uri: str
    storage: str  # where Ray keeps trial results and checkpoints (a path or a URI)
    address: str | None  # the Ray cluster to join; None starts a runtime on this machine


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


def run_study(spec: StudySpec, place: Placement, spec_text: str,
              spec_path: str = "spec") -> dict[str, Any]:
    """Search, then confirm; return the rows, tables and best trial for the report."""
    from ray.tune.search import BasicVariantGenerator

    from study.confirm import confirmation_points, confirmation_table, verdict
    from study.summary import leaderboard, trial_rows, write_outputs
    from study.tracking import StudyTracker

    t0 = time.time()
    start_ray(place.address)
    check_resources(spec, spec_path)  # against the live cluster: the last check, still unwritten
    study_dir = place.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(study_dir / "spec.yaml", spec_text)
    atomic_write_text(study_dir / "study.json", json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in asdict(place).items()}, indent=2))
    baseline = baseline_params(spec)
    tracker = StudyTracker(spec, study_dir, place.tracking_uri, baseline)
    if isinstance(spec.scheduler, Pbt):
        # Ray runs no searcher beside PBT: a seeded random population, the baseline its first.
        search_alg = BasicVariantGenerator(points_to_evaluate=[baseline],
                                           random_state=spec.seed,
                                           max_concurrent=spec.max_concurrent)
        param_space = tune_param_space(spec)
    else:
        search_alg, param_space = build_searcher(spec, study_dir, baseline), None
    search = fit(spec, place, tracker, "search", search_alg, build_scheduler(spec, baseline),
                 spec.budget.trials, spec.budget.time_limit_s, param_space)
    trials_dir = study_dir / "trials"
    rows = trial_rows(search, spec, baseline, trials_dir)
    out: dict[str, Any] = {"rows": rows, "baseline": baseline, "confirm_runs": None,
                           "confirm_table": None, "verdict": None}
    board = leaderboard(rows, spec)
    if spec.confirm and not board.empty:
        points = confirmation_points(board, baseline, spec)
        # Tune fills preset points only into keys the param space declares.
        keys = dict.fromkeys(k for point in points for k in point)
        runs = trial_rows(fit(spec, place, tracker, "confirm",
                              BasicVariantGenerator(points_to_evaluate=points,
                                                    max_concurrent=spec.max_concurrent), None,
                              len(points), None, param_space=keys), spec, baseline, trials_dir)
        table = confirmation_table(runs, spec)
        out.update(confirm_runs=runs, confirm_table=table, verdict=verdict(table, spec))
    out["best"] = write_outputs(rows, spec, study_dir, out["confirm_runs"], out["confirm_table"])
    out["wall_s"] = time.time() - t0
    tracker.finish(out["wall_s"], out["best"], [study_dir / name for name in (
        "summary.csv", "confirmation.csv", "best_config.yaml")])
    return out


def fit(spec: StudySpec, place: Placement, tracker, name: str, search_alg, scheduler,
        num_samples: int, time_budget_s: float | None, param_space: dict[str, Any] | None = None):
    """One Tune run of `run_trial` (the search, or the confirmation) under the study's storage,
    every trial tracked in MLflow from this process."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from study.callbacks import MlflowCallback
    from study.trainable import run_trial

    trials_dir = (place.study_dir / "trials").resolve()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, trials_dir=str(trials_dir)),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    # PBT clones other trials' checkpoints, perhaps long after they were made: it keeps them all
    # (reported at perturbation steps only); otherwise the latest and the best are enough.
    keep = None if isinstance(spec.scheduler, Pbt) else 1
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
            # a Searcher is limited here; BasicVariantGenerator by its own max_concurrent
            max_concurrent_trials=None if isinstance(search_alg, BasicVariantGenerator)
            else spec.max_concurrent, time_budget_s=time_budget_s),
        run_config=tune.RunConfig(
            name=name, storage_path=place.storage,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=keep, checkpoint_score_attribute=spec.metric,
                checkpoint_score_order=spec.direction),
            callbacks=[MlflowCallback(tracker, name, trials_dir)],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            verbose=1),
    )
    return tuner.fit()


def print_report(out: dict[str, Any], spec: StudySpec, study_dir: Path,
                 tracking_uri: str) -> None:
    from study.summary import leaderboard
    from study.tracking import ui_command

    rows = out["rows"]
    columns = [c for c in rows.columns if c.startswith("param_")] + [
        "fid", "kid", "precision", "recall", "steps", "status"]
    board = leaderboard(rows, spec)
    print(f"\nstudy {spec.name}: {len(rows)} trials in {out['wall_s'] / 60:.1f} min; "
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
        print(f"best config:    {study_dir / 'best_config.yaml'}")
    print(f"\nMLflow: experiment {spec.name!r} at {tracking_uri}; to browse it:\n"
          f"  {ui_command(tracking_uri)}")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="study YAML (see search_spaces/)")
    parser.add_argument("--out", type=Path, help="study directory (default runs/<name>)")
    parser.add_argument("--smoke", action="store_true", help="a few short trials, for a try")
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
    try:
        uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        spec, study_dir = validate(args.spec, args.smoke, args.out, uri)
        from study.tracking import default_tracking_uri  # imports MLflow: after validation

        place = Placement(study_dir, uri or default_tracking_uri(study_dir),
                          args.storage or str((study_dir / "ray").resolve()),
                          args.address or os.environ.get("RAY_ADDRESS"))
        spec_text = yaml.safe_dump(spec.model_dump(), sort_keys=False)
        out = run_study(spec, place, spec_text, str(args.spec))
    except GanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(out, spec, study_dir, place.tracking_uri)
    if not args.no_report:
        from study.report import build_report

        paths = build_report([spec.name], place.tracking_uri, args.reports_dir)
        print(f"report: {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
