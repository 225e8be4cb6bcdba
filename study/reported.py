"""What a trial reports, declared once: the tracker (MLflow names), the summary (CSV columns),
the records read back from MLflow and the report notebook all take their names from here, and
a spec's `metric` must be one of QUALITY and its `objectives` of OBJECTIVES."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

# Each evaluation's scores of the generator (gan.metrics), with the direction that is better.
# The final result is the best checkpoint's, re-scored with final_n samples: logged as
# final_<name>, each beside its real-data floor, <name>_floor.
QUALITY: dict[str, Literal["min", "max"]] = {
    "fid": "min", "kid": "min", "precision": "max", "recall": "max", "density": "max",
    "coverage": "max", "modes": "max", "mode_kl": "min", "classifier_score": "max"}
# What a trial's final result cost, reported beside its quality: the training seconds it took
# (evaluation excluded) and the size of its generator. Logged as final_<name>.
COST: dict[str, Literal["min", "max"]] = {"train_s": "min", "g_params": "min"}
# What a spec may name in `objectives`: quality first (ASHA decides on it), then any others.
OBJECTIVES: dict[str, Literal["min", "max"]] = {**QUALITY, **COST}
# The training log's means over the steps since the last log line (gan.train).
TRAINING = ("loss_d", "loss_g", "d_real", "d_fake", "acc_real", "acc_fake", "img_per_s")
# Where a trial is, in each budget unit, at every report.
PROGRESS = ("step", "images", "train_s")


class Status(StrEnum):
    """A trial's status: running until it ends as one of the others."""

    RUNNING = "running"
    COMPLETED = "completed"
    PRUNED = "pruned"  # stopped early by the scheduler
    DIVERGED = "diverged"  # its loss went NaN or infinite
    FAILED = "failed"  # it raised, more often than max_failures allows


ENDED = tuple(s for s in Status if s != Status.RUNNING)
WORST = 1e9  # a diverged trial's value: worse than any real score


def worst_value(mode: str) -> float:
    """What a diverged trial scored, for a metric whose better direction is `mode`."""
    return WORST if mode == "min" else -WORST

# Files a trial's reports carry, so that no node needs another's disk: each evaluation's
# fixed-noise sample grid (PNG bytes) and the preview of it MLflow's UI shows (WebP bytes, made
# by the trial so the driver encodes nothing; the driver's tracking takes both out of the result
# before Tune records it), and the trial's PBT exploits so far (JSON, "" for none). The
# generator travels in the last report's checkpoint.
SAMPLE_GRID = "sample_grid"
SAMPLE_PREVIEW = "sample_preview"
PERTURBATIONS = "perturbations"
