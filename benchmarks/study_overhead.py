"""What the study machinery costs: the same trials in a plain loop and through the study.

    python benchmarks/study_overhead.py [--trials 4] [--steps 800] [--width 16]

One fixed set of trials (DCGAN on 32 px MNIST, one torch thread each, learning rates varied so
they differ) runs (a) one after another in a plain loop of `gan.train.train`, then (b) through the
study's own Tune run (`study.phases.Phases.fit`: the trainable, 2 trials at a time, checkpoints
reported to Tune, MLflow tracking from the driver). Both make the same generator updates and
evaluations. Prints aggregate images/s of both, their ratio (target >= 1.8 on 2 cores) and the
orchestration overhead: the study's wall time over the ideal (the plain loop's time / 2), minus 1
(target <= 10%). Each trial should take at least 2 minutes alone (the default does, here).

A third arm, (c) the same trials in two plain processes at once without Ray, separates what the
machine costs (two trainers sharing its cores, caches and memory bandwidth) from what Ray and the
study cost: (c) over (a) is the most 2 trials at a time can give here, (b) over (c) is the
study's own share.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ray
from ray.tune.search import BasicVariantGenerator

from gan.config import make_config
from gan.train import train
from study.phases import Phases
from study.space import baseline_params
from study.spec import parse_spec, trial_values
from study.state import Placement, StudyState
from study.tracking import StudyTracker, default_tracking_uri

LEARNING_RATES = (1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3, 3.2e-3)


def bench_spec(trials: int, steps: int, width: int):
    return parse_spec({
        "name": "overhead", "seed": 0,
        "budget": {"trials": trials, "steps": steps, "eval_every": steps},
        "resources": {"cpu": 1}, "max_concurrent": 2,
        "fixed": {"arch": "dcgan", "image_size": 32, "width": width, "batch_size": 64,
                  "eval_n": 1000, "final_n": 2000},
        "space": {"lr_g": {"type": "categorical", "choices": list(LEARNING_RATES)}},
    }, "benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    spec = bench_spec(args.trials, args.steps, args.width)
    points = [{"lr_g": LEARNING_RATES[i % len(LEARNING_RATES)]} for i in range(args.trials)]
    images = args.trials * args.steps * 64

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for i, point in enumerate(points):
            train_point(spec, point, Path(tmp) / f"plain-{i}")
        plain_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=spawn) as pool:
            list(pool.map(train_point, [spec] * len(points), points,
                          [Path(tmp) / f"pair-{i}" for i in range(len(points))]))
        pair_s = time.perf_counter() - t0

        study_dir = Path(tmp) / "study"
        study_dir.mkdir()
        (study_dir / "spec.yaml").write_text("benchmark\n")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        place = Placement(study_dir, default_tracking_uri(study_dir), str(study_dir / "ray"), None)
        baseline = baseline_params(spec)
        tracker = StudyTracker(spec, study_dir, place.tracking_uri, baseline)
        phases = Phases(spec, place, StudyState(place), tracker, baseline)
        t0 = time.perf_counter()
        search = BasicVariantGenerator(points_to_evaluate=points, max_concurrent=2)
        results = phases.fit("overhead", len(points), search, None, None,
                             param_space={"lr_g": None})
        study_s = time.perf_counter() - t0
        ray.shutdown()
        errors = [r.error for r in results if r.error]
        assert not errors, errors

    plain_rate, pair_rate, study_rate = images / plain_s, images / pair_s, images / study_s
    overhead = study_s / (plain_s / 2) - 1
    print(f"{args.trials} trials x {args.steps} generator updates (dcgan width {args.width}, "
          f"batch 64, 1 thread each)")
    print(f"(a) plain loop, one after another:  {plain_s:7.1f} s  {plain_rate:7.1f} img/s")
    print(f"(c) two plain processes, no Ray:    {pair_s:7.1f} s  {pair_rate:7.1f} img/s")
    print(f"(b) study, 2 trials at a time:      {study_s:7.1f} s  {study_rate:7.1f} img/s")
    print(f"ratio (b)/(a) {study_rate / plain_rate:.2f} (target >= 1.8); orchestration overhead "
          f"{overhead:.1%} (target <= 10%)")
    print(f"of which the machine: (c)/(a) {pair_rate / plain_rate:.2f}; the study itself: "
          f"(b)/(c) {study_rate / pair_rate:.2f}")


def train_point(spec, point: dict, out_dir: Path) -> None:
    train(make_config(trial_values(spec, point, threads=1)), out_dir)


if __name__ == "__main__":
    main()
