"""MLflow tracking of the session's smoke study, read back with a real MlflowClient."""

import io
import json
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.models import Model
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES

from gan.checkpoint import load_generator
from study.generator_model import MODEL_DIR, save_generator_model
from study.image_series import IMAGE_DIR, SampleGrid, log_grid, logged_steps
from study.records import load_study, progress_frames
from study.space import baseline_params
from study.spec import load_spec
from study.tracking import (
    STEP_METRICS,
    StudyTracker,
    default_tracking_uri,
    fluent_tracking_uri,
    sample_images,
)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracked(smoke_study):
    uri = default_tracking_uri(smoke_study)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = [r for r in runs if r.data.tags.get("ganstudy.role") == "study"]
    children = [r for r in runs if r.data.tags.get("ganstudy.role") == "trial"]
    summary = pd.concat([pd.read_csv(smoke_study / name) for name in (
        "summary.csv", "confirmation.csv", "final.csv")])
    return uri, client, experiment, parent, children, summary


def ray_results(study_dir: Path) -> dict[str, list[dict]]:
    """What the driver received from each trial: Ray's own result.json per trial."""
    out: dict[str, list[dict]] = {}
    for path in study_dir.glob("ray/*/*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        out[rows[0]["trial_id"]] = rows
    return out


def test_one_experiment_one_parent_and_a_child_per_trial(tracked, smoke_study):
    uri, client, experiment, parent, children, summary = tracked
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location.endswith("/mlartifacts")
    assert uri.endswith(f"{smoke_study.parent}/mlflow.db")
    assert len(parent) == 1 and len(children) == len(summary)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}
    p = parent[0]
    assert p.data.params["seed"] == "0" and p.data.metrics["wall_s"] > 0
    assert len(p.data.tags["git_commit"]) in (40, len("unknown"))
    final = pd.read_csv(smoke_study / "final.csv").iloc[0]
    assert p.data.tags["best_trial_id"] == final["trial_id"]  # the study's product
    assert p.data.metrics["best_fid"] == pytest.approx(final["fid"])
    assert p.data.metrics["best_fid_floor"] == pytest.approx(final["fid_floor"])
    names = {a.path for a in client.list_artifacts(p.info.run_id)}
    assert {"spec.yaml", "search_space.json", "summary.csv", "best_config.yaml"} <= names
    space = json.loads(Path(client.download_artifacts(p.info.run_id,
                                                      "search_space.json")).read_text())
    spec_space = yaml.safe_load((smoke_study / "spec.yaml").read_text())["space"]
    assert set(space["distributions"]) == set(spec_space)
    assert space["when"] == {"gp_weight": {"loss": "wgan"}}


def test_child_runs_hold_hyperparameters_under_yaml_names_and_status(tracked):
    _, _, _, _, children, summary = tracked
    by_trial = {r.data.tags["ganstudy.trial_id"]: r for r in children}
    assert set(by_trial) == set(summary["trial_id"])
    for _, row in summary.iterrows():
        run = by_trial[row["trial_id"]]
        assert run.data.tags["status"] == row["status"]
        assert run.info.status == "FINISHED"
        for col in (c for c in row.index if c.startswith("param_") and not pd.isna(row[c])):
            name = col.removeprefix("param_")
            assert run.data.tags["searched"].split(",").count(name) == 1
            value = run.data.params[name]
            assert (float(value) == pytest.approx(row[col]) if isinstance(row[col], float)
                    else value == str(row[col]))
        final = run.data.tags["phase"] == "final"
        assert run.data.params["steps"] == ("60" if final else "40")
        assert run.data.params["arch"] == "mlp"
        if row["status"] == "completed":
            assert run.data.metrics["final_fid"] == pytest.approx(row["fid"])
            assert run.data.metrics["fid_floor"] == pytest.approx(row["fid_floor"])
        if row["status"] == "pruned":
            assert "stopped early" in run.data.tags["reason"]
            assert "final_fid" not in run.data.metrics


