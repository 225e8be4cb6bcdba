"""The study end to end, with real Ray, Optuna and SQLite: one smoke study feeds many checks."""

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

import study.run as run_module
from gan.config import load_config
from study.confirm import best_choice, confirmation_table, verdict
from study.run import main, smoke_spec
from study.space import REFERENCE, baseline_params
from study.spec import load_spec, parse_spec

ROOT = Path(__file__).parents[1]
BAD = sorted((Path(__file__).parent / "bad_inputs").glob("*.yaml"))


@pytest.fixture(scope="module")
def smoke(smoke_study):
    out = smoke_study
    summary = pd.read_csv(out / "summary.csv")
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    trials = optuna.load_study(study_name="smoke", storage=storage).trials
    return out, summary, trials


@pytest.mark.slow
def test_every_planned_trial_ran_and_is_summarised(smoke):
    out, summary, trials = smoke
    spec = load_spec(ROOT / "search_spaces" / "smoke.yaml")
    assert len(summary) == len(trials) == spec.budget.trials
    assert set(summary["status"]) <= {"completed", "pruned"}
    assert {"trial_id", "param_lr_g", "param_loss", "fid", "kid", "precision", "recall",
            "best_eval_fid", "steps", "status", "wall_s"} <= set(summary.columns)
    done = summary[summary["status"] == "completed"]
    assert (done["steps"] == spec.budget.steps).all() and done["fid"].notna().all()
    assert (done["fid_floor"] < done["fid"]).all()
    assert (out / "spec.yaml").exists() and (out / "ray" / "search").is_dir()


@pytest.mark.slow
def test_the_baseline_runs_first_and_is_never_stopped(smoke):
    _, summary, trials = smoke
    first = trials[0]
    expected = {k: v for k, v in REFERENCE.items() if k in first.params}
    assert first.params == expected and set(expected) == {"lr_g", "lr_d", "beta1", "loss"}
    assert first.params["loss"] == "ns" and first.state == optuna.trial.TrialState.COMPLETE
    base = summary[summary["baseline"]]
    assert len(base) == 1 and base["status"].item() == "completed"


