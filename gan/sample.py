"""Sample from a trained generator.

    python -m gan.sample --checkpoint DIR/checkpoint.pt --n 64 --out grid.png [--interpolate 12]

Without --interpolate: a grid of n samples. With --interpolate K: n // K rows, each walking the
latent space from one random point to another in K images (spherical for normal latents).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import Tensor

from gan.artifacts import save_grid
from gan.checkpoint import load_generator
from gan.config import TrainConfig
from gan.errors import GanError
from gan.train import OneLineParser, generate, sample_latent


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between rows of a and b at fractions t (K,) -> (rows, K, dim)."""
    a_n, b_n = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(1).clamp(-1 + 1e-7, 1 - 1e-7))[:, None]  # (rows, 1)
    so = torch.sin(omega)
    wa = torch.sin((1 - t)[None] * omega) / so  # (rows, K)
    wb = torch.sin(t[None] * omega) / so
    return wa[..., None] * a[:, None] + wb[..., None] * b[:, None]


def interpolation_latents(rows: int, k: int, cfg: TrainConfig) -> Tensor:
    a, b = sample_latent(rows, cfg, "cpu"), sample_latent(rows, cfg, "cpu")
    t = torch.linspace(0, 1, k)
    if cfg.latent_dist == "normal":
        z = slerp(a, b, t)
    else:  # a uniform cube is not a sphere: walk the straight line
        z = a[:, None] + t[None, :, None] * (b - a)[:, None]
    return z.reshape(rows * k, -1)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m gan.sample", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--out", required=True, type=Path, help="PNG file to write")
    parser.add_argument("--interpolate", type=int, metavar="K", help="K images per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1 or (args.interpolate is not None and args.interpolate < 2):
        parser.error("--n must be >= 1 and --interpolate >= 2")
    try:
        generator, cfg = load_generator(args.checkpoint)
        torch.manual_seed(args.seed)
        if args.interpolate:
            rows = max(1, args.n // args.interpolate)
            images = generate(generator, interpolation_latents(rows, args.interpolate, cfg))
            save_grid(images, args.out, nrow=args.interpolate)
        else:
            images = generate(generator, sample_latent(args.n, cfg, "cpu"))
            save_grid(images, args.out, nrow=math.ceil(math.sqrt(args.n)))
    except GanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {args.out}: cannot write ({err.strerror})", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
