"""The driver at the scale of a GPU farm, on a simulated cluster: what it absorbs and what it holds.

    python benchmarks/cluster_scale.py [--trials 100 300 1000] [--concurrent 48]
        [--interval 0.9] [--reports 6] [--checkpoint-mb 1] [--mlflow sqlite server]
        [--trace-memory]

A ray.cluster_utils.Cluster of 4 nodes with 8 fake GPUs each runs the study's own machinery
(study.run.run_study: spec, FinalResultSearch on Optuna's SQLite storage with TPE, StudyASHA,
the MLflow callback and its writer thread, summary.csv, then study.report.build_report) with one
change: `load_trainable` stands in for run_trial. It trains nothing; it reports what a trial
reports, at a fixed rate: every metric of an evaluation, a 64-image sample grid (PNG bytes, as
run_trial sends), a checkpoint of --checkpoint-mb through Ray's storage, and a last report whose
checkpoint holds a real generator (best.pt) and the MLflow model a trial saves of it, which the
driver logs to MLflow as it does a trained one's. Each trial asks for gpu 1/8 (a GPU farm packs
small GANs), so --concurrent trials run at once; the offered load is concurrent / interval
results per second.

Printed per scale and MLflow store: results per second the driver absorbed (from its first
result to its last), how long a result took from the trial's tune.report to the driver's
callback (p50/p99: a driver that keeps up delivers at once), the driver's CPU time per result
(and of it, the MLflow writes' and Optuna's) and its share of the wall time, the share of the
wall time Tune's loop sat waiting for the trials' next results (idle), the time Tune's loop
spent in the tracking callback per result (p50/p99) and in the searcher's calls to Optuna's
storage, the MLflow writes (each write's own time, and how long after its event it was done),
Tune's snapshots of the experiment (how many, their time, and of it the wait for MLflow's
writes), the driver's peak memory and its growth per 100 trials after the first quarter of the
results (each scale runs in the same process, so peaks include what earlier scales left), and
the report's build time.
Targets: >= 50 results/s absorbed, p99 hold <= 50 ms, report for 1000 trials <= 5 min, driver
memory flat in the number of trials.
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import tempfile
import threading
import time
import tracemalloc
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import ray
import yaml
from PIL import Image
from ray.cluster_utils import Cluster
from ray.tune.execution.tune_controller import TuneController

import study.callbacks
import study.trainable
import study.tune_extensions
import study.writer
from gan.checkpoint import BEST_FILE, save_checkpoint
from gan.config import make_config
from gan.models import build_generator
from study.generator_model import MODEL_DIR, save_generator_model
from study.image_series import SampleGrid
from study.report import build_report
from study.reported import PERTURBATIONS, SAMPLE_GRID, SAMPLE_PREVIEW
from study.run import run_study
from study.space import baseline_params
from study.spec import parse_spec, trial_values
from study.state import Placement
from study.tracking import default_tracking_uri
from study.ui import mlflow_server
from study.writer import percentiles_ms

NODES, GPUS_PER_NODE = 4, 8


def scale_spec(name: str, trials: int, concurrent: int, reports: int) -> dict[str, Any]:
    return {"name": name, "seed": 0, "dataset": "mnist",
            "budget": {"trials": trials, "steps": reports * 10, "eval_every": 10},
            "searcher": {"type": "tpe", "startup_trials": 10},
            "scheduler": {"type": "asha", "grace_period": 20, "reduction_factor": 2},
            "resources": {"cpu": 0.01, "gpu": 1 / GPUS_PER_NODE}, "max_concurrent": concurrent,
            "fixed": {"arch": "mlp", "image_size": 28, "width": 8, "batch_size": 32},
            "space": {"lr_g": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
                      "lr_d": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
                      "loss": {"type": "categorical", "choices": ["ns", "hinge", "lsgan"]}}}


def sample_grid_png() -> bytes:
    """An 8 x 8 grid of 28 px noise: the size of a real MNIST grid's PNG, about."""
    rng = np.random.default_rng(0)
    digits = (rng.random((8 * 30, 8 * 30)) > 0.8).astype(np.uint8) * 255
    out = io.BytesIO()
    Image.fromarray(digits).save(out, format="PNG")
    return out.getvalue()


