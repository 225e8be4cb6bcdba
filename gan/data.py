"""Datasets by name, decoded once into one in-memory uint8 tensor and cached on disk.

    python -m gan.data export stacked_mnist --out DIR [--image-size 64] [--n 10000]

writes a dataset's images as a folder of PNGs: an offline image folder to study.

Training draws batches by random index from that tensor: no per-image Python work and no
DataLoader workers in the hot loop. Images are kept as uint8 (4x less memory than float) and
mapped to [-1, 1] a batch at a time.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gan.artifacts import save_png_folder
from gan.config import NAMED_DATASETS
from gan.errors import DatasetError
from gan.fileio import atomic_torch_save

MNIST_DIR = Path(__file__).parent / "assets" / "mnist"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm"}
CACHE_VERSION = 1
FOLDER_CACHE_VERSION = 2  # 2: both splits in one file, with the held-out mask
GREY_DATASETS = ("mnist", "fashion_mnist")
# Folders: an image is held out (the floor's real sample, never trained on) when its content hash
# falls in the first HELD_OUT_SHARE of the hash space; folders under MIN_SPLIT images hold none out.
HELD_OUT_SHARE = 0.1
MIN_SPLIT = 100
STACKED_SIZES = {"train": 60_000, "test": 10_000}
STACKED_SEED = 2017  # Metz et al. 2017, who introduced Stacked MNIST


def cache_dir() -> Path:
    return Path(os.environ.get("GANSTUDY_CACHE", Path.home() / ".cache" / "ganstudy"))


@dataclass(frozen=True)
class ImageData:
    images: torch.Tensor  # (N, C, H, W) uint8; grey stays 1 channel even for an RGB model
    labels: torch.Tensor | None  # (N,) int64, or None for unlabelled folders
    channels: int  # channels of a batch

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int) -> ImageData:
        labels = None if self.labels is None else self.labels[:n]
        return ImageData(self.images[:n], labels, self.channels)

    def to(self, device: torch.device) -> ImageData:
        labels = None if self.labels is None else self.labels.to(device)
        return ImageData(self.images.to(device), labels, self.channels)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Images at `index` as float in [-1, 1], (B, channels, H, W)."""
        images = self.images[index]
        # grey repeated to RGB, as the faces tutorial does; a view, so no copy is stored
        return to_unit_range(images.expand(-1, self.channels, -1, -1))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(127.5).sub_(1.0)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images (N, C, H, W) resized to size x size; the one resize used for real and fake."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def _convert(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """uint8 (N, C0, H, W) -> uint8 (N, C, image_size, image_size); grey stays grey (C = 1)."""
    out = []
    for chunk in images.split(4096):
        x = chunk.float()
        if x.shape[1] == 3 and channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = resize(x, image_size)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): bytes 0 0 8 ndim, big-endian int32 dims, uint8 data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"mnist: cannot read {path}: {err}") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DatasetError(f"mnist: {path} is not a uint8 IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"mnist: {path} is truncated")
    return data.reshape(tuple(dims))


def _decode_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _decode_stacked_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Three MNIST digits of the split, drawn independently, as the R, G and B channels: 1000
    modes (label 100 r + 10 g + b), made the same way on every machine."""
    digits, labels = _decode_mnist(split)
    rng = np.random.default_rng([STACKED_SEED, 0 if split == "train" else 1])
    pick = torch.from_numpy(rng.integers(0, len(digits), (STACKED_SIZES[split], 3)))
    images = digits[pick, 0]  # (N, 3, 28, 28)
    return images.contiguous(), labels[pick] @ torch.tensor([100, 10, 1])


