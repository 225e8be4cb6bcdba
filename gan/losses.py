"""GAN objectives as pure functions of discriminator logits, looked up by name.

Each loss is a pair: `d(real_logits, fake_logits, real_label)` for the discriminator and
`g(fake_logits)` for the generator. `real_label` < 1 is one-sided label smoothing (Salimans et al.
2016); losses without labels (hinge, wgan) never see a value other than 1 (the config forbids it).
Penalties live beside the losses, each a function `(D, real, fake) -> Tensor` with the weight
and interval a config gives it, and are added to D's loss in the training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gan.config import TrainConfig

Critic = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Loss:
    d: Callable[[Tensor, Tensor, float], Tensor]
    g: Callable[[Tensor], Tensor]


def _bce(logits: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _d_bce(real: Tensor, fake: Tensor, real_label: float = 1.0) -> Tensor:
    return _bce(real, real_label) + _bce(fake, 0.0)


def _g_minimax(fake: Tensor) -> Tensor:
    # Goodfellow et al.'s original objective: minimise log(1 - D(G(z))) = -BCE(fake, 0).
    return -_bce(fake, 0.0)


def _g_non_saturating(fake: Tensor) -> Tensor:
    # Maximise log D(G(z)): strong gradients while D confidently rejects fakes.
    return _bce(fake, 1.0)


def _d_hinge(real: Tensor, fake: Tensor, real_label: float = 1.0) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def _g_mean_critic(fake: Tensor) -> Tensor:
    return -fake.mean()


def _d_lsgan(real: Tensor, fake: Tensor, real_label: float = 1.0) -> Tensor:
    return 0.5 * ((real - real_label).pow(2).mean() + fake.pow(2).mean())


def _g_lsgan(fake: Tensor) -> Tensor:
    return 0.5 * (fake - 1.0).pow(2).mean()


def _d_wasserstein(real: Tensor, fake: Tensor, real_label: float = 1.0) -> Tensor:
    return fake.mean() - real.mean()


LOSSES: dict[str, Loss] = {
    "bce": Loss(_d_bce, _g_minimax),
    "ns": Loss(_d_bce, _g_non_saturating),
    "hinge": Loss(_d_hinge, _g_mean_critic),
    "lsgan": Loss(_d_lsgan, _g_lsgan),
    "wgan": Loss(_d_wasserstein, _g_mean_critic),
}


def gradient_penalty(critic: Critic, real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): (||grad D(x_hat)|| - 1)^2 on random interpolates."""
    alpha = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


def r1_penalty(critic: Critic, real: Tensor, fake: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): ||grad D(x)||^2 / 2 at real data x: D flat on the data."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return 0.5 * grad.flatten(1).pow(2).sum(dim=1).mean()


@dataclass(frozen=True)
class Penalty:
    fn: Callable[[Critic, Tensor, Tensor], Tensor]
    weight: float
    every: int  # taken every `every` D updates, its weight multiplied by `every` (lazy)

    def due(self, d_update: int) -> bool:
        return d_update % self.every == 0


def penalties(cfg: TrainConfig) -> list[Penalty]:
    """The penalties a config adds to D's loss: WGAN-GP's under loss wgan, R1 where weighted."""
    out = []
    if cfg.loss == "wgan":
        out.append(Penalty(gradient_penalty, cfg.gp_weight, 1))
    if cfg.r1_weight:
        out.append(Penalty(r1_penalty, cfg.r1_weight, cfg.r1_every))
    return out
