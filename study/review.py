"""The study's outcome for a reviewer who starts in the MLflow UI: the parent run's description
(MLflow's run note, Markdown), its leaderboard table, and trial runs named so that their list
reads as a leaderboard."""

from __future__ import annotations

from typing import Any

import pandas as pd

from study.pareto import pareto_front
from study.spec import CategoricalParam, StudySpec, length_text
from study.summary import leaderboard, row_params

LEADERBOARD_FILE = "leaderboard.json"


def run_name(phase: str, label: str, trial_id: str, config: dict[str, Any], spec: StudySpec,
             value: float | None = None) -> str:
    """`search 3f2a · lsgan, 16, 0.999 · fid 0.84`: the phase and label, the categorical choices
    (the ones a reader compares at a glance), the final metric once there is one."""
    head = " ".join(p for p in (phase, label if label != phase else "", trial_id) if p)
    choices = ", ".join(str(config[k]) for k, p in spec.space.items()
                        if isinstance(p, CategoricalParam) and config.get(k) is not None)
    tail = f" · {spec.metric} {value:.4g}" if value is not None else ""
    return f"{head} · {choices}{tail}" if choices else f"{head}{tail}"


def board_table(rows: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """The search's completed trials, best first, with their searched values and final metrics."""
    board = leaderboard(rows, spec)
    params = [c for c in board.columns if c.startswith("param_")]
    metric = spec.metric
    extra = [t for t in spec.targets[1:] if t not in ("precision", "recall", "density",
                                                      "coverage")]
    columns = ["trial_id", "baseline", *params, metric, f"{metric}_floor", "precision", "recall",
               "density", "coverage", *extra, "steps"]
    return board[[c for c in columns if c in board]].rename(
        columns=lambda c: c.removeprefix("param_")).reset_index(drop=True)


def outcome_note(spec: StudySpec, out: dict[str, Any]) -> str:
    """The parent run's description: what was studied, the verdict, the confirmation table,
    the product and the chosen configuration."""
    metric = spec.metric
    rows = out["rows"]
    lines = [f"**ganstudy study `{spec.name}`** on `{spec.dataset}`: {len(rows)} trials of "
             f"{length_text(spec.budget.steps, spec.budget.unit)}, {spec.searcher.label} search, "
             f"{spec.scheduler.type} scheduler; " + (
                 f"objectives {', '.join(spec.targets)} (ASHA and the confirmation on {metric})."
                 if spec.objectives else f"metric {metric} ({spec.direction})."), ""]
    if spec.objectives:
        front = pareto_front(leaderboard(rows, spec), spec)
        lines += [f"**Pareto front** on {', '.join(spec.targets)}: trials "
                  + ", ".join(f"`{t}`" for t in front["trial_id"]), ""]
    if out.get("verdict"):
        lines += [f"**Verdict:** {out['verdict']}", ""]
    table = out.get("confirm_table")
    if table is not None and not table.empty:
        lines += [f"**Confirmation** (final {metric} over new seeds):", "",
                  table.to_markdown(index=False, floatfmt=".4g"), ""]
    best = out.get("best")
    if best is not None:
        floor = best[f"{metric}_floor"]
        where = ("the final run" if best.get("label") == "final"
                 else f"trial {best['trial_id']}")
        lines += [f"**Product** (`best_generator.pt`, {where}): {metric} {best[metric]:.4g}, "
                  f"floor {floor:.3g} ({best[metric] / floor:.1f}x), precision "
                  f"{best['precision']:.2f}, recall {best['recall']:.2f}.", "",
                  "**Chosen configuration** (searched values; `best_config.yaml` has all): "
                  + ", ".join(f"`{k}: {v}`" for k, v in row_params(best).items()), ""]
    lines += [f"Leaderboard: the `{LEADERBOARD_FILE}` table; the report notebook and its HTML "
              "are among this run's artifacts."]
    return "\n".join(lines)
