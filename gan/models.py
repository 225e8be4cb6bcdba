"""Generator/discriminator pairs by name. Models only map tensors; discriminators return logits.

`width` is pytorch/examples' ngf = ndf: dcgan width 64 at 32 px has G channels 512/256/128 (the
PyTorch DCGAN-on-MNIST network) and at 64 px 512/256/128/64 (the DCGAN faces tutorial); the mlp's
hidden layers are `mlp_g_layers` and `mlp_d_layers` as listed at width 64, scaled by width/64.
Activations, initialisations and outputs are kinds by name, chosen independently.
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


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(True),
    "leaky_relu": lambda: nn.LeakyReLU(0.2, True),
}


class SigmoidOutput(nn.Module):
    """A sigmoid output carried in [-1, 1] as 2 sigmoid(a) - 1, so that samples, grids and
    metrics all read one range; the discriminator maps images back to [0, 1] first, so it sees
    exactly what a sigmoid generator and [0, 1] data would give it."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(a) * 2 - 1


class UnitInput(nn.Module):
    """[-1, 1] images read in [0, 1], the range a sigmoid generator's data has."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1) / 2


# the generator's output activation, and how its discriminator reads images
OUTPUTS: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module]]] = {
    "tanh": (nn.Tanh, nn.Identity),
    "sigmoid": (SigmoidOutput, UnitInput),
}


class DCGANGenerator(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        start, mults = DCGAN_LAYOUT[cfg.image_size]
        chans = [cfg.width * m for m in mults]
        act, bias = ACTIVATIONS[g_activation(cfg)], cfg.conv_bias
        # (B, latent, 1, 1) -> (B, chans[0], start, start)
        layers = [nn.ConvTranspose2d(cfg.latent_dim, chans[0], start, 1, 0, bias=bias),
                  nn.BatchNorm2d(chans[0]), act()]
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            # each block doubles the side: (B, c_in, s, s) -> (B, c_out, 2s, 2s)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias),
                       nn.BatchNorm2d(c_out), act()]
        # -> (B, channels, image_size, image_size)
        layers += [nn.ConvTranspose2d(chans[-1], cfg.channels, 4, 2, 1, bias=bias),
                   OUTPUTS[cfg.output][0]()]
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
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        start, mults = DCGAN_LAYOUT[cfg.image_size]
        chans = [cfg.width * m for m in reversed(mults)]
        act, bias, norm = ACTIVATIONS[d_activation(cfg)], cfg.conv_bias, d_norm(cfg)
        self.read = OUTPUTS[cfg.output][1]()
        # (B, channels, S, S) -> (B, chans[0], S/2, S/2); no normalisation on the input layer
        layers = [nn.Conv2d(cfg.channels, chans[0], 4, 2, 1, bias=bias), act()]
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            # each block halves the side
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=bias), conv_norm(norm, c_out), act()]
        # (B, chans[-1], start, start) -> (B, 1, 1, 1)
        layers += [nn.Conv2d(chans[-1], 1, start, 1, 0, bias=bias)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.read(x)).view(-1)


class MLPGenerator(nn.Module):
    """Hidden layers `mlp_g_layers` (scaled by width / 64), BatchNorm after all but the first."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.shape = (cfg.channels, cfg.image_size, cfg.image_size)
        hidden = [_scaled(n, cfg.width) for n in cfg.mlp_g_layers]
        act = ACTIVATIONS[g_activation(cfg)]
        layers: list[nn.Module] = [nn.Linear(cfg.latent_dim, hidden[0]), act()]
        for n_in, n_out in zip(hidden, hidden[1:], strict=False):
            layers += [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), act()]
        layers += [nn.Linear(hidden[-1], math.prod(self.shape)), OUTPUTS[cfg.output][0]()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.shape)


