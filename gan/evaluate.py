"""Score a generator, or real test images, with the project's one evaluation protocol.

    python -m gan.evaluate --checkpoint DIR/checkpoint.pt [--n 10000]
    python -m gan.evaluate --real [--dataset mnist] [--image-size 28] [--channels 1] [--n 10000]

Prints one JSON object: every metric, the real-data floor (`*_floor`: the test split, or a
folder's held-out images, scored the same way against the training split), N, the feature space
and, for a classifier, its test `classifier_accuracy`. A folder's label-free feature network is
trained first if it is not cached yet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from gan.checkpoint import load_generator
from gan.config import make_config
from gan.errors import GanError
from gan.metrics.evaluate import REFERENCE_SEED, Evaluator
from gan.metrics.spaces import KINDS
from gan.train import OneLineParser, sample_latent


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m gan.evaluate", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint.pt or best.pt of a run")
    source.add_argument("--real", action="store_true", help="score test-split images instead")
    parser.add_argument("--n", type=int, default=10_000, help="number of images (default 10000)")
    parser.add_argument("--dataset", default="mnist", help="with --real")
    parser.add_argument("--image-size", type=int, default=28, choices=(28, 32, 64),
                        help="with --real")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3), help="with --real")
    parser.add_argument("--feature-net", default="auto", choices=KINDS,
                        help="with --real: the feature space (default: auto)")
    parser.add_argument("--inception-weights", metavar="FILE",
                        help="with --real --feature-net inception: the FID Inception weights")
    parser.add_argument("--seed", type=int, help="latent seed (default: the run's seed)")
    args = parser.parse_args(argv)
    if not 10 <= args.n <= 100_000:
        parser.error("--n must be between 10 and 100000")
    try:
        if args.checkpoint:
            generator, cfg = load_generator(args.checkpoint)
            evaluator = Evaluator.of(cfg)
            seed = cfg.seed if args.seed is None else args.seed
            scores = evaluator.score_generator(generator, lambda k, rng: sample_latent(
                k, cfg, "cpu", rng), min(args.n, evaluator.max_n), seed)
        else:
            evaluator = Evaluator.of(make_config({
                "dataset": args.dataset, "image_size": args.image_size,
                "channels": args.channels, "feature_net": args.feature_net,
                "inception_weights": args.inception_weights}, "--real"))
            test = evaluator.test_images()
            n = min(args.n, evaluator.max_n)
            pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(
                REFERENCE_SEED if args.seed is None else args.seed))
            scores = {**evaluator.score_images(test.batch(pick[:n])), "n": n}
        floor = evaluator.floor(scores["n"])
        accuracy = evaluator.classifier_accuracy()
    except GanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({**scores, **floor, "feature_net": evaluator.space.kind,
                      "classifier_accuracy": accuracy}))
    return 0



if __name__ == "__main__":
    sys.exit(main())
