"""Ray Tune's searcher and schedulers as the study extends them: the one module that touches
their private state (OptunaSearch's Optuna trials, ASHA's brackets, PBT's per-member state, the
results Tune keeps beside a trial's checkpoints).
Ray is capped in pyproject.toml at the versions tested, and tests/test_search_state.py fails
where a release moves what is touched here."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search.optuna import OptunaSearch

from study.reported import worst_value
from study.space import is_baseline


class FinalResultSearch(OptunaSearch):
    """OptunaSearch that gives Optuna a trial's value only from its full-budget final result,
    and that survives a killed driver.

    Ray's OptunaSearch tells Optuna COMPLETE with whatever the last result held, so a trial that
    ASHA stopped after its grace period would enter TPE's model as if its low-budget score were
    final (Ray issues #5459, #5651). Here such a trial is recorded as PRUNED, as Optuna's own
    pruners do; Optuna's TPE still learns from pruned trials' intermediate values.

    Tune restores this searcher from its last snapshot of the experiment, but Optuna's storage
    is written at once: a driver killed between the two leaves Optuna trials asked after the
    snapshot (RUNNING, unknown to Tune) and trials told after it (finished, still running for
    Tune). The first are taken over by the next new trials, which keep their parameters; the
    second get no more reports (Optuna refuses a second tell by itself). So the Optuna study
    ends with one trial per Tune trial.
    """

    def __init__(self, *args: Any, trials: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.trials = trials  # the experiment's budget: no trial beyond it, whatever Tune asks

    def suggest(self, trial_id: str) -> dict | str | None:
        if trial_id not in self._ot_trials:
            budget = self.__dict__.get("trials")  # absent from a searcher pickled before it
            if budget is not None and len(self._ot_trials) >= budget:
                return self.FINISHED
            if (orphan := self._orphan()) is not None:
                self._ot_trials[trial_id] = orphan
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config

    def _orphan(self):
        import optuna

        known = {t.number for t in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False,
                                                states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.number not in known:
                return optuna.Trial(self._ot_study, frozen._trial_id)
        return None

    def _match_snapshot(self, restored: set[str]) -> None:
        """This searcher's trials made to agree with the trials Tune restores.

        Tune writes its snapshot as several files (the trials, its count of trials made, this
        searcher) and, on an object store, uploads them one by one: a driver killed during an
        upload leaves this searcher older or newer than the trials. A restored trial it does
        not know is found in Optuna by the Tune id each trial carries; a trial it knows that
        Tune does not restore was asked after the trials' snapshot, and is an orphan for the
        next new trial to take over."""
        import optuna

        by_tune_id = {t.user_attrs.get(TUNE_TRIAL_ID): t
                      for t in self._ot_study.get_trials(deepcopy=False)}
        for trial_id in restored - set(self._ot_trials):
            if trial_id in by_tune_id:
                self._ot_trials[trial_id] = optuna.Trial(self._ot_study,
                                                         by_tune_id[trial_id]._trial_id)
        for trial_id in set(self._ot_trials) - restored:
            del self._ot_trials[trial_id]

    def _reported_steps(self, trial_id: str) -> set[int] | None:
        """The steps Optuna's storage holds for a trial it still runs (None: finished, or not
        Optuna's). Read once per trial and driver: the storage may be ahead of a restored
        searcher, but only this searcher writes to it afterwards."""
        known = self.__dict__.setdefault("_known_steps", {})
        if trial_id not in known:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None:
                return None
            frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
            known[trial_id] = (None if frozen.state.is_finished()
                               else set(frozen.intermediate_values))
        return known[trial_id]

    def save(self, checkpoint_path: str) -> None:
        known = self.__dict__.pop("_known_steps", None)
        try:
            super().save(checkpoint_path)
        finally:
            if known is not None:
                self._known_steps = known

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._known_steps = {}
        # Tune restores a searcher from the folder it restores the experiment's trials from
        restored = snapshot_trial_ids(Path(checkpoint_path).parent)
        if restored is not None:
            self._match_snapshot(restored)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna keeps no intermediate values for several objectives: a stopped trial of a
        # multi-objective study enters it as PRUNED alone
        if isinstance(self.metric, list) or result.get("final") or "step" not in result or (
                self.metric not in result):
            return
        steps, step = self._reported_steps(trial_id), int(result["step"])
        if steps is not None and step not in steps:
            self._ot_trials[trial_id].report(float(result[self.metric]), step)
            steps.add(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if result is not None and not result.get("final"):
            # The result a scheduler stopped the trial on reaches only this method.
            self.on_trial_result(trial_id, result)
            result = None  # OptunaSearch then tells PRUNED (or FAIL if the trial raised)
        elif result is not None and result.get("status") == "diverged" and isinstance(
                self.metric, list):
            # the worst of every objective, as the one metric's worst is told otherwise
            result = {**result, **{m: worst_value(way)
                                   for m, way in zip(self.metric, self.mode, strict=True)}}
        super().on_trial_complete(trial_id, result, error)
        self.__dict__.setdefault("_known_steps", {})[trial_id] = None  # told: no more reports


RUNGS_FILE = "asha_rungs.jsonl"
TUNE_TRIAL_ID = "tune_trial_id"  # the Optuna trial's user attribute: the Tune trial it serves


def snapshot_trial_ids(folder: Path) -> set[str] | None:
    """The trials in Tune's newest snapshot of an experiment in `folder` (None: no snapshot)."""
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return None
    trial_data = json.loads(states[-1].read_text())["trial_data"]
    return {json.loads(trial[0])["trial_id"] for trial in trial_data}


class StudyASHA(ASHAScheduler):
    """ASHA on the eval_n metric at equal progress (the budget's unit), with two exceptions, and
    rungs that outlive the driver.

    The baseline always runs to the end: the study must report it, and its rung results still
    set the bar for the others. A trial that has reached the full budget is not stopped on its
    last evaluation (Ray's ASHA stops at max_t): its final re-score is about to follow, and is
    its result.

    Ray keeps a scheduler's state only in memory: a resumed study would judge its remaining
    trials against empty rungs, an extended one its new trials against each other only. So
    every result the rungs see is appended to `rungs_file`, and replayed into them whenever the
    scheduler is made or unpickled (by Tuner.restore).
    """

    def __init__(self, baseline: dict[str, Any], rungs_file: Path, **kwargs: Any):
        super().__init__(**kwargs)
        self.baseline, self.rungs_file = baseline, rungs_file
        self._replay()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._replay()

    def _replay(self) -> None:
        if not self.rungs_file.exists():
            return
        for line in self.rungs_file.read_text().splitlines():
            if line.strip():
                seen = json.loads(line)
                self._brackets[0].on_result(SimpleNamespace(trial_id=seen["trial_id"]),
                                            seen["step"], self._metric_op * seen["value"])

    def _record(self, trial, result: dict) -> None:
        if self._time_attr in result and self._metric in result:
            with open(self.rungs_file, "a") as f:
                f.write(json.dumps({"trial_id": trial.trial_id, "step": result[self._time_attr],
                                    "value": result[self._metric]}) + "\n")

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        self._record(trial, result)
        if (is_baseline(trial.config, self.baseline)
                or result.get(self._time_attr, 0) >= self._max_t):
            return self.CONTINUE
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._record(trial, result)


class StudyPBT(PopulationBasedTraining):
    """PBT that never replaces the baseline member's weights or settings: it stays the study's
    reference, while still serving as a donor when it is in the upper quantile.

    Ray keeps PBT's per-member schedule only in memory: after Tuner.restore every member would
    count from step 0 and be checked at its first evaluation, off the schedule. A restored
    member (it brings its last result) counts from its last perturbation step instead, the step
    of the checkpoint it continues from."""

    def __init__(self, baseline: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.baseline = baseline

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        step = trial.last_result.get(self._time_attr, 0)
        interval = self._perturbation_interval
        self._trial_state[trial].last_perturbation_time = step // interval * interval

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
        lower = [t for t in lower_quantile if not is_baseline(t.config, self.baseline)]
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower)


def drop_from_checkpoint_results(trial, *keys: str) -> None:
    """Remove `keys` from the results Tune keeps beside a trial's checkpoints.

    With a function trainable, Tune registers each checkpoint with a copy of its result made in
    the trial's process, which no callback sees: a sample grid's bytes stay there, in every
    snapshot of the experiment, for every trial (120 kB each at 64 MNIST images)."""
    manager = trial.run_metadata.checkpoint_manager
    for kept in [manager.latest_checkpoint_result, *manager.best_checkpoint_results]:
        if kept is not None and [k for k in keys if kept.metrics.pop(k, None) is not None]:
            trial.invalidate_json_state()
            trial.run_metadata.invalidate_cache()
