"""Metric math on features and classifier logits. Each metric returns {name: value}.

Adding a metric is adding a function here and a line in `gan.metrics.evaluate.score`.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor


def gaussian_stats(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance in float64 (FID's cancellations need the precision)."""
    x = features.double().numpy()
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) (Heusel et al. 2017)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A near-singular product: regularise, as the reference implementation does.
        eps = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(real_stats: tuple[np.ndarray, np.ndarray], fake: Tensor) -> dict[str, float]:
    return {"fid": frechet_distance(*real_stats, *gaussian_stats(fake))}


def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> dict[str, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets
    (Binkowski et al. 2018). Kernels in float32, sums in float64: the estimate is a difference of
    large sums, and float64 sums keep it to ~1e-6 relative at a quarter of float64's cost."""
    m = min(subset_size, len(real), len(fake))
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = real.float(), fake.float()
    d = x_all.shape[1]

    def kernel_sum(a: Tensor, b: Tensor, drop_diagonal: bool) -> Tensor:
        k = (a @ b.T).div_(d).add_(1).pow_(3)
        total = k.sum(dtype=torch.float64)
        return total - k.diagonal().sum(dtype=torch.float64) if drop_diagonal else total

    values = []
    for _ in range(subsets):
        x = x_all[torch.randperm(len(x_all), generator=gen)[:m]]
        y = y_all[torch.randperm(len(y_all), generator=gen)[:m]]
        within = kernel_sum(x, x, True) + kernel_sum(y, y, True)
        values.append((within / (m * (m - 1)) - 2 * kernel_sum(x, y, False) / m**2).item())
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values))}


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """|a_i|^2 - 2 a_i.b_j + |b_j|^2, the matmul and one norm in a single BLAS call. Rounding can
    leave tiny negatives; they compare correctly, so no clamping pass."""
    return torch.addmm((b * b).sum(1)[None, :], a, b.T, alpha=-2).add_((a * a).sum(1, keepdim=True))


def _knn_radii(x: Tensor, ks: tuple[int, ...], chunk: int) -> list[Tensor]:
    """For each k: squared distance from each row to its k-th nearest neighbour (itself
    excluded). One pass serves every k."""
    # the k+1 smallest distances include the zero distance of each point to itself
    nearest = torch.cat([squared_distances(x[i:i + chunk], x).topk(max(ks) + 1, dim=1,
                                                           largest=False).values
                         for i in range(0, len(x), chunk)])
    return [nearest[:, k] for k in ks]


def manifold_metrics(real: Tensor, fake: Tensor, k: int = 3, k_dc: int = 5,
                     chunk: int = 1024) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): the share of fakes inside the
    real k-NN manifold, and of reals inside the fake one. Density and coverage (Naeem et al.
    2020, k_dc = 5 as there): how many real k_dc-NN balls hold each fake on average (/ k_dc; 1
    for a perfect generator, above 1 where fakes crowd dense real regions), and the share of
    real balls holding at least one fake; unlike precision and recall, neither is fooled by
    outliers. One pass over the fake-real distances serves all four; chunks bound the memory to
    chunk x N."""
    real, fake = real.float(), fake.float()
    r_real, r_real_dc = _knn_radii(real, (k, k_dc), chunk)
    (r_fake,) = _knn_radii(fake, (k,), chunk)
    fake_inside = torch.zeros(len(fake), dtype=torch.bool)
    real_inside = torch.zeros(len(real), dtype=torch.bool)
    covered = torch.zeros(len(real), dtype=torch.bool)
    balls = 0
    for i in range(0, len(fake), chunk):
        d = squared_distances(fake[i:i + chunk], real)  # (chunk, N_real)
        fake_inside[i:i + chunk] = (d <= r_real[None, :]).any(dim=1)
        real_inside |= (d <= r_fake[i:i + chunk, None]).any(dim=0)
        in_ball = d <= r_real_dc[None, :]
        balls += int(in_ball.sum())
        covered |= in_ball.any(dim=0)
    return {"precision": fake_inside.float().mean().item(),
            "recall": real_inside.float().mean().item(),
            "density": balls / (k_dc * len(fake)), "coverage": covered.float().mean().item()}


def class_metrics(logits: Tensor, train_class_freq: Tensor, confidence: float = 0.9,
                  min_share: float = 0.1) -> dict[str, float]:
    """Mode coverage, mode KL and the classifier score (the inception-score analogue).

    A mode is covered when its confidently classified samples reach `min_share` of what its
    training frequency would give it (and at least one): 20 of 2000 samples for a digit of MNIST,
    1 of 2000 for one of Stacked MNIST's 1000 modes."""
    probs = torch.softmax(logits.double(), dim=1)
    n, classes = probs.shape
    top, label = probs.max(dim=1)
    confident = torch.bincount(label[top >= confidence], minlength=classes)
    needed = (min_share * n * train_class_freq.double()).clamp(min=1)
    modes = int(((confident >= needed) & (train_class_freq > 0)).sum())
    p_gen = torch.bincount(label, minlength=classes).double() / n
    p_train = train_class_freq.double()
    nz = p_gen > 0
    mode_kl = (p_gen[nz] * (p_gen[nz] / p_train[nz]).log()).sum().item()
    p_y = probs.mean(dim=0)
    kl = (probs * (probs.clamp_min(1e-30).log() - p_y.log())).sum(dim=1)
    return {"modes": modes, "mode_kl": mode_kl, "classifier_score": kl.mean().exp().item()}
