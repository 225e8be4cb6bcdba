"""Confirmation: the search's top-k configurations and the baseline, re-trained with fresh seeds.

A search ranks configurations by one run each, and its winner is partly a lucky seed; Lucic et al.
(2018) found seed variance as large as many hyperparameter effects. So the study's claim is made
from means and spreads over new seeds, never from the search's single runs.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from study.spec import StudySpec, length_text
from study.summary import row_params

SEED_OFFSET = 1000  # confirmation seeds are new: none of them was seen by the search


def confirmation_points(board: pd.DataFrame, baseline: dict[str, Any],
                        spec: StudySpec) -> list[dict[str, Any]]:
    """Tune configs: each of the top-k and the baseline, once per seed, labelled."""
    assert spec.confirm is not None
    configs = [("baseline", baseline)]
    for rank, (_, row) in enumerate(board[~board["baseline"]].head(spec.confirm.top_k).iterrows()):
        configs.append((f"top-{rank + 1}", row_params(row)))
    seeds = [spec.seed + SEED_OFFSET + i for i in range(spec.confirm.seeds)]
    return [{**params, "seed": seed, "label": label} for label, params in configs
            for seed in seeds]


def confirmation_table(runs: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """Mean and sd of the final metrics per configuration, best first."""
    metric = spec.metric
    done = runs[runs["status"] == "completed"]
    table = done.groupby("label").agg(
        n=(metric, "count"), mean=(metric, "mean"), sd=(metric, "std"),
        kid=("kid", "mean"), precision=("precision", "mean"), recall=("recall", "mean"),
        coverage=("coverage", "mean"),
        floor=(f"{metric}_floor", "mean"))
    table = table.sort_values("mean", ascending=spec.direction == "min").reset_index()
    return table


def verdict(table: pd.DataFrame, spec: StudySpec) -> str:
    """Whether the best configuration beats the baseline by more than both spreads."""
    rows = {r["label"]: r for _, r in table.iterrows()}
    if "baseline" not in rows or len(rows) < 2:
        return "no comparison: the baseline or every other configuration failed to complete"
    best = table[table["label"] != "baseline"].iloc[0]
    base = rows["baseline"]
    sign = 1 if spec.direction == "min" else -1
    gap = sign * (base["mean"] - best["mean"])
    spread = best["sd"] + base["sd"]
    name = spec.metric
    text = (f"{best['label']}: {name} {best['mean']:.4g} +- {best['sd']:.2g} vs baseline "
            f"{base['mean']:.4g} +- {base['sd']:.2g} over {int(best['n'])} and {int(base['n'])} "
            "seeds")
    if gap > spread:
        return f"best beats baseline by more than their spreads ({text})"
    if gap > 0:
        return f"best is ahead of baseline, but within their spreads: not a claim ({text})"
    return (f"the baseline wins: the search's best does not beat it over new seeds ({text}); "
            "best_config.yaml holds the baseline")


def best_choice(table: pd.DataFrame | None, spec: StudySpec, final: bool = False) -> str:
    """Which configuration best_config.yaml holds, and why: one line for people. `final`: the
    final run of it completed, and best_config.yaml is that run."""
    if table is None or table.empty:
        who = f"the search's best trial by final {spec.metric}"
    else:
        label = table.iloc[0]["label"]
        name = f"the baseline ({spec.baseline_name})" if label == "baseline" else label
        who = (f"{name}: the best mean final {spec.metric} over the confirmation's "
               f"{int(table.iloc[0]['n'])} seeds")
    if final:
        return (f"{who}, trained for {length_text(spec.final.steps, spec.budget.unit)} in the "
                "final run")
    return who if table is None or table.empty else f"{who}, its best seed's run"
