"""Tune's events in the driver, as MLflow writes: the one place Ray meets MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from study.tracking import StudyTracker
from study.trainable import error_reason


class MlflowCallback(tune.Callback):
    """Tune's events, in the driver, as MLflow writes through a StudyTracker."""

    def __init__(self, tracker: StudyTracker, phase: str, trials_dir: Path):
        self.tracker, self.phase, self.trials_dir = tracker, phase, trials_dir
        self.last: dict[str, dict] = {}

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.tracker.start_trial(trial.trial_id, trial.config, self.phase)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict,
                        **info: Any) -> None:
        self.last[trial.trial_id] = result
        self.tracker.log_result(trial.trial_id,
                                {**result, "run_dir": self.trials_dir / trial.trial_id})

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        last = self.last.get(trial.trial_id, {})
        status = last.get("status", "completed") if last.get("final") else "pruned"
        reason = last.get("reason", "") if last.get("final") else (
            f"stopped early by the scheduler at step {last.get('step', 0)}")
        self.tracker.end_trial(trial.trial_id, status, reason,
                               self.trials_dir / trial.trial_id / "best.pt")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.tracker.note_retry(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        error = trial.error_file
        text = Path(error).read_text() if error and Path(error).is_file() else ""
        self.tracker.end_trial(trial.trial_id, "failed", error_reason(text))

