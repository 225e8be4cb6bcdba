"""Latent distributions by name: each draws (n, latent_dim) noise and says how to walk it.

The seed tutorials use N(0, 1) (the DCGANs), U(-1, 1) (the basic GAN) and report U[0, 1) as the
noise that collapsed; all three are kinds here, so a study can search the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Draw = Callable[[tuple[int, int], torch.device | str, torch.Generator | None], Tensor]


@dataclass(frozen=True)
class Latent:
    draw: Draw
    # A Gaussian's mass lies near a sphere, so walks between two points follow it (slerp); a
    # cube's does not, so walks there are straight lines.
    spherical: bool


def _uniform(low: float, high: float) -> Draw:
    def draw(shape, device, generator):
        return torch.rand(shape, device=device, generator=generator).mul_(high - low).add_(low)
    return draw


LATENTS: dict[str, Latent] = {
    "normal": Latent(lambda shape, device, generator:
                     torch.randn(shape, device=device, generator=generator), spherical=True),
    "uniform": Latent(_uniform(-1.0, 1.0), spherical=False),
    "uniform01": Latent(_uniform(0.0, 1.0), spherical=False),
}


def draw_latent(name: str, n: int, latent_dim: int, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None) -> Tensor:
    """(n, latent_dim) noise of the named distribution."""
    return LATENTS[name].draw((n, latent_dim), device, generator)