def make_load_trainable(grid: SampleGrid, best: dict[str, bytes], checkpoint_mb: float,
                        interval: float, metrics: dict[str, float]):
    """The stand-in for run_trial, with what it reports baked in (pickled with it)."""

    def load_trainable(config: dict[str, Any], spec, trials_dir: str,
                       cpu: float | None = None) -> None:
        import math
        import os
        import time
        from pathlib import Path

        from ray import tune

        trial_id = tune.get_context().get_trial_id()
        folder = Path(trials_dir) / trial_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint.pt").write_bytes(os.urandom(int(checkpoint_mb * 2**20)))
        for name, data in best.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        # a score with a shape TPE can learn: best near lr_g 1e-3, lr_d 1e-3
        quality = (math.log10(config["lr_g"]) + 3) ** 2 + (math.log10(config["lr_d"]) + 3) ** 2
        started = time.time()
        steps, every = spec.budget.steps, spec.budget.eval_every
        for step in range(every, steps + 1, every):
            time.sleep(interval)
            fid = 1 + quality + 20 / step
            tune.report({**metrics, "fid": fid, "step": step, "images": step * 32,
                         "train_s": time.time() - started, "g_params": 1000.0,
                         SAMPLE_GRID: grid.png, SAMPLE_PREVIEW: grid.preview,
                         PERTURBATIONS: "", "final": False,
                         "status": "running", "started_at": started,
                         "reported_at": time.time()},
                        checkpoint=tune.Checkpoint.from_directory(str(folder)))
        tune.report({**metrics, "fid": fid, "fid_floor": 0.07, "best_step": steps,
                     "step": steps, "images": steps * 32, "train_s": time.time() - started,
                     "g_params": 1000.0, PERTURBATIONS: "", "final": True,
                     "status": "completed", "started_at": started, "reported_at": time.time()},
                    checkpoint=tune.Checkpoint.from_directory(str(folder)))

    return load_trainable


