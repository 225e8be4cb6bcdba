"""Tune's events in the driver, as MLflow writes: the one place Ray meets MLflow.

Tune calls these in its own event loop, so each one only takes note of the event and hands the
writes to a writer thread (study.writer): the time an event holds the loop is measured and
reported at the experiment's end. Tune's snapshot of the experiment waits for the writes that a
resume from it could not make again: a driver killed after a snapshot left MLflow with every
trial that snapshot holds as ended, and what came after it Tune runs again on resume. A trial
still running in the snapshot is restarted from its checkpoint and reports its evaluations up
to it again (study.trainable), so its start and results need not be waited for, except where
it does not replay them (a PBT member, which continues from the checkpoint Tune names). A
completed trial's generator export, the slowest write, has a thread of its own, which nothing
waits for: the end of the phase exports what a killed driver left out (log_generators).

Nothing here may stop the study: an exception in a write is reported on stderr and kept on the
trial's run where MLflow still answers; the trial itself goes on.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from gan.progress import note
from study.generator_model import MODEL_DIR
from study.image_series import SampleGrid
from study.reported import SAMPLE_GRID, SAMPLE_PREVIEW
from study.summary import result_trial_id
from study.tracking import StudyTracker
from study.trainable import error_reason
from study.tune_extensions import drop_from_checkpoint_results
from study.writer import Writer, percentiles_ms


def log_generator(tracker: StudyTracker, trial_id: str,
                  checkpoint: tune.Checkpoint | None) -> None:
    """A completed trial's generator as an MLflow model, from its last checkpoint (in Tune's
    storage), which holds the model the trial saved of its best generator."""
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            tracker.log_generator(trial_id, Path(folder) / MODEL_DIR)


def log_generators(tracker: StudyTracker, results: list) -> None:
    """The generators of a phase's completed trials that a driver killed after a trial's end
    and before its export left out (a snapshot does not wait for exports)."""
    missing = tracker.without_generator()
    for result in results:
        if result_trial_id(result) in missing:
            log_generator(tracker, result_trial_id(result), result.checkpoint)


def timed(event: Callable) -> Callable:
    """The event's hold on Tune's loop, kept per event name."""
    @functools.wraps(event)
    def handle(self: MlflowCallback, *args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        try:
            event(self, *args, **kwargs)
        finally:
            self.held_s.setdefault(event.__name__, []).append(time.perf_counter() - t0)
    return handle


class MlflowCallback(tune.Callback):
    """Tune's events, in the driver, as MLflow writes through a StudyTracker."""

    def __init__(self, tracker: StudyTracker, phase: str, replayed: bool = True):
        self.tracker, self.phase = tracker, phase
        self.replayed = replayed  # whether a restored trial reports its evaluations again
        self.last: dict[str, dict] = {}
        self.held_s: dict[str, list[float]] = {}  # event name -> its hold on Tune's loop, each
        self._writer: Writer | None = None
        self._exporter: Writer | None = None  # the generators' exports, in a lane of their own
        self._kept = 0  # the writer's ticket a snapshot waits for

    # Tune pickles its callbacks with the experiment: the threads stay behind.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_writer": None, "_exporter": None, "_kept": 0}

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            self._writer = Writer(self._failed)
        return self._writer

    @property
    def exporter(self) -> Writer:
        if self._exporter is None:
            self._exporter = Writer(self._failed)
        return self._exporter

    def _failed(self, label: str, err: Exception) -> None:
        trial_id, event = label.split(" ", 1)
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        note(f"warning: tracking trial {trial_id} ({event}) failed: {reason[:300]}; "
             "the study goes on")
        self.tracker.note_failure(trial_id, reason)

    def _write(self, trial_id: str, event: str, job: Callable[..., Any], *args: Any,
               replayed: bool = False) -> int:
        """Hand a write to the writer; `replayed`: a resume makes it again if it is lost."""
        ticket = self.writer.submit(f"{trial_id} {event}", job, *args)
        if not (replayed and self.replayed):
            self._kept = ticket
        return ticket

    def flush(self) -> None:
        """Wait for every write handed in so far."""
        for lane in (self._writer, self._exporter):
            if lane is not None:
                lane.flush()

    @timed
    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._write(trial.trial_id, "on_trial_start", self.tracker.start_trial, trial.trial_id,
                    trial.config, self.phase, replayed=True)

    @timed
    def on_trial_result(self, iteration: int, trials: list, trial, result: dict,
                        **info: Any) -> None:
        # Tune lets callbacks change a result in place, and runs its own loggers after ours:
        # the grid's bytes stay out of Tune's files, its snapshot and the trial's last result.
        png, preview = result.pop(SAMPLE_GRID, None), result.pop(SAMPLE_PREVIEW, None)
        grid = SampleGrid(png, preview) if png and preview else None
        self.last[trial.trial_id] = result
        self._write(trial.trial_id, "on_trial_result", self.tracker.log_result, trial.trial_id,
                    dict(result), grid, replayed=True)

    @timed
    def on_trial_save(self, iteration: int, trials: list, trial, **info: Any) -> None:
        # the grid came back with the checkpoint too, and was logged with its result
        drop_from_checkpoint_results(trial, SAMPLE_GRID, SAMPLE_PREVIEW)

    @timed
    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        last = self.last.get(trial.trial_id, {})
        status = last.get("status", "completed") if last.get("final") else "pruned"
        reason = last.get("reason", "") if last.get("final") else (
            f"stopped early by the scheduler at step {last.get('step', 0)}")
        ended = self._write(trial.trial_id, "on_trial_complete", self.tracker.end_trial,
                            trial.trial_id, status, reason)
        if status == "completed":
            # The slowest write, in a lane of its own: neither a snapshot nor the other trials'
            # writes wait for it. Where a killed driver lost it, the phase's end makes it again
            # from the same checkpoint (log_generators).
            self.exporter.submit(f"{trial.trial_id} export", self._export, trial.trial_id,
                                 trial.checkpoint, self.writer, ended)

    def _export(self, trial_id: str, checkpoint: tune.Checkpoint | None, writer: Writer,
                ended: int) -> None:
        writer.wait_for(ended)  # the trial's run holds its end first
        log_generator(self.tracker, trial_id, checkpoint)

    @timed
    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._write(trial.trial_id, "on_trial_recover", self.tracker.note_retry, trial.trial_id)

    @timed
    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._write(trial.trial_id, "on_trial_error", self._end_failed, trial.trial_id,
                    trial.error_file)

    def _end_failed(self, trial_id: str, error_file: str | None) -> None:
        text = Path(error_file).read_text() if error_file and Path(error_file).is_file() else ""
        self.tracker.end_trial(trial_id, "failed", error_reason(text))

    def get_state(self) -> None:
        """Called as Tune snapshots the experiment: the snapshot waits for the writes a resume
        from it could not make again (see the module's docstring). Nothing else to keep."""
        t0 = time.perf_counter()
        if self._writer is not None:
            self._writer.wait_for(self._kept)
        self.held_s.setdefault("snapshot", []).append(time.perf_counter() - t0)
        return None

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Every write done, and how long the events held Tune's loop, said and logged."""
        if self._writer is None:
            return
        lanes = [lane for lane in (self._writer, self._exporter) if lane is not None]
        self._writer = self._exporter = None
        for lane in lanes:
            lane.close()
        held = percentiles_ms(self.held_s.get("on_trial_result", []))
        waits = self.held_s.get("snapshot", [])
        write = percentiles_ms([t for lane in lanes for t in lane.busy_s])
        lag = percentiles_ms([t for lane in lanes for t in lane.latency_s])
        note(f"{self.phase}: tracking held Tune's loop {held['p50_ms']:.2f} ms per result "
             f"(p99 {held['p99_ms']:.2f} ms, {len(self.held_s.get('on_trial_result', []))} "
             f"results); MLflow writes {write['p50_ms']:.1f} ms (p99 {write['p99_ms']:.1f} ms), "
             f"done {lag['p99_ms']:.0f} ms after the event at p99; snapshots waited "
             f"{sum(waits):.2f} s for them in all")
        try:
            self.tracker.log_loop_hold(self.phase, {
                "hold_p50_ms": held["p50_ms"], "hold_p99_ms": held["p99_ms"],
                "write_p50_ms": write["p50_ms"], "write_p99_ms": write["p99_ms"],
                "write_lag_p99_ms": lag["p99_ms"], "snapshot_wait_s": sum(waits)})
        except Exception as err:  # see the module's docstring
            note(f"warning: logging the tracking's timings failed: {err}")
