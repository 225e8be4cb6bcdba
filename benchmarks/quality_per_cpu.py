"""Generator quality per CPU-second: the seeds' default DCGAN, the default study's product, and the
best single trick alone (an EMA of G on the default), each trained for the same CPU time.

    python benchmarks/quality_per_cpu.py --study runs/dcgan [--cpu-seconds 600] [--out DIR]

Each arm trains on one thread for `--cpu-seconds` seconds of training (`unit: seconds`,
evaluation excluded), one after the other so that none slows another, evaluated 6 times with
eval_n samples and its best checkpoint re-scored with 10 000 samples beside the real-data floor.
The default arm is the baseline measured in the same run: the others print their FID as a
ratio to it and to the floor.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gan.config import load_config, make_config, read_yaml
from gan.train import train

# The seeds' default DCGAN: TrainConfig's reference values (pytorch/examples' DCGAN at 32 px).
DEFAULT = {"dataset": "mnist", "arch": "dcgan", "image_size": 32}
# What every arm shares: the clock, the thread, the evaluation.
SHARED = {"unit": "seconds", "threads": 1, "device": "cpu", "eval_n": 2000, "final_n": 10_000,
          "seed": 0}


def arms(study: Path) -> dict[str, dict]:
    product = load_config(study / "best_config.yaml").model_dump()
    return {"default": DEFAULT, "product": product, "ema": {**DEFAULT, "ema_decay": 0.999}}


def run_arm(values: dict, cpu_seconds: int, out: Path) -> dict:
    every = max(1, cpu_seconds // 6)
    cfg = make_config({**values, **SHARED, "steps": cpu_seconds, "eval_every": every,
                       "log_every": every, "sample_every": every, "checkpoint_every": every},
                      "arm")
    result = train(cfg, out)
    return {**result.final, "updates": result.records[-1]["step"],
            "train_s": result.records[-1]["train_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path("runs/dcgan"),
                        help="a finished study directory (its best_config.yaml is the product)")
    parser.add_argument("--cpu-seconds", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("runs/quality_per_cpu"))
    args = parser.parse_args()
    read_yaml(args.study / "best_config.yaml")  # a clear error before any training
    results = {}
    for name, values in arms(args.study).items():
        results[name] = run_arm(values, args.cpu_seconds, args.out / name)
        print(json.dumps({"arm": name, **results[name]}), flush=True)
    base = results["default"]["fid"]
    print(f"\n{args.cpu_seconds} CPU-seconds of training each, 1 thread; FID at 10 000 samples")
    print(f"{'arm':10s} {'updates':>8s} {'FID':>8s} {'floor':>7s} {'x floor':>8s} "
          f"{'x default':>9s} {'precision':>9s} {'recall':>7s}")
    for name, r in results.items():
        print(f"{name:10s} {r['updates']:8d} {r['fid']:8.3f} {r['fid_floor']:7.3f} "
              f"{r['fid'] / r['fid_floor']:8.1f} {r['fid'] / base:9.2f} {r['precision']:9.2f} "
              f"{r['recall']:7.2f}")


if __name__ == "__main__":
    main()
