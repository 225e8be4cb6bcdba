"""Any image folder and colour data: Stacked MNIST, a folder's held-out split, the label-free
feature space, and a study of a folder."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

import gan.metrics.contrastive as contrastive
from gan.data import ImageData, load_images
from gan.errors import ConfigError, DatasetError
from gan.metrics.evaluate import Evaluator
from gan.metrics.spaces import feature_space
from gan.train import main as train_main
from tests.conftest import ROOT

SHORT = {**contrastive.RECIPE, "max_steps": 40, "batch": 128}  # seconds, not minutes


@pytest.fixture
def short_recipe(monkeypatch):
    monkeypatch.setattr(contrastive, "RECIPE", SHORT)


def noise_folder(folder, n, size=12, seed=0, modes=("RGB",)):
    """n distinct small images (content differs, so do their hashes)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        array = rng.integers(0, 256, (size, size + i % 3, 3), dtype=np.uint8)
        image = Image.fromarray(array).convert(modes[i % len(modes)])
        image.save(folder / f"img_{i:04d}.png")
    return folder


def test_stacked_mnist_is_three_mnist_digits_with_a_thousand_modes():
    data = load_images("stacked_mnist", 28, 3, split="test")
    again = load_images("stacked_mnist", 28, 3, split="test")
    assert data.images.shape == (10000, 3, 28, 28) and data.channels == 3
    assert torch.equal(data.images, again.images) and torch.equal(data.labels, again.labels)
    mnist = load_images("mnist", 28, 1, split="test")
    # each channel is an MNIST test digit, and the label spells the three digits
    for i in range(5):
        for c, digit in enumerate((data.labels[i] // 100, data.labels[i] // 10 % 10,
                                   data.labels[i] % 10)):
            same = (mnist.images[:, 0] == data.images[i, c]).flatten(1).all(1)
            assert same.any() and digit in mnist.labels[same]
    assert torch.bincount(data.labels, minlength=1000).gt(0).sum() >= 990


@pytest.mark.slow
def test_stacked_mnist_is_scored_per_channel_with_1000_modes():
    ev = Evaluator("stacked_mnist", 28, channels=3)
    assert ev.classifier_accuracy() > 0.95  # the joint class: three digits right
    floor = ev.floor(2000)
    # a perfect generator shows ~1000 (1 - e^-2) = 865 modes in 2000 samples
    assert 780 <= floor["modes_floor"] <= 900, floor
    one_mode = ev.test_images().batch(torch.zeros(500, dtype=torch.long))
    scores = ev.score_images(one_mode)
    assert scores["modes"] == 1 and scores["fid"] > 20 * floor["fid_floor"]


def test_folder_split_is_fixed_by_content(tmp_path):
    folder = noise_folder(tmp_path / "imgs", 150)
    ds = f"folder:{folder}"
    train, test = load_images(ds, 32, 3), load_images(ds, 32, 3, split="test")
    assert len(train) + len(test) == 150 and 5 <= len(test) <= 30
    held = {bytes(x.numpy()) for x in test.images}
    # renaming every file and adding new ones moves no image between the splits
    for p in sorted(folder.iterdir()):
        p.rename(folder / f"renamed_{p.name}")
    noise_folder(tmp_path / "more", 30, seed=1)
    for p in (tmp_path / "more").iterdir():
        p.rename(folder / p.name)
    test2 = load_images(ds, 32, 3, split="test")
    assert held <= {bytes(x.numpy()) for x in test2.images}


