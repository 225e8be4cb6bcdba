"""The Pareto front of a study's completed trials on its objectives: the trials no other trial
beats in every objective, as Optuna decides it (`Study.best_trials`), for the console's table
and the report's alike."""

from __future__ import annotations

import math

import optuna
import pandas as pd

from study.spec import StudySpec


def pareto_front(board: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """The rows of `board` (completed trials, one column per objective) on the front, in
    board's order; empty for a study of one metric."""
    if not spec.objectives or board.empty:
        return board.iloc[0:0]
    study = optuna.create_study(
        directions=["minimize" if way == "min" else "maximize" for way in spec.directions])
    for position, (_, row) in enumerate(board.iterrows()):
        values = [float(row[t]) for t in spec.targets]
        if not any(map(math.isnan, values)):
            study.add_trial(optuna.trial.create_trial(values=values,
                                                      user_attrs={"position": position}))
    on_front = sorted(t.user_attrs["position"] for t in study.best_trials)
    return board.iloc[on_front]
