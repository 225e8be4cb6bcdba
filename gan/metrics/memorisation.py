"""Does a generator copy its training images? Nearest neighbours in the metrics' feature space.

A generator that memorises puts its samples closer to training images than new real images of
the same distribution are: so each sample's distance to its nearest training image is compared
with the same distance for held-out real images (the test split), which a generator cannot
have seen. Similar distributions: no sign of copying; samples much closer: copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gan.data import ImageData, cache_dir, load_images
from gan.fileio import atomic_torch_save
from gan.metrics.distances import squared_distances
from gan.metrics.evaluate import REFERENCE_SEED, Evaluator, embed_data


@dataclass(frozen=True)
class Memorisation:
    samples: Tensor  # (shown, C, H, W) in [-1, 1]
    neighbours: Tensor  # (shown, k, C, H, W): each shown sample's nearest training images
    sample_distances: Tensor  # (n,) each sample's distance to its nearest training image
    held_out_distances: Tensor  # (n,) each held-out real image's, to its nearest training image

    @property
    def median_ratio(self) -> float:
        """Median sample distance over median held-out distance: about 1 for a generator that
        does not copy (or generalises as real data does), well below 1 for one that copies."""
        return (self.sample_distances.median() / self.held_out_distances.median()).item()

    @property
    def near_copies(self) -> float:
        """The share of samples nearer a training image than 99% of held-out images are."""
        threshold = torch.quantile(self.held_out_distances, 0.01)
        return (self.sample_distances < threshold).float().mean().item()


def nearest(queries: Tensor, pool: Tensor, k: int = 1, chunk: int = 1024
            ) -> tuple[Tensor, Tensor]:
    """Euclidean distances (q, k) and indices (q, k) of each query's k nearest rows of pool."""
    dists, index = [], []
    for i in range(0, len(queries), chunk):
        d, j = squared_distances(queries[i:i + chunk].float(), pool.float()).topk(k, dim=1,
                                                                          largest=False)
        dists.append(d.clamp_(min=0).sqrt_())
        index.append(j)
    return torch.cat(dists), torch.cat(index)


def training_features(evaluator: Evaluator) -> tuple[ImageData, Tensor]:
    """The training split and its features in the evaluator's space, cached beside the
    reference statistics (the report asks again for every study of the same data)."""
    train = load_images(evaluator.dataset, evaluator.image_size, evaluator.channels)
    path = cache_dir() / "metrics" / f"train-features-{evaluator.key}.pt"
    if path.exists():
        try:
            return train, torch.load(path, weights_only=True)
        except Exception:
            pass  # a broken cache file is rebuilt below
    features = embed_data(evaluator.space, train)[0]
    atomic_torch_save(features, path)
    return train, features


@torch.no_grad()
def memorisation_check(evaluator: Evaluator, generator: torch.nn.Module, sample_latent,
                       n: int = 2000, shown: int = 16, k: int = 3, seed: int = 0
                       ) -> Memorisation:
    """n samples' and n held-out images' nearest-training-image distances; `shown` samples with
    their k nearest training images. `sample_latent(m, rng)` draws latents; `generator` is
    ready to sample (in eval mode, or an exported program, which has no modes)."""
    train, train_features = training_features(evaluator)
    rng = torch.Generator().manual_seed(seed)
    samples = torch.cat([generator(sample_latent(min(500, n - i), rng)).float().cpu()
                         for i in range(0, n, 500)])
    test = evaluator.test_images()
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(REFERENCE_SEED))
    held_out = test.batch(pick[:n])
    d_samples, index = nearest(evaluator.space.embed(samples)[0], train_features, k)
    d_held_out, _ = nearest(evaluator.space.embed(held_out)[0], train_features, 1)
    neighbours = train.batch(index[:shown].reshape(-1))
    return Memorisation(samples[:shown], neighbours.reshape(shown, k, *neighbours.shape[1:]),
                        d_samples[:, 0], d_held_out[:, 0])
