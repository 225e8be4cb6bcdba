"""Does the study's search pay? TPE + ASHA against random search without early stopping.

    python benchmarks/search_efficiency.py [--spec search_spaces/mlp.yaml] [--seeds 3]
                                           [--trials N] [--steps N] [--keep DIR]
                                           [--arms tpe+asha random] [--start-seed N]
                                           [--analyse-only] [--replay GRACE:REDUCTION ...]

Both arms search the same space (default: the mlp space) with the same number of trials, 2 at a
time, once per seed: (a) the spec as written (TPE, ASHA), (b) searcher random, no scheduler. For
each run, the best final FID is followed against the CPU time spent so far (the CPU-seconds of
every trial finished by then). Prints, as medians over seeds: each arm's best final FID and CPU
time, and the CPU time TPE+ASHA needed to reach random search's final best (target <= 1/3 of
random's). The full default takes hours on 2 cores; --trials and --steps shrink it (say so when
recording the result). Each arm's summary.csv and its trials' evaluation curves are kept
(--keep), and --analyse-only prints the comparison again from them without running anything.

The curves of random search's trials (all run to the end) also let the spec's ASHA be replayed
on them: which of those trials it would have stopped, at what CPU cost, and whether it would have
kept the winner. That separates what early stopping does from what TPE does.
"""

from __future__ import annotations

import argparse
import heapq
import math
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import ray
import yaml
from ray.tune.schedulers import ASHAScheduler

from gan.fileio import read_jsonl
from study.run import run_study
from study.spec import Asha, load_spec, parse_spec
from study.state import Placement
from study.tracking import default_tracking_uri


def arm_spec(spec_path: Path, seed: int, arm: str, trials: int | None, steps: int | None):
    data = load_spec(spec_path).model_dump()
    data.update(seed=seed, confirm=None, name=f"{data['name']}-{arm.replace('+', '-')}-{seed}")
    if trials:  # TPE's random start-up keeps its share of the trials, as ASHA's grace below
        if data["searcher"]["type"] == "tpe":
            data["searcher"]["startup_trials"] = max(1, round(
                data["searcher"]["startup_trials"] * trials / data["budget"]["trials"]))
        data["budget"]["trials"] = trials
    if steps:
        scale = steps / data["budget"]["steps"]
        every = max(1, round(data["budget"]["eval_every"] * scale))
        data["budget"].update(steps=steps, eval_every=every, time_limit_s=None)
        if data["scheduler"]["type"] == "asha":  # the same fraction of the budget, on an eval
            grace = data["scheduler"]["grace_period"] * scale
            data["scheduler"]["grace_period"] = max(every, round(grace / every) * every)
    if arm == "random":
        data.update(searcher="random", scheduler={"type": "none"})
    return parse_spec(data, f"{spec_path} ({arm}, seed {seed})")


def best_against_cpu(rows: pd.DataFrame, cpu_per_trial: float) -> pd.DataFrame:
    """Best final FID so far against CPU-seconds spent, trial by trial in order of finishing."""
    rows = rows.sort_values("ended_at")
    cpu = (rows["wall_s"].fillna(0) * cpu_per_trial).cumsum()
    # a pruned trial has no final value: the best so far carries over it
    best = rows["fid"].where(rows["status"] == "completed").cummin().ffill()
    return pd.DataFrame({"cpu_s": cpu.to_numpy(), "best_fid": best.to_numpy()})


def best_within(curve: pd.DataFrame, cpu_s: float) -> float:
    done = curve[curve["cpu_s"] <= cpu_s]["best_fid"].dropna()
    return float(done.iloc[-1]) if len(done) else math.nan


def cpu_to_reach(curve: pd.DataFrame, target: float) -> float:
    reached = curve[curve["best_fid"] <= target]
    return float(reached["cpu_s"].iloc[0]) if len(reached) else math.inf


