"""Sample from a trained generator.

    python -m gan.sample --checkpoint DIR/checkpoint.pt --n 64 --out grid.png [--seed 0]
    python -m gan.sample --checkpoint DIR/best.pt --n 10000 --out samples/     # 10000 PNG files
    python -m gan.sample --checkpoint DIR/best.pt --n 10000 --out samples.npz  # uint8 NHWC array
    python -m gan.sample --checkpoint DIR/checkpoint.pt --n 72 --out path.png --interpolate 12
    python -m gan.sample --checkpoint DIR/best.pt --n 12 --out walk.png --walk 0.05 --frames 12

The output's form follows --out: a `.png` file is one grid; a directory (an existing one, or a
path ending in `/`) receives n numbered PNG files, the layout external scorers (torch-fidelity,
clean-fid) read; a `.npz` file holds the n images as one uint8 array `images` (N, H, W, C).
With --interpolate K (a grid only): n // K rows, each walking the latent space from one random
point to another in K images (spherical for normal latents). With --walk STEP (a grid only):
n // K rows of K frames, each row one random z with STEP added to every coordinate per frame
(z, z + STEP, z + 2 STEP, ...), the faces tutorial's latent walk.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gan.artifacts import save_grid, save_png_folder, to_uint8
from gan.checkpoint import load_generator
from gan.config import TrainConfig
from gan.errors import GanError
from gan.fileio import atomic_write
from gan.latents import LATENTS
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
    if LATENTS[cfg.latent_dist].spherical:
        z = slerp(a, b, t)
    else:
        z = a[:, None] + t[None, :, None] * (b - a)[:, None]
    return z.reshape(rows * k, -1)


def walk_latents(rows: int, frames: int, step: float, cfg: TrainConfig) -> Tensor:
    z = sample_latent(rows, cfg, "cpu")
    offsets = step * torch.arange(frames, dtype=z.dtype)
    return (z[:, None] + offsets[None, :, None]).reshape(rows * frames, -1)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m gan.sample", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--out", required=True,
                        help="grid.png, a directory for numbered PNGs, or images.npz")
    walks = parser.add_mutually_exclusive_group()
    walks.add_argument("--interpolate", type=int, metavar="K", help="K images per row")
    walks.add_argument("--walk", type=float, metavar="STEP",
                       help="add STEP to every latent coordinate per frame")
    parser.add_argument("--frames", type=int, metavar="K",
                        help="frames per row of --walk (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.frames is not None and args.walk is None:
        parser.error("--frames is the length of a --walk")
    frames = 12 if args.frames is None else args.frames
    if args.n < 1 or (args.interpolate is not None and args.interpolate < 2) or frames < 2:
        parser.error("--n must be >= 1, --interpolate and --frames >= 2")
    if args.walk is not None and not math.isfinite(args.walk):
        parser.error("--walk must be a finite number")
    per_row = args.interpolate or (frames if args.walk is not None else None)
    out = Path(args.out)
    form = ("folder" if args.out.endswith(("/", "\\")) or out.is_dir()
            else {".png": "grid", ".npz": "npz"}.get(out.suffix.lower()))
    if form is None or (per_row and form != "grid"):
        what = "a grid" if per_row else "the samples"
        print(f"error: --out {args.out}: write {what} to a .png file"
              + ("" if per_row else ", a directory (ending in /) or a .npz file"),
              file=sys.stderr)
        return 2
    try:
        generator, cfg = load_generator(args.checkpoint)
        torch.manual_seed(args.seed)
        if per_row:
            rows = max(1, args.n // per_row)
            z = (interpolation_latents(rows, per_row, cfg) if args.interpolate
                 else walk_latents(rows, per_row, args.walk, cfg))
            save_grid(generate(generator, z), out, nrow=per_row)
        else:
            images = torch.cat([generate(generator, sample_latent(min(500, args.n - i), cfg, "cpu"))
                                for i in range(0, args.n, 500)])
            write_samples(images, out, form)
    except GanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {args.out}: cannot write ({err.strerror})", file=sys.stderr)
        return 2
    print(args.out)
    return 0


def write_samples(images: Tensor, out: Path, form: str) -> None:
    if form == "grid":
        save_grid(images, out, nrow=math.ceil(math.sqrt(len(images))))
    elif form == "folder":
        save_png_folder(images, out)
    else:
        array = to_uint8(images).numpy()
        atomic_write(out, lambda f: np.savez_compressed(f, images=array))


if __name__ == "__main__":
    sys.exit(main())
