import pytest
import torch
from torch import nn

from gan.checkpoint import load_checkpoint
from gan.config import make_config
from gan.models import build_models
from gan.train import train
from tests.conftest import tiny

SHAPES = [(28, 1), (32, 1), (64, 3)]


def conv_channels(module: nn.Module, kind) -> list[int]:
    return [m.out_channels for m in module.modules() if isinstance(m, kind)]


def test_dcgan_width_64_is_the_pytorch_tutorial_network():
    g, d = build_models(make_config({"arch": "dcgan", "width": 64, "image_size": 32}))
    assert conv_channels(g, nn.ConvTranspose2d) == [512, 256, 128, 1]
    assert conv_channels(d, nn.Conv2d) == [128, 256, 512, 1]
    g64, _ = build_models(make_config({"width": 64, "image_size": 64, "channels": 3}))
    assert conv_channels(g64, nn.ConvTranspose2d) == [512, 256, 128, 64, 3]


def test_mlp_width_scales_every_hidden_layer():
    g, d = build_models(make_config({"arch": "mlp", "width": 64, "image_size": 28}))
    assert [m.out_features for m in g.modules() if isinstance(m, nn.Linear)] == \
        [128, 256, 512, 1024, 784]
    assert [m.out_features for m in d.modules() if isinstance(m, nn.Linear)] == [512, 256, 1]
    g32, _ = build_models(make_config({"arch": "mlp", "width": 32}))
    assert [m.out_features for m in g32.modules() if isinstance(m, nn.Linear)][:4] == \
        [64, 128, 256, 512]


def test_dcgan_init_and_no_batchnorm_in_the_wgan_critic():
    torch.manual_seed(0)
    g, d = build_models(make_config({"width": 64}))
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    assert any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    _, critic = build_models(make_config({"loss": "wgan"}))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in critic.modules())


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
@pytest.mark.parametrize("size,channels", SHAPES)
def test_shapes_and_ranges(arch, size, channels):
    g, d = build_models(make_config({"arch": arch, "width": 8, "image_size": size,
                                     "channels": channels}))
    x = g(torch.randn(5, 100))
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert d(x).shape == (5,)


@pytest.mark.parametrize("loss", ["bce", "ns", "hinge", "lsgan", "wgan"])
@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
@pytest.mark.parametrize("size,channels", SHAPES)
def test_one_training_step_updates_both_networks(tmp_path, arch, loss, size, channels):
    cfg = make_config(tiny(arch=arch, loss=loss, image_size=size, channels=channels, steps=1,
                           log_every=1, checkpoint_every=1))
    records = train(cfg, tmp_path).records
    assert records[0]["step"] == 1 and all(
        torch.isfinite(torch.tensor(records[0][k])) for k in ("loss_d", "loss_g"))
    torch.manual_seed(cfg.seed)
    g0, d0 = build_models(cfg)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    for before, after in ((g0, state["generator"]), (d0, state["discriminator"])):
        # Weights, not biases: hinge and Wasserstein critics' output bias has zero gradient.
        changed = [not torch.equal(p, after[name]) for name, p in before.state_dict().items()
                   if p.ndim > 1]
        assert changed and all(changed), "every weight moves after one Adam step"


@pytest.mark.parametrize("name", ["mlp_mnist", "dcgan_mnist32", "dcgan_faces64",
                                  "basic_1d2g_uniform"])
def test_every_seed_tutorial_is_one_config_that_trains(tmp_path, name):
    """`gan.train --config configs/<file>.yaml --smoke`, at width 8: --smoke's length in steps
    replaces a file's epochs, and the file's numbered checkpoints are kept."""
    from pathlib import Path

    from gan.train import resolve_config
    from tests.test_data import write_faces

    path = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    sets = ["width=8", "threads=1"]
    if name == "dcgan_faces64":
        write_faces(tmp_path / "faces")
        sets.append(f"dataset=folder:{tmp_path / 'faces'}")
    cfg = resolve_config(str(path), sets, tmp_path / "run", resume=False, smoke=True)
    records = train(cfg, tmp_path / "run").records
    assert records[-1]["step"] == 20
    if cfg.keep_checkpoints:
        assert len(list((tmp_path / "run" / "checkpoints").glob("step_*.pt"))) == 2


def tutorial_models(name: str):
    from pathlib import Path

    from gan.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml")
    return cfg, *build_models(cfg)


