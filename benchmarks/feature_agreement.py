"""Does the label-free feature space rank generators as the labelled one does? On MNIST.

    python benchmarks/feature_agreement.py [--n 2000] [--out DIR] [--ladder main|held-out]

Trains the label-free (contrastive) encoder on MNIST's training images without their labels
(the recipe every folder gets), then scores a ladder of generators of clearly different quality
in both spaces: checkpoints of one DCGAN run at several lengths, of an MLP GAN run, and of other
configurations, all at 32 px. Prints each generator's FID in both spaces with the floors, and the
Spearman rank correlation of the two columns (target >= 0.9 over >= 8 generators; every floor
below every generator's FID in its space). The baseline measured in the same run is the
classifier space.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from gan.checkpoint import load_generator
from gan.config import make_config
from gan.metrics.evaluate import Evaluator
from gan.train import sample_latent, train

# (name, config, lengths at which its generator is scored). Every generator makes 32 px images,
# so that in each space all of them are measured against one reference. Lengths double from 50
# updates: below that a DCGAN's samples are blobs whose order is noise in either space.
LADDER = [
    ("dcgan w16", {"arch": "dcgan", "width": 16}, (50, 100, 200, 400, 800, 1600)),
    ("mlp w32", {"arch": "mlp", "width": 32}, (300, 1000, 3000)),
    ("dcgan w8 lsgan", {"arch": "dcgan", "width": 8, "loss": "lsgan"}, (1000,)),
    ("dcgan w16 beta1 0.9", {"arch": "dcgan", "width": 16, "beta1": 0.9, "lr_g": 1e-3,
                             "lr_d": 1e-3}, (400,)),
]
# Other configurations, fixed before they were first run: a check that the agreement is not
# the choice of one ladder.
HELD_OUT = [
    ("dcgan w32 hinge", {"arch": "dcgan", "width": 32, "loss": "hinge"}, (100, 300, 600)),
    ("mlp w16", {"arch": "mlp", "width": 16}, (500, 2000)),
    ("dcgan w16 lsgan 2:1", {"arch": "dcgan", "width": 16, "loss": "lsgan", "d_steps": 2},
     (600,)),
    ("dcgan w16 lr_d 5e-5", {"arch": "dcgan", "width": 16, "lr_g": 2e-3, "lr_d": 5e-5}, (400,)),
    ("mlp w32 wgan", {"arch": "mlp", "width": 32, "loss": "wgan"}, (400,)),
]
LADDERS = {"main": LADDER, "held-out": HELD_OUT}


def generators(work: Path, ladder: list):
    """Each rung of the ladder as (name, checkpoint path): one run per configuration, resumed
    to each length in turn, its checkpoint copied at each."""
    for name, values, lengths in ladder:
        run = work / name.replace(" ", "_")
        for i, steps in enumerate(lengths):
            cfg = make_config({**values, "image_size": 32, "steps": steps, "batch_size": 64,
                               "threads": 1,
                               "eval_every": 0, "log_every": 25, "sample_every": 100_000,
                               "checkpoint_every": 100_000})
            train(cfg, run, resume=i > 0)
            kept = work / f"{run.name}-{steps}.pt"
            shutil.copy(run / "checkpoint.pt", kept)
            yield f"{name} @ {steps}", kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="samples per generator")
    parser.add_argument("--out", type=Path, help="keep the checkpoints here")
    parser.add_argument("--ladder", default="main", choices=tuple(LADDERS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.out or Path(tempfile.mkdtemp(prefix="agreement-"))
    t0 = time.perf_counter()
    spaces = {kind: Evaluator("mnist", 32, "cpu", 1, kind)
              for kind in ("classifier", "contrastive")}
    print(f"feature spaces ready in {time.perf_counter() - t0:.0f} s "
          "(the contrastive encoder trained without labels, unless cached)")

    rows = []
    for name, path in generators(work, LADDERS[args.ladder]):
        g, cfg = load_generator(path)
        row = {"generator": name}
        for kind, ev in spaces.items():
            scores = ev.score_generator(g, lambda k, rng, c=cfg: sample_latent(k, c, "cpu", rng),
                                        args.n, seed=0)
            row[kind], row[f"{kind}_floor"] = scores["fid"], ev.floor(args.n)["fid_floor"]
            row[f"{kind}_recall"] = scores["recall"]
        rows.append(row)
        print(f"{name:22s} classifier FID {row['classifier']:8.3f} (floor "
              f"{row['classifier_floor']:.3f})   label-free FID {row['contrastive']:8.3f} "
              f"(floor {row['contrastive_floor']:.3f})", flush=True)

    rho = spearmanr([r["classifier"] for r in rows], [r["contrastive"] for r in rows]).statistic
    floors_below = all(r[f"{k}_floor"] < r[k] for r in rows for k in ("classifier", "contrastive"))
    print(f"\n{len(rows)} generators, n = {args.n} samples each")
    print(f"Spearman rank correlation, label-free vs classifier FID: {rho:.3f} (target >= 0.9)")
    print(f"every floor below every generator's FID in both spaces: {floors_below}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
