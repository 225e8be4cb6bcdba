"""Adapts the trainer to Ray Tune. The trainer knows nothing of Ray; this module is the seam.

A trial's Tune config is the flat dict of its sampled hyperparameters (plus `seed` in the
confirmation phase). Each evaluation (`eval_n` samples) is reported with the checkpoint written
for that step: that is what ASHA compares, at equal progress in the budget's unit (`step`,
`images` or `train_s`). The last report, marked `final`, carries the best checkpoint re-scored
with `final_n` samples: the trial's value.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search.optuna import OptunaSearch

from gan.checkpoint import BEST_FILE, load_checkpoint
from gan.config import make_config
from gan.errors import CheckpointError, DivergedError
from gan.fileio import read_jsonl
from gan.models import build_generator
from gan.train import OPTIMIZER_FIELDS, grid_path, train
from study.reported import PERTURBATIONS, PROGRESS, QUALITY, SAMPLE_GRID
from study.space import hyperparameters, is_baseline, is_final
from study.spec import Pbt, StudySpec, trial_values

CHECKPOINT_FILES = ("checkpoint.pt", BEST_FILE)
ORIGIN = "origin.json"  # which trial and step a reported checkpoint came from
HISTORY = "perturbations.jsonl"  # the trial's PBT exploits, in its scratch folder
WORST = 1e9  # a diverged trial's value: worse than any real score


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_reason(text: str) -> str:
    """A crashed trial's reason: the last line of Ray's error text (the exception raised in the
    trial), without the terminal colours Ray adds."""
    lines = [line.strip() for line in ANSI.sub("", text).splitlines() if line.strip()]
    return lines[-1] if lines else "the trial raised"


def worst_value(mode: str) -> float:
    """What a diverged trial scored, for a metric whose better direction is `mode`."""
    return WORST if mode == "min" else -WORST


def trial_device() -> str:
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def run_trial(config: dict[str, Any], spec: StudySpec, trials_dir: str,
              cpu: float | None = None) -> None:
    """The Tune function trainable: one `gan.train` run, continued from its latest checkpoint
    when Tune restarts it (a retry, a resumed study, PBT's exploit).

    Its outputs (metrics.jsonl, samples, checkpoints) go to `trials_dir/<trial id>/`, scratch
    space on the node it runs on (not Ray's staging folder, which Ray copies while the trainer
    writes). What anyone else needs travels with the reports: the sample grids and the PBT
    history in the results, the checkpoints (and the best generator) through Tune's storage."""
    params = hyperparameters(config)
    # torch threads = the CPUs Ray gave us
    threads = max(1, math.floor(cpu or spec.resources.cpu))
    cfg = make_config({**trial_values(spec, params, config.get("seed"), threads,
                                      final=is_final(config)),
                       "device": trial_device()}, "trial config")
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(trials_dir) / trial_id
    report_dir = Path(trials_dir) / f".{trial_id}-report"
    # Where and how the trial ran, in every report: the summary and the tests read it.
    provenance = {"node_ip": ray.util.get_node_ip_address(),
                  "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                  "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
                  "device": cfg.device, "started_at": time.time(),
                  # a cost a study may minimise: Tune wants every objective in every report
                  "g_params": sum(p.numel() for p in build_generator(cfg).parameters())}
    progress = dict.fromkeys(PROGRESS, 0.0)  # where the last log line was, in each unit

    # The final run is one trial, trained as any other; PBT's cloning has no part in it.
    pbt = isinstance(spec.scheduler, Pbt) and not is_final(config)
    start = restore_checkpoint(tune.get_checkpoint(), cfg, run_dir, pbt)

    def carried(step: int | None = None) -> dict[str, Any]:
        """What the driver needs from the trial's folder, in the report: the PBT history, and
        the sample grid of an evaluation's step."""
        history = run_dir / HISTORY
        events = [json.loads(x) for x in history.read_text().splitlines()] if (
            history.is_file()) else []
        grid = grid_path(run_dir, step) if step is not None else None
        return {PERTURBATIONS: json.dumps(events) if events else "",
                **({SAMPLE_GRID: grid.read_bytes()} if grid and grid.is_file() else {})}

    def checkpoint_at(step: int) -> tune.Checkpoint:
        shutil.rmtree(report_dir, ignore_errors=True)
        report_dir.mkdir()
        for name in CHECKPOINT_FILES:
            if (run_dir / name).exists():
                _link_or_copy(run_dir / name, report_dir / name)
        (report_dir / ORIGIN).write_text(json.dumps({"trial_id": trial_id, "step": step}))
        # Tune copies the directory into its storage before returning.
        return tune.Checkpoint.from_directory(str(report_dir))

    def report_evaluation(record: dict) -> None:
        progress.update({k: record[k] for k in PROGRESS if k in record})
        if "fid" not in record:  # only evaluations go to Tune: they carry the metrics
            return
        result = {**record, **provenance, **carried(record["step"]),
                  "torch_threads": torch.get_num_threads(),
                  "final": False, "status": "running", "reported_at": time.time()}
        if pbt and not checkpoint_step(spec, record["step"]):
            tune.report(result)
            return
        tune.report(result, checkpoint=checkpoint_at(record["step"]))

    if start is not None and not pbt:
        # The evaluations up to the checkpoint, again: a killed driver may have missed the
        # last ones. Every store keeps a step once; PBT's checkpoints are exactly Tune's.
        for record in read_jsonl(run_dir / "metrics.jsonl"):
            if "fid" in record and record["step"] <= start:
                tune.report({**record, **provenance, **carried(record["step"]),
                             "final": False, "status": "running", "replayed": True})
    try:
        # Adam's settings may differ from the checkpoint's: PBT perturbs them on exploit.
        result = train(cfg, run_dir, resume=start is not None, on_log=report_evaluation,
                       may_change=OPTIMIZER_FIELDS)
    except DivergedError as err:
        # the worst score in each quality objective; its costs (progress, size) as they were
        worst = {t: worst_value(way) for t, way in zip(spec.targets, spec.directions,
                                                        strict=True) if t in QUALITY}
        tune.report({**progress, **worst, "step": err.step, **provenance,
                     "final": True, "status": "diverged", "reason": str(err),
                     "reported_at": time.time()})
        shutil.rmtree(report_dir, ignore_errors=True)
        return
    # where the run ended, in each unit: a run measured in seconds ends where time ran out
    last = result.records[-1] if result.records else {"step": cfg.steps}
    ended = {k: last[k] for k in ("step", "images", "train_s") if k in last}
    try:
        # its checkpoint holds best.pt, the generator the driver logs to MLflow
        tune.report({**result.final, **ended, **provenance, **carried(), "final": True,
                     "status": "completed", "reported_at": time.time()},
                    checkpoint=checkpoint_at(ended["step"]))
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)


