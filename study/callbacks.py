"""Tune's events in the driver, as MLflow writes: the one place Ray meets MLflow.

Nothing here may stop the study: an exception raised in a callback would end Tune's loop, and
every trial with it. A tracking failure is reported on stderr and kept on the trial's run where
MLflow still answers; the trial itself goes on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from gan.progress import note
from study.tracking import StudyTracker
from study.trainable import error_reason


def guarded(event: Callable) -> Callable:
    @functools.wraps(event)
    def handle(self: MlflowCallback, iteration: int, trials: list, trial: Any, *args: Any,
               **kwargs: Any) -> None:
        try:
            event(self, iteration, trials, trial, *args, **kwargs)
        except Exception as err:  # see the module's docstring
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            note(f"warning: tracking trial {trial.trial_id} ({event.__name__}) failed: "
                 f"{reason[:300]}; the study goes on")
            self.tracker.note_failure(trial.trial_id, reason)
    return handle


class MlflowCallback(tune.Callback):
    """Tune's events, in the driver, as MLflow writes through a StudyTracker."""

    def __init__(self, tracker: StudyTracker, phase: str, trials_dir: Path):
        self.tracker, self.phase, self.trials_dir = tracker, phase, trials_dir
        self.last: dict[str, dict] = {}

    @guarded
    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.tracker.start_trial(trial.trial_id, trial.config, self.phase)

    @guarded
    def on_trial_result(self, iteration: int, trials: list, trial, result: dict,
                        **info: Any) -> None:
        self.last[trial.trial_id] = result
        self.tracker.log_result(trial.trial_id,
                                {**result, "run_dir": self.trials_dir / trial.trial_id})

    @guarded
    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        last = self.last.get(trial.trial_id, {})
        status = last.get("status", "completed") if last.get("final") else "pruned"
        reason = last.get("reason", "") if last.get("final") else (
            f"stopped early by the scheduler at step {last.get('step', 0)}")
        self.tracker.end_trial(trial.trial_id, status, reason,
                               self.trials_dir / trial.trial_id / "best.pt")

    @guarded
    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.tracker.note_retry(trial.trial_id)

    @guarded
    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        error = trial.error_file
        text = Path(error).read_text() if error and Path(error).is_file() else ""
        self.tracker.end_trial(trial.trial_id, "failed", error_reason(text))

