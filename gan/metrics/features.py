"""The feature space of every quality metric: a small CNN classifier trained by this project.

Inception weights cannot be downloaded here, and an ImageNet network is the wrong feature space for
digits anyway. This classifier is trained on a dataset's training split only, deterministically:

    python -m gan.metrics.features --dataset mnist            # ~3 minutes on one CPU core

MNIST's weights ship in gan/assets/features/; for another labelled dataset (fashion_mnist, cifar10)
the same command writes them to <cache>/features/, where evaluation finds them. Image folders have
no labels: for them (or any dataset, with --kind contrastive) the command trains the label-free
encoder of gan.metrics.contrastive instead. Its 128-d
penultimate layer (before the ReLU), scaled to unit RMS on the training split, is the feature
space; its logits give the class-based metrics.
"""

from __future__ import annotations

import hashlib
import io
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan.data import cache_dir, load_images, resize
from gan.errors import ConfigError, GanError
from gan.fileio import atomic_write

SIZE = 28  # every image is seen by the classifier at 28 x 28 grey
FEATURE_DIM = 128
SHIPPED = Path(__file__).parents[1] / "assets" / "features"


class FeatureNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        # Strided convolutions rather than conv + max-pool: a quarter of the work and of the
        # activation memory, which is what bounds scoring 10k images on one core.
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # (B, 64, 7, 7)
            nn.Flatten(),
        )
        self.embed = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(FEATURE_DIM, num_classes))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [-1, 1], (B, 1, 28, 28) -> (features (B, 128), logits (B, classes))."""
        features = self.embed(self.conv(x))
        return features, self.head(features)


def prepare(images: Tensor) -> Tensor:
    """Any images in [-1, 1] (B, C, H, W) -> the classifier's input: grey, 28 px, float."""
    x = images.float()
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)  # RGB models of grey data repeat the channel
    return resize(x, SIZE).clamp_(-1, 1)


def weights_path(dataset: str) -> Path:
    """Where a dataset's feature network is: shipped, or trained by the user into the cache."""
    for folder in (SHIPPED, cache_dir() / "features"):
        if (folder / f"{dataset}.pt").exists():
            return folder / f"{dataset}.pt"
    raise ConfigError(
        f"dataset: no feature network for {dataset!r}, so its samples cannot be scored; train one "
        f"with `python -m gan.metrics.features --dataset {dataset}`, or score in a label-free "
        "space (feature_net: contrastive)")


def load_feature_net(dataset: str, device: torch.device | str = "cpu") -> tuple[FeatureNet, str]:
    """The trained network in eval mode and a hash of its weights (keys the reference cache)."""
    path = weights_path(dataset)
    raw = path.read_bytes()
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    net = FeatureNet(state["num_classes"])
    net.load_state_dict(state["weights"])
    return net.to(device).eval(), hashlib.sha256(raw).hexdigest()[:16]


@torch.no_grad()
def extract(net: FeatureNet, images: Tensor, batch: int = 500) -> tuple[Tensor, Tensor]:
    """Features and logits of images in [-1, 1], in batches; float32 on CPU."""
    device = next(net.parameters()).device
    feats, logits = [], []
    for chunk in images.split(batch):
        f, lg = net(prepare(chunk.to(device)))
        feats.append(f.float().cpu())
        logits.append(lg.float().cpu())
    return torch.cat(feats), torch.cat(logits)


def _shift(x: Tensor, gen: torch.Generator, max_shift: int = 2) -> Tensor:
    """Random translations by up to max_shift px: the one augmentation digits tolerate."""
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
    return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def train_feature_net(dataset: str, epochs: int = 8, seed: int = 0,
                      log=print) -> tuple[FeatureNet, float]:
    """Train on the training split only; return the net and its test-split accuracy."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train = load_images(dataset, SIZE, 1, split="train")
    test = load_images(dataset, SIZE, 1, split="test")
    if train.labels is None:
        raise ConfigError(f"dataset: {dataset!r} has no labels to train a classifier on")
    num_classes = int(train.labels.max()) + 1
    net = FeatureNet(num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches_per_epoch = len(train) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * batches_per_epoch)
    for epoch in range(epochs):
        net.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(train), generator=gen)
        for i in range(batches_per_epoch):
            idx = order[i * 128:(i + 1) * 128]
            _, logits = net(_shift(train.batch(idx), gen))
            loss = F.cross_entropy(logits, train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(net, test)
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, test accuracy {acc:.4%} "
            f"({time.perf_counter() - t0:.0f} s)")
    normalise_feature_scale(net.eval(), train.batch(torch.arange(len(train))))
    return net, acc


@torch.no_grad()
def normalise_feature_scale(net: FeatureNet, images: Tensor) -> float:
    """Rescale the feature layer to unit RMS on `images`, logits unchanged; return the factor.

    KID's cubic kernel (x.y/d + 1)^3 assumes features of order one: at this net's natural scale
    (RMS ~10) it is ~1e6 and its estimate is all variance.
    """
    features, _ = extract(net, images)
    factor = features.double().pow(2).mean().rsqrt().item()
    net.embed.weight.mul_(factor)
    net.embed.bias.mul_(factor)
    net.head[-1].weight.div_(factor)  # ReLU(a x) = a ReLU(x) for a > 0
    return factor


def accuracy(net: FeatureNet, data) -> float:
    net.eval()
    _, logits = extract(net, data.batch(torch.arange(len(data))))
    return (logits.argmax(1) == data.labels).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    from gan.data import stored_channels
    from gan.metrics import contrastive
    from gan.metrics.spaces import KINDS, feature_space, resolve_kind
    from gan.train import OneLineParser

    parser = OneLineParser(prog="python -m gan.metrics.features",
                           description="Train a dataset's feature network: a classifier of a "
                                       "labelled dataset, or a label-free encoder of any.")
    parser.add_argument("--dataset", default="mnist", help="a named dataset or folder:<path>")
    parser.add_argument("--kind", default="auto", choices=KINDS,
                        help="classifier (labelled datasets), contrastive (any), or auto: "
                             "the classifier where there are labels (default)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3),
                        help="channels a folder is read in (default 3)")
    parser.add_argument("--epochs", type=int, default=8, help="classifier epochs")
    parser.add_argument("--out", type=Path, help="classifier only; default: "
                                                 "<cache>/features/<dataset>.pt")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread: the same weights, run after run
    torch.use_deterministic_algorithms(True)
    try:
        if resolve_kind(args.dataset, args.kind) == "contrastive":
            channels = stored_channels(args.dataset, args.channels)
            feature_space(args.dataset, channels, "contrastive")
            train = load_images(args.dataset, contrastive.SIZE, channels)
            print(f"{contrastive.weights_file(train)}: label-free feature network of "
                  f"{args.dataset} ({len(train)} training images)")
            return 0
        net, acc = train_feature_net(args.dataset, args.epochs)
    except GanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or cache_dir() / "features" / f"{args.dataset}.pt"
    state = {"weights": net.state_dict(), "num_classes": net.head[-1].out_features,
             "test_accuracy": acc, "dataset": args.dataset}
    atomic_write(out, lambda f: torch.save(state, f))
    print(f"{out}: test accuracy {acc:.4%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
