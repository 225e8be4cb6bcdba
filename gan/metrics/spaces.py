"""Feature spaces: where every metric measures. Each kind maps images in [-1, 1] to features and,
when it knows classes, class logits; the metrics never ask which kind they got.

- `classifier`: the project's classifier of a labelled dataset (features.py); on Stacked MNIST,
  MNIST's classifier applied to each channel (features side by side, 1000 classes).
- `contrastive`: a label-free encoder trained on the dataset itself (contrastive.py), for image
  folders or any dataset.
- `inception`: the standard FID Inception v3 (2048-d pool features), from a weights file the user
  has (`inception_weights`: pt_inception-2015-12-05-6726825d.pth); never downloaded. Images are
  resized to 299 px as torch-fidelity does (TF1-compatible bilinear), so its FIDs compare with
  published ones, at the same N.
- `auto`: the classifier where the dataset has labels, the contrastive encoder where it has none.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gan.data import load_images, stored_channels
from gan.errors import ConfigError
from gan.metrics import contrastive
from gan.metrics.features import FeatureNet, load_feature_net
from gan.metrics.features import extract as classifier_extract
from gan.progress import note

LABELLED = ("mnist", "fashion_mnist", "cifar10", "stacked_mnist")
KINDS = ("auto", "classifier", "contrastive", "inception")


@dataclass(frozen=True)
class FeatureSpace:
    kind: str  # classifier | contrastive
    key: str  # a hash of the weights (and of how they are applied): keys the reference cache
    embed: Callable[[Tensor], tuple[Tensor, Tensor | None]]  # images -> (features, logits|None)


def resolve_kind(dataset: str, kind: str) -> str:
    if kind == "auto":
        return "classifier" if dataset in LABELLED else "contrastive"
    if kind == "classifier" and dataset not in LABELLED:
        raise ConfigError(f"feature_net: {dataset} has no labels to train a classifier on; "
                          "use feature_net: contrastive (or auto)")
    return kind


def feature_space(dataset: str, channels: int, kind: str = "auto",
                  device: torch.device | str = "cpu", log: Callable[[str], None] = note,
                  inception_weights: str | None = None) -> FeatureSpace:
    """The dataset's feature space of the given kind, trained first where it must be (the
    contrastive encoder, once per dataset content, then cached)."""
    kind = resolve_kind(dataset, kind)
    if kind == "inception":
        return _inception(inception_weights, device)
    if kind == "contrastive":
        train = load_images(dataset, contrastive.SIZE, stored_channels(dataset, channels))
        path = contrastive.weights_file(train)
        if not path.exists():
            contrastive.save_encoder(contrastive.train_encoder(train, log), path, train)
        net = contrastive.load_encoder(path).to(device)
        key = f"contrastive-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
        return FeatureSpace("contrastive", key,
                            lambda images: (contrastive.extract(net, images), None))
    if dataset == "stacked_mnist":
        net, net_hash = load_feature_net("mnist", device)
        return FeatureSpace("classifier", f"stacked-{net_hash}",
                            lambda images: _per_channel(net, images))
    net, net_hash = load_feature_net(dataset, device)
    return FeatureSpace("classifier", net_hash, lambda images: classifier_extract(net, images))


def _per_channel(net: FeatureNet, images: Tensor) -> tuple[Tensor, Tensor]:
    """Each channel through the digit classifier: features side by side (B, 3 x 128), and the
    1000 joint classes' log-probabilities, the channels' digits taken as independent."""
    b, c = images.shape[:2]
    features, logits = classifier_extract(net, images.reshape(b * c, 1, *images.shape[2:]))
    logp = torch.log_softmax(logits.double(), dim=1).view(b, c, -1)
    joint = logp[:, 0, :, None, None] + logp[:, 1, None, :, None] + logp[:, 2, None, None, :]
    return features.view(b, -1), joint.reshape(b, -1).float()


def _inception(weights: str | None, device: torch.device | str) -> FeatureSpace:
    from torchmetrics.image.fid import NoTrainInceptionV3

    if not weights:
        raise ConfigError("inception_weights: feature_net inception needs the path of the FID "
                          "Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"inception_weights: {path}: no such file")
    raw = path.read_bytes()
    try:
        # Tensors only, checked here: the library then unpickles the same file without that check.
        torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(path), antialias=False)
    except Exception as err:  # a truncated file, pickled code, another network's weights
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise ConfigError(f"inception_weights: {path}: not the FID Inception v3 weights "
                          f"({reason})") from None
    net = net.to(device)

    @torch.no_grad()
    def embed(images: Tensor, batch: int = 100) -> tuple[Tensor, None]:
        feats = []
        for chunk in images.split(batch):
            x = chunk.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            feats.append(net(x.to(device)).double().cpu())
        return torch.cat(feats).float(), None

    return FeatureSpace("inception", f"inception-{hashlib.sha256(raw).hexdigest()[:16]}", embed)
