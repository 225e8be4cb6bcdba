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
from typing import Any

import ray
import torch
from ray import tune

from gan.checkpoint import BEST_FILE, load_checkpoint
from gan.config import make_config
from gan.errors import CheckpointError, DivergedError
from gan.fileio import read_jsonl
from gan.models import build_generator
from gan.train import OPTIMIZER_FIELDS, TrainResult, grid_path, train
from study.generator_model import MODEL_DIR, save_generator_model
from study.image_series import SampleGrid
from study.reported import (
    PERTURBATIONS,
    PROGRESS,
    QUALITY,
    SAMPLE_GRID,
    SAMPLE_PREVIEW,
    worst_value,
)
from study.space import hyperparameters, is_final, pbt_member
from study.spec import Pbt, StudySpec, trial_values

CHECKPOINT_FILES = ("checkpoint.pt", BEST_FILE)
ORIGIN = "origin.json"  # which trial and step a reported checkpoint came from
HISTORY = "perturbations.jsonl"  # the trial's PBT exploits, in its scratch folder


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_reason(text: str) -> str:
    """A crashed trial's reason: the last line of Ray's error text (the exception raised in the
    trial), without the terminal colours Ray adds."""
    lines = [line.strip() for line in ANSI.sub("", text).splitlines() if line.strip()]
    return lines[-1] if lines else "the trial raised"


def trial_device() -> str:
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def run_trial(config: dict[str, Any], spec: StudySpec, trials_dir: str,
              cpu: float | None = None) -> None:
    """The Tune function trainable: one `gan.train` run, continued from its latest checkpoint
    when Tune restarts it (a retry, a resumed study, PBT's exploit).

    Its outputs (metrics.jsonl, samples, checkpoints) go to `trials_dir/<trial id>/`, scratch
    space on the node it runs on (not Ray's staging folder, which Ray copies while the trainer
    writes). What anyone else needs travels with the reports (TrialReports)."""
    params = hyperparameters(config)
    # torch threads = the CPUs Ray gave us
    threads = max(1, math.floor(cpu or spec.resources.cpu))
    cfg = make_config({**trial_values(spec, params, config.get("seed"), threads,
                                      final=is_final(config)),
                       "device": trial_device()}, "trial config")
    # The final run is one trial, trained as any other; PBT's cloning has no part in it.
    pbt = pbt_member(spec, is_final(config))
    reports = TrialReports(spec, cfg, Path(trials_dir), pbt)
    start = restore_checkpoint(tune.get_checkpoint(), cfg, reports.run_dir, pbt)
    try:
        if start is not None and not pbt:
            # The evaluations up to the checkpoint, again: a killed driver may have missed the
            # last ones. Every store keeps a step once; PBT's checkpoints are exactly Tune's.
            reports.replay(start)
        try:
            # Adam's settings may differ from the checkpoint's: PBT perturbs them on exploit.
            result = train(cfg, reports.run_dir, resume=start is not None,
                           on_log=reports.evaluation, may_change=OPTIMIZER_FIELDS)
        except DivergedError as err:
            reports.diverged(err)
            return
        reports.completed(result)
    finally:  # also when Tune stops the trial (ASHA), which it does inside tune.report
        reports.clean()


class TrialReports:
    """What a trial tells Tune, and through Tune the driver: each evaluation (with its sample
    grid, and its checkpoint through Ray's storage), a replay after a restore, and the end. A
    report carries what the driver needs from the trial's scratch folder, so that no node
    needs another's disk: the sample grid as PNG bytes, the PBT history, and at the end a
    checkpoint holding the best generator."""

    def __init__(self, spec: StudySpec, cfg, trials_dir: Path, pbt: bool):
        self.spec, self.pbt, self.steps = spec, pbt, cfg.steps
        self.trial_id = tune.get_context().get_trial_id()
        self.run_dir = trials_dir / self.trial_id
        self.report_dir = trials_dir / f".{self.trial_id}-report"
        # Where and how the trial ran, in every report: the summary and the tests read it.
        self.provenance = {
            "node_ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
            "device": cfg.device, "started_at": time.time(),
            # a cost a study may minimise: Tune wants every objective in every report
            "g_params": sum(p.numel() for p in build_generator(cfg).parameters())}
        self.progress = dict.fromkeys(PROGRESS, 0.0)  # the last log line's, in each unit

    def carried(self, step: int | None = None) -> dict[str, Any]:
        """The PBT history, and the sample grid of an evaluation's step."""
        history = self.run_dir / HISTORY
        events = [json.loads(x) for x in history.read_text().splitlines()] if (
            history.is_file()) else []
        carried: dict[str, Any] = {PERTURBATIONS: json.dumps(events) if events else ""}
        grid = grid_path(self.run_dir, step) if step is not None else None
        if grid and grid.is_file():
            images = SampleGrid.from_png(grid.read_bytes())
            carried.update({SAMPLE_GRID: images.png, SAMPLE_PREVIEW: images.preview})
        return carried

    def checkpoint_at(self, step: int) -> tune.Checkpoint:
        self.clean()
        self.report_dir.mkdir()
        for name in CHECKPOINT_FILES:
            if (self.run_dir / name).exists():
                _link_or_copy(self.run_dir / name, self.report_dir / name)
        (self.report_dir / ORIGIN).write_text(json.dumps({"trial_id": self.trial_id,
                                                          "step": step}))
        # Tune copies the directory into its storage before returning.
        return tune.Checkpoint.from_directory(str(self.report_dir))

    def evaluation(self, record: dict) -> None:
        """gan.train's log line: an evaluation goes to Tune, other lines only move progress."""
        self.progress.update({k: record[k] for k in PROGRESS if k in record})
        if "fid" not in record:
            return
        result = {**record, **self.provenance, **self.carried(record["step"]),
                  "torch_threads": torch.get_num_threads(),
                  "final": False, "status": "running", "reported_at": time.time()}
        if self.pbt and not checkpoint_step(self.spec, record["step"]):
            tune.report(result)
            return
        tune.report(result, checkpoint=self.checkpoint_at(record["step"]))

    def replay(self, start: int) -> None:
        for record in read_jsonl(self.run_dir / "metrics.jsonl"):
            if "fid" in record and record["step"] <= start:
                tune.report({**record, **self.provenance, **self.carried(record["step"]),
                             "final": False, "status": "running", "replayed": True})

    def diverged(self, err: DivergedError) -> None:
        """The worst score in each quality objective; its costs (progress, size) as they were."""
        worst = {t: worst_value(way) for t, way in zip(self.spec.targets, self.spec.directions,
                                                        strict=True) if t in QUALITY}
        tune.report({**self.progress, **worst, "step": err.step, **self.provenance,
                     "final": True, "status": "diverged", "reason": str(err),
                     "reported_at": time.time()})

    def completed(self, result: TrainResult) -> None:
        """The final result, and a checkpoint holding best.pt and its generator as the MLflow
        model the driver logs."""
        # where the run ended, in each unit: a run measured in seconds ends where time ran out
        last = result.records[-1] if result.records else {"step": self.steps}
        ended = {k: last[k] for k in ("step", "images", "train_s") if k in last}
        checkpoint = self.checkpoint_at(ended["step"])
        if (self.run_dir / BEST_FILE).is_file():
            save_generator_model(self.run_dir / BEST_FILE, self.report_dir / MODEL_DIR)
        tune.report({**result.final, **ended, **self.provenance, **self.carried(),
                     "final": True, "status": "completed", "reported_at": time.time()},
                    checkpoint=checkpoint)

    def clean(self) -> None:
        shutil.rmtree(self.report_dir, ignore_errors=True)


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
