"""A label-free feature space for any dataset: a small encoder trained contrastively on the
dataset's training split (SimCLR, Chen et al. 2020), with no labels.

Self-supervised features rank generators more faithfully than ImageNet features outside
ImageNet-like data (Morozov et al., ICLR 2021), and they need nothing downloaded. The encoder
sees every image at 32 x 32 in the dataset's own channels; its 128-d representation (before the
projection head), scaled to unit RMS on the training split, is the feature space.

Training is deterministic (one thread, seeded augmentations, deterministic kernels) and sized by
the recipe below: 20 passes over the data, at most 1000 steps of 256 images in two views each,
which is ~6 minutes on one core whatever the dataset's size. The weights are cached under
<cache>/features/, keyed by a hash of the training images (at 32 px) and of the recipe.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan.data import ImageData, cache_dir, data_hash, resize
from gan.fileio import atomic_torch_save
from gan.progress import Progress, note

SIZE = 32
FEATURE_DIM = 128
RECIPE = {"version": 1, "size": SIZE, "batch": 256, "epochs": 20, "max_steps": 1000,
          "lr": 2e-3, "temperature": 0.2, "seed": 0}


class Encoder(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        blocks: list[nn.Module] = []
        for c_in, c_out in ((channels, 32), (32, 64), (64, 128)):
            # each block halves the side: 32 -> 16 -> 8 -> 4
            blocks += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(True)]
        self.conv = nn.Sequential(*blocks, nn.Flatten())  # (B, 128 * 4 * 4)
        self.embed = nn.Linear(128 * 4 * 4, FEATURE_DIM)
        # SimCLR's projection head: the loss acts on its output, the features are taken before it
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(FEATURE_DIM, FEATURE_DIM))

    def forward(self, x: Tensor) -> Tensor:
        """Images in [-1, 1], (B, channels, 32, 32) -> features (B, 128)."""
        return self.embed(self.conv(x))


def prepare(images: Tensor, channels: int) -> Tensor:
    """Any images in [-1, 1] (B, C, H, W) -> the encoder's input: its channels, 32 px, float."""
    x = images.float()
    if x.shape[1] == 3 and channels == 1:
        x = x.mean(dim=1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return resize(x, SIZE).clamp_(-1, 1)


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """One random view of each image: a random resized crop (area 50-100%, aspect 3:4 to 4:3)
    and, for colour images, colour jitter and an occasional grey copy; for grey ones, brightness
    and contrast. No flips: a flipped digit or letter is another symbol."""
    b = x.shape[0]

    def uniform(low: float, high: float, n: int = b) -> Tensor:
        return torch.rand(n, generator=gen) * (high - low) + low

    area = uniform(0.5, 1.0)
    aspect = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    sx = (area * aspect).sqrt().clamp(max=1.0)
    sy = (area / aspect).sqrt().clamp(max=1.0)
    tx, ty = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    jitter = (torch.rand(b, generator=gen) < 0.8).float().view(b, 1, 1, 1)
    brightness = uniform(-0.4, 0.4).view(b, 1, 1, 1) * jitter
    contrast = 1 + uniform(-0.4, 0.4).view(b, 1, 1, 1) * jitter
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    if x.shape[1] == 3:
        grey = x.mean(dim=1, keepdim=True)
        saturation = 1 + uniform(-0.4, 0.4).view(b, 1, 1, 1) * jitter
        to_grey = (torch.rand(b, generator=gen) < 0.2).float().view(b, 1, 1, 1)
        x = grey + (x - grey) * saturation * (1 - to_grey)
    return x.clamp(-1, 1)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's loss: each view must pick its partner out of the other 2B - 2 images."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-math.inf)
    b = z1.shape[0]
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return F.cross_entropy(sim, partner)


def content_hash(train: ImageData) -> str:
    """What the encoder learns from: the training images at the encoder's size, and the recipe."""
    recipe = json.dumps(RECIPE, sort_keys=True)
    return hashlib.sha256(f"{recipe}\0{data_hash(train)}".encode()).hexdigest()[:16]


def weights_file(train: ImageData) -> Path:
    return cache_dir() / "features" / f"contrastive-{content_hash(train)}.pt"


def train_encoder(train: ImageData, log: Callable[[str], None] = note,
                  recipe: dict | None = None) -> Encoder:
    """Train on `train` (ImageData at 32 px) without labels; returns the encoder in eval mode,
    its feature layer scaled to unit RMS on the training images. One thread, whoever calls: the
    cached weights must not depend on which process trained them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(train, log, {**RECIPE, **(recipe or {})})
    finally:
        torch.set_num_threads(threads)


def _train(train: ImageData, log: Callable[[str], None], r: dict) -> Encoder:
    torch.manual_seed(r["seed"])
    gen = torch.Generator().manual_seed(r["seed"])
    n = len(train)
    batch = min(r["batch"], n)
    steps = min(r["max_steps"], max(1, math.ceil(r["epochs"] * n / batch)))
    net = Encoder(train.channels)
    opt = torch.optim.Adam(net.parameters(), lr=r["lr"], weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, r["lr"], total_steps=steps)
    progress = Progress(steps)
    log(f"training a label-free feature network: {n} images, {steps} steps of {batch} "
        f"(~{steps * batch * 2 / 1800:.0f} s on one core)")
    t0 = time.perf_counter()
    net.train()
    order, at = torch.randperm(n, generator=gen), 0
    for step in range(steps):
        if at + batch > n:
            order, at = torch.randperm(n, generator=gen), 0
        x = prepare(train.batch(order[at:at + batch]), train.channels)
        at += batch
        z1 = net.head(net(augment(x, gen)))
        z2 = net.head(net(augment(x, gen)))
        loss = nt_xent(z1, z2, r["temperature"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        progress.update(step + 1, f"loss {loss.item():.3f}")
    net.eval()
    _unit_rms(net, train)
    log(f"label-free feature network trained in {time.perf_counter() - t0:.0f} s "
        f"(final loss {loss.item():.3f})")
    return net


@torch.no_grad()
def extract(net: Encoder, images: Tensor, batch: int = 500) -> Tensor:
    device = next(net.parameters()).device
    return torch.cat([net(prepare(chunk.to(device), net.channels)).float().cpu()
                      for chunk in images.split(batch)])


@torch.no_grad()
def _unit_rms(net: Encoder, train: ImageData) -> None:
    """KID's cubic kernel assumes features of order one (see features.normalise_feature_scale)."""
    feats = torch.cat([extract(net, train.batch(idx))
                       for idx in torch.arange(len(train)).split(4096)])
    factor = feats.double().pow(2).mean().rsqrt().item()
    net.embed.weight.mul_(factor)
    net.embed.bias.mul_(factor)


def save_encoder(net: Encoder, path: Path, train: ImageData) -> None:
    atomic_torch_save({"kind": "contrastive", "channels": net.channels,
                       "weights": net.state_dict(), "recipe": RECIPE,
                       "content_hash": content_hash(train), "images": len(train)}, path)


def load_encoder(path: Path) -> Encoder:
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = Encoder(state["channels"])
    net.load_state_dict(state["weights"])
    return net.eval()