@pytest.mark.slow
def test_asha_stopped_trials_are_pruned_in_optuna(smoke):
    _, summary, trials = smoke
    pruned = summary[summary["status"] == "pruned"]
    assert len(pruned) >= 1, "smoke.yaml is sized so that ASHA stops at least one trial"
    states = [t.state for t in trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned)
    assert (pruned["steps"] < 40).all()  # stopped early, in generator updates
    # TPE learns from pruned trials through the evaluations they reported, the last included
    last_reported = sorted(max(t.intermediate_values) for t in trials
                           if t.state == optuna.trial.TrialState.PRUNED)
    assert last_reported == sorted(pruned["steps"])
    # Optuna holds the final (final_n) value of each completed trial, nothing else.
    done = summary[summary["status"] == "completed"].sort_values("fid")["fid"].tolist()
    values = sorted(t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert values == pytest.approx(done)


@pytest.mark.slow
def test_two_trials_ran_at_once_with_one_thread_each(smoke):
    out, summary, _ = smoke
    intervals = sorted(zip(summary["started_at"], summary["ended_at"], strict=True))
    overlaps = sum(b_start < a_end for (_, a_end), (b_start, _) in
                   zip(intervals, intervals[1:], strict=False))
    assert overlaps >= 1
    threads = set()
    for result in (out / "ray" / "search").glob("*/result.json"):
        threads |= {r["torch_threads"] for r in pd.read_json(result, lines=True).to_dict(
            "records") if "torch_threads" in r and r["torch_threads"] == r["torch_threads"]}
    assert threads == {1}


@pytest.mark.slow
def test_tune_keeps_each_trials_results_once_as_json(smoke):
    """result.json is what a resume reads; Tune's CSV and TensorBoard copies are not written."""
    out, summary, _ = smoke
    trial_dirs = list((out / "ray" / "search").glob("run_trial_*"))
    assert len(trial_dirs) == len(summary)
    for trial_dir in trial_dirs:
        assert (trial_dir / "result.json").is_file()
        assert not [p.name for p in trial_dir.iterdir()
                    if p.name == "progress.csv" or p.name.startswith("events.out.tfevents")]


@pytest.mark.slow
def test_confirmation_retrains_top_k_and_baseline_with_new_seeds(smoke):
    out, summary, _ = smoke
    spec = load_spec(ROOT / "search_spaces" / "smoke.yaml")
    runs = pd.read_csv(out / "confirmation.csv")
    assert len(runs) == (spec.confirm.top_k + 1) * spec.confirm.seeds
    assert sorted(set(runs["label"])) == ["baseline", "top-1"]
    assert set(runs["seed"]) == {1000, 1001} and not set(runs["seed"]) & set(summary["seed"])
    assert (runs["status"] == "completed").all()
    # top-1 is the search's best non-baseline configuration, re-run unchanged
    best_search = summary[(summary["status"] == "completed") & ~summary["baseline"]].sort_values(
        "fid").iloc[0]
    top1 = runs[runs["label"] == "top-1"].iloc[0]
    assert top1["param_lr_g"] == pytest.approx(best_search["param_lr_g"])
    table = confirmation_table(runs, spec)
    assert list(table["n"]) == [2, 2] and (table["sd"] >= 0).all()
    assert table["mean"].is_monotonic_increasing
    assert verdict(table, spec).split(" (")[0] in {
        "best beats baseline by more than their spreads",
        "the baseline wins: the search's best does not beat it over new seeds",
        "best is ahead of baseline, but within their spreads: not a claim"}


def test_a_baseline_that_wins_is_said_to_win():
    spec = load_spec(ROOT / "search_spaces" / "smoke.yaml")
    runs = pd.DataFrame({"label": ["baseline", "baseline", "top-1", "top-1"],
                         "status": ["completed"] * 4, "fid": [1.0, 1.2, 3.0, 3.4],
                         "kid": [0.0] * 4, "precision": [0.5] * 4, "recall": [0.5] * 4,
                         "coverage": [0.5] * 4, "fid_floor": [0.1] * 4})
    table = confirmation_table(runs, spec)
    said = verdict(table, spec)
    assert said.startswith("the baseline wins") and "best_config.yaml holds the baseline" in said
    assert best_choice(table, spec).startswith("the baseline (the reference configuration)")
    assert best_choice(table.iloc[::-1].reset_index(drop=True), spec).startswith("top-1")


@pytest.fixture(scope="module")
def product(smoke):
    """The smoke study's chosen configuration (its confirmation label and best-seed run) and
    its final run's rows."""
    out = smoke[0]
    spec = load_spec(ROOT / "search_spaces" / "smoke.yaml")
    runs = pd.read_csv(out / "confirmation.csv")
    label = confirmation_table(runs, spec).iloc[0]["label"]
    return out, spec, label, runs[runs["label"] == label].iloc[0], pd.read_csv(out / "final.csv")


@pytest.mark.slow
def test_final_run_trains_the_best_mean_configuration_longer_on_every_cpu(product):
    out, spec, _, chosen, final = product
    assert len(final) == 1 and final["status"].item() == "completed"
    run = final.iloc[0]
    assert run["seed"] == 2000 and run["steps"] == spec.final.steps > spec.budget.steps
    params = [c for c in final.columns if c.startswith("param_")]
    assert run[params].dropna().to_dict() == pytest.approx(chosen[params].dropna().to_dict())
    assert run["fid_floor"] < run["fid"]
    reports = [json.loads(line) for line in next((out / "ray" / "final").glob(
        "*/result.json")).read_text().splitlines()]
    evaluated = [r["step"] for r in reports if not r["final"]]
    assert evaluated == [20, 40, 60]  # final.eval_every, not budget.eval_every
    # the whole node: Ray's 2 CPUs, as 2 torch threads
    assert {r["torch_threads"] for r in reports if "torch_threads" in r} == {2}


@pytest.mark.slow
def test_best_config_and_generator_are_the_final_runs_and_rerun(product):
    out, _, label, _, final = product
    final = final.iloc[0]
    cfg = load_config(out / "best_config.yaml")
    why = (out / "best_config.yaml").read_text().splitlines()[0]
    who = "the baseline (the reference configuration)" if label == "baseline" else label
    assert why == (f"# {who}: the best mean final fid over the confirmation's 2 seeds, trained "
                   "for 60 generator updates in the final run")
    assert cfg.lr_g == pytest.approx(final["param_lr_g"]) and cfg.loss == final["param_loss"]
    assert cfg.seed == 2000 and cfg.steps == 60 and cfg.eval_every == 20 and cfg.threads == 0
    own = out / "trials" / final["trial_id"] / "best.pt"
    assert (out / "best_generator.pt").read_bytes() == own.read_bytes()


def test_best_choice_names_the_final_run_only_when_it_completed():
    spec = load_spec(ROOT / "search_spaces" / "smoke.yaml")
    table = pd.DataFrame({"label": ["top-1", "baseline"], "n": [2, 2]})
    assert best_choice(table, spec, final=True).endswith(
        "trained for 60 generator updates in the final run")
    assert best_choice(table, spec).endswith("its best seed's run")
    assert best_choice(None, spec) == "the search's best trial by final fid"


def test_smoke_shrinks_any_spec_and_keeps_its_space():
    spec = smoke_spec(load_spec(ROOT / "search_spaces" / "smoke.yaml"))
    assert spec.budget.steps == 60 and spec.fixed["width"] == 8 and "lr_g" in spec.space
    assert baseline_params(spec)["lr_g"] == 2e-4


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_is_one_line_exit_2_nothing_written_no_ray(path, tmp_path, capsys,
                                                             monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("validation let a bad spec through to Ray")

    monkeypatch.setattr(run_module, "run_study", must_not_run)
    monkeypatch.chdir(ROOT)  # a spec's baseline file is the working directory's
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    out = tmp_path / "study"
    assert main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and expected in err[0], err[0]
    assert f"error: {path}: " in err[0]  # names the file, then the key
    assert not out.exists()


def test_scheduler_and_searcher_by_name():
    spec = parse_spec({"name": "short", "scheduler": "none", "searcher": "random",
                       "budget": {"trials": 2, "steps": 40, "eval_every": 10},
                       "space": {"lr_g": {"type": "float", "low": 1e-4, "high": 1e-3}}}, "s")
    assert spec.scheduler.type == "none" and spec.searcher.type == "random"


def test_every_shipped_search_space_validates(monkeypatch):
    monkeypatch.chdir(ROOT)
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        spec = load_spec(path)
        assert baseline_params(spec), path
        assert yaml.safe_load(path.read_text())["name"] == spec.name


@pytest.mark.slow
def test_a_baseline_file_is_run_first_as_written_and_confirmed(ray_session, tmp_path,
                                                               monkeypatch):
    """basic.yaml studies the basic tutorial from its config file: the file's values are the
    first trial's and every trial's starting point, and the baseline is confirmed over seeds."""
    monkeypatch.chdir(ROOT)
    written = yaml.safe_load((ROOT / "configs" / "basic_1d2g_uniform.yaml").read_text())
    out = tmp_path / "basic"
    assert main([str(ROOT / "search_spaces" / "basic.yaml"), "--smoke", "--out", str(out),
                 "--no-report"]) == 0
    spec = load_spec(out / "spec.yaml")  # the baseline travels in the spec: no file needed
    assert spec.baseline.path == "configs/basic_1d2g_uniform.yaml"
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    first = optuna.load_study(study_name="basic-smoke", storage=storage).trials[0]
    assert first.params == {k: written[k] for k in first.params}
    assert {"latent_dist", "d_steps", "g_steps", "lr_g", "init"} <= set(first.params)
    summary = pd.read_csv(out / "summary.csv")
    base = summary[summary["baseline"]]
    assert len(base) == 1 and base["status"].item() == "completed"
    for trial_dir in (out / "trials").iterdir():  # every trial starts from the file
        cfg = json.loads((trial_dir / "config.json").read_text())
        assert (cfg["output"], cfg["bias_init"], cfg["mlp_g_layers"]) == ("sigmoid", 0.1, [128])
    confirmed = pd.read_csv(out / "confirmation.csv")
    confirmed = confirmed[confirmed["label"] == "baseline"]
    assert len(confirmed) == 2 and (confirmed["status"] == "completed").all()


@pytest.mark.slow
def test_pbt_perturbs_learning_rates_and_restores_from_better_trials(ray_session, tmp_path):
    out = tmp_path / "pbt"
    assert main([str(ROOT / "search_spaces" / "pbt.yaml"), "--smoke", "--out", str(out),
                 "--no-report"]) == 0
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert len(summary) == 4 and (summary["status"] == "completed").all()
    assert not (out / "optuna.db").exists()  # Ray runs no searcher beside PBT
    base = summary[summary["baseline"]]
    assert len(base) == 1 and base["perturbations"].item() == ""  # never exploited
    histories = [json.loads(h) for h in summary["perturbations"] if h]
    assert histories, "PBT exploited no trial in 60 steps with perturbations every 20"
    ids = set(summary["trial_id"])
    for history in histories:
        for event in history:
            assert event["from_trial"] in ids and event["step"] % 20 == 0
            assert set(event["changed"]) <= {"lr_g", "lr_d"} and event["changed"]


@pytest.mark.slow
def test_a_seconds_budget_compares_trials_at_equal_training_time(ray_session, tmp_path):
    """Under budget.unit seconds, each trial trains for budget.steps seconds (evaluation
    excluded), however many updates that is, and ASHA's rungs are in those seconds."""
    spec = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    spec.update(name="seconds", budget={"trials": 4, "unit": "seconds", "steps": 4,
                                        "eval_every": 1},
                scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
                confirm=None, final=None)
    path = tmp_path / "seconds.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "study"
    assert main([str(path), "--out", str(out), "--no-report"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and (summary["status"] == "completed").any()
    reports = {}
    for result in (out / "ray" / "search").glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        reports[rows[0]["trial_id"]] = rows
    for _, row in summary.iterrows():
        rows = reports[row["trial_id"]]
        seconds = [r["train_s"] for r in rows if not r["final"]]
        config = json.loads((out / "trials" / row["trial_id"] / "config.json").read_text())
        assert config["unit"] == "seconds" and config["steps"] == 4
        assert seconds == sorted(seconds)
        if row["status"] == "completed":
            # stopped at the first update past 4 s, then scored: no more training after it
            assert rows[-1]["final"] and seconds[-1] >= 4 > seconds[-2]
            assert rows[-1]["step"] == rows[-2]["step"] == row["steps"]
        else:
            assert seconds[-1] < 4
    rungs = [json.loads(line) for line in (out / "asha_rungs.jsonl").read_text().splitlines()]
    for seen in rungs:  # what the rungs compared: each trial's training seconds, as reported
        assert seen["step"] in [r.get("train_s") for r in reports[seen["trial_id"]]]


COMMAND_LINES = [line.split(" :: ") for line in (
    Path(__file__).parent / "bad_inputs" / "command_lines.txt").read_text().splitlines()
    if line and not line.startswith("#")]


@pytest.mark.parametrize(("expected", "command"), COMMAND_LINES,
                         ids=[c.split()[0] + ":" + e[:30] for e, c in COMMAND_LINES])
def test_bad_command_line_is_one_line_exit_2_nothing_written(expected, command, tmp_path,
                                                             capsys, monkeypatch):
    import importlib

    monkeypatch.setattr(run_module, "run_study", lambda *a, **k: pytest.fail("reached Ray"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp_path / "file").write_text("not a directory")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated zip")
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: huge\n" + "# padding\n" * 110_000)
    places = {"root": ROOT, "tmp": tmp, "file": tmp_path / "file", "corrupt": corrupt,
              "huge": huge}
    module, *argv = command.format(**places).split()
    before = sorted(p for p in tmp_path.rglob("*"))
    try:
        code = importlib.import_module(module).main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("section, values, expected", [
    ("resources", {"cpu": 1, "gpu": 1}, "resources.gpu: 1 per trial"),
    ("final", {"steps": 60, "eval_every": 20, "gpu": 1}, "final.gpu: 1 for the final run"),
    ("final", {"steps": 60, "eval_every": 20, "cpu": 3}, "final.cpu: 3 for the final run")])
def test_more_than_the_cluster_has_fails_before_any_trial(ray_session, tmp_path, capsys, section,
                                                          values, expected):
    spec = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    spec[section] = values
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # space order: conditions follow
    out = tmp_path / "study"
    assert main([str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    kind = expected.split(":")[0].split(".")[1]
    assert err == [f"error: {path}: {expected}, but no node of the Ray cluster has more than "
                   f"{2 if kind == 'cpu' else 0}"]
    assert not out.exists()
