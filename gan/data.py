"""Datasets by name, decoded once into one in-memory uint8 tensor and cached on disk.

Training draws batches by random index from that tensor: no per-image Python work and no
DataLoader workers in the hot loop. Images are kept as uint8 (4x less memory than float) and
mapped to [-1, 1] a batch at a time.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gan.errors import DatasetError
from gan.fileio import atomic_torch_save

MNIST_DIR = Path(__file__).parent / "assets" / "mnist"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm"}
CACHE_VERSION = 1
GREY_DATASETS = ("mnist", "fashion_mnist")


def cache_dir() -> Path:
    return Path(os.environ.get("GANSTUDY_CACHE", Path.home() / ".cache" / "ganstudy"))


@dataclass(frozen=True)
class ImageData:
    images: torch.Tensor  # (N, C, H, W) uint8; grey stays 1 channel even for an RGB model
    labels: torch.Tensor | None  # (N,) int64, or None for unlabelled folders
    channels: int  # channels of a batch

    def __len__(self) -> int:
        return self.images.shape[0]

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


def _decode_folder(files: list[Path], image_size: int, channels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                side = min(img.size)
                left, top = (img.width - side) // 2, (img.height - side) // 2
                img = img.crop((left, top, left + side, top + side))
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(img).reshape(image_size, image_size, channels)
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetError(f"folder: cannot read image {path}: {err}") from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _cache_key(dataset: str, split: str, image_size: int, channels: int) -> tuple[str, list]:
    if not dataset.startswith("folder:"):
        return f"{dataset}-{split}-{image_size}px-{channels}ch-v{CACHE_VERSION}", []
    root = Path(dataset.removeprefix("folder:")).expanduser().resolve()
    files = _folder_files(root)
    # The key changes whenever a file is added, removed or rewritten.
    h = hashlib.sha1(str(root).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"folder-{h.hexdigest()[:16]}-{image_size}px-{channels}ch-v{CACHE_VERSION}", files


def check_available(dataset: str) -> None:
    """Fail fast, before any work starts, when a folder dataset is missing or holds no images.
    (Named datasets are checked when loaded: mnist ships, torchvision's may download.)"""
    if dataset.startswith("folder:"):
        _folder_files(Path(dataset.removeprefix("folder:")).expanduser().resolve())


def load_images(dataset: str, image_size: int, channels: int, split: str = "train",
                data_dir: str | None = None) -> ImageData:
    """Decode a dataset once (then load it from the on-disk cache) at the given size/channels."""
    if split not in ("train", "test"):
        raise DatasetError(f"{dataset}: unknown split {split!r}")
    # Grey sources are stored with one channel whatever the model's channels.
    stored = 1 if dataset in GREY_DATASETS else channels
    key, files = _cache_key(dataset, split, image_size, stored)
    path = cache_dir() / f"{key}.pt"
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            return ImageData(cached["images"], cached.get("labels"), channels)
        except Exception:  # a cache file is disposable: decode again and overwrite it
            pass

    if dataset == "mnist":
        images, labels = _decode_mnist(split)
    elif dataset.startswith("folder:"):
        images, labels = _decode_folder(files, image_size, stored), None
    else:
        root = Path(data_dir).expanduser() if data_dir else cache_dir() / "torchvision"
        images, labels = _decode_torchvision(dataset, split, root)
    images = _convert(images, image_size, stored)

    # An unwritable cache costs only speed: the decoded data in memory is good.
    with contextlib.suppress(OSError):
        atomic_torch_save({"images": images, "labels": labels}, path)
    return ImageData(images, labels, channels)

