"""Train one GAN: `python -m gan.train --out DIR [--config FILE.yaml] [--set key=value ...]`.

The loop below reads top to bottom. Its unit is the generator update (`step`): every `g_steps`
generator updates the discriminator first takes `d_steps` updates, so 1:1, 2:1 and 1:2 schedules
of the same `steps` all make the same number of generator updates.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gan.artifacts import plot_losses, save_grid, write_progress_gif
from gan.checkpoint import (
    BEST_FILE,
    checkpoint_config,
    load_checkpoint,
    load_generator,
    save_checkpoint,
)
from gan.config import TrainConfig, make_config, parse_overrides, read_yaml
from gan.data import ImageData, load_images
from gan.ema import EMA
from gan.errors import ConfigError, DatasetError, DivergedError, GanError, InjectedFault
from gan.fileio import atomic_write_text, read_jsonl, write_jsonl
from gan.latents import draw_latent
from gan.losses import LOSSES, penalties
from gan.metrics.evaluate import Evaluator
from gan.models import build_models
from gan.progress import Progress
from gan.schedules import lr_factor

# Fields a resumed run may change: they do not alter what is computed up to the checkpoint.
RESUMABLE_FIELDS = {"steps", "epochs", "threads", "device", "keep_checkpoints"}
# Adam's settings: a resumed run may change them (PBT's perturbations); nothing else about it.
OPTIMIZER_FIELDS = frozenset({"lr_g", "lr_d", "beta1", "beta2"})
SMOKE = {"steps": 20, "log_every": 5, "sample_every": 10, "checkpoint_every": 10,
         "batch_size": 32, "eval_every": 20, "eval_n": 200, "final_n": 500}
FIXED_SAMPLES = 64


def grid_path(out_dir: Path, step: int) -> Path:
    """The fixed-noise sample grid a run saved at `step`."""
    return out_dir / "samples" / f"step_{step:06d}.png"


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested, but torch sees no CUDA device")
    return torch.device(name)


def sample_latent(n: int, cfg: TrainConfig, device: torch.device | str,
                  generator: torch.Generator | None = None) -> Tensor:
    return draw_latent(cfg.latent_dist, n, cfg.latent_dim, device, generator)


@dataclass(frozen=True)
class TrainResult:
    records: list[dict]  # one per log step, as in metrics.jsonl
    final: dict | None  # the best checkpoint re-scored with final_n samples, floor beside it


class RunningMeans:
    """Means over a log window, summed on the device so only the log step waits for it."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def add(self, **values: Tensor) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        # A window without a D step (log_every < g_steps) repeats the last D statistics.
        self.last.update({k: (s / self.counts[k]).item() for k, s in self.sums.items()})
        self.sums, self.counts = {}, {}
        return dict(self.last)


def check_finite(step: int, **losses: Tensor) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value).item():
            raise DivergedError(step, name, value.item())


def prepare_out_dir(out_dir: Path, resume: bool, numbered_checkpoints: bool) -> None:
    if not resume and (out_dir / "config.json").exists():
        raise ConfigError(f"{out_dir}: already holds a run; pass --resume or choose another --out")
    try:
        (out_dir / "samples").mkdir(parents=True, exist_ok=True)
        if numbered_checkpoints:
            (out_dir / "checkpoints").mkdir(exist_ok=True)
    except OSError as err:
        reason = err.strerror
        raise ConfigError(f"{out_dir}: cannot create the output directory ({reason})") from None


