"""What a study's trials say beyond its winner, as frames a figure draws or a reader inspects:
the metric by each choice (Lucic et al. 2018's view), the best result to expect from k trials,
and whether the product copies its training images.

Everything here reads a StudyRecord (MLflow alone).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gan.latents import draw_latent
from gan.metrics.evaluate import Evaluator
from gan.metrics.memorisation import Memorisation, memorisation_check
from study.records import StudyRecord, load_generator
from study.spec import CategoricalParam

NUMERIC_BINS = 3  # a numeric parameter is shown by thirds of its sampled values


def by_choice(record: StudyRecord) -> dict[str, pd.DataFrame]:
    """For each searched parameter, every completed search trial's final metric beside the
    parameter's value: a categorical's choice, or a numeric's third (low/mid/high, by quantiles
    of the values sampled). Columns: value, <metric>, trial_id, baseline."""
    metric = record.spec.metric
    done = record.phase("search")
    done = done[done["status"] == "completed"]
    out = {}
    for key, param in record.spec.space.items():
        column = f"param_{key}"
        if column not in done:
            continue
        rows = done[done[column].notna()]
        if rows.empty:
            continue
        if isinstance(param, CategoricalParam):
            value = rows[column].astype(str)
        else:
            value = _thirds(rows[column].astype(float))
        out[key] = pd.DataFrame({"value": value.to_numpy(), metric: rows[metric].to_numpy(),
                                 "trial_id": rows["trial_id"].to_numpy(),
                                 "baseline": rows["baseline"].to_numpy()})
    return out


def _thirds(values: pd.Series) -> pd.Series:
    """Each value's bin among NUMERIC_BINS quantile bins, labelled by its range."""
    if values.nunique() < NUMERIC_BINS:
        return values.map(lambda v: f"{v:.3g}")
    bins = pd.qcut(values, NUMERIC_BINS, duplicates="drop")
    return bins.map(lambda b: f"{b.left:.3g}-{b.right:.3g}").astype(str)


def judged_values(record: StudyRecord) -> pd.Series:
    """Each search trial's value as the study judged it: a completed trial's final metric; a
    trial its scheduler stopped, its last evaluation (what ASHA ranked it by); a diverged or
    failed trial, the worst value (it found nothing)."""
    spec = record.spec
    worst = math.inf if spec.direction == "min" else -math.inf
    values = {}
    for _, row in record.phase("search").iterrows():
        if row["status"] == "completed":
            values[row["trial_id"]] = float(row[spec.metric])
        elif row["status"] == "pruned":
            curve = record.histories[row["run_id"]].get(spec.metric, pd.Series(dtype=float))
            curve = curve.dropna()
            values[row["trial_id"]] = float(curve.iloc[-1]) if len(curve) else worst
        else:
            values[row["trial_id"]] = worst
    return pd.Series(values, dtype=float)


def expected_best(record: StudyRecord, draws: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The best value found among k trials, k = 1..n, over `draws` bootstrap resamples of the
    study's search trials (with replacement): median and 90% band. Index k; columns median,
    low, high (low and high as values, whichever direction is better)."""
    values = judged_values(record).to_numpy()
    if len(values) == 0:
        return pd.DataFrame(columns=["median", "low", "high"])
    better = np.minimum if record.spec.direction == "min" else np.maximum
    rng = np.random.default_rng(seed)
    picks = values[rng.integers(len(values), size=(draws, len(values)))]
    best = better.accumulate(picks, axis=1)  # column k-1: the best of the first k draws
    with np.errstate(invalid="ignore"):
        frame = pd.DataFrame({"median": np.median(best, axis=0),
                              "low": np.quantile(best, 0.05, axis=0),
                              "high": np.quantile(best, 0.95, axis=0)},
                             index=pd.RangeIndex(1, len(values) + 1, name="trials"))
    return frame


def memorisation(row: pd.Series, n: int = 2000, seed: int = 0) -> Memorisation:
    """The memorisation check of a trial's logged generator, in its run's feature space."""
    evaluator = Evaluator(row["dataset"], int(row["image_size"]), "cpu", int(row["channels"]),
                          row["feature_net"], inception_weights=row["inception_weights"])

    def draw(k: int, rng):
        return draw_latent(row["latent_dist"], k, int(row["latent_dim"]), generator=rng)

    return memorisation_check(evaluator, load_generator(row), draw, n=n, seed=seed)
