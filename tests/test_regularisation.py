"""The generator's weight average and the discriminator's regularisers, each seen acting."""

import numpy as np
import pytest
import torch
from torch import nn

import gan.losses as losses_module
from gan.checkpoint import load_checkpoint, load_generator
from gan.config import make_config
from gan.ema import EMA, STANDING_BATCHES, ema_decay_at
from gan.losses import r1_penalty
from gan.models import build_models
from gan.train import train
from tests.conftest import tiny


def normal_latents(k, rng):
    return torch.randn(k, 2, generator=rng)


def test_ema_weights_are_the_closed_form_average():
    raw = nn.Linear(1, 1, bias=False)
    ema = EMA(raw, 0.9, 4, normal_latents, seed=0)
    w0, seen = raw.weight.item(), []
    for t in range(1, 101):
        with torch.no_grad():
            raw.weight.fill_(float(t) ** 0.5)
        seen.append(float(t) ** 0.5)
        ema.update(raw)
    # avg_T = w_0 prod_s d_s + sum_t (1 - d_t) w_t prod_{s > t} d_s
    d = np.array([ema_decay_at(0.9, t) for t in range(1, 101)])
    after = np.array([d[t + 1:].prod() for t in range(100)])
    expected = w0 * d.prod() + ((1 - d) * np.array(seen) * after).sum()
    assert ema.generator().weight.item() == pytest.approx(expected, rel=1e-5)
    assert d[0] == pytest.approx(2 / 11) and d[-1] == 0.9  # warm-up, then the set decay


def test_ema_batchnorm_statistics_are_measured_under_the_average():
    raw = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ema = EMA(raw, 0.5, 16, normal_latents, seed=7)
    with torch.no_grad():
        raw[0].weight.add_(1.0)
        raw[1].running_mean.fill_(123.0)  # the raw net's statistics must not leak in
    ema.update(raw)
    avg = ema.generator()
    rng = torch.Generator().manual_seed(7)
    z = torch.cat([normal_latents(16, rng) for _ in range(STANDING_BATCHES)])
    assert torch.allclose(avg[1].running_mean, avg[0](z).mean(0), atol=1e-5)
    assert not avg.training and avg[1].momentum == raw[1].momentum


def test_a_run_with_ema_saves_the_average_as_its_generator_and_resumes_exactly(tmp_path):
    values = tiny(steps=8, checkpoint_every=4, ema_decay=0.9, r1_weight=1.0, r1_every=3,
                  spectral_norm=True)
    whole = train(make_config(values), tmp_path / "whole").records
    train(make_config({**values, "steps": 4}), tmp_path / "split")
    resumed = train(make_config(values), tmp_path / "split", resume=True).records
    assert [r["loss_d"] for r in resumed] == [r["loss_d"] for r in whole]
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for key in ("generator", "generator_raw", "discriminator"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    weight = next(k for k in a["generator"] if k.endswith("weight"))
    assert not torch.equal(a["generator"][weight], a["generator_raw"][weight])
    G, _ = load_generator(tmp_path / "whole" / "checkpoint.pt")  # what sampling reads
    assert torch.equal(G.state_dict()[weight], a["generator"][weight])


@pytest.mark.parametrize("arch", ["dcgan", "mlp"])
def test_spectral_norm_holds_each_discriminator_layer_at_singular_value_one(tmp_path, arch):
    train(make_config(tiny(arch=arch, steps=6, spectral_norm=True)), tmp_path / "sn")
    state = load_checkpoint(tmp_path / "sn" / "checkpoint.pt")["discriminator"]
    _, D = build_models(make_config(tiny(arch=arch, spectral_norm=True)))
    D.load_state_dict(state)
    D.eval()  # uses the stored power-iteration vectors
    layers = [m for m in D.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    sigmas = [torch.linalg.matrix_norm(m.weight.flatten(1), 2).item() for m in layers]
    assert len(sigmas) >= 3 and sigmas == pytest.approx([1.0] * len(sigmas), abs=0.05)
    _, plain = build_models(make_config(tiny(arch=arch)))
    plain_sigmas = [torch.linalg.matrix_norm(m.weight.flatten(1), 2).item()
                    for m in plain.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert max(abs(s - 1) for s in plain_sigmas) > 0.2  # without it, nothing holds them there


def test_r1_penalty_of_a_linear_critic_is_exact():
    w = torch.tensor([3.0, 4.0])  # grad D = w at every real point: ||w||^2 / 2 = 12.5
    assert r1_penalty(lambda x: x @ w, torch.randn(8, 2), torch.randn(8, 2)).item() == 12.5


def test_r1_is_added_every_r1_every_d_updates_at_its_weight_times_the_interval(
        tmp_path, monkeypatch):
    # A constant stand-in for the penalty changes no gradient, so the run is the same run and
    # each log window's mean loss_d rises by exactly what the loop added.
    calls = []

    def constant(critic, real, fake):
        calls.append(1)
        return torch.tensor(1.0)

    values = tiny(steps=8, log_every=2, d_steps=1)
    plain = train(make_config(values), tmp_path / "plain").records
    monkeypatch.setattr(losses_module, "r1_penalty", constant)
    lazy = train(make_config({**values, "r1_weight": 0.5, "r1_every": 2}),
                 tmp_path / "lazy").records
    assert len(calls) == 4  # D updates 2, 4, 6, 8
    rises = [b["loss_d"] - a["loss_d"] for a, b in zip(plain, lazy, strict=True)]
    assert rises == pytest.approx([0.5 * 2 * 1.0 / 2] * 4, abs=1e-5)  # once per 2-update window


@pytest.mark.parametrize("arch,norm,kind", [
    ("dcgan", "auto", nn.BatchNorm2d), ("dcgan", "layer", nn.GroupNorm),
    ("dcgan", "instance", nn.InstanceNorm2d), ("mlp", "batch", nn.BatchNorm1d),
    ("mlp", "layer", nn.LayerNorm)])
def test_d_norm_puts_its_normalisation_in_the_discriminator(tmp_path, arch, norm, kind):
    cfg = make_config(tiny(arch=arch, d_norm=norm))
    _, D = build_models(cfg)
    assert [m for m in D.modules() if isinstance(m, kind)]
    if norm not in ("auto", "batch"):
        assert not [m for m in D.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    assert train(cfg, tmp_path / "run").records[-1]["step"] == cfg.steps


def test_d_norm_none_and_the_wgan_critic_have_no_normalisation():
    for values in (tiny(d_norm="none"), tiny(loss="wgan"), tiny(arch="mlp")):
        _, D = build_models(make_config(values))
        assert not [m for m in D.modules()
                    if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d | nn.GroupNorm
                                  | nn.InstanceNorm2d | nn.LayerNorm)], values
