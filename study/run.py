"""Run a study: `python -m study.run search_spaces/dcgan.yaml [--out DIR] [--smoke]`.

YAML -> validated StudySpec -> Optuna (define-by-run, TPE or random, seeded, baseline first)
-> Ray Tune trials of `gan.train` (ASHA at equal budget: updates, images or seconds) -> summary.csv,
best_config.yaml, best_generator.pt in the study directory (default runs/<name>/).
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
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
from study.console import print_report
from study.final import final_resources
from study.interrupts import Interrupts
from study.phases import Phases, StudyInterrupted, StudyStopped
from study.space import baseline_params
from study.spec import Asha, Pbt, StudySpec, load_spec, parse_spec, trial_values
from study.state import STATE_FILE, Placement, StudyState, load_state

SMOKE_FIXED = {"width": 8, "batch_size": 32, "eval_n": 200, "final_n": 300}
# (steps, eval_every) per budget unit
SMOKE_LENGTH = {"updates": (60, 10), "images": (60 * 32, 10 * 32), "seconds": (12, 2)}


def smoke_spec(spec: StudySpec) -> StudySpec:
    """The same study shrunk to a few trials of a few steps: seconds per trial."""
    data = spec.model_dump()
    steps, every = SMOKE_LENGTH[spec.budget.unit]
    data["budget"].update(trials=min(spec.budget.trials, 6), steps=steps, eval_every=every,
                          time_limit_s=None)
    if isinstance(spec.scheduler, Asha):
        data["scheduler"].update(grace_period=every, reduction_factor=2)
    if isinstance(spec.scheduler, Pbt):
        data["scheduler"].update(perturbation_interval=20)
    space = {k: v for k, v in data["space"].items() if k not in SMOKE_FIXED}
    data["space"], data["fixed"] = space, {**data["fixed"], **SMOKE_FIXED}
    if data["baseline"]:  # the baseline shrinks with the trials it is compared with
        data["baseline"]["values"].update(SMOKE_FIXED)
    if data["confirm"]:
        data["confirm"] = {"top_k": 1, "seeds": 2}
    if data["final"]:
        data["final"].update(steps=steps * 4 // 3, eval_every=every * 2)
    data["name"] = f"{spec.name}-smoke"
    return parse_spec(data, "--smoke")


TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
ARTIFACT_SCHEMES = ("s3", "gs", "wasbs", "abfss", "hdfs", "sftp", "file", "mlflow-artifacts")


def validate(spec_path: Path, smoke: bool, out: Path | None, tracking_uri: str | None,
             trials: int | None = None, dataset: str | None = None,
             scratch: str | None = None, artifacts: str | None = None) -> tuple[StudySpec, Path]:
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
    if scratch is not None and Path(scratch).is_file():
        raise ConfigError(f"--scratch {scratch}: is a file, not a directory")
    if artifacts is not None and artifacts.split("://", 1)[0] not in ARTIFACT_SCHEMES:
        raise ConfigError(f"--mlflow-artifacts {artifacts}: expected an artifact store URI "
                          f"({', '.join(f'{k}://' for k in ARTIFACT_SCHEMES)})")
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
                    storage: str | None, address: str | None, scratch: str | None = None,
                    artifacts: str | None = None) -> tuple[StudySpec, StudyState]:
    """A study to continue: its own spec.yaml and study.json, with more trials if asked. Its
    stores stay where they are; only the Ray cluster's address may change."""
    state = load_state(study_dir)
    spec_path = study_dir / "spec.yaml"
    spec = load_spec(spec_path)
    place = state.place
    for flag, given, recorded in (
            ("--mlflow-uri", tracking_uri, place.tracking_uri),
            ("--storage", storage, place.storage),
            ("--scratch", scratch and str(Path(scratch).resolve()), place.scratch),
            ("--mlflow-artifacts", artifacts, place.artifacts)):
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
    """A trial, and the final run, must fit on one node of the live cluster, or Tune would wait
    for it forever."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    asks = [("resources", {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})]
    if spec.final:
        asks.append(("final", final_resources(spec, [n.get("CPU", 0) for n in nodes])))
    for section, ask in asks:
        for kind in ("cpu", "gpu"):
            most = max((n.get(kind.upper(), 0) for n in nodes), default=0)
            if ask[kind] > most:
                per = "per trial" if section == "resources" else "for the final run"
                raise ConfigError(f"{spec_path}: {section}.{kind}: {ask[kind]:g} {per}, but no "
                                  f"node of the Ray cluster has more than {most:g}")


def run_study(spec: StudySpec, place: Placement, spec_text: str, spec_path: str = "spec",
              state: StudyState | None = None) -> dict[str, Any]:
    """Search, confirm, then train the chosen configuration in the final run; return the rows,
    tables and the study's product (the row best_generator.pt comes from) for the report.

    With the state of a study run before (`--resume`), its finished experiments are read back,
    its unfinished ones resumed where Tune's last snapshot left them, and new trials run only
    where the spec now plans more than were started."""
    from study.confirm import confirmation_table, verdict
    from study.review import board_table, outcome_note
    from study.summary import chosen, leaderboard, trial_rows, write_outputs
    from study.tracking import StudyTracker

    start_ray(place.address)
    check_resources(spec, spec_path)  # against the live cluster: the last check, still unwritten
    study_dir = place.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(study_dir / "spec.yaml", spec_text)
    state = state or StudyState(place)
    state.begin_session()
    baseline = baseline_params(spec)
    tracker = StudyTracker(spec, study_dir, place.tracking_uri, baseline, place.artifacts)
    interrupts = Interrupts()
    phases = Phases(spec, place, state, tracker, baseline, interrupts)
    with interrupts.installed():
        rows = trial_rows(phases.search(), spec, baseline)
        out: dict[str, Any] = {"rows": rows, "baseline": baseline, "confirm_runs": None,
                               "confirm_table": None, "verdict": None, "final_runs": None}
        board = leaderboard(rows, spec)
        if spec.confirm and not board.empty:
            runs = phases.confirm(board)
            table = confirmation_table(runs, spec)
            out.update(confirm_runs=runs, confirm_table=table, verdict=verdict(table, spec))
        pick = chosen(rows, spec, out["confirm_runs"], out["confirm_table"])
        if spec.final and pick is not None:
            out["final_runs"] = phases.final(pick)
        if interrupts.received:
            raise StudyInterrupted("the study's last steps")
    final = out["final_runs"]
    finished = final is not None and (final["status"] == "completed").any()
    out["best"] = write_outputs(rows, spec, study_dir, out["confirm_runs"], out["confirm_table"],
                                best_choice(out["confirm_table"], spec, finished),
                                out["final_runs"])
    state.save()
    out["sessions"] = list(state.sessions)
    tracker.finish(state.sessions, out["best"], [study_dir / name for name in (
        "summary.csv", "confirmation.csv", "final.csv", "best_config.yaml")],
        outcome_note(spec, out), board_table(rows, spec))
    out["parent_run_id"] = tracker.parent_id
    return out


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
                        "or URI every node can reach, e.g. s3://bucket/studies (default "
                        "<study dir>/ray)")
    parser.add_argument("--scratch", help="each node's folder for its trials' working files, "
                        "read by no other node (default <study dir>/trials)")
    parser.add_argument("--mlflow-artifacts", help="where MLflow keeps a new experiment's "
                        "artifacts, e.g. s3://bucket/mlartifacts (default: beside a SQLite "
                        "store, or the tracking server's choice)")
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
                                          address, args.scratch, args.mlflow_artifacts)
            place = state.place
        else:
            uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
            spec, study_dir = validate(args.spec, args.smoke, args.out, uri, args.trials,
                                       args.dataset, args.scratch, args.mlflow_artifacts)
            from study.tracking import default_tracking_uri  # imports MLflow: after validation

            place = Placement(study_dir, uri or default_tracking_uri(study_dir),
                              args.storage or str((study_dir / "ray").resolve()), address,
                              args.scratch and str(Path(args.scratch).resolve()),
                              args.mlflow_artifacts)
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
        from study.tracking import attach_report

        paths = build_report([spec.name], place.tracking_uri, args.reports_dir)
        attach_report(place.tracking_uri, out["parent_run_id"], list(paths))
        print(f"report: {paths[0]} and {paths[1]}")
    return 0


def resume_command(study_dir: Path) -> str:
    return f"python -m study.run {shlex.quote(str(study_dir))} --resume"


if __name__ == "__main__":
    sys.exit(main())