class Probe:
    """What the driver did, gathered by wrapping the study's own callback and searcher."""

    def __init__(self) -> None:
        self.results: list[float] = []  # when each result reached the tracking callback
        self.delivery: list[float] = []  # from the trial's tune.report to the callback, each
        self.held: list[float] = []
        self.snapshots: list[float] = []
        self.writes: list[float] = []
        self.lags: list[float] = []
        self.optuna: list[float] = []
        self.idle_s = 0.0  # Tune's loop waiting in ray.wait for the trials' next results
        self.writer_cpu_s = self.optuna_cpu_s = 0.0  # CPU time of the writes, of Optuna's calls
        self.snapshots_s: list[float] = []  # each snapshot Tune made, our wait included
        self.peak_rss_mb = 0.0
        self.rss: list[tuple[int, float]] = []  # (results absorbed so far, resident MB)

    def install(self) -> None:
        callback, searcher = study.callbacks.MlflowCallback, study.tune_extensions.FinalResultSearch
        on_result, on_end = callback.on_trial_result, callback.on_experiment_end
        probe = self

        def counted(self, iteration: int, trials: list, trial, result: dict,
                    **info: Any) -> None:
            probe.results.append(time.perf_counter())
            probe.delivery.append(time.time() - result["reported_at"])
            on_result(self, iteration, trials, trial, result, **info)

        def ended(self, trials: list, **info: Any) -> None:
            lanes = [lane for lane in (self._writer, self._exporter) if lane is not None]
            on_end(self, trials, **info)
            probe.held += self.held_s.get("on_trial_result", [])
            probe.snapshots += self.held_s.get("snapshot", [])
            for lane in lanes:
                probe.writes += lane.busy_s
                probe.lags += lane.latency_s

        callback.on_trial_result, callback.on_experiment_end = counted, ended
        ray.wait = self._idle(RAY_WAIT)

        def submit(writer, label: str, job, *args: Any) -> int:
            def cpu_timed(*job_args: Any) -> None:
                t0 = time.thread_time()
                try:
                    job(*job_args)
                finally:
                    probe.writer_cpu_s += time.thread_time() - t0
            return SUBMIT(writer, label, cpu_timed, *args)

        study.writer.Writer.submit = submit

        def save_to_dir(controller, *args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            try:
                SAVE_TO_DIR(controller, *args, **kwargs)
            finally:
                probe.snapshots_s.append(time.perf_counter() - t0)

        TuneController.save_to_dir = save_to_dir
        for name in ("suggest", "on_trial_result", "on_trial_complete"):
            setattr(searcher, name, self._timed(getattr(searcher, name)))

    def _idle(self, wait):
        def call(*args: Any, **kwargs: Any):
            if threading.current_thread() is not threading.main_thread():
                return wait(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return wait(*args, **kwargs)
            finally:
                self.idle_s += time.perf_counter() - t0
        return call

    def _timed(self, method):
        def call(searcher, *args: Any, **kwargs: Any):
            t0, cpu0 = time.perf_counter(), time.thread_time()
            try:
                return method(searcher, *args, **kwargs)
            finally:
                self.optuna.append(time.perf_counter() - t0)
                self.optuna_cpu_s += time.thread_time() - cpu0
        return call

    def watch_memory(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            rss = rss_mb()
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            self.rss.append((len(self.results), rss))

    def rss_growth_mb(self, trials: int, end_mb: float) -> tuple[float, float]:
        """Resident MB once a quarter of the results were absorbed, and the growth from there
        to the study's end per 100 trials: a driver whose memory is flat in the trials grows ~0."""
        total = len(self.results)
        quarter = next((mb for n, mb in self.rss if n >= total / 4), float("nan"))
        return quarter, (end_mb - quarter) / (0.75 * trials / 100)


def print_held_memory(snapshot: tracemalloc.Snapshot, trials: int) -> None:
    """What the driver's Python heap still holds at the study's end of what it allocated during
    the study, by the package whose code allocated it."""
    held: dict[str, int] = {}
    for stat in snapshot.statistics("filename"):
        path = stat.traceback[0].filename
        parts = path.split("site-packages/")[-1].split("/") if "site-packages/" in path else (
            ["study" if "/study/" in path else "python" if "/lib/python" in path else path])
        held[parts[0]] = held.get(parts[0], 0) + stat.size
    top = sorted(held.items(), key=lambda kv: -kv[1])[:10]
    print(f"held at the end of {trials} trials (allocated during the study): " + ", ".join(
        f"{name} {size / 2**20:.1f} MB" for name, size in top), flush=True)


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def best_checkpoint(spec_data: dict[str, Any]) -> dict[str, bytes]:
    """A real generator checkpoint of the spec's baseline and the MLflow model a trial saves
    of it (what the driver logs to MLflow): file bytes by path in a completed trial's last
    checkpoint."""
    spec = parse_spec(spec_data, "benchmark")
    cfg = make_config(trial_values(spec, baseline_params(spec)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / BEST_FILE
        save_checkpoint(path, {"config": cfg.model_dump(), "step": spec.budget.steps,
                               "generator": build_generator(cfg).state_dict(),
                               "metrics": {"fid": 1.0}})
        save_generator_model(path, Path(tmp) / MODEL_DIR)
        return {str(p.relative_to(tmp)): p.read_bytes()
                for p in Path(tmp).rglob("*") if p.is_file()}


def driver_cpu_s() -> float:
    """CPU seconds of this process so far (Tune's loop, the writer, Optuna): with a core of
    its own, the driver could absorb about results / CPU seconds per second."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_scale(trials: int, store: str, args: argparse.Namespace, root: Path,
              address: str) -> dict[str, float]:
    name = f"scale-{trials}-{store}"
    spec_data = scale_spec(name, trials, args.concurrent, args.reports)
    spec = parse_spec(spec_data, "benchmark")
    metrics = {k: 0.5 for k in ("loss_d", "loss_g", "d_real", "d_fake", "acc_real", "acc_fake",
                                "img_per_s", "kid", "precision", "recall", "density",
                                "coverage", "modes", "mode_kl", "classifier_score")}
    study.trainable.run_trial = make_load_trainable(
        SampleGrid.from_png(sample_grid_png()), best_checkpoint(spec_data), args.checkpoint_mb,
        args.interval, metrics)
    study_dir = root / name
    study_dir.mkdir(parents=True)
    probe = Probe()
    probe.install()
    stop = threading.Event()
    threading.Thread(target=probe.watch_memory, args=(stop,), daemon=True).start()
    uri = default_tracking_uri(study_dir)
    try:
        with (mlflow_server(uri, root / f"{name}-artifacts", root / f"{name}-server.log")
              if store == "server" else nullcontext(uri)) as tracking:
            place = Placement(study_dir, tracking, str(study_dir / "ray"), address,
                              str(root / "scratch"))
            if args.trace_memory:
                tracemalloc.start()
            t0, cpu0 = time.perf_counter(), driver_cpu_s()
            out = run_study(spec, place, yaml.safe_dump(spec_data), "benchmark")
            study_s, study_cpu_s = time.perf_counter() - t0, driver_cpu_s() - cpu0
            study_end_mb = rss_mb()
            if args.trace_memory:
                print_held_memory(tracemalloc.take_snapshot(), trials)
                tracemalloc.stop()
            t0 = time.perf_counter()
            build_report([name], tracking, root / "reports")
            report_s = time.perf_counter() - t0
    finally:
        stop.set()
        study.callbacks.MlflowCallback.on_trial_result = ON_RESULT
        study.callbacks.MlflowCallback.on_experiment_end = ON_END
        ray.wait = RAY_WAIT
        study.writer.Writer.submit = SUBMIT
        TuneController.save_to_dir = SAVE_TO_DIR
        for key, method in SEARCHER.items():
            setattr(study.tune_extensions.FinalResultSearch, key, method)
    span = probe.results[-1] - probe.results[0] if len(probe.results) > 1 else float("nan")
    held, optuna = percentiles_ms(probe.held), percentiles_ms(probe.optuna)
    writes, lags = percentiles_ms(probe.writes), percentiles_ms(probe.lags)
    delivery = percentiles_ms(probe.delivery)
    rss_quarter_mb, rss_mb_per_100 = probe.rss_growth_mb(trials, study_end_mb)
    return {"trials": trials, "completed": int((out["rows"]["status"] == "completed").sum()),
            "results": len(probe.results), "results_per_s": len(probe.results) / span,
            "offered_per_s": args.concurrent / args.interval,
            "delivery_p50_ms": delivery["p50_ms"], "delivery_p99_ms": delivery["p99_ms"],
            "driver_cpu_ms_per_result": 1000 * study_cpu_s / max(1, len(probe.results)),
            "writer_cpu_ms_per_result": 1000 * probe.writer_cpu_s / max(1, len(probe.results)),
            "optuna_cpu_ms_per_result": 1000 * probe.optuna_cpu_s / max(1, len(probe.results)),
            "driver_cpu_share": study_cpu_s / study_s, "loop_idle_share": probe.idle_s / study_s,
            "hold_p50_ms": held["p50_ms"], "hold_p99_ms": held["p99_ms"],
            "snapshots": len(probe.snapshots_s), "snapshots_s": sum(probe.snapshots_s),
            "snapshot_p99_ms": percentiles_ms(probe.snapshots_s)["p99_ms"],
            "snapshot_wait_s": sum(probe.snapshots), "optuna_p50_ms": optuna["p50_ms"],
            "optuna_p99_ms": optuna["p99_ms"], "write_p50_ms": writes["p50_ms"],
            "write_p99_ms": writes["p99_ms"], "write_lag_p99_ms": lags["p99_ms"],
            "writes_total_s": sum(probe.writes), "optuna_total_s": sum(probe.optuna),
            "peak_rss_mb": probe.peak_rss_mb, "rss_quarter_mb": rss_quarter_mb,
            "rss_mb_per_100_trials": rss_mb_per_100,
            "study_s": study_s, "report_s": report_s}


ON_RESULT = study.callbacks.MlflowCallback.on_trial_result
ON_END = study.callbacks.MlflowCallback.on_experiment_end
RAY_WAIT = ray.wait
SUBMIT = study.writer.Writer.submit
SAVE_TO_DIR = TuneController.save_to_dir
SEARCHER = {k: getattr(study.tune_extensions.FinalResultSearch, k)
            for k in ("suggest", "on_trial_result", "on_trial_complete")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--concurrent", type=int, default=48)
    parser.add_argument("--interval", type=float, default=0.9, help="seconds between reports")
    parser.add_argument("--reports", type=int, default=6, help="evaluations per full trial")
    parser.add_argument("--checkpoint-mb", type=float, default=1.0)
    parser.add_argument("--mlflow", nargs="+", default=["sqlite", "server"],
                        choices=["sqlite", "server"])
    parser.add_argument("--trace-memory", action="store_true",
                        help="print what the study's allocations still hold, by package (slower)")
    args = parser.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 16, "num_gpus": GPUS_PER_NODE})
    for _ in range(NODES - 1):
        cluster.add_node(num_cpus=16, num_gpus=GPUS_PER_NODE)
    cluster.wait_for_nodes()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for store in args.mlflow:
                for trials in args.trials:
                    row = run_scale(trials, store, args, Path(tmp), cluster.address)
                    rows.append({"mlflow": store, **row})
                    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in rows[-1].items()), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"\n{NODES} nodes x {GPUS_PER_NODE} fake GPUs, {args.concurrent} trials at once, a "
          f"report every {args.interval} s each (offered {args.concurrent / args.interval:.1f} "
          f"results/s), {args.reports} evaluations per full trial, {args.checkpoint_mb} MB "
          f"checkpoints; driver max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    header = ("mlflow", "trials", "results_per_s", "delivery_p50_ms", "delivery_p99_ms",
              "driver_cpu_ms_per_result", "writer_cpu_ms_per_result",
              "optuna_cpu_ms_per_result", "driver_cpu_share", "loop_idle_share",
              "hold_p50_ms", "hold_p99_ms",
              "optuna_p50_ms", "optuna_p99_ms", "write_p50_ms", "write_p99_ms",
              "write_lag_p99_ms", "snapshots", "snapshots_s", "snapshot_p99_ms",
              "snapshot_wait_s", "peak_rss_mb", "rss_quarter_mb", "rss_mb_per_100_trials",
              "study_s", "report_s")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k])
                         for k in header))
    print(f"median hold p99 {statistics.median(r['hold_p99_ms'] for r in rows):.2f} ms "
          "(target <= 50); results/s target >= 50; report for 1000 trials target <= 300 s")


if __name__ == "__main__":
    main()
