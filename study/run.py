"""Run a study: `python -m study.run search_spaces/dcgan.yaml [--out DIR] [--smoke]`.

YAML -> validated StudySpec -> Optuna (define-by-run, TPE or random, seeded, baseline first)
-> Ray Tune trials of `gan.train` (ASHA at equal generator updates) -> summary.csv,
best_config.yaml, best_generator.pt in the study directory (default runs/<name>/).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from gan.errors import ConfigError, GanError
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


def validate(spec_path: Path, smoke: bool, out: Path | None) -> tuple[StudySpec, Path]:
    """Everything that can reject the input, before Ray starts and before anything is written."""
    spec = load_spec(spec_path)
    if smoke:
        spec = smoke_spec(spec)
    try:
        weights_path(spec.dataset)  # no feature network, no metric
        baseline_params(spec)  # the reference configuration must be expressible in the space
    except ConfigError as err:
        raise ConfigError(f"{spec_path}: {err}") from None
    study_dir = out or Path("runs") / spec.name
    if (study_dir / "spec.yaml").exists():
        raise ConfigError(f"{study_dir}: already holds a study; choose another --out")
    return spec, study_dir


def run_study(spec: StudySpec, study_dir: Path, spec_text: str) -> dict[str, Any]:
    """Search, then confirm; return the rows, tables and best trial for the report."""
    import ray
    from ray.tune.search import BasicVariantGenerator

    from study.confirm import confirmation_points, confirmation_table, verdict
    from study.summary import leaderboard, trial_rows, write_outputs

    t0 = time.time()
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(study_dir / "spec.yaml", spec_text)
    baseline = baseline_params(spec)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=False)
    if isinstance(spec.scheduler, Pbt):
        # Ray runs no searcher beside PBT: a seeded random population, the baseline its first.
        search_alg = BasicVariantGenerator(points_to_evaluate=[baseline], random_state=spec.seed)
        param_space = tune_param_space(spec)
    else:
        search_alg, param_space = build_searcher(spec, study_dir, baseline), None
    search = fit(spec, study_dir, "search", search_alg, build_scheduler(spec, baseline),
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
        runs = trial_rows(fit(spec, study_dir, "confirm",
                              BasicVariantGenerator(points_to_evaluate=points), None,
                              len(points), None, param_space=keys), spec, baseline, trials_dir)
        table = confirmation_table(runs, spec)
        out.update(confirm_runs=runs, confirm_table=table, verdict=verdict(table, spec))
    out["best"] = write_outputs(rows, spec, study_dir, out["confirm_runs"], out["confirm_table"])
    out["wall_s"] = time.time() - t0
    return out


def fit(spec: StudySpec, study_dir: Path, name: str, search_alg, scheduler, num_samples: int,
        time_budget_s: float | None, param_space: dict[str, Any] | None = None):
    """One Tune run of `run_trial` (the search, or the confirmation) under the study's storage."""
    from ray import tune

    from study.trainable import run_trial

    trials_dir = str((study_dir / "trials").resolve())
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, trials_dir=trials_dir),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    # PBT clones other trials' recent checkpoints, so it needs more than the latest and the best.
    keep = 4 if isinstance(spec.scheduler, Pbt) else 1
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=spec.max_concurrent, time_budget_s=time_budget_s),
        run_config=tune.RunConfig(
            name=name, storage_path=str((study_dir / "ray").resolve()),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=keep, checkpoint_score_attribute=spec.metric,
                checkpoint_score_order=spec.direction),
            verbose=1),
    )
    return tuner.fit()


def print_report(out: dict[str, Any], spec: StudySpec, study_dir: Path) -> None:
    from study.summary import leaderboard

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


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="study YAML (see search_spaces/)")
    parser.add_argument("--out", type=Path, help="study directory (default runs/<name>)")
    parser.add_argument("--smoke", action="store_true", help="a few short trials, for a try")
    args = parser.parse_args(argv)
    try:
        spec, study_dir = validate(args.spec, args.smoke, args.out)
        spec_text = yaml.safe_dump(spec.model_dump(), sort_keys=False)
        out = run_study(spec, study_dir, spec_text)
    except GanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(out, spec, study_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