def resume_state(cfg: TrainConfig, out_dir: Path, may_change: frozenset[str]) -> dict:
    """The checkpoint to resume from, checked against the config it will continue under."""
    state = load_checkpoint(out_dir / "checkpoint.pt")
    saved = checkpoint_config(state, out_dir / "checkpoint.pt")
    allowed = RESUMABLE_FIELDS | may_change
    changed = [k for k in TrainConfig.model_fields
               if k not in allowed and getattr(cfg, k) != getattr(saved, k)]
    if changed:
        raise ConfigError(f"{out_dir}: {changed[0]}: cannot change when resuming "
                          f"(checkpoint has {getattr(saved, changed[0])!r})")
    return state


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
          on_log: Callable[[dict], None] | None = None,
          may_change: frozenset[str] = frozenset()) -> TrainResult:
    """Train for `cfg.steps` in `cfg.unit`; `on_log` sees each record of metrics.jsonl.

    On resume, the fields in `may_change` (say OPTIMIZER_FIELDS) may differ from the
    checkpoint's, as when PBT continues a better trial's checkpoint with perturbed learning rates.
    """
    out_dir = Path(out_dir)
    # Everything that can fail on bad input happens before the first write into out_dir.
    state = resume_state(cfg, out_dir, may_change) if resume else None
    device = select_device(cfg.device)
    data = training_split(cfg).to(device)
    length = cfg.steps if cfg.epochs is None else epochs_to_updates(cfg, len(data))
    evaluator = None
    if cfg.eval_every:
        try:
            evaluator = Evaluator.of(cfg, device)
        except DatasetError as err:
            raise DatasetError(f"{err} (to train without scores, set eval_every: 0)") from None
    prepare_out_dir(out_dir, resume, cfg.keep_checkpoints)
    if cfg.epochs is not None:
        print(f"epochs {cfg.epochs:g} = {length:,} generator updates ({len(data):,} training "
              f"images, batch {cfg.batch_size}, {cfg.d_steps} D : {cfg.g_steps} G)",
              file=sys.stderr)
    save_real_grid(data, out_dir / "samples" / "real.png", cfg.seed)

    torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    G, D = (m.to(device) for m in build_models(cfg))
    if cfg.channels_last and device.type == "cuda" and cfg.arch == "dcgan":
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    objective, d_penalties = LOSSES[cfg.loss], penalties(cfg)
    real_label = 1.0 - cfg.label_smoothing
    use_amp = cfg.amp and device.type == "cuda"
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=use_amp)
    fixed_noise = sample_latent(FIXED_SAMPLES, cfg, device)
    B, start, best = cfg.batch_size, 0, {"fid": math.inf, "step": 0}

    records: list[dict] = []
    if state:
        start, fixed_noise, best = state["step"], state["fixed_noise"].to(device), state["best"]
        G.load_state_dict(state.get("generator_raw", state["generator"]))
        D.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        # Loading restores the saved learning rates and betas; the config's are the ones to use.
        for opt, lr in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, (cfg.beta1, cfg.beta2)
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        # Log lines written after the checkpoint are re-made by this run.
        records = [r for r in read_jsonl(out_dir / "metrics.jsonl") if r["step"] <= start]
    # The generator the run evaluates, samples and saves: G's weight average where there is one.
    ema = None
    if cfg.ema_decay:
        ema = EMA(G, cfg.ema_decay, B, lambda k, rng: sample_latent(k, cfg, device, rng),
                  cfg.seed, updates=start)
        if state:
            ema.load_state_dict(state["generator"])

    def product() -> torch.nn.Module:
        return ema.generator() if ema else G
    config_text = json.dumps(cfg.model_dump(mode="json"), indent=2)
    atomic_write_text(out_dir / "config.json", config_text + "\n")
    write_jsonl(out_dir / "metrics.jsonl", records)

    # Training time so far, evaluation excluded: the clock of a run measured in seconds.
    trained_s = float(state.get("trained_s", 0.0)) if state else 0.0

    def clock(updates: int) -> float:
        """How far the run is, in cfg.unit, after `updates` generator updates."""
        return {"updates": updates, "images": updates * B, "seconds": trained_s}[cfg.unit]

    means, progress = RunningMeans(), Progress(length, int(clock(start)))
    train_seconds, window_start = 0.0, start
    fake = None
    step, before = start, clock(start)
    while before < length:
        t0 = time.perf_counter()
        scale = lr_factor(cfg.lr_schedule, before, length)
        for opt, lr in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale
        # ------------- Discriminator: d_steps updates, once every g_steps steps -------------
        if step % cfg.g_steps == 0:
            for i in range(cfg.d_steps):
                d_update = step // cfg.g_steps * cfg.d_steps + i + 1
                real = data.batch(torch.randint(len(data), (B,), device=device))
                with autocast:
                    fake = G(sample_latent(B, cfg, device))  # kept for the generator's update
                    real_logits, fake_logits = D(real), D(fake.detach())
                    loss_d = objective.d(real_logits, fake_logits, real_label)
                    for p in d_penalties:
                        if p.due(d_update):
                            loss_d = loss_d + p.weight * p.every * p.fn(D, real, fake.detach())
                if cfg.fault == "nan" and step + 1 == cfg.fault_step:
                    loss_d = loss_d * math.nan
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                check_finite(step + 1, loss_d=loss_d)
                means.add(loss_d=loss_d, d_real=torch.sigmoid(real_logits).mean(),
                          d_fake=torch.sigmoid(fake_logits).mean(),
                          acc_real=(real_logits > 0).float().mean(),
                          acc_fake=(fake_logits < 0).float().mean())

        # ------------- Generator: one update, on the last D step's fakes when fresh -------------
        with autocast:
            if fake is None:
                fake = G(sample_latent(B, cfg, device))
            loss_g = objective.g(D(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if ema:
            ema.update(G)
        fake = None
        check_finite(step + 1, loss_g=loss_g)
        means.add(loss_g=loss_g)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        trained_s += seconds

        if cfg.fault == "raise" and step + 1 == cfg.fault_step:
            raise InjectedFault(f"injected fault at step {step + 1}")

        # ------------- Bookkeeping, in cfg.unit -------------
        # Order matters: the log line is on disk before the checkpoint that follows it (so a
        # resumed run never misses a line), and on_log runs once both exist.
        done, now = step + 1, clock(step + 1)
        last = now >= length

        record = None
        if last or crossed(before, now, cfg.log_every):
            images = B * (done - window_start)
            record = {"step": done, **means.pop(), "img_per_s": images / max(train_seconds, 1e-9),
                      "images": done * B, "train_s": trained_s}
            train_seconds, window_start = 0.0, done
            if evaluator and (last or crossed(before, now, cfg.eval_every)):
                scores = evaluator.score_generator(
                    product(), lambda k, rng: sample_latent(k, cfg, device, rng), cfg.eval_n,
                    cfg.seed)
                record.update(scores)
                if scores["fid"] < best["fid"]:  # the minimum over checkpoints (Lucic et al.)
                    best = {"fid": scores["fid"], "step": done}
                    save_checkpoint(out_dir / BEST_FILE, {
                        "config": cfg.model_dump(), "step": done,
                        "generator": product().state_dict(), "metrics": scores})
            records.append(record)
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if last or crossed(before, now, cfg.sample_every):
            save_grid(generate(product(), fixed_noise), grid_path(out_dir, done))
        if last or crossed(before, now, cfg.checkpoint_every):
            networks = {"config": cfg.model_dump(), "step": done,
                        "generator": product().state_dict(),
                        **({"generator_raw": G.state_dict()} if ema else {}),
                        "discriminator": D.state_dict()}
            save_checkpoint(out_dir / "checkpoint.pt", {
                **networks, "trained_s": trained_s, "fixed_noise": fixed_noise.cpu(),
                "best": best, "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None},
            })
            if cfg.keep_checkpoints:
                save_checkpoint(out_dir / "checkpoints" / f"step_{done:06d}.pt", networks)
        if record:
            if on_log:
                on_log(record)
            progress.update(int(now), f"loss_d {record['loss_d']:.3f} loss_g "
                                      f"{record['loss_g']:.3f} {record['img_per_s']:.0f} img/s")
        step, before = done, now

    write_progress_gif(out_dir / "samples", out_dir / "progress.gif")
    plot_losses(records, out_dir / "losses.png")
    final = final_score(evaluator, out_dir, device) if evaluator else None
    return TrainResult(records, final)


def training_split(cfg: TrainConfig) -> ImageData:
    data = load_images(cfg.dataset, cfg.image_size, cfg.channels, data_dir=cfg.data_dir)
    if cfg.train_n is None:
        return data
    if cfg.train_n > len(data):
        raise DatasetError(f"train_n: {cfg.train_n} is more than the {len(data):,} training "
                           f"images of {cfg.dataset}")
    return data.head(cfg.train_n)


def epochs_to_updates(cfg: TrainConfig, n_images: int) -> int:
    """Generator updates in cfg.epochs passes over n_images: a pass is ceil(n_images /
    batch_size) real batches (a DataLoader's count, the last one partial there), each one
    discriminator update, with g_steps G updates per d_steps of D."""
    batches = math.ceil(cfg.epochs * math.ceil(n_images / cfg.batch_size))
    return math.ceil(batches * cfg.g_steps / cfg.d_steps)


def save_real_grid(data: ImageData, path: Path, seed: int) -> None:
    """A grid of training images beside the samples, as every tutorial shows first; drawn from
    its own RNG so the run's stream is the same with or without it."""
    if path.exists():
        return
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:FIXED_SAMPLES]
    save_grid(data.batch(pick.to(data.images.device)), path)


def crossed(before: float, now: float, every: int) -> bool:
    """Whether a clock going from `before` to `now` passed a multiple of `every`."""
    return now // every > before // every


def final_score(evaluator: Evaluator, out_dir: Path, device: torch.device) -> dict:
    """The run's result: its best checkpoint re-scored with final_n samples, floor beside it."""
    G, cfg = load_generator(out_dir / BEST_FILE, device)
    step = load_checkpoint(out_dir / BEST_FILE, full=False)["step"]
    # As many samples as the floor has real images: FID's bias depends on N.
    n = min(cfg.final_n, evaluator.max_n)
    scores = evaluator.score_generator(
        G, lambda k, rng: sample_latent(k, cfg, device, rng), n, cfg.seed)
    result = {"best_step": step, **scores, **evaluator.floor(n),
              "g_params": sum(p.numel() for p in G.parameters())}
    atomic_write_text(out_dir / "result.json", json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def generate(G: torch.nn.Module, z: Tensor) -> Tensor:
    """Samples in eval mode (BatchNorm's running statistics), leaving G as it was."""
    was_training = G.training
    G.eval()
    images = G(z).float()
    G.train(was_training)
    return images


def resolve_config(config: str | None, sets: list[str], out_dir: Path, resume: bool,
                   smoke: bool) -> TrainConfig:
    """Defaults < YAML < --smoke's sizes < --set; on resume the checkpoint's config comes first.

    --smoke shrinks the run, not the user's choices: an explicit --set wins over it, and so does
    a config's `eval_every: 0` (no scores is a choice, not a size)."""
    values = read_yaml(config) if config else {}
    source = str(config) if config else "config"
    if resume:
        path = out_dir / "checkpoint.pt"
        values = {**checkpoint_config(load_checkpoint(path), path).model_dump(), **values}
        source = f"{path} with overrides"
    if smoke:
        values.pop("epochs", None)  # --smoke's length is in steps
        values.update({k: v for k, v in SMOKE.items()
                       if not (k == "eval_every" and values.get("eval_every") == 0)})
        source += " with --smoke"
    overrides = parse_overrides(sets)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return make_config({**values, **overrides}, source)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints the whole usage first
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m gan.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--config", help="YAML file of TrainConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one TrainConfig field (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    parser.add_argument("--smoke", action="store_true", help="a few seconds' run, for a first try")
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(args.config, args.set, args.out, args.resume, args.smoke)
        result = train(cfg, args.out, resume=args.resume)
    except GanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DivergedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m gan.train --out {args.out} --resume",
              file=sys.stderr)
        return 130
    summary = result.final or (result.records[-1] if result.records else {})
    print(json.dumps({"out": str(args.out), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
