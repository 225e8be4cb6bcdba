"""The final run: the study's chosen configuration trained once more, for final.steps, with a
whole node's CPUs (or one GPU). Its generator is the study's product; the verdict stays the
confirmation's, made at the search's budget over several seeds."""

from __future__ import annotations

from typing import Any

import pandas as pd

from study.space import FINAL_PHASE
from study.spec import StudySpec
from study.summary import row_params

SEED_OFFSET = 2000  # a seed neither the search (seed) nor the confirmation (seed + 1000 + i) used


def final_point(best: pd.Series, spec: StudySpec) -> dict[str, Any]:
    """The Tune config of the final run of the chosen configuration `best` (a summary row)."""
    return {**row_params(best), "seed": spec.seed + SEED_OFFSET, "label": FINAL_PHASE,
            "phase": FINAL_PHASE}


def final_resources(spec: StudySpec, node_cpus: list[float]) -> dict[str, float]:
    """What the final run asks of Ray: final.cpu, else every CPU of the largest node; final.gpu,
    else one GPU where the search's trials used GPUs."""
    assert spec.final is not None
    cpu = spec.final.cpu or max(node_cpus, default=spec.resources.cpu)
    gpu = spec.final.gpu if spec.final.gpu is not None else (1.0 if spec.resources.gpu else 0.0)
    return {"cpu": cpu, "gpu": gpu}