class MLPDiscriminator(nn.Module):
    """Hidden layers `mlp_d_layers` (scaled by width / 64), `d_norm` after all but the first."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        hidden = [_scaled(n, cfg.width) for n in cfg.mlp_d_layers]
        act, norm = ACTIVATIONS[d_activation(cfg)], d_norm(cfg)
        self.read = OUTPUTS[cfg.output][1]()
        # as in the conv net, no normalisation on the input layer
        layers: list[nn.Module] = [
            nn.Flatten(), nn.Linear(cfg.channels * cfg.image_size ** 2, hidden[0]), act()]
        for n_in, n_out in zip(hidden, hidden[1:], strict=False):
            layers += [nn.Linear(n_in, n_out), linear_norm(norm, n_out), act()]
        layers += [nn.Linear(hidden[-1], 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.read(x)).view(-1)


def _scaled(n: int, width: int) -> int:
    return max(1, round(n * width / 64))


WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights, N(1, 0.02) normalisation scales (Radford et al. 2015)."""
    if isinstance(module, WEIGHT_LAYERS):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, NORM_LAYERS) and getattr(module, "weight", None) is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def xavier_init(module: nn.Module) -> None:
    """Glorot-uniform weights, zero biases (TensorFlow's and the basic GAN's choice)."""
    if isinstance(module, WEIGHT_LAYERS):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# the weights' initialisation; "default" keeps PyTorch's own (Kaiming-uniform, as PyTorch's
# DCGAN-on-MNIST tutorial and the MLP tutorials leave it)
INITS: dict[str, Callable[[nn.Module], None]] = {
    "dcgan": dcgan_init,
    "xavier": xavier_init,
    "default": lambda module: None,
}


def initialise(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """`cfg.init` applied to every layer, then every weight layer's bias set to `bias_init`."""
    model.apply(INITS[weight_init(cfg)])
    if cfg.bias_init is not None:
        for layer in model.modules():
            if isinstance(layer, WEIGHT_LAYERS) and layer.bias is not None:
                nn.init.constant_(layer.bias, cfg.bias_init)
    return model


def d_norm(cfg: TrainConfig) -> str:
    """The discriminator's normalisation; `auto` is what the seed tutorials use, except that
    WGAN-GP's penalty is per sample, which BatchNorm's cross-sample coupling would break."""
    if cfg.d_norm != "auto":
        return cfg.d_norm
    return "batch" if cfg.arch == "dcgan" and cfg.loss != "wgan" else "none"


def g_activation(cfg: TrainConfig) -> str:
    """auto: ReLU in the DCGAN generator (Radford et al.), LeakyReLU 0.2 in the MLP's."""
    if cfg.g_activation != "auto":
        return cfg.g_activation
    return "relu" if cfg.arch == "dcgan" else "leaky_relu"


def d_activation(cfg: TrainConfig) -> str:
    return "leaky_relu" if cfg.d_activation == "auto" else cfg.d_activation


def weight_init(cfg: TrainConfig) -> str:
    """auto: the DCGAN paper's N(0, 0.02) for dcgan, PyTorch's default for mlp."""
    if cfg.init != "auto":
        return cfg.init
    return "dcgan" if cfg.arch == "dcgan" else "default"


ARCHITECTURES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "mlp": (MLPGenerator, MLPDiscriminator),
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
}


def with_spectral_norm(module: nn.Module) -> nn.Module:
    """Every weight layer of `module` divided by its largest singular value (Miyato et al. 2018),
    estimated by one power iteration per training forward pass."""
    for layer in list(module.modules()):
        if isinstance(layer, nn.Linear | nn.Conv2d):
            spectral_norm(layer)
    return module


def build_models(cfg: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for the config's architecture, freshly initialised."""
    generator, discriminator = ARCHITECTURES[cfg.arch]
    # both built before either is initialised: the order in which they draw from the RNG
    g, d = generator(cfg), discriminator(cfg)
    g, d = initialise(g, cfg), initialise(d, cfg)
    return g, with_spectral_norm(d) if cfg.spectral_norm else d


def build_generator(cfg: TrainConfig) -> nn.Module:
    return build_models(cfg)[0]
