"""A finished study read back from MLflow alone: the report's data layer.

Nothing here reads the study directory: a report rebuilds from the tracking store after the
study directory is gone (or on another machine, from a tracking server).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from gan.errors import ConfigError
from study.confirm import confirmation_table
from study.pareto import pareto_front
from study.reported import OBJECTIVES, QUALITY
from study.spec import StudySpec, length_text, parse_spec
from study.tracking import (
    GENERATOR_TAG,
    ROLE,
    TRIAL_ID,
    fluent_tracking_uri,
    sample_images,
)

CURVE_METRICS = ("loss_d", "loss_g", "d_real", "d_fake", "fid")


@dataclass
class StudyRecord:
    name: str
    tracking_uri: str
    parent: Run
    spec: StudySpec
    distributions: dict[str, optuna.distributions.BaseDistribution]
    trials: pd.DataFrame  # one row per child run, shaped like summary.csv
    histories: dict[str, pd.DataFrame]  # run id -> step-indexed curves of CURVE_METRICS

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def phase(self, phase: str) -> pd.DataFrame:
        return self.trials[self.trials["phase"] == phase]


def load_study(name: str, tracking_uri: str, parent_run_id: str | None = None) -> StudyRecord:
    """The study's latest parent run in experiment `name` (or the given one), its trials."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ConfigError(f"{tracking_uri}: no MLflow experiment named {name!r}")
    if parent_run_id:
        parent = client.get_run(parent_run_id)
    else:
        parents = client.search_runs([experiment.experiment_id], f"tags.`{ROLE}` = 'study'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            raise ConfigError(f"{tracking_uri}: experiment {name!r} holds no study run")
        parent = parents[0]
    rid = parent.info.run_id
    spec_text = Path(client.download_artifacts(rid, "spec.yaml")).read_text()
    spec = parse_spec(yaml.safe_load(spec_text), f"{name}: spec.yaml in MLflow")
    space = yaml.safe_load(Path(client.download_artifacts(rid, "search_space.json")).read_text())
    dists = {k: optuna.distributions.json_to_distribution(v)
             for k, v in space["distributions"].items()}
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.mlflow.parentRunId = '{rid}'", max_results=10_000)
    curves = tuple(dict.fromkeys((*CURVE_METRICS, spec.metric)))
    histories = {run.info.run_id: _history(client, run.info.run_id, curves) for run in children}
    rows = [{**_row(run, spec, dists, histories[run.info.run_id]), "tracking_uri": tracking_uri}
            for run in children]
    trials = pd.DataFrame(rows).sort_values("start_time", kind="stable").reset_index(drop=True)
    return StudyRecord(name, tracking_uri, parent, spec, dists, trials, histories)


def _history(client: MlflowClient, run_id: str, keys: tuple[str, ...]) -> pd.DataFrame:
    series = {key: pd.Series({m.step: m.value for m in client.get_metric_history(run_id, key)},
                             dtype=float)
              for key in keys}
    return pd.DataFrame(series).sort_index()


def _typed(value: str, dist: optuna.distributions.BaseDistribution) -> Any:
    """An MLflow param (a string) back to the value its distribution produced."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return next(c for c in dist.choices if str(c) == value)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(value)
    return float(value)


def _row(run: Run, spec: StudySpec, dists: dict, history: pd.DataFrame) -> dict[str, Any]:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    searched = [k for k in tags.get("searched", "").split(",") if k]
    status = tags.get("status", "")
    done = status == "completed"
    fid = history["fid"].dropna() if "fid" in history else pd.Series(dtype=float)
    row: dict[str, Any] = {
        "run_id": run.info.run_id, "trial_id": tags.get(TRIAL_ID, ""),
        "phase": tags.get("phase", ""), "label": tags.get("label", ""),
        "baseline": tags.get("baseline") == "True",
        **{f"param_{k}": _typed(params[k], dists[k]) for k in searched if k in dists},
        "seed": int(params.get("seed", spec.seed)), "status": status,
        "steps": int(fid.index.max()) if len(fid) else 0,
        "wall_s": ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000,
        "reason": tags.get("reason", ""), "start_time": run.info.start_time,
        "best_eval_fid": float(fid.min()) if len(fid) else math.nan,
        "model_uri": tags.get(GENERATOR_TAG, ""),
        "latent_dim": int(params.get("latent_dim", 100)),
        "latent_dist": params.get("latent_dist", "normal"),
        # what its samples are scored against: the evaluator of its config
        "dataset": params.get("dataset", spec.dataset),
        "image_size": int(params.get("image_size", 32)),
        "channels": int(params.get("channels", 1)),
        "feature_net": params.get("feature_net", "auto"),
        "inception_weights": _none(params.get("inception_weights", "None")),
    }
    for m in OBJECTIVES:
        row[m] = metrics.get(f"final_{m}", math.nan) if done else math.nan
    for m in QUALITY:
        row[f"{m}_floor"] = metrics.get(f"{m}_floor", math.nan) if done else math.nan
    return row


def _none(text: str) -> str | None:
    return None if text == "None" else text


def leaderboard(record: StudyRecord, phase: str = "search") -> pd.DataFrame:
    """Completed trials of a phase, best first, with the real-data floor beside the metric."""
    trials = record.phase(phase)
    done = trials[trials["status"] == "completed"]
    return done.sort_values(record.spec.metric,
                            ascending=record.spec.direction == "min").reset_index(drop=True)


def product(record: StudyRecord) -> pd.Series | None:
    """The study's product: its completed final run; without one, the run its best_config.yaml
    came from (the best seed of the configuration with the best confirmation mean, else the
    search's best trial). None when no trial completed."""
    final = leaderboard(record, "final")
    if not final.empty:
        return final.iloc[0]
    confirm = leaderboard(record, "confirm")
    if not confirm.empty:
        label = confirmation_table(confirm, record.spec).iloc[0]["label"]
        return confirm[confirm["label"] == label].iloc[0]
    board = leaderboard(record)
    return None if board.empty else board.iloc[0]


def ranking(record: StudyRecord, phase: str = "search") -> pd.DataFrame:
    """Every trial of a phase: completed ones best first, then the pruned, diverged and failed
    (no final metrics; best_eval_fid shows how far they got)."""
    board = leaderboard(record, phase)
    rest = record.phase(phase)
    rest = rest[rest["status"] != "completed"].sort_values(["status", "best_eval_fid"])
    return pd.concat([board, rest]).reset_index(drop=True)


RESULT_COLUMNS = ("fid", "fid_floor", "kid", "precision", "recall", "density", "coverage", "modes",
                  "train_s", "g_params", "best_eval_fid", "steps", "status", "reason")


def board_views(frame: pd.DataFrame, lead: tuple[str, ...] = ("trial_id",)
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A leaderboard as two tables that fit a page, rows in the same order: the results
    (metrics and how each trial ended) and the searched values, each led by `lead`. Columns
    that hold one value for every row are dropped (said once is enough), numbers shown to 3
    significant digits, searched values under their field names."""
    marks = [c for c in ("label", "baseline") if c in frame]
    results = frame[[*lead, *marks, *[c for c in RESULT_COLUMNS if c in frame]]]
    params = [c for c in frame.columns if c.startswith("param_")]
    values = frame[[*lead, *params]].rename(columns=lambda c: c.removeprefix("param_"))
    return _compact(results, keep=lead), _compact(values, keep=lead)


def _compact(frame: pd.DataFrame, keep: tuple[str, ...]) -> pd.DataFrame:
    varying = [c for c in frame.columns
               if c in keep or frame[c].astype(str).nunique(dropna=False) > 1]
    out = frame[varying].copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].map(lambda v: "" if math.isnan(v) else f"{v:.3g}")
    return out.reset_index(drop=True)


def optuna_study(record: StudyRecord, targets: list[str] | None = None) -> optuna.Study:
    """The search rebuilt in memory from the runs, on `targets` (default: the spec's objectives
    or metric): COMPLETE with the final value of each, PRUNED with its evaluations as
    intermediate values (one target only: Optuna keeps none for several), FAIL for diverged and
    failed trials."""
    spec = record.spec
    targets = targets or spec.targets
    ways = spec.directions if targets == spec.targets else [OBJECTIVES[t] for t in targets]
    study = optuna.create_study(
        directions=["minimize" if way == "min" else "maximize" for way in ways],
        study_name=record.name)
    states = {"completed": optuna.trial.TrialState.COMPLETE,
              "pruned": optuna.trial.TrialState.PRUNED}
    metric = targets[0]
    for _, row in record.phase("search").iterrows():
        params = {k.removeprefix("param_"): v for k, v in row.items()
                  if k.startswith("param_") and not _missing(v)}
        state = states.get(row["status"], optuna.trial.TrialState.FAIL)
        history = record.histories[row["run_id"]]
        steps = (history[metric].dropna() if metric in history and len(targets) == 1
                 else pd.Series(dtype=float))
        values = [float(row[t]) for t in targets]
        if state == optuna.trial.TrialState.COMPLETE and any(map(math.isnan, values)):
            state = optuna.trial.TrialState.FAIL  # completed before this target was logged
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: record.distributions[k] for k in params},
            values=values if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values={int(s): float(v) for s, v in steps.items()}, state=state,
            user_attrs={"trial_id": row["trial_id"]}))
    return study


def pareto(record: StudyRecord) -> pd.DataFrame:
    """The completed search trials on the Pareto front of the objectives, best first by the
    first; empty for a study of one metric."""
    return pareto_front(leaderboard(record), record.spec).reset_index(drop=True)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def summary(record: StudyRecord) -> pd.DataFrame:
    """The study at a glance: what it searched, with what budget, how long, how trials ended."""
    spec, parent = record.spec, record.parent
    unit = spec.budget.unit
    statuses = record.trials.groupby(["phase", "status"]).size()
    facts = {
        "study": spec.name, "dataset": spec.dataset,
        "metric": f"{spec.metric} ({spec.direction})",
        "searcher / scheduler": f"{spec.searcher.label} / {spec.scheduler.type}",
        "budget": f"{spec.budget.trials} trials x {length_text(spec.budget.steps, unit)}, "
                  f"evaluated every {length_text(spec.budget.eval_every, unit)}",
        "resources per trial": f"{spec.resources.cpu} CPU, {spec.resources.gpu} GPU; "
                               f"{spec.max_concurrent} at a time",
        "searched": ", ".join(spec.space), "fixed": ", ".join(
            f"{k}={v}" for k, v in spec.fixed.items()),
        "confirmation": (f"top {spec.confirm.top_k} and the baseline x {spec.confirm.seeds} seeds"
                         if spec.confirm else "none"),
        "wall time": f"{parent.data.metrics.get('wall_s', math.nan) / 60:.1f} min",
        "trials by phase and status": ", ".join(f"{p} {s}: {n}"
                                                for (p, s), n in statuses.items()),
        "git commit": parent.data.tags.get("git_commit", ""),
        "seed": spec.seed,
    }
    return pd.DataFrame({"value": facts})


def progress_frames(record: StudyRecord, run_id: str) -> list[tuple[int, Path]]:
    """The sample grids a trial logged at each evaluation (the image series), by step."""
    return sorted((step, Path(record.client.download_artifacts(run_id, path)))
                  for step, path in sample_images(record.client, run_id).items())


def model_input(row: pd.Series, n: int, seed: int = 0):
    """Latent vectors for a logged generator: its latent size and distribution, seeded."""
    import torch

    from gan.latents import draw_latent

    g = torch.Generator().manual_seed(seed)
    return draw_latent(row["latent_dist"], n, int(row["latent_dim"]), generator=g)


def load_generator(row: pd.Series):
    """A trial's logged generator (MLflow PyTorch model), ready to sample."""
    import mlflow

    if not row["model_uri"]:
        raise ConfigError(f"trial {row['trial_id']}: no generator logged")
    with fluent_tracking_uri(row["tracking_uri"]):  # models:/<id> resolves through it
        return mlflow.pytorch.load_model(row["model_uri"])
