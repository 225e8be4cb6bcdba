"""The searcher's and the scheduler's state across a killed driver, without a Ray runtime: the
windows between Tune's snapshot of the experiment and what Optuna's storage or ASHA's rungs
already hold, made on purpose (a real Optuna SQLite storage, Ray's real ASHA and Trial)."""

import json
import pickle
from types import SimpleNamespace

import optuna
import pytest
import yaml
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from study.phases import build_scheduler, build_searcher
from study.reported import SAMPLE_GRID
from study.space import baseline_params
from study.spec import Tpe, parse_spec
from study.trainable import refill_deleted_checkpoints
from study.tune_extensions import drop_from_checkpoint_results

SPEC = parse_spec({
    "name": "state", "seed": 0,
    "budget": {"trials": 8, "steps": 40, "eval_every": 10},
    "scheduler": {"type": "asha", "grace_period": 10, "reduction_factor": 2},
    "space": {"lr_g": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
              "lr_d": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
}, "test")


def test_trials_asked_or_told_after_the_snapshot_leave_no_gap_and_no_duplicate(tmp_path):
    searcher = build_searcher(SPEC, tmp_path, baseline_params(SPEC))
    pickled = pickle.dumps(searcher)  # as Tuner pickles it, before any trial
    baseline = searcher.suggest("t0")
    searcher.on_trial_result("t0", {"fid": 4.0, "step": 10, "final": False})
    searcher.save(tmp_path / "searcher.pkl")  # Tune's snapshot
    # what the searcher knows of Optuna's storage is not kept: a restored one reads it again
    assert "_known_steps" not in pickle.loads((tmp_path / "searcher.pkl").read_bytes())
    asked_after = searcher.suggest("t1")  # asked, then the driver is killed
    searcher.on_trial_complete("t0", {"fid": 3.0, "step": 40, "final": True})  # told, ditto

    restored = pickle.loads(pickled)  # Tuner.restore, then the searcher's own snapshot
    restored.restore(tmp_path / "searcher.pkl")
    # The next new trial takes over the orphaned Optuna trial, parameters and all.
    assert restored.suggest("t2") == asked_after != baseline
    # t0 runs its last steps again and completes again: Optuna is not told twice.
    restored.on_trial_result("t0", {"fid": 9.0, "step": 30, "final": False})
    restored.on_trial_complete("t0", {"fid": 3.0, "step": 40, "final": True})
    for step, fid in ((10, 6.0), (10, 6.0), (20, 5.5)):  # a replayed step is reported once
        restored.on_trial_result("t2", {"fid": fid, "step": step, "final": False})
    restored.on_trial_complete("t2", {"fid": 5.0, "step": 40, "final": True})

    trials = optuna.load_study(study_name="state",
                               storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [t.value for t in trials] == [3.0, 5.0]
    assert trials[0].intermediate_values == {10: 4.0}  # nothing reported once it finished
    assert trials[1].intermediate_values == {10: 6.0, 20: 5.5}


def test_a_snapshot_uploaded_in_part_still_restores_each_trial_once(tmp_path):
    """Tune's snapshot is several files: a driver killed while uploading them leaves the trials'
    file newer than the searcher's. A trial only the trials' file names keeps its Optuna trial,
    a trial asked after both is an orphan for the next new trial, and the searcher makes no
    trial beyond the experiment's budget, though Tune, counting from its older file, asks."""
    searcher = build_searcher(SPEC, tmp_path, baseline_params(SPEC), trials=4)
    pickled = pickle.dumps(searcher)
    searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.save(tmp_path / "searcher-state-s.pkl")  # the searcher's file, uploaded
    searcher.suggest("t2")  # then the trials' file, uploaded naming t0-t2
    trial_data = [[json.dumps({"trial_id": t}), "{}"] for t in ("t0", "t1", "t2")]
    (tmp_path / "experiment_state-s.json").write_text(json.dumps({"trial_data": trial_data}))
    asked_after = searcher.suggest("t3")  # then the driver is killed

    restored = pickle.loads(pickled)
    restored.restore(tmp_path / "searcher-state-s.pkl")
    restored.on_trial_complete("t2", {"fid": 2.0, "step": 40, "final": True})
    assert restored.suggest("t4") == asked_after
    assert restored.suggest("t5") == restored.FINISHED

    trials = optuna.load_study(study_name="state",
                               storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()
    assert len(trials) == 4
    assert [t.user_attrs["tune_trial_id"] for t in trials] == ["t0", "t1", "t2", "t4"]
    assert trials[2].state == optuna.trial.TrialState.COMPLETE and trials[2].value == 2.0


def test_tpe_models_the_space_once_its_start_up_trials_are_done(tmp_path):
    """`searcher.startup_trials` is what TPE gets. Optuna counts the baseline as one: with 2, the
    third proposal already comes from TPE's model; with 10 it is still the seeded random draw."""
    proposals = {}
    for startup in (2, 10):
        spec = SPEC.model_copy(update={"searcher": Tpe(type="tpe", startup_trials=startup)})
        (tmp_path / str(startup)).mkdir()
        searcher = build_searcher(spec, tmp_path / str(startup), baseline_params(spec))
        proposals[startup] = []
        for i in range(3):
            config = searcher.suggest(f"t{i}")
            proposals[startup].append(config)
            searcher.on_trial_complete(f"t{i}", {"fid": 1e3 * config["lr_g"], "step": 40,
                                                 "final": True})
    assert proposals[2][:2] == proposals[10][:2]
    assert proposals[2][2] != proposals[10][2]


def trial(trial_id: str, lr: float) -> Trial:
    return Trial("run_trial", config={"lr_g": lr, "lr_d": lr}, trial_id=trial_id, stub=True)


def test_asha_rungs_outlive_the_driver(tmp_path):
    scheduler = build_scheduler(SPEC, baseline_params(SPEC), tmp_path)
    pickled = pickle.dumps(scheduler)  # as Tuner pickles it, before any trial
    for i, fid in enumerate([1.0, 2.0, 3.0, 4.0]):
        scheduler.on_trial_add(None, trial(f"t{i}", 1e-4 * (i + 1)))
        scheduler.on_trial_result(None, trial(f"t{i}", 1e-4 * (i + 1)), {"fid": fid, "step": 10})
    late = trial("late", 9e-4)
    # Restored by Tuner.restore (unpickled) or made anew for an extension: the rungs are back,
    # so a bad trial is stopped at the grace period as it would have been.
    for again in (pickle.loads(pickled), build_scheduler(SPEC, baseline_params(SPEC), tmp_path)):
        again.on_trial_add(None, late)
        assert again.on_trial_result(None, late, {"fid": 9.0, "step": 10}) == TrialScheduler.STOP
    # A scheduler with no record would have let it go on: the rungs are what stops it.
    (tmp_path / "elsewhere").mkdir()
    fresh = build_scheduler(SPEC, baseline_params(SPEC), tmp_path / "elsewhere")
    fresh.on_trial_add(None, late)
    assert fresh.on_trial_result(None, late, {"fid": 9.0, "step": 10}) == TrialScheduler.CONTINUE


def test_a_restored_pbt_member_keeps_its_perturbation_schedule(tmp_path):
    spec = parse_spec({
        "name": "pbt-state", "seed": 0, "searcher": "random",
        "budget": {"trials": 2, "steps": 100, "eval_every": 10},
        "scheduler": {"type": "pbt", "perturbation_interval": 20, "quantile_fraction": 0.5,
                      "mutations": ["lr_g", "lr_d"]},
        "space": SPEC.model_dump()["space"]}, "test")
    scheduler = build_scheduler(spec, baseline_params(spec), tmp_path)
    fresh, restored = trial("fresh", 2e-4), trial("restored", 5e-4)
    controller = SimpleNamespace(search_alg=None, get_trials=lambda: [fresh, restored])
    restored.run_metadata.last_result = {"fid": 30.0, "step": 50}  # as Tuner.restore brings it
    for member in (fresh, restored):
        scheduler.on_trial_add(controller, member)
    # Continued from its checkpoint at step 40, the restored member's next evaluation (50) is
    # no perturbation step: PBT does not look at it (Ray's own PBT would, counting from 0).
    assert scheduler.on_trial_result(controller, restored, {"fid": 30.0, "step": 50}) == (
        TrialScheduler.CONTINUE)
    assert scheduler._trial_state[restored].last_score is None
    # A new member is looked at on the schedule, at its first perturbation step.
    scheduler.on_trial_result(controller, fresh, {"fid": 20.0, "step": 20})
    assert scheduler._trial_state[fresh].last_score is not None


def test_checkpoints_deleted_behind_the_snapshot_are_made_again(tmp_path):
    # As CI left it: the snapshot named checkpoint 0, Ray had deleted it for 1, 2 came unseen.
    experiment = tmp_path / "search"
    cut = experiment / "run_trial_3e40ec45_3_lr_d=0.0004_2026-11-23_15-39-13"
    done = experiment / "run_trial_d53e40b9_4_lr_d=0.0004_2026-11-23_15-39-13"
    for index, step in ((1, 20), (2, 30)):
        (cut / f"checkpoint_{index:06d}").mkdir(parents=True)
        (cut / f"checkpoint_{index:06d}" / "origin.json").write_text(f'{{"step": {step}}}')
    (done / "checkpoint_000008").mkdir(parents=True)
    (cut / "result.json").write_text('{"step": 10, "final": false}\n')
    (done / "result.json").write_text('{"step": 10, "final": false}\n'
                                      '{"step": 10, "final": true}\n')  # Tune's own record

    refill_deleted_checkpoints(experiment)
    again = cut / "checkpoint_000000" / "origin.json"
    assert again.read_text() == '{"step": 30}'  # the newest, not a guess at the deleted one
    assert again.stat().st_ino == (cut / "checkpoint_000002" / "origin.json").stat().st_ino
    assert sorted(p.name for p in cut.glob("checkpoint_*")) == [
        f"checkpoint_00000{i}" for i in range(3)]
    assert [p.name for p in done.glob("checkpoint_*")] == ["checkpoint_000008"]  # finished
    refill_deleted_checkpoints(experiment)  # a second resume finds nothing to do


def test_resume_rejects_what_would_change_or_shrink_the_study(tmp_path, capsys, monkeypatch):
    import study.run as run_module
    from study.state import Placement, StudyState

    monkeypatch.setattr(run_module, "run_study", lambda *a, **k: pytest.fail("reached Ray"))
    study = tmp_path / "state"
    study.mkdir()
    (study / "spec.yaml").write_text(yaml.safe_dump(SPEC.model_dump(), sort_keys=False))
    StudyState(Placement(study, "sqlite:///x/mlflow.db", str(study / "ray"), None)).save()
    before = sorted(study.rglob("*"))
    cases = [(["--trials", "4"], "--trials 4: the study already plans 8 trials"),
             (["--mlflow-uri", "sqlite:///y/mlflow.db"], "a resumed study keeps its stores"),
             (["--storage", "/elsewhere"], "--storage /elsewhere: the study at"),
             (["--scratch", "/node/scratch"], "--scratch /node/scratch: the study at"),
             (["--mlflow-artifacts", "s3://b/a"], "--mlflow-artifacts s3://b/a: the study at")]
    for extra, expected in cases:
        assert run_module.main([str(study), "--resume", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    (study / "study.json").write_text("{not json")
    assert run_module.main([str(study), "--resume"]) == 2
    assert "study.json: not a study record" in capsys.readouterr().err
    assert sorted(study.rglob("*")) == before


def test_a_sample_grid_leaves_what_tune_keeps_beside_a_checkpoint(tmp_path):
    """Tune keeps each checkpoint's result, as the trial's process saw it, in every snapshot of
    the experiment; the grid's bytes leave it, the metrics stay."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult

    kept = trial("t1", 1e-3)
    kept.run_metadata.checkpoint_manager.register_checkpoint(_TrainingResult(
        Checkpoint.from_directory(str(tmp_path)), {SAMPLE_GRID: b"\x89PNG" * 30_000, "fid": 2.5}))
    assert len(kept.get_json_state()[1]) > 100_000  # hex-encoded in Tune's JSON
    drop_from_checkpoint_results(kept, SAMPLE_GRID)
    state = kept.get_json_state()[1]
    assert len(state) < 20_000
    assert kept.run_metadata.checkpoint_manager.latest_checkpoint_result.metrics == {"fid": 2.5}
