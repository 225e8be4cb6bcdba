"""Does the study's search pay? TPE + ASHA against random search without early stopping.

    python benchmarks/search_efficiency.py [--spec search_spaces/mlp.yaml] [--seeds 3]
                                           [--trials N] [--steps N] [--keep DIR]
                                           [--start-seed N] [--analyse-only]

Both arms search the same space (default: the mlp space) with the same number of trials, 2 at a
time, once per seed: (a) the spec as written (TPE, ASHA), (b) searcher random, no scheduler. For
each run, the best final FID is followed against the CPU time spent so far (the CPU-seconds of
every trial finished by then). Prints, as medians over seeds: each arm's best final FID and CPU
time, and the CPU time TPE+ASHA needed to reach random search's final best (target <= 1/3 of
random's). The full default takes hours on 2 cores; --trials and --steps shrink it (say so when
recording the result). Each arm's summary.csv is kept (--keep), and --analyse-only prints the
comparison again from them without running anything.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import pandas as pd
import ray
import yaml

from study.run import run_study
from study.spec import load_spec, parse_spec
from study.state import Placement
from study.tracking import default_tracking_uri


def arm_spec(spec_path: Path, seed: int, arm: str, trials: int | None, steps: int | None):
    data = load_spec(spec_path).model_dump()
    data.update(seed=seed, confirm=None, name=f"{data['name']}-{arm.replace('+', '-')}-{seed}")
    if trials:
        data["budget"]["trials"] = trials
    if steps:
        scale = steps / data["budget"]["steps"]
        data["budget"].update(steps=steps, eval_every=max(1, round(
            data["budget"]["eval_every"] * scale)), time_limit_s=None)
        if data["scheduler"]["type"] == "asha":
            data["scheduler"]["grace_period"] = data["budget"]["eval_every"]
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


ARMS = ("tpe+asha", "random")


def run_arms(args: argparse.Namespace) -> None:
    """Every arm once per seed; each study's summary.csv kept as <keep>/<arm>-<seed>.csv."""
    args.keep.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.start_seed, args.seeds):
            for arm in ARMS:
                spec = arm_spec(args.spec, seed, arm, args.trials, args.steps)
                study_dir = Path(tmp) / spec.name
                place = Placement(study_dir, default_tracking_uri(study_dir),
                                  str(study_dir / "ray"), None)
                spec_text = yaml.safe_dump(spec.model_dump(), sort_keys=False)
                out = run_study(spec, place, spec_text)
                out["rows"].to_csv(args.keep / f"{arm}-{seed}.csv", index=False)
    ray.shutdown()


def analyse(keep: Path, seeds: int, cpu_per_trial: float) -> None:
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
              f"{results['tpe+asha'][-1]['to_random_best']:.0f} CPU-s; random's best within "
              f"tpe+asha's CPU: {results['random'][-1]['within_tpe_cpu']:.3f}")

    def median(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in results[arm])

    print(f"{'arm':10} {'best final fid':>15} {'CPU-s':>9}   (medians over {seeds} seeds)")
    for arm in ARMS:
        print(f"{arm:10} {median(arm, 'best_fid'):15.3f} {median(arm, 'cpu_s'):9.0f}")
    reach, random_cpu = median("tpe+asha", "to_random_best"), median("random", "cpu_s")
    print(f"CPU time TPE+ASHA needed to reach random search's final best: {reach:.0f} s = "
          f"{reach / random_cpu:.2f} of random's {random_cpu:.0f} s (target <= 0.33)")
    print(f"at equal CPU (TPE+ASHA's whole run): best final fid "
          f"{median('tpe+asha', 'best_fid'):.3f} (tpe+asha) against "
          f"{median('random', 'within_tpe_cpu'):.3f} (random)")


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
    parser.add_argument("--analyse-only", action="store_true",
                        help="only analyse the summaries kept by an earlier run")
    args = parser.parse_args()
    spec = arm_spec(args.spec, 0, "tpe+asha", args.trials, args.steps)
    if not args.analyse_only:
        run_arms(args)
    print(f"{args.spec}: {spec.budget.trials} trials x {spec.budget.steps} generator updates")
    analyse(args.keep, args.seeds, spec.resources.cpu)


if __name__ == "__main__":
    main()
