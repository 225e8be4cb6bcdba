"""Trainer images/s against pytorch/examples' DCGAN training step, measured in the same run.

    python benchmarks/trainer_throughput.py [--steps 20] [--repeats 3]

For `mlp` and `dcgan` at 32 px, width 64, batch 64, one thread: the trainer (gan.train.train) and
a reference step written as in pytorch/examples/dcgan (Sigmoid + BCELoss, two backward calls for D,
the fakes reused for G) on the same networks, fed from the same in-memory tensor. Runs alternate
and the median of `--repeats` is taken, since this machine is shared. Target: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn

from gan.config import make_config
from gan.data import load_images
from gan.models import build_models
from gan.train import sample_latent, train

WARMUP = 5


def trainer_rate(cfg_values: dict, steps: int) -> float:
    total = WARMUP + steps
    cfg = make_config({**cfg_values, "steps": total, "log_every": WARMUP, "eval_every": 0,
                       "checkpoint_every": total, "sample_every": total})
    with tempfile.TemporaryDirectory() as out:
        records = train(cfg, out).records
    # img/s over the steps after warm-up, weighted by window length
    later = [r for r in records if r["step"] > WARMUP]
    seconds = sum(cfg.batch_size * WARMUP / r["img_per_s"] for r in later)
    return cfg.batch_size * steps / seconds


def reference_rate(cfg_values: dict, steps: int) -> float:
    cfg = make_config(cfg_values)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    data = load_images(cfg.dataset, cfg.image_size, cfg.channels)
    netG, D = build_models(cfg)
    netD = nn.Sequential(D, nn.Sigmoid())
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, 0.999))
    B = cfg.batch_size
    t0 = 0.0
    for i in range(WARMUP + steps):
        if i == WARMUP:
            t0 = time.perf_counter()
        # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        real = data.batch(torch.randint(len(data), (B,)))
        label = torch.full((B,), 1.0)
        errD_real = criterion(netD(real), label)
        errD_real.backward()
        fake = netG(sample_latent(B, cfg, "cpu"))
        label.fill_(0.0)
        errD_fake = criterion(netD(fake.detach()), label)
        errD_fake.backward()
        optimizerD.step()
        # (2) Update G: maximize log(D(G(z)))
        netG.zero_grad()
        label.fill_(1.0)
        errG = criterion(netD(fake), label)
        errG.backward()
        optimizerG.step()
    return B * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, batch 64, 32 px, width 64, "
          f"median of {args.repeats} runs of {args.steps} steps after {WARMUP} warm-up steps")
    print(f"{'arch':6} {'trainer img/s':>14} {'reference img/s':>16} {'ratio':>6}")
    for arch in ("mlp", "dcgan"):
        values = {"arch": arch, "width": 64, "image_size": 32, "batch_size": 64, "threads": 1}
        steps = args.steps * (10 if arch == "mlp" else 1)  # mlp steps are ~40x cheaper
        ours, ref = [], []
        for _ in range(args.repeats):
            ours.append(trainer_rate(values, steps))
            ref.append(reference_rate(values, steps))
        a, b = statistics.median(ours), statistics.median(ref)
        print(f"{arch:6} {a:14.1f} {b:16.1f} {a / b:6.2f}", flush=True)


if __name__ == "__main__":
    main()