def restore_checkpoint(checkpoint: tune.Checkpoint | None, cfg, run_dir: Path,
                       pbt: bool) -> int | None:
    """Put the checkpoint this trial continues from into its run directory; its step, or None
    for a fresh start.

    Tune hands over the checkpoint its snapshot of the experiment names. Under PBT that is the
    one to take (a donor's, on exploit). Otherwise the trial's own latest checkpoint in its run
    directory, when newer, is the better one: after a killed driver, Tune's snapshot may lag
    behind the trial's reports (or name a checkpoint Ray has since deleted, which
    refill_deleted_checkpoints made again). With neither, what an earlier attempt left in the
    run directory must not pass for a run."""
    own = _checkpoint_step(run_dir / "checkpoint.pt")
    try:
        with checkpoint.as_directory() if checkpoint else nullcontext(None) as restored:
            given = _checkpoint_step(Path(restored) / "checkpoint.pt") if restored else None
            if given is not None and (pbt or own is None or given > own):
                run_dir.mkdir(parents=True, exist_ok=True)
                for name in CHECKPOINT_FILES:
                    if (Path(restored) / name).exists():
                        shutil.copy2(Path(restored) / name, run_dir / name)
                record_perturbation(Path(restored), cfg, run_dir)
                return given
    except FileNotFoundError:  # on remote storage, as_directory fetches the files
        pass
    if own is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    return own


