"""Adapts the trainer to Ray Tune. The trainer knows nothing of Ray; this module is the seam.

A trial's Tune config is the flat dict of its sampled hyperparameters (plus `seed` in the
confirmation phase). Each evaluation (`eval_n` samples) is reported with the checkpoint written
for that step: that is what ASHA compares, at equal generator updates (`step`). The last report,
marked `final`, carries the best checkpoint re-scored with `final_n` samples: the trial's value.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search.optuna import OptunaSearch

from gan.checkpoint import load_checkpoint
from gan.config import make_config
from gan.errors import DivergedError
from gan.train import OPTIMIZER_FIELDS, train
from study.space import hyperparameters, is_baseline
from study.spec import Pbt, StudySpec, trial_values

CHECKPOINT_FILES = ("checkpoint.pt", "best.pt")
ORIGIN = "origin.json"  # which trial and step a reported checkpoint came from
PERTURBATIONS = "perturbations.jsonl"
WORST = 1e9  # a diverged trial's value: worse than any real score


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_reason(text: str) -> str:
    """A crashed trial's reason: the last line of Ray's error text (the exception raised in the
    trial), without the terminal colours Ray adds."""
    lines = [line.strip() for line in ANSI.sub("", text).splitlines() if line.strip()]
    return lines[-1] if lines else "the trial raised"


def worst_value(spec: StudySpec) -> float:
    return WORST if spec.direction == "min" else -WORST


def trial_device() -> str:
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def run_trial(config: dict[str, Any], spec: StudySpec, trials_dir: str) -> None:
    """The Tune function trainable: one `gan.train` run, resumed from Tune's checkpoint if any.

    Its outputs (metrics.jsonl, samples, checkpoints) go to `trials_dir/<trial id>/`, a folder of
    the study's own (shared storage on a cluster), not Ray's staging folder, which Ray copies
    while the trainer writes."""
    params = hyperparameters(config)
    threads = max(1, math.floor(spec.resources.cpu))  # torch threads = the CPUs Ray gave us
    cfg = make_config({**trial_values(spec, params, config.get("seed"), threads),
                       "device": trial_device()}, "trial config")
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(trials_dir) / trial_id
    report_dir = Path(trials_dir) / f".{trial_id}-report"
    # Where and how the trial ran, in every report: the summary and the tests read it.
    provenance = {"node_ip": ray.util.get_node_ip_address(),
                  "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                  "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
                  "device": cfg.device, "started_at": time.time()}

    resume = False
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as restored:
            run_dir.mkdir(parents=True, exist_ok=True)
            for name in CHECKPOINT_FILES:
                if (Path(restored) / name).exists():
                    shutil.copy2(Path(restored) / name, run_dir / name)
            record_perturbation(Path(restored), cfg, run_dir)
        resume = True

    def report_evaluation(record: dict) -> None:
        if "fid" not in record:  # only evaluations go to Tune: they carry the metrics
            return
        result = {**record, **provenance, "torch_threads": torch.get_num_threads(),
                  "final": False, "status": "running"}
        if not checkpoint_step(spec, record["step"]):
            tune.report(result)
            return
        shutil.rmtree(report_dir, ignore_errors=True)
        report_dir.mkdir()
        for name in CHECKPOINT_FILES:
            if (run_dir / name).exists():
                _link_or_copy(run_dir / name, report_dir / name)
        (report_dir / ORIGIN).write_text(json.dumps({"trial_id": trial_id,
                                                     "step": record["step"]}))
        # Tune copies the directory into its storage before returning.
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(report_dir)))

    try:
        # Adam's settings may differ from the checkpoint's: PBT perturbs them on exploit.
        result = train(cfg, run_dir, resume=resume, on_log=report_evaluation,
                       may_change=OPTIMIZER_FIELDS)
    except DivergedError as err:
        tune.report({spec.metric: worst_value(spec), "step": err.step, **provenance,
                     "final": True, "status": "diverged", "reason": str(err)})
        return
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)
    tune.report({**result.final, "step": cfg.steps, **provenance, "final": True,
                 "status": "completed"})


def checkpoint_step(spec: StudySpec, step: int) -> bool:
    """Whether an evaluation's report carries a checkpoint: every one, except under PBT, which
    clones checkpoints only at its perturbation steps and keeps them all (a donor's checkpoint
    must outlive the exploit, however late the recipient gets there)."""
    if isinstance(spec.scheduler, Pbt):
        return step % spec.scheduler.perturbation_interval == 0 or step == spec.budget.steps
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
    with open(run_dir / PERTURBATIONS, "a") as f:
        f.write(json.dumps({"step": origin["step"], "from_trial": origin["trial_id"],
                            "changed": changed}) + "\n")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same filesystem: free
    except OSError:
        shutil.copy2(src, dst)


class FinalResultSearch(OptunaSearch):
    """OptunaSearch that gives Optuna a trial's value only from its full-budget final result.

    Ray's OptunaSearch tells Optuna COMPLETE with whatever the last result held, so a trial that
    ASHA stopped after its grace period would enter TPE's model as if its low-budget score were
    final (Ray issues #5459, #5651). Here such a trial is recorded as PRUNED, as Optuna's own
    pruners do; Optuna's TPE still learns from pruned trials' intermediate values.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not result.get("final") and "step" in result and self.metric in result:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None:
                ot_trial.report(float(result[self.metric]), int(result["step"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if result is not None and not result.get("final"):
            # The result a scheduler stopped the trial on reaches only this method.
            self.on_trial_result(trial_id, result)
            result = None  # OptunaSearch then tells PRUNED (or FAIL if the trial raised)
        super().on_trial_complete(trial_id, result, error)


class StudyASHA(ASHAScheduler):
    """ASHA on the eval_n metric at equal generator updates, with two exceptions.

    The baseline always runs to the end: the study must report it, and its rung results still
    set the bar for the others. A trial that has reached the full budget is not stopped on its
    last evaluation (Ray's ASHA stops at max_t): its final re-score is about to follow, and is
    its result.
    """

    def __init__(self, baseline: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.baseline = baseline

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if is_baseline(trial.config, self.baseline) or result.get("step", 0) >= self._max_t:
            return self.CONTINUE
        return decision


class StudyPBT(PopulationBasedTraining):
    """PBT that never replaces the baseline member's weights or settings: it stays the study's
    reference, while still serving as a donor when it is in the upper quantile."""

    def __init__(self, baseline: dict[str, Any], **kwargs: Any):
        super().__init__(**kwargs)
        self.baseline = baseline

    def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
        lower = [t for t in lower_quantile if not is_baseline(t.config, self.baseline)]
        super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile, lower)