def replay_asha(rows: pd.DataFrame, curves: pd.DataFrame, spec, workers: int) -> pd.DataFrame:
    """Random search's trials (run to the end) as they would have gone under the spec's ASHA:
    `workers` at a time in their original order, each evaluation reaching the rungs at its share
    of the trial's wall time; the baseline is never stopped, as in the study."""
    asha = ASHAScheduler(time_attr="step", metric=spec.metric, mode=spec.direction,
                         max_t=spec.budget.steps, grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor)
    sign = -1.0 if spec.direction == "min" else 1.0
    steps = spec.budget.steps
    queue = list(rows.sort_values("started_at").itertuples())
    evals = {t: c.sort_values("step")[["step", spec.metric]].to_numpy()
             for t, c in curves.groupby("trial_id")}
    events: list[tuple[float, int, str]] = []  # (time, evaluation index, trial id)
    started, out, clock = {}, [], 0.0

    def start(now: float) -> None:
        if queue:
            trial = queue.pop(0)
            started[trial.trial_id] = (now, trial)
            heapq.heappush(events, (now + evals[trial.trial_id][0][0] / steps * trial.wall_s,
                                    0, trial.trial_id))

    for _ in range(workers):
        start(0.0)
    while events:
        clock, k, trial_id = heapq.heappop(events)
        begun, trial = started[trial_id]
        step, value = evals[trial_id][k]
        decision = asha._brackets[0].on_result(SimpleNamespace(trial_id=trial_id), int(step),
                                               sign * value)
        stop = decision == ASHAScheduler.STOP and not trial.baseline and step < steps
        if stop or k + 1 == len(evals[trial_id]):
            end = clock if stop else begun + trial.wall_s
            out.append({"trial_id": trial_id, "ended_at": end, "wall_s": end - begun,
                        "status": "pruned" if stop else "completed",
                        "fid": math.nan if stop else trial.fid})
            start(end)
        else:
            heapq.heappush(events, (begun + evals[trial_id][k + 1][0] / steps * trial.wall_s,
                                    k + 1, trial_id))
    return pd.DataFrame(out)


def trial_curves(study_dir: Path, trial_ids: pd.Series) -> pd.DataFrame:
    """Every evaluation of every trial, from the trainer's own metrics.jsonl."""
    records = [{"trial_id": trial_id, "step": record["step"], "fid": record["fid"]}
               for trial_id in trial_ids
               for record in read_jsonl(study_dir / "trials" / trial_id / "metrics.jsonl")
               if "fid" in record]
    return pd.DataFrame(records, columns=["trial_id", "step", "fid"])


ARMS = ("tpe+asha", "random")


def run_arms(args: argparse.Namespace) -> None:
    """Every arm once per seed; each study's summary.csv kept as <keep>/<arm>-<seed>.csv."""
    args.keep.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.start_seed, args.seeds):
            for arm in args.arms:
                spec = arm_spec(args.spec, seed, arm, args.trials, args.steps)
                study_dir = Path(tmp) / spec.name
                place = Placement(study_dir, default_tracking_uri(study_dir),
                                  str(study_dir / "ray"), None)
                spec_text = yaml.safe_dump(spec.model_dump(), sort_keys=False)
                out = run_study(spec, place, spec_text)
                out["rows"].to_csv(args.keep / f"{arm}-{seed}.csv", index=False)
                trial_curves(study_dir, out["rows"]["trial_id"]).to_csv(
                    args.keep / f"{arm}-{seed}-curves.csv", index=False)
    ray.shutdown()


def analyse(keep: Path, seeds: int, spec) -> None:
    cpu_per_trial = spec.resources.cpu
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        curves = {arm: best_against_cpu(pd.read_csv(keep / f"{arm}-{seed}.csv"), cpu_per_trial)
                  for arm in ARMS}
        target = curves["random"]["best_fid"].iloc[-1]
        budget = curves["tpe+asha"]["cpu_s"].iloc[-1]
        for arm, curve in curves.items():
            results[arm].append({"best_fid": curve["best_fid"].iloc[-1],
                                 "cpu_s": curve["cpu_s"].iloc[-1],
                                 "to_random_best": cpu_to_reach(curve, target),
                                 "within_tpe_cpu": best_within(curve, budget)})
        print(f"seed {seed}: " + "; ".join(
            f"{arm} best fid {r[-1]['best_fid']:.3f} in {r[-1]['cpu_s']:.0f} CPU-s"
            for arm, r in results.items())
            + f"; tpe+asha reached random's best after "
              f"{results['tpe+asha'][-1]['to_random_best']:.0f} CPU-s "
              f"({results['tpe+asha'][-1]['to_random_best'] / results['random'][-1]['cpu_s']:.3f}"
              f" of random's); random's best within "
              f"tpe+asha's CPU: {results['random'][-1]['within_tpe_cpu']:.3f}")

    def median(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in results[arm])

    print(f"{'arm':10} {'best final fid':>15} {'CPU-s':>9}   (medians over {seeds} seeds)")
    for arm in ARMS:
        print(f"{arm:10} {median(arm, 'best_fid'):15.3f} {median(arm, 'cpu_s'):9.0f}")
    reach, random_cpu = median("tpe+asha", "to_random_best"), median("random", "cpu_s")
    own = statistics.median(t["to_random_best"] / r["cpu_s"]
                            for t, r in zip(results["tpe+asha"], results["random"], strict=True))
    print(f"CPU time TPE+ASHA needed to reach random search's final best: {reach:.0f} s = "
          f"{reach / random_cpu:.3f} of random's {random_cpu:.0f} s; median of the seeds' own "
          f"ratios {own:.3f} (target <= 1/3)")
    print(f"at equal CPU (TPE+ASHA's whole run): best final fid "
          f"{median('tpe+asha', 'best_fid'):.3f} (tpe+asha) against "
          f"{median('random', 'within_tpe_cpu'):.3f} (random)")


