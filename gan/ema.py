"""An exponential moving average of the generator's weights (Yazici et al. 2019).

The average is the generator a run evaluates, samples, saves and reports; the raw weights only
train. Averaged weights do not match the raw generator's BatchNorm statistics, so before the
average is used its statistics are measured afresh under its own weights (BigGAN's "standing
statistics"), from latents of a dedicated seeded RNG: the result depends on the weights alone,
which keeps a resumed run exact.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

# Batches of latents whose cumulative statistics become the average's BatchNorm statistics.
STANDING_BATCHES = 8
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
LatentSampler = Callable[[int, torch.Generator], Tensor]


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay after `updates` updates: warmed up as (1 + t) / (10 + t), as TensorFlow's
    ExponentialMovingAverage does, so a short run's average is not mostly its initialisation."""
    return min(decay, (1 + updates) / (10 + updates))


class EMA:
    def __init__(self, model: nn.Module, decay: float, batch_size: int,
                 sample_latent: LatentSampler, seed: int, updates: int = 0) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, updates
        self.batch_size, self.sample_latent, self.seed = batch_size, sample_latent, seed
        self._stale = True

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards `model`'s current weights."""
        self.updates += 1
        weight = 1.0 - ema_decay_at(self.decay, self.updates)
        for avg, raw in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(raw.detach(), weight)
        self._stale = True

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state)
        self._stale = True

    def generator(self) -> nn.Module:
        """The averaged generator, in eval mode, its BatchNorm statistics its own."""
        if self._stale:
            self._measure_statistics()
            self._stale = False
        return self.model

    @torch.no_grad()
    def _measure_statistics(self) -> None:
        norms = [m for m in self.model.modules() if isinstance(m, BATCH_NORMS)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative mean over the batches below
        rng = torch.Generator(next(self.model.parameters()).device).manual_seed(self.seed)
        self.model.train()
        for _ in range(STANDING_BATCHES):
            self.model(self.sample_latent(self.batch_size, rng))
        self.model.eval()
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