def test_every_metric_point_of_every_trial_is_in_mlflow(tracked, smoke_study):
    _, client, _, _, children, _ = tracked
    results = ray_results(smoke_study)
    assert len(results) == len(children)
    points = 0
    for run in children:
        reported = [r for r in results[run.data.tags["ganstudy.trial_id"]] if not r["final"]]
        steps = [r["step"] for r in reported]
        assert steps == sorted(set(steps)) and steps  # one evaluation per step
        for key in STEP_METRICS:
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == steps, key
            for m in history:
                expected = next(r[key] for r in reported if r["step"] == m.step)
                assert m.value == pytest.approx(expected)
            points += len(history)
    assert points >= len(children) * len(STEP_METRICS)


def test_sample_grids_are_an_image_series_per_evaluation(tracked, smoke_study):
    uri, _, _, _, children, _ = tracked
    record = load_study("smoke", uri)
    for run in children:
        frames = progress_frames(record, run.info.run_id)
        evals = [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "fid")]
        assert [s for s, _ in frames] == sorted(evals)
        assert all(p.stat().st_size > 100 for _, p in frames)


def test_a_grid_is_stored_as_the_image_series_mlflow_logs(tmp_path):
    """The trial's PNG and preview are stored under the names MLflow's log_image gives its own
    (what its UI reads): fails if MLflow changes its image series format."""
    from PIL import Image

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("images", artifact_location=str(tmp_path / "art"))
    ours, theirs = (client.create_run(experiment).info.run_id for _ in range(2))
    image = Image.new("RGB", (274, 274), (200, 30, 90))
    png = io.BytesIO()
    image.save(png, format="PNG")
    grid = SampleGrid.from_png(png.getvalue())
    log_grid(client, ours, "samples", 40, grid, first=True)
    client.log_image(theirs, image, key="samples", step=40)

    def files(run_id):  # the PNG, then the preview
        return sorted((item.path for item in client.list_artifacts(run_id, IMAGE_DIR)),
                      key=lambda path: path.endswith(".webp"))
    shape = re.compile(r"[0-9a-f-]{36}")  # the same but for the uuid and the timestamp
    assert [shape.sub("U", re.sub(r"timestamp\+\d+", "T", f)) for f in files(ours)] == [
        shape.sub("U", re.sub(r"timestamp\+\d+", "T", f)) for f in files(theirs)]
    assert len(files(ours)) == 2
    for run_id in (ours, theirs):
        assert logged_steps(client, run_id, "samples") == {40: files(run_id)[0]}
        assert client.get_run(run_id).data.tags[MLFLOW_LOGGED_IMAGES] == "True"
    # the bytes stored are the trial's, and its preview is the size MLflow's own is
    stored = Path(client.download_artifacts(ours, files(ours)[0], str(tmp_path / "dl")))
    assert stored.read_bytes() == grid.png
    previews = [Image.open(client.download_artifacts(r, files(r)[1], str(tmp_path / r)))
                for r in (ours, theirs)]
    assert previews[0].size == previews[1].size and previews[0].format == "WEBP"


def test_a_grid_the_killed_driver_missed_comes_with_the_replayed_step(tmp_path):
    """Killed between a step's metrics and its sample grid: the resumed driver's tracker logs
    the grid when the trial replays the step, and logs nothing twice."""
    from PIL import Image

    spec = load_spec(ROOT / "search_spaces" / "smoke.yaml")
    study = tmp_path / "study"
    study.mkdir()
    (study / "spec.yaml").write_text((ROOT / "search_spaces" / "smoke.yaml").read_text())
    grids = {}
    for step in (10, 20):
        png = io.BytesIO()
        Image.new("L", (8, 8), step).save(png, format="PNG")
        grids[step] = SampleGrid.from_png(png.getvalue())
    uri, baseline = f"sqlite:///{tmp_path / 'mlflow.db'}", baseline_params(spec)
    metrics = dict.fromkeys(STEP_METRICS, 1.0)

    killed = StudyTracker(spec, study, uri, baseline)
    rid = killed.start_trial("t1", dict(baseline), "search")
    killed.log_result("t1", {"step": 10, **metrics}, grids[10])
    killed._log_metrics(rid, metrics, 20)  # then the kill
    assert sorted(sample_images(killed.client, rid)) == [10]

    resumed = StudyTracker(spec, study, uri, baseline)
    for step in (10, 20, 20, 30):  # the replay, a repeat, a step the trial had no grid for
        resumed.log_result("t1", {"step": step, **metrics}, grids.get(step))
    assert sorted(sample_images(resumed.client, rid)) == [10, 20]
    history = resumed.client.get_metric_history(rid, "loss_g")
    assert sorted(m.step for m in history) == [10, 20, 30]


