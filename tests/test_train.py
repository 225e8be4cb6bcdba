import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gan.train as train_module
from gan.checkpoint import load_checkpoint
from gan.config import make_config
from gan.data import load_images
from gan.errors import ConfigError, DatasetError, DivergedError
from gan.losses import Loss
from gan.sample import main as sample_main
from gan.sample import walk_latents
from gan.train import OPTIMIZER_FIELDS, main, train, training_split
from tests.conftest import tiny

LOSS_KEYS = ("loss_d", "loss_g", "d_real", "d_fake", "acc_real", "acc_fake")


def losses(records):
    return [[r[k] for k in LOSS_KEYS] for r in records]


def test_a_run_writes_every_artifact(tmp_path):
    cfg = make_config(tiny(steps=8, log_every=2, sample_every=4, checkpoint_every=4))
    records = train(cfg, tmp_path).records
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.model_dump(mode="json")
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == records
    assert set(LOSS_KEYS) | {"step", "img_per_s"} <= set(lines[0])
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "real.png", "step_000004.png", "step_000008.png"]
    assert Image.open(tmp_path / "samples" / "step_000008.png").size == (8 * 34 + 2,) * 2
    gif = Image.open(tmp_path / "progress.gif")
    assert gif.n_frames == 2
    assert Image.open(tmp_path / "losses.png").size[0] > 500
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 8
    assert not (tmp_path / "checkpoints").exists()  # numbered checkpoints are a choice


def test_same_config_and_seed_give_identical_losses(tmp_path):
    cfg = make_config(tiny(steps=6))
    first, second = train(cfg, tmp_path / "a").records, train(cfg, tmp_path / "b").records
    assert losses(first) == losses(second)
    other = train(make_config(tiny(steps=6, seed=1)), tmp_path / "c").records
    assert losses(other) != losses(first)