def refill_deleted_checkpoints(experiment_dir: Path) -> None:
    """Before Tuner.restore: every checkpoint an unfinished trial's last snapshot may name exists.

    Ray registers a trial's checkpoint an event after its result and snapshots the experiment
    at most every second, and with num_to_keep it deletes older checkpoints as newer ones
    register: a driver killed in between leaves a snapshot naming a checkpoint that is gone (two
    behind the trial's newest, seen in CI), and Tune fails the trial before it runs ("does not
    exist on storage anymore"). Each missing index below an unfinished trial's newest checkpoint
    becomes hard links to that newest one: the trial continues from it and replays what the
    snapshot missed, as when it finds its own checkpoint newer (restore_checkpoint)."""
    for trial_dir in experiment_dir.glob("run_trial_*"):
        if finished(trial_dir / "result.json"):  # never restored
            continue
        found = {int(p.name.removeprefix("checkpoint_")): p
                 for p in trial_dir.glob("checkpoint_*") if p.is_dir()}
        for index in range(max(found, default=0)):
            if index not in found:
                shutil.copytree(found[max(found)], trial_dir / f"checkpoint_{index:06d}",
                                copy_function=_link_or_copy)


def finished(results: Path) -> bool:
    """Whether a trial's results, as Tune recorded them (one JSON line each), hold its last."""
    if not results.is_file():
        return False
    return any(json.loads(line).get("final") for line in results.read_text().splitlines()
               if line.strip())


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(load_checkpoint(path)["step"])
    except CheckpointError:
        return None


def checkpoint_step(spec: StudySpec, step: int) -> bool:
    """Whether an evaluation's report carries a checkpoint: every one, except under PBT, which
    clones checkpoints only at its perturbation steps and keeps them all (a donor's checkpoint
    must outlive the exploit, however late the recipient gets there). Not at the last step: PBT
    clones a donor's latest checkpoint, and a member that took a finished one would end there
    without training a step under its perturbed values (with none, Ray skips that exploit)."""
    if isinstance(spec.scheduler, Pbt):
        return step % spec.scheduler.perturbation_interval == 0 and step < spec.budget.steps
    return True


def record_perturbation(restored: Path, cfg, run_dir: Path) -> None:
    """When a trial continues another trial's checkpoint (PBT's exploit), append what it took and
    what changed to the trial's perturbation history."""
    if not (restored / ORIGIN).exists():
        return
    origin = json.loads((restored / ORIGIN).read_text())
    saved = load_checkpoint(restored / "checkpoint.pt")["config"]
    changed = {k: [saved[k], getattr(cfg, k)] for k in sorted(OPTIMIZER_FIELDS)
               if saved[k] != getattr(cfg, k)}
    own = origin["trial_id"] == tune.get_context().get_trial_id()
    if own and not changed:
        return  # a plain restore of this trial's own checkpoint (after a failure)
    with open(run_dir / HISTORY, "a") as f:
        f.write(json.dumps({"step": origin["step"], "from_trial": origin["trial_id"],
                            "changed": changed}) + "\n")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same filesystem: free
    except OSError:
        shutil.copy2(src, dst)


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

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and (orphan := self._orphan()) is not None:
            self._ot_trials[trial_id] = orphan
        return super().suggest(trial_id)

    def _orphan(self):
        import optuna

        known = {t.number for t in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False,
                                                states=(optuna.trial.TrialState.RUNNING,)):
            if frozen.number not in known:
                return optuna.Trial(self._ot_study, frozen._trial_id)
        return None

    def _frozen(self, trial_id: str):
        """The trial as Optuna's storage has it now (it may be ahead of this searcher)."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return None
        return self._ot_study.get_trials(deepcopy=False)[ot_trial.number]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna keeps no intermediate values for several objectives: a stopped trial of a
        # multi-objective study enters it as PRUNED alone
        if isinstance(self.metric, list) or result.get("final") or "step" not in result or (
                self.metric not in result):
            return
        frozen = self._frozen(trial_id)
        if frozen is not None and not frozen.state.is_finished() and (
                int(result["step"]) not in frozen.intermediate_values):
            self._ot_trials[trial_id].report(float(result[self.metric]), int(result["step"]))

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


RUNGS_FILE = "asha_rungs.jsonl"


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
