"""What a finished search leaves for people: summary.csv, best_config.yaml, the best generator."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from gan.checkpoint import BEST_FILE
from gan.config import make_config
from gan.fileio import atomic_write_text
from study.reported import OBJECTIVES, PERTURBATIONS, QUALITY
from study.space import hyperparameters, is_baseline
from study.spec import StudySpec, trial_values

if TYPE_CHECKING:  # Ray stays out of what a report kernel imports (study.confirm uses this)
    from ray.tune import ResultGrid

CHECKPOINT = "checkpoint"  # a row's Tune checkpoint: the driver's, never written to a file


def trial_rows(results: ResultGrid, spec: StudySpec, baseline: dict[str, Any]) -> pd.DataFrame:
    """One row per trial: id, every hyperparameter, final and best-seen metrics, status, time;
    and, for the driver only, its last checkpoint (in Tune's storage)."""
    from study.trainable import error_reason

    rows = []
    for r in results:
        last = r.metrics or {}
        history = r.metrics_dataframe if r.metrics_dataframe is not None else pd.DataFrame()
        evals = history[history["final"] == False] if "final" in history else history  # noqa: E712
        if r.error is not None:
            status = "failed"
        elif last.get("final"):
            status = last.get("status", "completed")
        else:
            status = "pruned"
        trial_id = result_trial_id(r)
        row: dict[str, Any] = {
            "trial_id": trial_id,
            "label": r.config.get("label", ""),
            "baseline": is_baseline(r.config, baseline),
            **{f"param_{k}": v for k, v in hyperparameters(r.config).items()},
            "seed": r.config.get("seed", spec.seed),
            "status": status,
            "steps": int(last.get("step", 0) or 0),
            "wall_s": float(last.get("time_total_s", math.nan)),
            "reason": error_reason(str(r.error)) if r.error else last.get("reason", ""),
            "node_ip": last.get("node_ip", ""),
            "node_id": last.get("node_id", ""),
            "gpu_ids": last.get("gpu_ids", ""),
            "device": last.get("device", ""),
            "started_at": last.get("started_at", math.nan),
            # Tune's own timestamp is in whole seconds; trials report the exact time
            "ended_at": last.get("reported_at", last.get("timestamp", math.nan)),
        }
        final = status == "completed"
        for m in OBJECTIVES:
            row[m] = last.get(m, math.nan) if final else math.nan
        for m in QUALITY:
            row[f"{m}_floor"] = last.get(f"{m}_floor", math.nan) if final else math.nan
        for m in ("fid",):
            seen = evals[m] if m in evals else pd.Series(dtype=float)
            row[f"best_eval_{m}"] = float(seen.min()) if len(seen) else math.nan
        events = exploits(history)
        row[PERTURBATIONS] = json.dumps(events) if events else ""
        row[CHECKPOINT] = r.checkpoint
        rows.append(row)
    return pd.DataFrame(rows)


def exploits(history: pd.DataFrame) -> list[dict]:
    """A PBT member's exploits, from every report it made: each report carries its history as
    its node knew it, and a member restarted on another node knows only what came since."""
    seen: dict[str, dict] = {}
    for text in history.get(PERTURBATIONS, pd.Series(dtype=str)).dropna():
        for event in json.loads(text) if isinstance(text, str) and text else []:
            seen.setdefault(json.dumps(event, sort_keys=True), event)
    return list(seen.values())


def leaderboard(rows: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    done = rows[rows["status"] == "completed"]
    return done.sort_values(spec.metric, ascending=spec.direction == "min")


def row_params(row: pd.Series) -> dict[str, Any]:
    """A summary row's hyperparameters, as plain Python values (inactive ones left out)."""
    return {k.removeprefix("param_"): plain(v) for k, v in row.items()
            if k.startswith("param_") and not pd.isna(v)}


def best_train_config(spec: StudySpec, row: pd.Series, final: bool = False) -> dict[str, Any]:
    """A trial as TrainConfig fields, runnable with `python -m gan.train --config` (on every
    core: threads 0)."""
    cfg = make_config({**trial_values(spec, row_params(row), int(row["seed"]), threads=0,
                                      final=final), "device": "auto"})
    return cfg.model_dump(mode="json")


def chosen(rows: pd.DataFrame, spec: StudySpec, confirm_runs: pd.DataFrame | None = None,
           confirm_table: pd.DataFrame | None = None) -> pd.Series | None:
    """The study's chosen configuration, as the run that shows it best: with a confirmation,
    the best seed's run of the configuration with the best mean; else the search's best trial."""
    if confirm_table is not None and not confirm_table.empty:
        label = confirm_table.iloc[0]["label"]
        board = leaderboard(confirm_runs[confirm_runs["label"] == label], spec)
    else:
        board = leaderboard(rows, spec)
    return None if board.empty else board.iloc[0]


def write_outputs(rows: pd.DataFrame, spec: StudySpec, study_dir: Path,
                  confirm_runs: pd.DataFrame | None = None,
                  confirm_table: pd.DataFrame | None = None, why: str = "",
                  final_runs: pd.DataFrame | None = None) -> pd.Series | None:
    """summary.csv (confirmation.csv, final.csv) always; best_config.yaml and best_generator.pt
    when a trial completed: the final run's where it completed (the study's product), else the
    chosen configuration's run (see `chosen`). `why` heads best_config.yaml as a comment:
    which configuration it is, and why. Returns the row the two files come from."""
    atomic_write_text(study_dir / "summary.csv",
                      rows.drop(columns=[CHECKPOINT]).to_csv(index=False))
    for name, runs in (("confirmation.csv", confirm_runs), ("final.csv", final_runs)):
        if runs is not None:
            atomic_write_text(study_dir / name,
                              runs.drop(columns=[CHECKPOINT]).to_csv(index=False))
    product = leaderboard(final_runs, spec) if final_runs is not None else pd.DataFrame()
    best = product.iloc[0] if not product.empty else chosen(rows, spec, confirm_runs,
                                                            confirm_table)
    if best is None:
        return None
    config = best_train_config(spec, best, final=not product.empty)
    header = f"# {why}\n" if why else ""
    atomic_write_text(study_dir / "best_config.yaml",
                      header + yaml.safe_dump(config, sort_keys=False))
    with best[CHECKPOINT].as_directory() as folder:  # the trial's last, in Tune's storage
        shutil.copy2(Path(folder) / BEST_FILE, study_dir / "best_generator.pt")
    return best


def result_trial_id(result: Any) -> str:
    """A Tune result's trial id: in its last report, else in its folder's name, which Ray makes
    <trainable>_<trial id>_<index>_<params>_<time>."""
    return (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[2]


def plain(v: Any) -> Any:
    """numpy scalars from pandas back to Python types, for YAML and pydantic."""
    return v.item() if hasattr(v, "item") else v