def analyse_asha(keep: Path, seeds: int, spec, settings: list[tuple[int, float]]) -> None:
    """Each ASHA setting replayed on random search's trials, seed by seed, against random."""
    for grace, factor in settings:
        asha = spec.scheduler.model_copy(update={"grace_period": grace,
                                                 "reduction_factor": factor})
        variant = spec.model_copy(update={"scheduler": asha})
        replays = []
        for seed in range(seeds):
            rows = pd.read_csv(keep / f"random-{seed}.csv")
            random = best_against_cpu(rows, spec.resources.cpu)
            replayed = replay_asha(rows, pd.read_csv(keep / f"random-{seed}-curves.csv"),
                                   variant, workers=2)
            curve = best_against_cpu(replayed, spec.resources.cpu)
            best = random["best_fid"].iloc[-1]
            replays.append({"best_fid": curve["best_fid"].iloc[-1],
                            "share": curve["cpu_s"].iloc[-1] / random["cpu_s"].iloc[-1],
                            "reach": cpu_to_reach(curve, best) / random["cpu_s"].iloc[-1],
                            "stopped": int((replayed["status"] == "pruned").sum())})
        print(f"ASHA grace {grace:>5} reduction {factor:g} on random's trials: " + "; ".join(
            f"seed {seed} best {r['best_fid']:.2f}, {r['stopped']} stopped, CPU {r['share']:.2f}"
            f", reach {r['reach']:.2f}" for seed, r in enumerate(replays))
            + f" | medians: CPU {statistics.median(r['share'] for r in replays):.2f}, reach "
              f"{statistics.median(r['reach'] for r in replays):.2f} of random's")


def asha_setting(text: str) -> tuple[int, float]:
    grace, _, factor = text.partition(":")
    return int(grace), float(factor or 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("search_spaces/mlp.yaml"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, help="override budget.trials")
    parser.add_argument("--steps", type=int, help="override budget.steps (eval scaled with it)")
    parser.add_argument("--keep", type=Path, default=Path("benchmarks/search_efficiency_runs"),
                        help="where each arm's summary.csv is kept (default %(default)s)")
    parser.add_argument("--start-seed", type=int, default=0,
                        help="run seeds from this one on (the earlier ones' summaries are kept)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                        help="run only these arms (the others' kept summaries are analysed)")
    parser.add_argument("--replay", nargs="*", type=asha_setting, default=[],
                        metavar="GRACE:REDUCTION", help="ASHA settings to replay on random "
                        "search's trials beside the spec's (in generator updates, e.g. 400:3)")
    parser.add_argument("--analyse-only", action="store_true",
                        help="only analyse the summaries kept by an earlier run")
    args = parser.parse_args()
    spec = arm_spec(args.spec, 0, "tpe+asha", args.trials, args.steps)
    if not args.analyse_only:
        run_arms(args)
    print(f"{args.spec}: {spec.budget.trials} trials x {spec.budget.steps} generator updates")
    analyse(args.keep, args.seeds, spec)
    if isinstance(spec.scheduler, Asha) and all(
            (args.keep / f"random-{seed}-curves.csv").exists() for seed in range(args.seeds)):
        analyse_asha(args.keep, args.seeds, spec, [
            (spec.scheduler.grace_period, spec.scheduler.reduction_factor), *args.replay])


if __name__ == "__main__":
    main()