def test_logged_generator_is_the_best_checkpoint_and_samples(tracked, smoke_study):
    uri, _, _, _, children, summary = tracked
    client = MlflowClient(uri)
    done = summary[summary["status"] == "completed"]
    by_trial = {r.data.tags["ganstudy.trial_id"]: r for r in children}
    for trial_id in done["trial_id"]:
        run = by_trial[trial_id]
        # the trial's saved model, logged by the driver as log_model would: a READY model of
        # the run, among the run's outputs, whose MLmodel names it
        model_id = run.data.tags["generator_model_uri"].removeprefix("models:/")
        logged = client.get_logged_model(model_id)
        assert (logged.source_run_id, logged.status) == (run.info.run_id, "READY")
        outputs = client.get_run(run.info.run_id).outputs.model_outputs
        assert [o.model_id for o in outputs] == [model_id]
        described = Model.load(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{logged.artifact_location}/MLmodel"))
        assert (described.model_id, described.run_id) == (model_id, run.info.run_id)
        with fluent_tracking_uri(uri):
            model = mlflow.pytorch.load_model(run.data.tags["generator_model_uri"])
        reference, cfg = load_generator(smoke_study / "trials" / trial_id / "best.pt")
        z = torch.randn(5, cfg.latent_dim)
        with torch.no_grad():
            images = model(z)
            assert images.shape == (5, 1, 28, 28)
            assert images.abs().max() <= 1
            torch.testing.assert_close(images, reference(z), atol=1e-5, rtol=1e-5)
    pruned = summary[summary["status"] == "pruned"]["trial_id"]
    assert all("generator_model_uri" not in by_trial[t].data.tags for t in pruned)


def test_no_trial_can_take_the_driver_down(tmp_path, capsys):
    """A trial config that cannot be built, and events for a trial the tracker never saw: the
    callback reports them and returns; Tune's loop (and every other trial) goes on."""
    from types import SimpleNamespace

    from study.callbacks import MlflowCallback

    spec, study, uri, tracker = smoke_tracker(tmp_path)
    callback = MlflowCallback(tracker, "search")
    clash = SimpleNamespace(trial_id="clash", config={"loss": "hinge", "label_smoothing": 0.2},
                            error_file=None)
    callback.on_trial_start(0, [], clash)  # the tracker used to raise here, in Tune's loop
    callback.flush()
    run = tracker.client.get_run(tracker.children["clash"])
    assert run.data.params["label_smoothing"] == "0.2"
    callback.on_trial_error(0, [], clash)
    callback.flush()
    assert tracker.client.get_run(run.info.run_id).data.tags["status"] == "failed"

    ghost = SimpleNamespace(trial_id="ghost", config={}, error_file=None)
    callback.on_trial_result(0, [], ghost, {"step": 10})
    callback.on_trial_start(0, [], ghost)  # the writer goes on after a failed write
    callback.on_experiment_end([])
    assert "ghost" in tracker.children
    err = capsys.readouterr().err
    assert "warning: tracking trial ghost (on_trial_result) failed: KeyError" in err
    assert "the study goes on" in err


def test_the_parent_run_tells_the_outcome_to_a_reviewer_in_mlflow(tracked, smoke_study):
    _, client, _, parent, children, summary = tracked
    p = parent[0]
    note = p.data.tags["mlflow.note.content"]
    confirm = pd.read_csv(smoke_study / "confirmation.csv")
    final = pd.read_csv(smoke_study / "final.csv").iloc[0]
    assert "**Verdict:**" in note and "**Confirmation**" in note and "| label" in note
    assert f"fid {final['fid']:.4g}" in note and "the final run" in note
    assert f"`lr_g: {final['param_lr_g']}`" in note
    assert set(confirm["label"]) <= {line.split("|")[1].strip() for line in note.splitlines()
                                     if line.startswith("| ") and "label" not in line}
    table = json.loads(Path(client.download_artifacts(p.info.run_id,
                                                      "leaderboard.json")).read_text())
    board = pd.DataFrame(table["data"], columns=table["columns"])
    done = summary[(summary["status"] == "completed") & summary["label"].isna()]
    assert list(board["trial_id"]) == list(done.sort_values("fid")["trial_id"])
    reports = {a.path for a in client.list_artifacts(p.info.run_id, "report")}
    assert reports == {"report/smoke.ipynb", "report/smoke.html"}
    # each trial's run name: phase, id, its categorical choices, its final metric once done
    for run in children:
        name, tags = run.info.run_name, run.data.tags
        assert name.startswith(tags["phase"]) and tags["ganstudy.trial_id"] in name
        assert client.get_run(run.info.run_id).data.params["loss"] in name
        if tags["status"] == "completed":
            assert name.endswith(f"fid {run.data.metrics['final_fid']:.4g}")


def smoke_tracker(tmp_path: Path) -> tuple:
    """A tracker of the smoke spec on a fresh SQLite store: (spec, study dir, uri, tracker)."""
    spec = load_spec(ROOT / "search_spaces" / "smoke.yaml")
    study = tmp_path / "study"
    study.mkdir()
    (study / "spec.yaml").write_text((ROOT / "search_spaces" / "smoke.yaml").read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return spec, study, uri, StudyTracker(spec, study, uri, baseline_params(spec))


def snapshot_waits(callback) -> bool:
    """Whether Tune's snapshot (the callback's get_state) is still waiting after 1.5 s."""
    import threading

    snapshot = threading.Thread(target=callback.get_state)
    snapshot.start()
    snapshot.join(1.5)
    return snapshot.is_alive()


def test_writes_leave_tunes_loop_and_a_snapshot_waits_for_what_a_resume_cannot_replay(
        tmp_path, capsys):
    """The callback returns while its write still waits on the store. Tune's snapshot of the
    experiment (get_state) does not wait for a running trial's result (a resume restarts the
    trial, which reports it again) but waits for a trial's end, and under PBT, whose members
    do not replay, for every result. The experiment's end says how long the loop was held and
    logs it on the parent run."""
    import threading
    from types import SimpleNamespace

    from study.callbacks import MlflowCallback

    spec, study, uri, tracker = smoke_tracker(tmp_path)
    callback, pbt = MlflowCallback(tracker, "search"), MlflowCallback(tracker, "search", False)
    trial = SimpleNamespace(trial_id="t1", config={"lr_g": 1e-3}, error_file=None)
    member = SimpleNamespace(trial_id="t2", config={"lr_g": 2e-3}, error_file=None)
    callback.on_trial_start(0, [], trial)
    pbt.on_trial_start(0, [], member)
    callback.flush()
    pbt.flush()
    rid = tracker.children["t1"]

    store_free, logging, ending = threading.Event(), tracker.log_result, tracker.end_trial

    def slow_store(*args):  # the store answers only when the test lets it
        assert store_free.wait(10), "the test never freed the store"
        logging(*args)

    def slow_end(*args):
        assert store_free.wait(10), "the test never freed the store"
        ending(*args)

    tracker.log_result, tracker.end_trial = slow_store, slow_end
    callback.on_trial_result(0, [], trial, {"step": 10, "loss_g": 1.5})
    assert tracker.client.get_metric_history(rid, "loss_g") == []  # returned before the write
    assert not snapshot_waits(callback)  # the result comes again after a resume
    pbt.on_trial_result(0, [], member, {"step": 10, "loss_g": 1.5})
    assert snapshot_waits(pbt)  # a PBT member's does not
    callback.on_trial_complete(0, [], trial)
    assert snapshot_waits(callback)  # nor does a trial's end
    store_free.set()
    callback.get_state()
    assert [m.value for m in tracker.client.get_metric_history(rid, "loss_g")] == [1.5]
    assert tracker.client.get_run(rid).data.tags["status"] == "pruned"

    pbt.on_trial_result(0, [], member, {"step": 20, "loss_g": 1.25})
    pbt.on_experiment_end([])
    assert [m.step for m in tracker.client.get_metric_history(
        tracker.children["t2"], "loss_g")] == [10, 20]
    assert "search: tracking held Tune's loop" in capsys.readouterr().err
    parent = tracker.client.get_run(tracker.parent_id).data.metrics
    assert parent["search_hold_p99_ms"] >= parent["search_hold_p50_ms"] > 0
    assert parent["search_write_p99_ms"] > 0 and parent["search_snapshot_wait_s"] > 0


def test_an_export_a_killed_driver_lost_is_made_at_the_phase_end(tmp_path, smoke_study):
    """A snapshot does not wait for a completed trial's generator export; where the driver
    died before it, the resumed phase's end exports it from the trial's checkpoint, once."""
    import shutil
    import threading
    from types import SimpleNamespace

    from ray import tune

    from study.callbacks import MlflowCallback, log_generators

    spec, study, uri, tracker = smoke_tracker(tmp_path)
    (tmp_path / "checkpoint").mkdir()
    shutil.copy(smoke_study / "best_generator.pt", tmp_path / "checkpoint" / "best.pt")
    save_generator_model(tmp_path / "checkpoint" / "best.pt",  # as the trial does
                         tmp_path / "checkpoint" / MODEL_DIR)
    checkpoint = tune.Checkpoint.from_directory(str(tmp_path / "checkpoint"))
    trial = SimpleNamespace(trial_id="t1", config={"lr_g": 1e-3}, error_file=None,
                            checkpoint=checkpoint)
    callback = MlflowCallback(tracker, "search")
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"step": 10, "fid": 2.0, "final": True,
                                            "status": "completed"})
    died, export = threading.Event(), tracker.log_generator
    tracker.log_generator = lambda *args: died.wait(30) and export(*args)
    callback.on_trial_complete(0, [], trial)
    assert not snapshot_waits(callback)  # the export is still blocked
    rid = tracker.children["t1"]
    assert tracker.client.get_run(rid).data.tags["status"] == "completed"
    later = SimpleNamespace(trial_id="t2", config={"lr_g": 2e-3}, error_file=None)
    callback.on_trial_start(0, [], later)
    callback.writer.flush()  # the next trial's writes do not queue behind the export
    assert "t2" in tracker.children

    again = StudyTracker(spec, study, uri, baseline_params(spec))  # the resumed driver's
    assert again.without_generator() == {"t1"}
    log_generators(again, [SimpleNamespace(metrics={"trial_id": "t1", "status": "completed"},
                                           checkpoint=checkpoint, path="")])
    assert again.without_generator() == set()
    uri_tag = again.client.get_run(rid).data.tags["generator_model_uri"]
    with fluent_tracking_uri(uri):
        latent = load_generator(smoke_study / "best_generator.pt")[1].latent_dim
        images = mlflow.pytorch.load_model(uri_tag)(torch.zeros(2, latent))
    assert images.shape[0] == 2 and torch.isfinite(images).all()
    died.set()  # the first driver's export, had it lived: it finds the model logged
    callback.flush()
    assert tracker.client.get_run(rid).data.tags["generator_model_uri"] == uri_tag
    assert len(tracker.client.search_logged_models([tracker.experiment_id])) == 1
