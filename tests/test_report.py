"""The report notebook of the session's smoke study, executed by a real kernel, from MLflow."""

import os
from pathlib import Path

import nbformat
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml

from gan.config import make_config
from gan.metrics.evaluate import Evaluator
from gan.metrics.memorisation import training_features
from gan.sample import interpolation_latents, walk_latents
from study import analyses, figures, records
from study.browser import chromium, table_widths
from study.report import main as report_main
from study.run import main as run_main
from study.tracking import default_tracking_uri

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.get("output_type") == kind or kind in o.get("data", {})]


def leaderboard_rows(nb) -> int:
    """Rows of the leaderboard cell's table (the cell that displays `ranking`)."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and "ranking = " in c.source)
    html = next(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))
    return html.split("<tbody>")[1].split("</tbody>")[0].count("<tr")


def check_report(nb, trials: int) -> None:
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every cell ran"
    assert not outputs(nb, "error")
    assert leaderboard_rows(nb) == trials
    assert len(outputs(nb, "image/png")) >= 6  # history, importances, curves, grids, ...


def test_study_run_built_the_executed_report(smoke_study):
    reports = smoke_study.parent / "reports"
    nb = nbformat.read(reports / "smoke.ipynb", as_version=4)
    summary = pd.read_csv(smoke_study / "summary.csv")
    check_report(nb, len(summary))
    html = (reports / "smoke.html").read_text()
    assert "<html" in html and "data:image/png;base64" in html


def test_report_rebuilds_from_mlflow_alone_and_compares(smoke_study, tmp_path, capsys):
    """With the study directory gone (moved away for the test), and --compare."""
    hidden = smoke_study.with_name("smoke-hidden")
    smoke_study.rename(hidden)
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        uri = default_tracking_uri(smoke_study)
        assert report_main(["smoke", "--compare", "smoke", "--mlflow-uri", uri,
                            "--out-dir", str(tmp_path)]) == 0
    finally:
        os.chdir(cwd)
        hidden.rename(smoke_study)
    # the kernel's IPC sockets were not left in the working directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke.html", "smoke.ipynb"]
    nb = nbformat.read(tmp_path / "smoke.ipynb", as_version=4)
    check_report(nb, len(pd.read_csv(smoke_study / "summary.csv")))
    assert any("Across studies" in c.source for c in nb.cells)
    assert (tmp_path / "smoke.html").exists()


def test_report_of_an_unknown_study_is_one_line_exit_2(smoke_study, tmp_path, capsys):
    uri = default_tracking_uri(smoke_study)
    assert report_main(["no-such-study", "--mlflow-uri", uri, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow experiment named 'no-such-study'" in err[0]
    assert not list(tmp_path.iterdir())


def test_product_is_the_final_run_from_mlflow_and_heads_the_report(smoke_study):
    final = pd.read_csv(smoke_study / "final.csv").iloc[0]
    best = records.product(records.load_study("smoke", default_tracking_uri(smoke_study)))
    assert best["trial_id"] == final["trial_id"] and best["phase"] == "final"
    assert best["steps"] == 60 and best["fid"] == pytest.approx(final["fid"])
    assert best["model_uri"].startswith("models:/")
    nb = nbformat.read(smoke_study.parent / "reports" / "smoke.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "records.product" in c.source)
    shown = [o for o in cell.outputs if "text/html" in o.get("data", {})]
    assert final["trial_id"] in shown[0]["data"]["text/html"]
    assert any("image/png" in o.get("data", {}) for o in cell.outputs)  # product and baseline


def test_results_by_choice_are_each_completed_trials_value(smoke_study):
    record = records.load_study("smoke", default_tracking_uri(smoke_study))
    done = record.phase("search")
    done = done[done["status"] == "completed"]
    groups = analyses.by_choice(record)
    assert set(groups) == {k for k in record.spec.space if done[f"param_{k}"].notna().any()}
    for _, row in done.iterrows():
        shown = groups["loss"][groups["loss"]["trial_id"] == row["trial_id"]]
        assert shown["value"].item() == row["param_loss"]
        assert shown["fid"].item() == pytest.approx(row["fid"])
    lr = groups["lr_g"]  # a numeric parameter, by thirds of the values sampled
    assert len(lr) == len(done) and lr["value"].nunique() == min(3, len(done))
    assert groups["loss"]["baseline"].sum() == 1
    assert figures.by_choice(record) is not None


def test_expected_best_is_a_bootstrap_of_what_each_trial_found(smoke_study):
    record = records.load_study("smoke", default_tracking_uri(smoke_study))
    search = record.phase("search")
    values = analyses.judged_values(record)
    assert sorted(values.index) == sorted(search["trial_id"])
    for _, row in search[search["status"] == "pruned"].iterrows():  # its last evaluation
        last = record.histories[row["run_id"]]["fid"].dropna().iloc[-1]
        assert values[row["trial_id"]] == pytest.approx(last)
    frame = analyses.expected_best(record, draws=4000)
    n = len(values)
    assert list(frame.index) == list(range(1, n + 1))
    assert frame["median"].is_monotonic_decreasing
    # one draw: the worst value has probability 1/n > 5%; n draws miss the best with
    # probability (1 - 1/n)^n < 40%, so it is within the 5% quantile
    assert frame.loc[1, "high"] == values.max() and frame.loc[n, "low"] == values.min()
    fig = figures.expected_best([record, record])  # --compare: one curve per study
    assert len(fig.axes[0].lines) == 2


def test_the_products_latent_paths_show_both_walks(smoke_study):
    best = records.product(records.load_study("smoke", default_tracking_uri(smoke_study)))
    fig = figures.interpolation(best, rows=2, k=4, walk_step=0.05, seed=3)
    between, walk = fig.axes
    assert "z + 0.05 per frame" in walk.get_title()
    cfg = make_config({"latent_dim": int(best["latent_dim"]), "latent_dist": best["latent_dist"]})
    torch.manual_seed(3)
    interpolation_latents(2, 4, cfg)  # drawn first, as the figure does
    z = walk_latents(2, 4, 0.05, cfg)
    expected = figures._grid(records.load_generator(best)(z), nrow=4)
    assert np.allclose(walk.images[0].get_array(), expected, atol=1e-5)
    assert between.images[0].get_array().shape == expected.shape


def test_the_products_memorisation_check_from_mlflow(smoke_study):
    best = records.product(records.load_study("smoke", default_tracking_uri(smoke_study)))
    check = analyses.memorisation(best, n=200)
    assert len(check.sample_distances) == len(check.held_out_distances) == 200
    assert check.neighbours.shape[:2] == (16, 3)
    # each shown sample's first neighbour is its nearest training image by brute force
    evaluator = Evaluator(best["dataset"], int(best["image_size"]), channels=int(best["channels"]))
    train, features = training_features(evaluator)
    shown = evaluator.space.embed(check.samples)[0]
    brute = torch.cdist(shown.double(), features.double()).argmin(1)
    assert torch.equal(check.neighbours[:, 0], train.batch(brute))
    fig = figures.memorisation(best, n=200)
    assert sum(bar.get_height() for bar in fig.axes[1].patches) == 400  # both histograms


def needs_chromium() -> None:
    if chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI (.ci/run installs it)")
        pytest.skip("NOTICE: no chromium on this machine: the report's layout was not checked")


def test_the_report_fits_a_1400_px_window_in_chromium(smoke_study):
    """Every table of the report's HTML, the leaderboard's first, shows all its columns without
    horizontal scrolling, as laid out by a real browser."""
    needs_chromium()
    tables = table_widths(smoke_study.parent / "reports" / "smoke.html", width=1400)
    board = next(t for t in tables if "fid" in t["header"] and "trial_id" in t["header"])
    assert {"fid", "fid_floor", "precision", "recall"} <= set(board["header"])
    wide = [t for t in tables if t["width"] > t["visible"]]
    assert not wide, wide


def test_two_objectives_search_and_report_the_pareto_front(ray_session, tmp_path, capsys):
    """A spec with objectives [fid, train_s]: Optuna's multi-objective TPE gets both final
    values of every completed trial, ASHA still stops trials on fid, and the console, the
    parent run's note and the report lead with the Pareto front, rebuilt from MLflow."""
    spec = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    spec.update(name="front", objectives=["fid", "train_s"], final=None)
    spec.pop("metric")
    path = tmp_path / "front.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out, reports = tmp_path / "front", tmp_path / "reports"
    assert run_main([str(path), "--out", str(out), "--reports-dir", str(reports)]) == 0
    printed = capsys.readouterr().out

    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    searched = optuna.load_study(study_name="front", storage=storage)
    assert [d.name for d in searched.directions] == ["MINIMIZE", "MINIMIZE"]
    complete = [t for t in searched.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(len(t.values) == 2 for t in complete)
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in searched.trials)  # by ASHA

    record = records.load_study("front", default_tracking_uri(out))
    board = records.leaderboard(record)
    assert len(board) == len(complete) and board["train_s"].gt(0).all()
    # the front rebuilt from MLflow is the one Optuna's own storage holds
    front = records.pareto(record)
    assert sorted(zip(front["fid"].round(6), front["train_s"].round(6), strict=True)) == sorted(
        (round(t.values[0], 6), round(t.values[1], 6)) for t in searched.best_trials)
    for _, row in board.iterrows():  # no trial off the front beats one on it in both
        assert row["trial_id"] in set(front["trial_id"]) or any(
            f["fid"] <= row["fid"] and f["train_s"] <= row["train_s"] for _, f in front.iterrows())
    fig = figures.pareto_front(record)
    shown = next(c for c in fig.axes[0].collections if c.get_label() == "Pareto front")
    assert sorted(map(tuple, np.round(np.asarray(shown.get_offsets()), 6).tolist())) == sorted(
        zip(front["train_s"].round(6), front["fid"].round(6), strict=True))

    assert f"Pareto front on fid, train_s: {len(front)} trials" in printed
    parent = record.parent
    assert parent.data.params["objectives"] == "fid,train_s"
    assert "**Pareto front** on fid, train_s" in parent.data.tags["mlflow.note.content"]
    nb = nbformat.read(reports / "front.ipynb", as_version=4)
    assert not outputs(nb, "error")
    cell = next(c for c in nb.cells if c.cell_type == "code" and "records.pareto" in c.source)
    assert f"Pareto front on fid, train_s: {len(front)} trials" in "".join(
        o.get("text", "") for o in cell.outputs)
    assert any("image/png" in o.get("data", {}) for o in cell.outputs)
