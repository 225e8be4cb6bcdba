import math

import pytest
import torch

from gan.losses import LOSSES, gradient_penalty

ZERO = torch.zeros(4)


def test_bce_and_ns_at_an_undecided_discriminator():
    # D(x) = D(G(z)) = 0.5: each BCE term is log 2
    assert LOSSES["ns"].d(ZERO, ZERO, 1.0).item() == pytest.approx(2 * math.log(2))
    assert LOSSES["ns"].g(ZERO).item() == pytest.approx(math.log(2))
    assert LOSSES["bce"].g(ZERO).item() == pytest.approx(-math.log(2))


def test_minimax_saturates_where_non_saturating_does_not():
    # A confident D (fake logit -8): the minimax G gradient vanishes, the NS one does not.
    grads = {}
    for name in ("bce", "ns"):
        fake = torch.full((1,), -8.0, requires_grad=True)
        LOSSES[name].g(fake).backward()
        grads[name] = fake.grad.abs().item()
    assert grads["bce"] < 1e-3 < 0.9 < grads["ns"]


def test_label_smoothing_moves_the_real_target():
    real = torch.full((4,), 10.0)  # D(x) ~ 1
    assert LOSSES["ns"].d(real, torch.full((4,), -10.0), 1.0).item() < 1e-3
    smoothed = LOSSES["ns"].d(real, torch.full((4,), -10.0), 0.9).item()
    assert smoothed == pytest.approx(0.1 * 10.0, rel=1e-2)  # BCE(10, 0.9) ~ 0.1 * 10
    assert LOSSES["lsgan"].d(torch.full((4,), 0.9), ZERO, 0.9).item() == pytest.approx(0.0)


def test_hinge_lsgan_wgan_values():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    assert LOSSES["hinge"].d(real, fake, 1.0).item() == pytest.approx(0.5 + 0.75)
    assert LOSSES["hinge"].g(fake).item() == pytest.approx(0.75)
    assert LOSSES["lsgan"].d(real, fake, 1.0).item() == pytest.approx(0.5 * (1.0 + 2.125))
    assert LOSSES["lsgan"].g(fake).item() == pytest.approx(0.5 * (9 + 0.25) / 2)
    assert LOSSES["wgan"].d(real, fake, 1.0).item() == pytest.approx(-0.75 - 1.0)


def test_gradient_penalty_of_a_linear_critic_is_exact():
    w = torch.tensor([3.0, 4.0])  # ||grad|| = 5 everywhere
    penalty = gradient_penalty(lambda x: x @ w, torch.randn(8, 2), torch.randn(8, 2))
    assert penalty.item() == pytest.approx(16.0)
