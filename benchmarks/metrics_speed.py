"""Seconds to score 10 000 samples on one core, reference statistics cached; generation apart.

    python benchmarks/metrics_speed.py [--n 10000]

Prints the time of each part (features, FID, KID, precision/recall, class metrics), the total
against the 5 s target, and as a baseline measured in the same run torchmetrics'
FrechetInceptionDistance + KernelInceptionDistance fed the same images through the same feature
network (which compute less: no precision/recall, no class metrics).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from gan.config import make_config
from gan.data import load_images
from gan.metrics.distances import class_metrics, fid, kid, manifold_metrics
from gan.metrics.evaluate import Evaluator
from gan.metrics.features import FEATURE_DIM, extract, load_feature_net, prepare
from gan.models import build_generator
from gan.train import generate

TARGET_S = 5.0


class Features(nn.Module):
    """Our feature network as a torchmetrics feature extractor."""

    def __init__(self, net):
        super().__init__()
        self.net, self.num_features = net, FEATURE_DIM

    def forward(self, x):
        return self.net(prepare(x))[0]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ev = Evaluator("mnist", 32)  # builds the reference cache on the first run, untimed
    net, _ = load_feature_net("mnist")
    cfg = make_config({"arch": "dcgan", "width": 32, "image_size": 32})
    torch.manual_seed(0)
    g = build_generator(cfg)
    images, t_gen = timed(lambda: torch.cat([generate(g, torch.randn(500, 100))
                                              for _ in range(args.n // 500)]))
    (feats, logits), t_feat = timed(lambda: extract(net, images))
    ref = ev.reference
    parts = {
        "features": t_feat,
        "fid": timed(lambda: fid((ref.mu, ref.sigma), feats))[1],
        "kid": timed(lambda: kid(ref.features, feats))[1],
        "precision/recall/density/coverage": timed(
            lambda: manifold_metrics(ref.features, feats))[1],
        "class metrics": timed(lambda: class_metrics(logits, ref.class_freq))[1],
    }
    total = sum(parts.values())
    print(f"torch {torch.__version__}, 1 thread, N = {args.n}, dcgan width 32 at 32 px")
    print(f"generation (not counted): {t_gen:.2f} s")
    for name, seconds in parts.items():
        print(f"  {name:18} {seconds:6.2f} s")
    print(f"features + metrics: {total:.2f} s (target <= {TARGET_S:.0f} s: "
          f"{'met' if total <= TARGET_S else 'MISSED'})")

    real = load_images("mnist", 32, 1, split="train").batch(torch.arange(args.n))
    features = Features(net).eval()
    fid_tm = FrechetInceptionDistance(feature=features)
    kid_tm = KernelInceptionDistance(feature=features, subset_size=1000)

    def library():
        with torch.no_grad():
            for m in (fid_tm, kid_tm):
                m.update(real, real=True)  # the library has no cached reference: timed apart
        t0 = time.perf_counter()
        with torch.no_grad():
            for m in (fid_tm, kid_tm):
                m.update(images, real=False)
            fid_tm.compute(), kid_tm.compute()
        return time.perf_counter() - t0

    t_lib = library()
    print(f"baseline, torchmetrics FID + KID on the fakes (features included): {t_lib:.2f} s; "
          f"ours / baseline = {total / t_lib:.2f}")


if __name__ == "__main__":
    main()
