import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.image.kid import poly_mmd

import gan.metrics.evaluate as evaluate_module
from gan.config import make_config
from gan.data import load_images
from gan.errors import ConfigError, DatasetError
from gan.evaluate import main as evaluate_main
from gan.metrics.distances import class_metrics, fid, gaussian_stats, kid, manifold_metrics
from gan.metrics.evaluate import Evaluator
from gan.metrics.features import accuracy, load_feature_net
from gan.metrics.memorisation import memorisation_check, nearest
from gan.train import train
from tests.conftest import tiny
from tests.test_data import write_faces

N = 2000


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator("mnist", 28)


@pytest.fixture(scope="module")
def test_images():
    data = load_images("mnist", 28, 1, split="test")
    return data.batch(torch.arange(len(data))), data.labels


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# ---- the math, against independent float64 references on random data ----

def test_fid_matches_an_eigenvalue_reference():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 16, generator=gen)
    b = torch.randn(3000, 16, generator=gen) @ torch.randn(16, 16, generator=gen) * 0.5 + 0.3
    x, y = a.double().numpy(), b.double().numpy()
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    # Tr sqrt(S1 S2) = sum of square roots of the eigenvalues of S1 S2 (real, >= 0 for PSD S1, S2)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    diff = x.mean(0) - y.mean(0)
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert rel_err(fid(gaussian_stats(a), b)["fid"], expected) < 1e-4


def test_kid_matches_torchmetrics_poly_mmd():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(500, 32, generator=gen), torch.randn(500, 32, generator=gen) + 0.2
    # one subset of every sample: no subset randomness, so the two must agree
    ours = kid(a, b, subsets=1, subset_size=500)["kid"]
    assert rel_err(ours, poly_mmd(a.double(), b.double()).item()) < 1e-4


def test_precision_recall_density_coverage_match_brute_force():
    gen = torch.Generator().manual_seed(2)
    real, fake = torch.randn(400, 8, generator=gen), torch.randn(300, 8, generator=gen) * 1.3 + 0.4
    r, f = real.double().numpy(), fake.double().numpy()

    def inside(centers, points, k):
        """(points, centers): whether each point lies in each center's k-NN ball, straight from
        the definitions in float64."""
        d_cc = ((centers[:, None] - centers[None]) ** 2).sum(-1)
        radii = np.sort(d_cc, axis=1)[:, k]  # column 0 is the point itself
        return ((points[:, None] - centers[None]) ** 2).sum(-1) <= radii[None]

    ours = manifold_metrics(real, fake, k=3, k_dc=5)
    assert rel_err(ours["precision"], inside(r, f, 3).any(axis=1).mean()) < 1e-4
    assert rel_err(ours["recall"], inside(f, r, 3).any(axis=1).mean()) < 1e-4
    balls = inside(r, f, 5)  # Naeem et al. 2020, eqs. 3 and 4
    assert rel_err(ours["density"], balls.sum() / (5 * len(f))) < 1e-4
    assert rel_err(ours["coverage"], balls.any(axis=0).mean()) < 1e-4
    for key in ("precision", "recall", "coverage"):  # a non-trivial case
        assert 0.1 < ours[key] < 0.99, key
    assert 0.1 < ours["density"] < 1.5
    # a sample of the real distribution itself scores density and coverage near 1
    same = manifold_metrics(real, torch.randn(400, 8, generator=gen), k_dc=5)
    assert 0.8 < same["density"] < 1.2 and same["coverage"] > 0.9


def test_class_metrics_on_known_histograms():
    uniform = torch.full((10,), 0.1, dtype=torch.float64)
    confident = F.one_hot(torch.arange(1000) % 10, 10).double() * 20  # every class, certain
    m = class_metrics(confident, uniform)
    assert m["modes"] == 10 and m["mode_kl"] == pytest.approx(0, abs=1e-9)
    assert m["classifier_score"] == pytest.approx(10, rel=1e-6)
    one = F.one_hot(torch.full((1000,), 3), 10).double() * 20
    m = class_metrics(one, uniform)
    assert m["modes"] == 1 and m["mode_kl"] == pytest.approx(np.log(10))
    assert m["classifier_score"] == pytest.approx(1, rel=1e-6)


# ---- the feature network and the protocol on real data ----

def test_shipped_feature_network_is_accurate():
    net, _ = load_feature_net("mnist")
    acc = accuracy(net, load_images("mnist", 28, 1, split="test"))
    assert acc >= 0.990


def test_real_data_floor_is_below_damaged_real_data(evaluator, test_images):
    images, labels = test_images
    floor = evaluator.floor(N)
    assert abs(floor["kid_floor"]) < 2e-3  # real vs real
    assert floor["modes_floor"] == 10 and floor["precision_floor"] > 0.6
    without_a_class = images[labels != 7][:N]
    blurred = F.avg_pool2d(F.pad(images[:N], [1] * 4, mode="replicate"), 3, stride=1)
    assert floor["fid_floor"] < evaluator.score_images(without_a_class)["fid"]
    assert floor["fid_floor"] < evaluator.score_images(blurred)["fid"]


def test_single_class_generator_drops_modes_and_recall(evaluator, test_images):
    images, labels = test_images
    ones = images[labels == 1][:N]
    m = evaluator.score_images(ones)
    assert m["modes"] == 1
    assert m["recall"] < 0.3 < evaluator.floor(N)["recall_floor"]


