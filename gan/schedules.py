"""Learning-rate schedules by name: each maps how far a run is (0 at the start, 1 at its end,
in the run's unit) to the factor its Adam learning rates are multiplied by.

Annealing the rate to zero over the run (SNGAN's linear decay, Miyato et al. 2018) lets a fast
rate that suits early training settle at the end, where a constant one keeps the generator
moving around its best point.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[float], float]

SCHEDULES: dict[str, Schedule] = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}


def lr_factor(name: str, done: float, length: float) -> float:
    """The factor after `done` of a run of `length` (clamped: a run extended on resume keeps
    its last rate rather than a negative one)."""
    return SCHEDULES[name](min(max(done / length, 0.0), 1.0))