def layers(module: nn.Module) -> list[str]:
    """The network as the tutorials list it: weight layers by shape, activations by name."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            out.append(f"linear {m.in_features}-{m.out_features}")
        elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            out.append(f"{type(m).__name__} {m.in_channels}-{m.out_channels}"
                       + (" bias" if m.bias is not None else ""))
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            out.append("batchnorm")
        elif not isinstance(m, nn.Sequential | nn.Flatten | nn.Identity) and m is not module:
            out.append(type(m).__name__)
    return out


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_basic_gan_config_is_the_tensorflow_tutorials_network():
    cfg, g, d = tutorial_models("basic_1d2g_uniform")
    assert layers(g) == ["linear 100-128", "ReLU", "linear 128-784", "SigmoidOutput"]
    assert layers(d) == ["UnitInput", "linear 784-128", "ReLU", "linear 128-1"]
    assert n_params(g) == 114_064
    assert n_params(d) == 784 * 128 + 128 + 128 + 1
    assert all(torch.all(m.bias == 0.1) for m in [*g.modules(), *d.modules()]
               if isinstance(m, nn.Linear))
    # Xavier-uniform: bounded by sqrt(6 / (fan_in + fan_out))
    first = g.net[0].weight
    assert first.abs().max() <= (6 / (100 + 128)) ** 0.5
    assert first.abs().max() > 0.9 * (6 / (100 + 128)) ** 0.5
    assert (cfg.latent_dist, cfg.beta1, cfg.batch_size, cfg.d_steps, cfg.g_steps) == (
        "uniform", 0.9, 64, 1, 2)


def test_the_mlp_config_is_the_mindspore_tutorials_network():
    cfg, g, d = tutorial_models("mlp_mnist")
    assert layers(g) == ["linear 100-128", "ReLU",
                         "linear 128-256", "batchnorm", "ReLU",
                         "linear 256-512", "batchnorm", "ReLU",
                         "linear 512-1024", "batchnorm", "ReLU",
                         "linear 1024-784", "Tanh"]
    assert layers(d) == ["linear 784-512", "LeakyReLU", "linear 512-256", "LeakyReLU",
                         "linear 256-1"]
    assert cfg.batch_size == 128


def test_the_dcgan_mnist_config_has_conv_biases_and_pytorchs_default_init():
    cfg, g, d = tutorial_models("dcgan_mnist32")
    assert layers(g)[0] == "ConvTranspose2d 100-512 bias"
    assert all(" bias" in layer for layer in layers(g) + layers(d) if "Conv" in layer)
    # PyTorch's default: uniform within 1 / sqrt(fan_in), fan_in 1 x 4 x 4 for D's first conv;
    # N(0, 0.02) would give a std of 0.02
    first = d.net[0].weight
    assert first.abs().max() <= 0.25 and first.std() > 0.1
    _, g_paper, _ = tutorial_models("dcgan_faces64")
    assert abs(g_paper.net[0].weight.std().item() - 0.02) < 0.002
    assert all(m.bias is None for m in g_paper.modules() if isinstance(m, nn.ConvTranspose2d))
    assert cfg.batch_size == 128


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_a_sigmoid_generator_and_its_discriminator_work_in_zero_to_one(arch):
    cfg = make_config(tiny(arch=arch, output="sigmoid"))
    g, d = build_models(cfg)
    seen = []
    d.read.register_forward_hook(lambda m, args, out: seen.append(out))
    raw = []
    g.net[-1].register_forward_hook(lambda m, args, out: raw.append(args[0]))
    images = g(torch.randn(8, cfg.latent_dim))
    # carried in [-1, 1] for samples and metrics, read by D as the sigmoid's own output
    assert images.min() >= -1 and images.max() <= 1
    d(images)
    torch.testing.assert_close(seen[0], torch.sigmoid(raw[0]).view_as(seen[0]))
    d(torch.full_like(images, -1.0))
    assert torch.all(seen[1] == 0)


def test_every_latent_distribution_is_a_config_choice_and_draws_its_range():
    from typing import get_args

    from gan.config import TrainConfig
    from gan.latents import LATENTS, draw_latent

    assert set(get_args(TrainConfig.model_fields["latent_dist"].annotation)) == set(LATENTS)
    z = {name: draw_latent(name, 20_000, 4, generator=torch.Generator().manual_seed(0))
         for name in LATENTS}
    assert z["uniform01"].min() >= 0 and z["uniform01"].max() < 1
    assert -1 <= z["uniform"].min() < -0.99 and 0.99 < z["uniform"].max() <= 1
    assert abs(z["normal"].std().item() - 1) < 0.02


@pytest.mark.parametrize("values, key", [
    ({"arch": "dcgan", "mlp_g_layers": [64]}, "mlp_g_layers"),
    ({"arch": "mlp", "conv_bias": True}, "conv_bias"),
    ({"arch": "mlp", "mlp_d_layers": []}, "mlp_d_layers"),
])
def test_knobs_that_do_not_apply_are_refused_by_name(values, key):
    from gan.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        make_config(values)