def test_small_folders_hold_nothing_out_and_train_but_do_not_score(tmp_path, capsys):
    for n in (1, 10):
        folder = noise_folder(tmp_path / f"n{n}", n, modes=("RGB", "L", "RGBA"))
        assert len(load_images(f"folder:{folder}", 32, 3)) == n
        assert len(load_images(f"folder:{folder}", 32, 3, split="test")) == 0
        out = tmp_path / f"run{n}"
        assert train_main(["--out", str(out), "--smoke", "--set", f"dataset=folder:{folder}",
                           "--set", "eval_every=0", "--set", "channels=3"]) == 0
        assert (out / "checkpoint.pt").exists()
    # with scores asked for: one line naming the folder and the rule, nothing written
    capsys.readouterr()
    out = tmp_path / "scored"
    assert train_main(["--out", str(out), "--smoke", "--set", f"dataset=folder:{folder}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"folder:{folder}: 10 training and 0 held-out images" in err[0]
    assert "set eval_every: 0" in err[0] and not out.exists()


def test_folder_of_mixed_files(tmp_path):
    folder = noise_folder(tmp_path / "mixed", 4, modes=("RGB", "L", "RGBA", "P"))
    (folder / "notes.txt").write_text("not an image, and not named as one: ignored")
    assert len(load_images(f"folder:{folder}", 28, 3)) == 4
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DatasetError, match=r"cannot read image .*broken\.png"):
        load_images(f"folder:{folder}", 28, 3)


def test_encoder_training_is_deterministic():
    data = load_images("mnist", 32, 1, split="test")
    small = ImageData(data.images[:300], None, 1)
    recipe = {"max_steps": 3, "batch": 64}
    a = contrastive.train_encoder(small, log=lambda _: None, recipe=recipe).state_dict()
    b = contrastive.train_encoder(small, log=lambda _: None, recipe=recipe).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_label_free_space_is_trained_once_cached_by_content_and_recipe(tmp_path, monkeypatch,
                                                                      capsys, short_recipe):
    folder = noise_folder(tmp_path / "a", 120)
    space = feature_space(f"folder:{folder}", 3)
    assert space.kind == "contrastive"
    assert "label-free feature network trained in" in capsys.readouterr().err
    files = list(contrastive.cache_dir().glob("features/contrastive-*.pt"))
    assert not list(contrastive.cache_dir().glob("features/.*.tmp"))

    def no_training(*a, **k):
        raise AssertionError("trained again instead of using the cache")

    monkeypatch.setattr(contrastive, "train_encoder", no_training)
    again = feature_space(f"folder:{folder}", 3)
    assert again.key == space.key
    images = load_images(f"folder:{folder}", 32, 3).batch(torch.arange(8))
    assert torch.equal(space.embed(images)[0], again.embed(images)[0])
    # another folder's cached network is not this one's: a different key, trained anew
    other = noise_folder(tmp_path / "b", 120, seed=5)
    with pytest.raises(AssertionError, match="trained again"):
        feature_space(f"folder:{other}", 3)
    # and a change of recipe makes a new key for the same data
    monkeypatch.setattr(contrastive, "RECIPE", {**SHORT, "temperature": 0.5})
    with pytest.raises(AssertionError, match="trained again"):
        feature_space(f"folder:{folder}", 3)
    assert len(files) == 1


@pytest.mark.slow
def test_label_free_space_ranks_degradations_as_the_classifier_does(monkeypatch):
    """A short version of benchmarks/feature_agreement.py: eight clearly different qualities
    of MNIST (real test digits under growing noise), ranked in both spaces."""
    monkeypatch.setattr(contrastive, "RECIPE", {**SHORT, "max_steps": 60})
    labelled = Evaluator("mnist", 28, feature_net="classifier")
    free = Evaluator("mnist", 28, feature_net="contrastive")
    assert free.space.kind == "contrastive" and free.classifier_accuracy() is None
    real = free.test_images().batch(torch.arange(1000))
    gen = torch.Generator().manual_seed(0)
    ladder = [(real + s * torch.randn(real.shape, generator=gen)).clamp(-1, 1)
              for s in (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)]
    fid_l = [labelled.score_images(x)["fid"] for x in ladder]
    fid_f = [free.score_images(x)["fid"] for x in ladder]
    assert spearmanr(fid_l, fid_f).statistic >= 0.9, (fid_l, fid_f)
    floor = free.floor(1000)
    assert all(floor["fid_floor"] < f for f in fid_f[1:])
    assert "modes" not in free.score_images(real)  # no classes, no class metrics
    # one digit only: the label-free space sees the lost modes as lost recall
    ones = free.test_images()
    ones = ones.batch(torch.nonzero(ones.labels == 1).flatten()[:1000])
    assert free.score_images(ones)["recall"] < 0.5 * floor["recall_floor"]


@pytest.mark.slow
def test_a_study_of_an_image_folder_runs_end_to_end(ray_session, tmp_path, capsys):
    """The faces study on a folder of Stacked MNIST PNGs: label-free features (the real recipe:
    20 passes over 180 images are a few seconds), held-out floor, search, confirmation, MLflow
    and the report."""
    from gan.data import main as data_main
    from study.records import load_study, summary
    from study.run import main

    folder = tmp_path / "pngs"
    assert data_main(["export", "stacked_mnist", "--out", str(folder), "--n", "200",
                      "--image-size", "64"]) == 0
    assert len(list(folder.glob("*.png"))) == 200
    out = tmp_path / "faces"
    assert main([str(ROOT / "search_spaces" / "faces64.yaml"), "--smoke", "--out", str(out),
                 "--dataset", f"folder:{folder}", "--reports-dir", str(tmp_path / "reports"),
                 "--trials", "4"]) == 0
    # the driver trained the folder's feature network once, before any trial
    assert capsys.readouterr().err.count("label-free feature network trained in") == 1
    rows = pd.read_csv(out / "summary.csv")
    done = rows[rows["status"] == "completed"]
    assert len(rows) == 4 and not done.empty
    assert (done["fid_floor"] < done["fid"]).all()
    assert rows.get("modes", pd.Series(dtype=float)).isna().all()  # no labels, no modes
    spec = (out / "spec.yaml").read_text()
    assert f"folder:{folder}" in spec and "channels: 3" in spec
    record = load_study("faces64-smoke", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(summary(record)) >= 4
    report = (tmp_path / "reports" / "faces64-smoke.html").read_text()
    assert "Traceback" not in report and "faces64-smoke" in report
    # scored with as many samples as the floor has held-out images: FID's bias depends on N
    held_out = len(load_images(f"folder:{folder}", 64, 3, split="test"))
    for path in (out / "trials").glob("*/result.json"):
        assert json.loads(path.read_text())["n"] == held_out


def random_inception_weights(path, seed):
    """A weights file of the FID Inception's architecture with random weights: the real file
    cannot be downloaded here. Only making it needs the library's loader stubbed."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(seed)
    cls = fe.FeatureExtractorInceptionV3
    original = cls.load_state_dict
    fe_url, fe.load_state_dict_from_url = fe.load_state_dict_from_url, lambda *a, **k: None
    cls.load_state_dict = lambda self, state: None
    try:
        net = cls("inception-v3-compat", ["2048"])
    finally:
        fe.load_state_dict_from_url, cls.load_state_dict = fe_url, original
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_inception_space_from_a_weights_file(tmp_path):
    weights = random_inception_weights(tmp_path / "pt_inception.pth", seed=0)
    space = feature_space("mnist", 1, "inception", inception_weights=str(weights))
    grey = load_images("mnist", 28, 1, split="test").batch(torch.arange(4))
    features, logits = space.embed(grey)  # grey digits go in as RGB, resized to 299 px
    assert features.shape == (4, 2048) and logits is None
    assert torch.equal(features, space.embed(grey)[0])
    # the reference is cached under the weights' hash; other weights, another reference
    folder = noise_folder(tmp_path / "imgs", 120, size=16)  # 108 training, 12 held out
    ev = Evaluator(f"folder:{folder}", 32, channels=3, feature_net="inception",
                   inception_weights=str(weights))
    refs = sorted((contrastive.cache_dir() / "metrics").glob(f"reference-*{space.key}*"))
    assert len(refs) == 1 and ev.reference.features.shape[1] == 2048
    stamp = refs[0].stat().st_mtime_ns
    Evaluator(f"folder:{folder}", 32, channels=3, feature_net="inception",
              inception_weights=str(weights))
    assert refs[0].stat().st_mtime_ns == stamp
    other = feature_space("mnist", 1, "inception", inception_weights=str(
        random_inception_weights(tmp_path / "other.pth", seed=1)))
    assert other.key != space.key
    # the same weights on another folder: its own reference, not the first folder's
    second = noise_folder(tmp_path / "imgs2", 120, size=16, seed=4)  # 107 + 13 held out
    ev2 = Evaluator(f"folder:{second}", 32, channels=3, feature_net="inception",
                    inception_weights=str(weights))
    assert ev2.key != ev.key
    assert not np.allclose(ev2.reference.mu, ev.reference.mu, rtol=1e-3, atol=0)
    # another network's weights: one line naming the file
    torch.save({"weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match=r"wrong\.pth: not the FID Inception v3 weights"):
        feature_space("mnist", 1, "inception", inception_weights=str(tmp_path / "wrong.pth"))
