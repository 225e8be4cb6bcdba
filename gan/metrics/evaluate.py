"""One evaluation protocol for every number that is reported or compared.

Real statistics come from the training split, prepared exactly as generated images are (stored at
the run's image size, then resized to the feature space's input), computed once and cached on
disk, keyed by the feature space's hash, the image size and the preprocessing version. The
real-data floor scores the test split (a folder's held-out images) against them with the same N,
since FID's bias depends on N: `max_n` is the most a floor, and so a final score, can use.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gan.config import TrainConfig
from gan.data import MIN_SPLIT, ImageData, cache_dir, data_hash, load_images
from gan.errors import DatasetError
from gan.fileio import atomic_torch_save, atomic_write_text
from gan.metrics.distances import class_metrics, fid, gaussian_stats, kid, manifold_metrics
from gan.metrics.spaces import FeatureSpace, feature_space, resolve_kind
from gan.progress import note

PREPROCESS_VERSION = 2  # bump when a space's preprocessing or the reference protocol changes
REFERENCE_N = 10_000  # real features kept for KID and precision/recall
METRICS_VERSION = "m2"  # of the metric set a cached floor holds: a new metric, a new floor
REFERENCE_SEED = 1234
MIN_TRAIN, MIN_HELD_OUT = 100, 10  # fewer real images than these make no reference or floor


@dataclass(frozen=True)
class Reference:
    mu: np.ndarray  # (D,) float64, over the whole training split
    sigma: np.ndarray  # (D, D) float64
    features: Tensor  # (REFERENCE_N, D): a fixed random subset of the training split
    class_freq: Tensor | None  # (classes,) training label frequencies, where the space has classes


def embed_data(space: FeatureSpace, data: ImageData, chunk: int = 4096
               ) -> tuple[Tensor, Tensor | None]:
    """Features (and logits) of every image of `data`, a chunk of floats at a time."""
    parts = [space.embed(data.batch(idx)) for idx in torch.arange(len(data)).split(chunk)]
    logits = None if parts[0][1] is None else torch.cat([lg for _, lg in parts])
    return torch.cat([f for f, _ in parts]), logits


def check_scorable(dataset: str, train: ImageData, test: ImageData) -> None:
    if len(train) < MIN_TRAIN or len(test) < MIN_HELD_OUT:
        rule = (f"; folders of under {MIN_SPLIT} images hold none out"
                if dataset.startswith("folder:") else "")
        raise DatasetError(
            f"{dataset}: {len(train)} training and {len(test)} held-out images; scoring needs "
            f"at least {MIN_TRAIN} and {MIN_HELD_OUT}{rule}")


def _reference(space: FeatureSpace, train: ImageData, key: str) -> Reference:
    path = cache_dir() / "metrics" / f"reference-{key}.pt"
    if path.exists():
        try:
            s = torch.load(path, weights_only=True)
            return Reference(s["mu"].numpy(), s["sigma"].numpy(), s["features"], s["class_freq"])
        except Exception:
            pass  # a broken cache file is rebuilt below
    features, logits = embed_data(space, train)
    mu, sigma = gaussian_stats(features)
    pick = torch.randperm(len(features), generator=torch.Generator().manual_seed(REFERENCE_SEED))
    freq = None
    if logits is not None and train.labels is not None:
        freq = torch.bincount(train.labels, minlength=logits.shape[1]).double() / len(train)
    kept = features[pick[:REFERENCE_N]].clone()
    atomic_torch_save({"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma),
                       "features": kept, "class_freq": freq}, path)
    return Reference(mu, sigma, kept, freq)


class Evaluator:
    """Scores images or a generator against one dataset's training split, in one feature space
    (`feature_net`: auto, classifier, contrastive or inception; see gan.metrics.spaces)."""

    def __init__(self, dataset: str, image_size: int, device: torch.device | str = "cpu",
                 channels: int = 1, feature_net: str = "auto", log=note,
                 inception_weights: str | None = None):
        self.dataset, self.image_size, self.device = dataset, image_size, torch.device(device)
        self.channels = channels
        # Refusals first: a classifier never trained or a missing weights file need no data to
        # be refused, and a folder too small to score must not cost an encoder's training.
        space = None
        if resolve_kind(dataset, feature_net) != "contrastive":
            space = feature_space(dataset, channels, feature_net, self.device, log,
                                  inception_weights)
        train = load_images(dataset, image_size, channels, split="train")
        test = self.test_images()
        check_scorable(dataset, train, test)
        # the most samples a floor, and so a final score, can have: FID's bias depends on N
        self.max_n = min(REFERENCE_N, len(test))
        self.space = space or feature_space(dataset, channels, feature_net, self.device, log)
        # A folder is keyed by its images, not its path: another folder, or this one changed,
        # gets its own reference in every space.
        source = f"folder-{data_hash(train)}" if dataset.startswith("folder:") else dataset
        self.key = f"{source}-{image_size}px-{channels}ch-{self.space.key}-p{PREPROCESS_VERSION}"
        self.reference = _reference(self.space, train, self.key)

    @classmethod
    def of(cls, cfg: TrainConfig, device: torch.device | str = "cpu") -> Evaluator:
        """The evaluator of a run's config: its data, image size, channels and feature space."""
        return cls(cfg.dataset, cfg.image_size, device, cfg.channels, cfg.feature_net,
                   inception_weights=cfg.inception_weights)

    def test_images(self) -> ImageData:
        return load_images(self.dataset, self.image_size, self.channels, split="test")

    def score_features(self, features: Tensor, logits: Tensor | None) -> dict[str, float]:
        ref = self.reference
        n_real = min(len(features), len(ref.features))
        metrics = {
            **fid((ref.mu, ref.sigma), features),
            **kid(ref.features, features),
            **manifold_metrics(ref.features[:n_real], features),
        }
        if logits is not None and ref.class_freq is not None:
            metrics.update(class_metrics(logits, ref.class_freq))
        return metrics

    def score_images(self, images: Tensor) -> dict[str, float]:
        """Metrics of images in [-1, 1] (N, C, H, W), any size and channels."""
        return self.score_features(*self.space.embed(images))

    @torch.no_grad()
    def score_generator(self, generator: torch.nn.Module, sample_latent, n: int, seed: int = 0,
                        batch: int = 500) -> dict[str, float]:
        """Metrics of n samples; `sample_latent(k, generator=...)` draws latents.

        Latents come from a dedicated seeded RNG: evaluating never moves the training RNG, so a
        run's losses do not depend on how often it is evaluated.
        """
        rng = torch.Generator(self.device).manual_seed(seed)
        was_training = generator.training
        generator.eval()
        t0 = time.perf_counter()
        images = torch.cat([generator(sample_latent(min(batch, n - i), rng)).float().cpu()
                            for i in range(0, n, batch)])
        generator.train(was_training)
        gen_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = self.score_images(images)
        return {**metrics, "n": n, "gen_seconds": gen_seconds,
                "metric_seconds": time.perf_counter() - t0}

    def floor(self, n: int) -> dict[str, float]:
        """The same metrics for n test-split images: what a perfect generator would score."""
        test = self.test_images()
        n = min(n, self.max_n)
        path = cache_dir() / "metrics" / f"floor-{self.key}-n{n}-{METRICS_VERSION}.json"
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(REFERENCE_SEED))
        metrics = self.score_images(test.batch(pick[:n]))
        floor = {f"{k}_floor": v for k, v in metrics.items()}
        atomic_write_text(path, json.dumps(floor))
        return floor

    def classifier_accuracy(self) -> float | None:
        """The space's accuracy on the labelled test split; None for a label-free space."""
        test = self.test_images()
        _, logits = embed_data(self.space, test)
        if logits is None or test.labels is None:
            return None
        return (logits.argmax(1) == test.labels).float().mean().item()
