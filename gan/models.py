"""Generator/discriminator pairs by name. Models only map tensors; discriminators return logits.

`width` is pytorch/examples' ngf = ndf: dcgan width 64 at 32 px has G channels 512/256/128 (the
PyTorch DCGAN-on-MNIST network) and at 64 px 512/256/128/64 (the DCGAN faces tutorial); mlp
width 64 is the Goodfellow-style layer list 128-256-512-1024, scaled by width/64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gan.config import TrainConfig

# image size -> (side of the first feature map, channel multipliers of width, coarse to fine)
DCGAN_LAYOUT = {28: (7, (4, 2)), 32: (4, (8, 4, 2)), 64: (4, (8, 4, 2, 1))}


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int, width: int, image_size: int, channels: int):
        super().__init__()
        start, mults = DCGAN_LAYOUT[image_size]
        chans = [width * m for m in mults]
        # (B, latent, 1, 1) -> (B, chans[0], start, start)
        layers = [nn.ConvTranspose2d(latent_dim, chans[0], start, 1, 0, bias=False),
                  nn.BatchNorm2d(chans[0]), nn.ReLU(True)]
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            # each block doubles the side: (B, c_in, s, s) -> (B, c_out, 2s, 2s)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(True)]
        # -> (B, channels, image_size, image_size) in [-1, 1]
        layers += [nn.ConvTranspose2d(chans[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


def conv_norm(kind: str, channels: int) -> nn.Module:
    """A normalisation of (B, C, H, W) feature maps; layer norm is over C, H and W together."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def linear_norm(kind: str, features: int) -> nn.Module:
    """A normalisation of (B, F) features (instance norm has no meaning here: the config says)."""
    if kind == "batch":
        return nn.BatchNorm1d(features)
    if kind == "layer":
        return nn.LayerNorm(features)
    return nn.Identity()


class DCGANDiscriminator(nn.Module):
    def __init__(self, width: int, image_size: int, channels: int, norm: str):
        super().__init__()
        start, mults = DCGAN_LAYOUT[image_size]
        chans = [width * m for m in reversed(mults)]
        # (B, channels, S, S) -> (B, chans[0], S/2, S/2); no normalisation on the input layer
        layers = [nn.Conv2d(channels, chans[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            # each block halves the side
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), conv_norm(norm, c_out),
                       nn.LeakyReLU(0.2, True)]
        # (B, chans[-1], start, start) -> (B, 1, 1, 1)
        layers += [nn.Conv2d(chans[-1], 1, start, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, width: int, image_size: int, channels: int):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        hidden = [_scaled(n, width) for n in (128, 256, 512, 1024)]
        layers: list[nn.Module] = [nn.Linear(latent_dim, hidden[0]), nn.LeakyReLU(0.2, True)]
        for n_in, n_out in zip(hidden, hidden[1:], strict=False):
            layers += [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.LeakyReLU(0.2, True)]
        layers += [nn.Linear(hidden[-1], math.prod(self.shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, width: int, image_size: int, channels: int, norm: str):
        super().__init__()
        hidden = [_scaled(n, width) for n in (512, 256)]
        # as in the conv net, no normalisation on the input layer
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * image_size * image_size, hidden[0]), nn.LeakyReLU(0.2, True),
            nn.Linear(hidden[0], hidden[1]), linear_norm(norm, hidden[1]),
            nn.LeakyReLU(0.2, True),
            nn.Linear(hidden[1], 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def _scaled(n: int, width: int) -> int:
    return max(1, round(n * width / 64))


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) conv weights, N(1, 0.02) BatchNorm scales (Radford et al. 2015)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm | nn.InstanceNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def d_norm(cfg: TrainConfig) -> str:
    """The discriminator's normalisation; `auto` is what the seed tutorials use, except that
    WGAN-GP's penalty is per sample, which BatchNorm's cross-sample coupling would break."""
    if cfg.d_norm != "auto":
        return cfg.d_norm
    return "batch" if cfg.arch == "dcgan" and cfg.loss != "wgan" else "none"


def _dcgan(cfg: TrainConfig) -> tuple[nn.Module, nn.Module]:
    g = DCGANGenerator(cfg.latent_dim, cfg.width, cfg.image_size, cfg.channels)
    d = DCGANDiscriminator(cfg.width, cfg.image_size, cfg.channels, d_norm(cfg))
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    return g, d


def _mlp(cfg: TrainConfig) -> tuple[nn.Module, nn.Module]:
    g = MLPGenerator(cfg.latent_dim, cfg.width, cfg.image_size, cfg.channels)
    return g, MLPDiscriminator(cfg.width, cfg.image_size, cfg.channels, d_norm(cfg))


def with_spectral_norm(module: nn.Module) -> nn.Module:
    """Every weight layer of `module` divided by its largest singular value (Miyato et al. 2018),
    estimated by one power iteration per training forward pass."""
    for layer in list(module.modules()):
        if isinstance(layer, nn.Linear | nn.Conv2d):
            spectral_norm(layer)
    return module


ARCHITECTURES: dict[str, Callable[[TrainConfig], tuple[nn.Module, nn.Module]]] = {
    "mlp": _mlp,
    "dcgan": _dcgan,
}


def build_models(cfg: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for the config's architecture, freshly initialised."""
    g, d = ARCHITECTURES[cfg.arch](cfg)
    return g, with_spectral_norm(d) if cfg.spectral_norm else d


def build_generator(cfg: TrainConfig) -> nn.Module:
    return build_models(cfg)[0]
