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
    from pathlib import Path

    from gan.config import load_config
    from tests.test_data import write_faces

    path = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    cfg = load_config(path)
    overrides = tiny(arch=cfg.arch, steps=2, log_every=1, checkpoint_every=2)
    if cfg.dataset.startswith("folder:"):
        write_faces(tmp_path / "faces")
        overrides["dataset"] = f"folder:{tmp_path / 'faces'}"
    records = train(make_config({**cfg.model_dump(), **overrides}), tmp_path / "run").records
    assert [r["step"] for r in records] == [1, 2]
