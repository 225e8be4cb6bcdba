"""One evaluation protocol for every number that is reported or compared.

Real statistics come from the training split, prepared exactly as generated images are (stored at
the run's image size, then resized to the classifier's 28 px), computed once and cached on disk,
keyed by the feature network's hash, the image size and the preprocessing version. The real-data
floor scores the test split against them with the same N, since FID's bias depends on N.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gan.data import cache_dir, load_images
from gan.fileio import atomic_torch_save, atomic_write_text
from gan.metrics.distances import class_metrics, fid, gaussian_stats, kid, precision_recall
from gan.metrics.features import extract, load_feature_net

PREPROCESS_VERSION = 1  # bump when `features.prepare` or the reference protocol changes
REFERENCE_N = 10_000  # real features kept for KID and precision/recall
REFERENCE_SEED = 1234


@dataclass(frozen=True)
class Reference:
    mu: np.ndarray  # (128,) float64, over the whole training split
    sigma: np.ndarray  # (128, 128) float64
    features: Tensor  # (REFERENCE_N, 128): a fixed random subset of the training split
    class_freq: Tensor  # (classes,) training label frequencies


def _all_images(data) -> Tensor:
    return data.batch(torch.arange(len(data)))


def _reference(net, dataset: str, image_size: int, key: str) -> Reference:
    path = cache_dir() / "metrics" / f"reference-{key}.pt"
    if path.exists():
        try:
            s = torch.load(path, weights_only=True)
            return Reference(s["mu"].numpy(), s["sigma"].numpy(), s["features"], s["class_freq"])
        except Exception:
            pass  # a broken cache file is rebuilt below
    train = load_images(dataset, image_size, 1, split="train")
    features, _ = extract(net, _all_images(train))
    mu, sigma = gaussian_stats(features)
    pick = torch.randperm(len(features), generator=torch.Generator().manual_seed(REFERENCE_SEED))
    freq = torch.bincount(train.labels).double() / len(train)
    atomic_torch_save({"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma),
                       "features": features[pick[:REFERENCE_N]].clone(), "class_freq": freq}, path)
    return Reference(mu, sigma, features[pick[:REFERENCE_N]].clone(), freq)


class Evaluator:
    """Scores images or a generator against one dataset's training split."""

    def __init__(self, dataset: str, image_size: int, device: torch.device | str = "cpu"):
        self.dataset, self.image_size, self.device = dataset, image_size, torch.device(device)
        self.net, net_hash = load_feature_net(dataset, self.device)
        self.key = f"{dataset}-{image_size}px-{net_hash}-p{PREPROCESS_VERSION}"
        self.reference = _reference(self.net, dataset, image_size, self.key)

    def score_features(self, features: Tensor, logits: Tensor) -> dict[str, float]:
        ref = self.reference
        n_real = min(len(features), len(ref.features))
        return {
            **fid((ref.mu, ref.sigma), features),
            **kid(ref.features, features),
            **precision_recall(ref.features[:n_real], features),
            **class_metrics(logits, ref.class_freq),
        }

    def score_images(self, images: Tensor) -> dict[str, float]:
        """Metrics of images in [-1, 1] (N, C, H, W), any size and channels."""
        return self.score_features(*extract(self.net, images))

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
        n = min(n, REFERENCE_N)  # the test split holds 10 000 images
        path = cache_dir() / "metrics" / f"floor-{self.key}-n{n}.json"
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        test = load_images(self.dataset, self.image_size, 1, split="test")
        pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(REFERENCE_SEED))
        metrics = self.score_images(test.batch(pick[:n]))
        floor = {f"{k}_floor": v for k, v in metrics.items()}
        atomic_write_text(path, json.dumps(floor))
        return floor

    def classifier_accuracy(self) -> float:
        test = load_images(self.dataset, self.image_size, 1, split="test")
        _, logits = extract(self.net, _all_images(test))
        return (logits.argmax(1) == test.labels).float().mean().item()