def test_fid_grows_with_pixel_noise_and_noise_images_score_badly(evaluator, test_images):
    images = test_images[0][:N]
    gen = torch.Generator().manual_seed(0)
    fids = [evaluator.score_images((images + s * torch.randn(images.shape, generator=gen))
                                   .clamp(-1, 1))["fid"] for s in (0.0, 0.1, 0.25, 0.5, 1.0)]
    assert fids == sorted(fids) and fids[-1] > 5 * fids[0], fids
    noise = torch.rand(N, 1, 28, 28, generator=gen) * 2 - 1
    assert evaluator.score_images(noise)["fid"] > 20 * evaluator.floor(N)["fid_floor"]


def test_reference_statistics_are_cached_by_network_hash(evaluator, monkeypatch, dataset_cache):
    cached = list((dataset_cache / "metrics").glob(f"reference-{evaluator.key}.pt"))
    assert len(cached) == 1 and "mnist-28px-" in cached[0].name

    def no_recompute(*args):
        raise AssertionError("reference statistics computed again")

    monkeypatch.setattr(evaluate_module, "gaussian_stats", no_recompute)
    assert np.array_equal(Evaluator("mnist", 28).reference.mu, evaluator.reference.mu)


def test_a_dataset_without_feature_network_names_the_command(tmp_path):
    with pytest.raises(ConfigError, match=r"python -m gan\.metrics\.features --dataset cifar10"):
        Evaluator("cifar10", 32)
    # a folder is scored in its own label-free space, when it has images enough to score
    write_faces(tmp_path / "faces")
    with pytest.raises(DatasetError, match=r"5 training and 0 held-out images; scoring needs "
                                           r".*set eval_every: 0"):
        train(make_config(tiny(dataset=f"folder:{tmp_path / 'faces'}", eval_every=4)),
              tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "run").exists()


# ---- evaluation inside the trainer, and the CLI ----

@pytest.mark.slow
def test_training_evaluates_keeps_the_best_and_rescores_it(tmp_path, capsys):
    cfg = make_config(tiny(arch="mlp", image_size=28, steps=20, log_every=5, checkpoint_every=10,
                           eval_every=10, eval_n=300, final_n=600))
    result = train(cfg, tmp_path)
    evaluated = [r for r in result.records if "fid" in r]
    assert [r["step"] for r in evaluated] == [10, 20]
    best = min(evaluated, key=lambda r: r["fid"])
    assert result.final["best_step"] == best["step"] and result.final["n"] == 600
    assert json.loads((tmp_path / "result.json").read_text()) == result.final
    assert {"fid", "kid", "precision", "recall", "modes", "mode_kl", "classifier_score",
            "fid_floor", "kid_floor", "recall_floor"} <= set(result.final)
    assert result.final["fid"] > result.final["fid_floor"]

    # evaluation is deterministic and does not move the training RNG
    no_eval = train(make_config({**cfg.model_dump(), "eval_every": 0}), tmp_path / "plain")
    assert [r["loss_g"] for r in no_eval.records] == [r["loss_g"] for r in result.records]
    assert evaluate_main(["--checkpoint", str(tmp_path / "best.pt"), "--n", "600"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for key in ("fid", "kid", "precision", "recall", "modes"):
        assert printed[key] == result.final[key]
    assert printed["classifier_accuracy"] >= 0.99


def test_evaluate_real_prints_one_json_object(capsys):
    assert evaluate_main(["--real", "--n", "1000"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    scores = json.loads(out[0])
    assert scores["n"] == 1000 and scores["fid"] == scores["fid_floor"]
    assert scores["classifier_accuracy"] >= 0.99


class _Replay(torch.nn.Module):
    """A 'generator' that returns given images in order, whatever its latents."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images, self.at = images, 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.images[self.at:self.at + len(z)]
        self.at += len(z)
        return out


def test_memorisation_check_tells_copies_from_new_images(evaluator):
    draw = lambda k, rng: torch.rand(k, 4, generator=rng)  # noqa: E731
    train_data = load_images("mnist", 28, 1)
    copies = train_data.batch(torch.arange(5000, 5300))
    copier = memorisation_check(evaluator, _Replay(copies), draw, n=300, shown=4, k=2)
    assert copier.near_copies == 1.0 and copier.median_ratio < 1e-3
    # its nearest training image is itself, found by brute force on the features too
    train_features = evaluator.space.embed(train_data.batch(torch.arange(len(train_data))))[0]
    shown = evaluator.space.embed(copier.samples)[0]
    brute = torch.cdist(shown.double(), train_features.double()).argmin(1)
    assert brute.tolist() == [5000, 5001, 5002, 5003]
    assert torch.equal(copier.neighbours[:, 0], copies[:4])
    # new real images (the test split's last ones) are as far from the training set as the
    # held-out images the check compares with
    test = load_images("mnist", 28, 1, split="test")
    fresh = test.batch(torch.arange(len(test) - 300, len(test)))
    honest = memorisation_check(evaluator, _Replay(fresh), draw, n=300)
    assert 0.8 < honest.median_ratio < 1.25 and honest.near_copies < 0.05
    d, i = nearest(shown, train_features, 2)
    # float32 rounding leaves a copy's distance to itself near, not at, zero
    assert (d[:, 0] < 0.01 * honest.held_out_distances.median()).all()
    assert i[:, 0].tolist() == brute.tolist()