def _decode_torchvision(name: str, split: str, data_dir: Path
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    cls = {"fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    train = split == "train"
    how = (f"put torchvision's {cls.__name__} files there (or point data_dir at them) "
           "and run again")
    try:
        ds = cls(str(data_dir), train=train, download=False)
    except RuntimeError:
        if os.environ.get("GANSTUDY_OFFLINE"):
            raise DatasetError(f"{name}: not found in {data_dir} (GANSTUDY_OFFLINE is set); "
                               f"{how}") from None
        try:
            ds = cls(str(data_dir), train=train, download=True)
        except Exception as err:  # any network failure: the message says what to do
            raise DatasetError(f"{name}: not found in {data_dir} and the download failed "
                               f"({type(err).__name__}); {how}") from None
    images = torch.as_tensor(np.asarray(ds.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)


def _folder_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"folder:{root}: not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"folder:{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def held_out(content: bytes) -> bool:
    """The folder's test split, fixed by each file's content: renaming, adding or removing other
    files never moves an image between the splits."""
    return int.from_bytes(hashlib.sha256(content).digest()[:8], "big") < HELD_OUT_SHARE * 2**64


def _decode_folder(files: list[Path], image_size: int, channels: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of the folder, centre-cropped and resized, and which of them are held out."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    test = torch.zeros(len(files), dtype=torch.bool)
    for i, path in enumerate(files):
        try:
            content = path.read_bytes()
            test[i] = held_out(content) and len(files) >= MIN_SPLIT
            with Image.open(io.BytesIO(content)) as img:
                img = img.convert(mode)
                side = min(img.size)
                left, top = (img.width - side) // 2, (img.height - side) // 2
                img = img.crop((left, top, left + side, top + side))
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(img).reshape(image_size, image_size, channels)
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetError(f"folder: cannot read image {path}: {err}") from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), test


def _cache_key(dataset: str, split: str, image_size: int, channels: int) -> tuple[str, list]:
    if not dataset.startswith("folder:"):
        return f"{dataset}-{split}-{image_size}px-{channels}ch-v{CACHE_VERSION}", []
    root = folder_root(dataset)
    files = _folder_files(root)
    # The key changes whenever a file is added, removed or rewritten.
    h = hashlib.sha1(str(root).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    # Both splits live in one file (the split is a per-image mask), so the key has no split.
    return f"folder-{h.hexdigest()[:16]}-{image_size}px-{channels}ch-v{FOLDER_CACHE_VERSION}", files


def data_hash(data: ImageData) -> str:
    """A hash of the images themselves (their bytes and shape): what keys anything derived from
    a folder's content, whatever its path."""
    h = hashlib.sha256(f"{tuple(data.images.shape)}".encode())
    h.update(data.images.numpy().tobytes())
    return h.hexdigest()[:16]


def folder_root(dataset: str) -> Path:
    return Path(dataset.removeprefix("folder:")).expanduser().resolve()


def stored_channels(dataset: str, channels: int) -> int:
    """Channels a dataset is kept in: grey sources stay grey whatever the model's channels."""
    return 1 if dataset in GREY_DATASETS else channels


def check_available(dataset: str) -> None:
    """Fail fast, before any work starts, when a folder dataset is missing or holds no images.
    (Named datasets are checked when loaded: mnist ships, torchvision's may download.)"""
    if dataset.startswith("folder:"):
        _folder_files(folder_root(dataset))


def load_images(dataset: str, image_size: int, channels: int, split: str = "train",
                data_dir: str | None = None) -> ImageData:
    """Decode a dataset once (then load it from the on-disk cache) at the given size/channels."""
    if split not in ("train", "test"):
        raise DatasetError(f"{dataset}: unknown split {split!r}")
    stored = stored_channels(dataset, channels)
    key, files = _cache_key(dataset, split, image_size, stored)
    path = cache_dir() / f"{key}.pt"
    cached = None
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
        except Exception:  # a cache file is disposable: decode again and overwrite it
            cached = None
    if cached is None:
        cached = _decode(dataset, split, image_size, stored, files, data_dir)
        # An unwritable cache costs only speed: the decoded data in memory is good.
        with contextlib.suppress(OSError):
            atomic_torch_save(cached, path)
    if "test" in cached:  # a folder: both splits, one mask
        mask = cached["test"] if split == "test" else ~cached["test"]
        return ImageData(cached["images"][mask], None, channels)
    return ImageData(cached["images"], cached.get("labels"), channels)


def _decode(dataset: str, split: str, image_size: int, stored: int, files: list[Path],
            data_dir: str | None) -> dict[str, torch.Tensor | None]:
    if dataset.startswith("folder:"):
        images, test = _decode_folder(files, image_size, stored)
        return {"images": images, "test": test}
    if dataset == "mnist":
        images, labels = _decode_mnist(split)
    elif dataset == "stacked_mnist":
        images, labels = _decode_stacked_mnist(split)
    else:
        root = Path(data_dir).expanduser() if data_dir else cache_dir() / "torchvision"
        images, labels = _decode_torchvision(dataset, split, root)
    return {"images": _convert(images, image_size, stored), "labels": labels}



def main(argv: list[str] | None = None) -> int:
    from gan.train import OneLineParser  # gan.train imports this module

    parser = OneLineParser(prog="python -m gan.data", description="Dataset tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a dataset's images as numbered PNG files")
    export.add_argument("dataset", choices=NAMED_DATASETS)
    export.add_argument("--out", required=True, type=Path, help="folder to write")
    export.add_argument("--image-size", type=int, default=64, choices=(28, 32, 64))
    export.add_argument("--n", type=int, default=10_000, help="images, the split's first n")
    export.add_argument("--split", default="train", choices=("train", "test"))
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be >= 1")
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out}: not empty; choose a new folder", file=sys.stderr)
        return 2
    channels = 3 if args.dataset in ("stacked_mnist", "cifar10") else 1
    try:
        data = load_images(args.dataset, args.image_size, channels, split=args.split)
        n = min(args.n, len(data))
        for start in range(0, n, 1000):
            save_png_folder(data.batch(torch.arange(start, min(n, start + 1000))), args.out, start)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n} images of {args.dataset} ({args.split}), {args.image_size} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