@pytest.mark.parametrize("d_steps,g_steps", [(1, 1), (2, 1), (1, 2)])
def test_resumed_run_logs_what_an_uninterrupted_run_logs(tmp_path, d_steps, g_steps):
    values = tiny(steps=12, log_every=2, checkpoint_every=6, d_steps=d_steps, g_steps=g_steps,
                  latent_dist="uniform")
    whole = train(make_config(values), tmp_path / "whole").records
    train(make_config({**values, "steps": 6}), tmp_path / "split")
    # A crash after the checkpoint leaves log lines the resumed run must re-make, not repeat.
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 8, "loss_d": 99.0}) + "\n")
    resumed = train(make_config(values), tmp_path / "split", resume=True).records
    assert [r["step"] for r in resumed] == [2, 4, 6, 8, 10, 12]
    assert losses(resumed) == losses(whole)
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for key in ("generator", "discriminator"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


def test_d_to_g_step_ratio_counts_generator_updates(tmp_path):
    for d_steps, g_steps, expected_d in ((1, 2, 4), (2, 1, 16), (3, 1, 24)):
        out = tmp_path / f"{d_steps}-{g_steps}"
        train(make_config(tiny(steps=8, d_steps=d_steps, g_steps=g_steps)), out)
        state = load_checkpoint(out / "checkpoint.pt")
        adam_steps = {k: int(next(iter(state[k]["state"].values()))["step"])
                      for k in ("opt_g", "opt_d")}
        assert adam_steps == {"opt_g": 8, "opt_d": expected_d}


def test_resume_refuses_a_changed_hyperparameter(tmp_path):
    train(make_config(tiny()), tmp_path)
    with pytest.raises(ConfigError, match="lr_g: cannot change when resuming"):
        train(make_config(tiny(lr_g=1e-3, steps=8)), tmp_path, resume=True)
    # Extending a finished run is allowed.
    assert train(make_config(tiny(steps=8)), tmp_path, resume=True).records[-1]["step"] == 8


def test_resume_with_new_optimizer_settings_uses_them(tmp_path):
    """What PBT does: continue a checkpoint with perturbed learning rates."""
    train(make_config(tiny()), tmp_path)
    train(make_config(tiny(steps=8, lr_g=1e-3, beta1=0.0)), tmp_path, resume=True,
          may_change=OPTIMIZER_FIELDS)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["opt_g"]["param_groups"][0]["lr"] == 1e-3
    assert state["opt_g"]["param_groups"][0]["betas"] == (0.0, 0.999)
    assert state["opt_d"]["param_groups"][0]["lr"] == 2e-4
    assert state["config"]["lr_g"] == 1e-3 and state["step"] == 8


@pytest.mark.parametrize("schedule,last_factor", [("constant", 1.0), ("linear", 1 / 8),
                                                    ("cosine", 0.5 * (1 + np.cos(np.pi * 7 / 8)))])
def test_the_learning_rates_follow_their_schedule_through_a_resume(tmp_path, schedule,
                                                                    last_factor):
    values = tiny(steps=8, log_every=2, checkpoint_every=4, lr_schedule=schedule)
    whole = train(make_config(values), tmp_path / "whole").records

    class Stop(Exception):
        pass

    def crash_at_4(record):
        if record["step"] == 4:
            raise Stop
    with pytest.raises(Stop):
        train(make_config(values), tmp_path / "split", on_log=crash_at_4)
    resumed = train(make_config(values), tmp_path / "split", resume=True).records
    assert losses(resumed) == losses(whole)
    # The rate of the last update: the schedule at 7 of 8 updates done, for both networks.
    state = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for key, lr in (("opt_g", 2e-4), ("opt_d", 2e-4)):
        assert state[key]["param_groups"][0]["lr"] == pytest.approx(lr * last_factor)


def test_a_nan_loss_ends_the_run_naming_step_and_loss(tmp_path, monkeypatch):
    ns = train_module.LOSSES["ns"]
    nan_d = Loss(d=lambda r, f, label: ns.d(r, f, label) * float("nan"), g=ns.g)
    monkeypatch.setitem(train_module.LOSSES, "ns", nan_d)
    with pytest.raises(DivergedError) as err:
        train(make_config(tiny()), tmp_path)
    assert (err.value.step, err.value.loss_name) == (1, "loss_d")
    assert str(err.value) == "training diverged at step 1: loss_d = nan"


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.mark.parametrize("args,fragment", [
    (["--set", "bogus=1"], "bogus: unknown key"),
    (["--set", "steps=abc"], "steps: Input should be a valid integer"),
    (["--set", "arch=resnet"], "arch: Input should be 'mlp' or 'dcgan'"),
    (["--set", "loss=kl"], "loss: Input should be"),
    (["--set", "dataset=imagenet"], "dataset: unknown dataset 'imagenet'"),
    (["--set", "dataset=folder:/nonexistent/faces"], "not a directory"),
    (["--resume"], "checkpoint.pt: no such checkpoint"),
    (["--set", "device=cuda"] if not torch.cuda.is_available() else ["--set", "width=0"],
     "device: 'cuda' requested" if not torch.cuda.is_available() else "width"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, args, fragment):
    out = tmp_path / "run"
    code, err = run_cli(["--out", str(out), *args], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]
    assert not out.exists()


def test_malformed_config_file_and_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [\n")
    code, err = run_cli(["--out", str(tmp_path / "r"), "--config", str(bad)], capsys)
    assert code == 2 and len(err) == 1 and "bad.yaml: invalid YAML" in err[0]

    run = tmp_path / "corrupt"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    code, err = run_cli(["--out", str(run), "--resume"], capsys)
    assert code == 2 and len(err) == 1 and "not a readable checkpoint (truncated" in err[0]
    assert [p.name for p in run.iterdir()] == ["checkpoint.pt"]
    # a file with pickled objects: ours to refuse, never torch's advice to load it unsafely
    torch.save({"config": Path("x")}, run / "checkpoint.pt")
    code, err = run_cli(["--out", str(run), "--resume"], capsys)
    assert code == 2 and len(err) == 1 and "not a ganstudy checkpoint" in err[0]
    assert "weights_only" not in err[0] and "Re-running" not in err[0]


def test_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run_cli(["--out", str(blocker / "run"), "--smoke"], capsys)
    assert code == 2 and "cannot create the output directory" in err[0]


def test_an_existing_run_is_not_overwritten(tmp_path, capsys):
    train(make_config(tiny()), tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    code, err = run_cli(["--out", str(tmp_path), "--set", "width=8"], capsys)
    assert code == 2 and "already holds a run" in err[0]
    assert (tmp_path / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_cli_smoke_run_then_sample_and_interpolate(tmp_path):
    """The command-line contract, as a user runs it: a real process, no traceback on errors."""
    run = subprocess.run([sys.executable, "-m", "gan.train", "--out", str(tmp_path / "run"),
                          "--smoke", "--set", "arch=mlp"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.splitlines()[-1])
    assert summary["best_step"] == 20 and summary["n"] == 500 and summary["fid"] > 0
    bad = subprocess.run([sys.executable, "-m", "gan.train", "--out", str(tmp_path / "x"),
                          "--set", "lr_g=-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "lr_g" in bad.stderr

    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    assert sample_main(["--checkpoint", ckpt, "--n", "16", "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size == (4 * 34 + 2,) * 2
    assert sample_main(["--checkpoint", ckpt, "--n", "24", "--interpolate", "12",
                        "--out", str(tmp_path / "i.png")]) == 0
    assert Image.open(tmp_path / "i.png").size == (12 * 34 + 2, 2 * 34 + 2)


def test_sample_writes_by_its_target(tmp_path, capsys):
    """A grid, a folder of numbered PNGs (external scorers' layout) or a uint8 array; anything
    else is one line and nothing written."""
    train(make_config(tiny(image_size=28)), tmp_path / "run")
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    assert sample_main(["--checkpoint", ckpt, "--n", "7", "--out", f"{tmp_path}/pngs/"]) == 0
    files = sorted((tmp_path / "pngs").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(7)]
    assert Image.open(files[0]).size == (28, 28) and Image.open(files[0]).mode == "L"
    assert sample_main(["--checkpoint", ckpt, "--n", "7", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as saved:
        images = saved["images"]
    assert images.shape == (7, 28, 28, 1) and images.dtype == np.uint8
    assert np.array_equal(images[0, ..., 0], np.asarray(Image.open(files[0])))  # same seed
    capsys.readouterr()
    for out in ("grid.jpg", "grid.npy", "walk.npz"):
        extra = ["--interpolate", "3"] if out == "walk.npz" else []
        assert sample_main(["--checkpoint", ckpt, "--n", "6", "--out", str(tmp_path / out),
                            *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--out {tmp_path / out}: write" in err[0]
        assert not (tmp_path / out).exists()


def test_injected_faults_crash_or_diverge_at_their_step(tmp_path):
    from gan.errors import InjectedFault

    with pytest.raises(InjectedFault, match="step 3"):
        train(make_config(tiny(fault="raise", fault_step=3)), tmp_path / "raise")
    with pytest.raises(DivergedError) as err:
        train(make_config(tiny(fault="nan", fault_step=2)), tmp_path / "nan")
    assert err.value.step == 2 and err.value.loss_name == "loss_d"


def test_smoke_shrinks_only_what_the_user_did_not_set(tmp_path):
    from gan.train import resolve_config

    cfg = resolve_config(None, ["steps=7"], tmp_path, False, True)
    assert cfg.steps == 7 and cfg.batch_size == 32  # --set wins; the rest is shrunk
    config = tmp_path / "no_scores.yaml"
    config.write_text("eval_every: 0\nsteps: 10000\n")
    cfg = resolve_config(str(config), [], tmp_path, False, True)
    assert cfg.eval_every == 0 and cfg.steps == 20  # no scores is a choice, not a size


def test_an_images_budget_logs_at_the_first_update_past_each_multiple(tmp_path):
    # batch 24, a log every 32 images: updates end at 24, 48, 72, 96 images
    cfg = make_config(tiny(unit="images", steps=96, batch_size=24, log_every=32,
                           checkpoint_every=32, sample_every=96))
    records = train(cfg, tmp_path).records
    assert [r["step"] for r in records] == [2, 3, 4]
    assert [r["images"] for r in records] == [48, 72, 96]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


def test_a_seconds_budget_stops_on_time_and_resumes_its_clock(tmp_path, monkeypatch):
    """Every update takes 0.25 s on a stand-in clock: a 2 s budget is 8 updates, logged at each
    second of training; resumed to 3 s, the run counts on from the checkpoint's 2 s."""
    ticks = itertools.count(0, 0.25)
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: next(ticks))
    values = tiny(unit="seconds", steps=2, log_every=1, checkpoint_every=1, sample_every=2)
    records = train(make_config(values), tmp_path).records
    assert [(r["step"], r["train_s"]) for r in records] == [(4, 1.0), (8, 2.0)]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 8 and state["trained_s"] == 2.0
    resumed = train(make_config({**values, "steps": 3}), tmp_path, resume=True).records
    assert [(r["step"], r["train_s"]) for r in resumed] == [(4, 1.0), (8, 2.0), (12, 3.0)]


def test_a_run_shows_a_grid_of_real_training_images_once(tmp_path):
    from gan.data import load_images

    cfg = make_config(tiny(arch="mlp", image_size=28, steps=4))
    train(cfg, tmp_path)
    real = tmp_path / "samples" / "real.png"
    data = load_images(cfg.dataset, cfg.image_size, cfg.channels)
    shown = np.asarray(Image.open(real).convert("L"), dtype=np.float32)
    # every tile is a training image: its pixels are among the images' own values
    tile = shown[2:2 + 28, 2:2 + 28] / 255 * 2 - 1
    images = data.batch(torch.arange(len(data))).view(len(data), -1)
    assert (images - torch.from_numpy(tile).view(1, -1)).abs().amax(dim=1).min() < 0.01
    stamp = real.stat().st_mtime_ns
    train(make_config({**cfg.model_dump(), "steps": 8}), tmp_path, resume=True)
    assert real.stat().st_mtime_ns == stamp, "written once per run, not again on resume"
    assert sorted(p.name for p in (tmp_path / "samples").glob("step_*.png")) == [
        "step_000004.png", "step_000008.png"]


def test_a_length_in_epochs_is_passes_over_the_training_split(tmp_path, capsys):
    # 100 images at batch 16 are 7 batches a pass (the last one partial): 2 epochs are 14
    # discriminator updates, 28 generator updates at 1 D : 2 G
    values = {**tiny(log_every=2, checkpoint_every=2), "train_n": 100, "epochs": 2, "g_steps": 2}
    del values["steps"]
    cfg = make_config(values)
    records = train(cfg, tmp_path).records
    assert records[-1]["step"] == 28
    assert "epochs 2 = 28 generator updates (100 training images, batch 16, 1 D : 2 G)" in (
        capsys.readouterr().err)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["steps"] is None
    assert make_config(saved) == cfg  # a saved config loads back as the same length


def test_train_n_takes_the_first_images_of_the_training_split():
    full = load_images("mnist", 32, 1)
    part = training_split(make_config({"train_n": 100}))
    assert len(part) == 100 and torch.equal(part.images, full.images[:100])
    assert torch.equal(part.labels, full.labels[:100])
    with pytest.raises(DatasetError, match="train_n: 70000 is more than the 60,000"):
        training_split(make_config({"train_n": 70_000}))


def test_kept_checkpoints_are_numbered_networks_that_each_sample(tmp_path):
    cfg = make_config(tiny(steps=6, log_every=2, checkpoint_every=2, keep_checkpoints=True,
                           ema_decay=0.5))
    train(cfg, tmp_path)
    kept = sorted((tmp_path / "checkpoints").iterdir())
    assert [p.name for p in kept] == ["step_000002.pt", "step_000004.pt", "step_000006.pt"]
    first, last = (load_checkpoint(p, full=False) for p in (kept[0], kept[-1]))
    whole = load_checkpoint(tmp_path / "checkpoint.pt")
    assert first["step"] == 2 and last["step"] == 6 and "opt_g" not in last
    for key in ("generator", "generator_raw", "discriminator"):
        assert all(torch.equal(v, whole[key][k]) for k, v in last[key].items())
        assert any(not torch.equal(v, last[key][k]) for k, v in first[key].items())
    assert sample_main(["--checkpoint", str(kept[0]), "--n", "4",
                        "--out", str(tmp_path / "g.png")]) == 0


def test_the_latent_walk_adds_its_step_to_every_coordinate_per_frame(tmp_path, capsys):
    cfg = make_config(tiny())
    torch.manual_seed(0)
    z = walk_latents(2, 5, 0.05, cfg).reshape(2, 5, -1)
    assert torch.allclose(z[:, 3] - z[:, 0], torch.full_like(z[:, 0], 0.15))
    assert not torch.equal(z[0, 0], z[1, 0])  # each row walks from its own z
    train(cfg, tmp_path / "run")
    ckpt = str(tmp_path / "run" / "checkpoint.pt")
    assert sample_main(["--checkpoint", ckpt, "--n", "12", "--walk", "0.05", "--frames", "6",
                        "--out", str(tmp_path / "walk.png")]) == 0
    assert Image.open(tmp_path / "walk.png").size == (6 * 34 + 2, 2 * 34 + 2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        sample_main(["--checkpoint", ckpt, "--frames", "6", "--out", str(tmp_path / "w.png")])
    assert stop.value.code == 2 and "--frames is the length of a --walk" in capsys.readouterr().err
