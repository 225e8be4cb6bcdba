"""The report's figures, each from a StudyRecord (MLflow alone). Each returns a Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from study import analyses
from study.records import (
    StudyRecord,
    leaderboard,
    load_generator,
    model_input,
    pareto,
    progress_frames,
)


def _grid(images, nrow: int) -> np.ndarray:
    """(n, C, H, W) in [-1, 1] -> an HxWx3 array in [0, 1]."""
    import torchvision

    grid = torchvision.utils.make_grid(images.detach().float().cpu(), nrow=nrow, padding=2,
                                       normalize=True, value_range=(-1, 1))
    return grid.permute(1, 2, 0).numpy()


def _title(row: pd.Series, metric: str) -> str:
    name = row["label"] or ("baseline " if row["baseline"] else "") + row["trial_id"]
    return f"{name}\n{metric} {row[metric]:.3g}"


def curves(record: StudyRecord, top: int = 4) -> Figure:
    """Losses and the evaluation FID over generator updates, for the top trials and the
    baseline."""
    board = leaderboard(record)
    rows = pd.concat([board.head(top), board[board["baseline"]]]).drop_duplicates("run_id")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for _, row in rows.iterrows():
        history = record.histories[row["run_id"]]
        name = ("baseline " if row["baseline"] else "") + row["trial_id"]
        for ax, key in zip(axes, ("loss_d", "loss_g", "fid"), strict=True):
            series = history[key].dropna()
            ax.plot(series.index, series.values, marker="o" if key == "fid" else None,
                    label=name)
    for ax, key in zip(axes, ("discriminator loss", "generator loss", "FID (eval_n samples)"),
                       strict=True):
        ax.set_title(key)
        ax.set_xlabel("generator updates")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def sample_grids(rows: pd.DataFrame, metric: str, n: int = 36, seed: int = 0) -> Figure:
    """Samples of each row's logged generator, side by side, same latent seed."""
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.6), squeeze=False)
    for ax, (_, row) in zip(axes[0], rows.iterrows(), strict=True):
        generator = load_generator(row)
        ax.imshow(_grid(generator(model_input(row, n, seed)), nrow=int(n ** 0.5)))
        ax.set_title(_title(row, metric), fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def interpolation(row: pd.Series, rows: int = 6, k: int = 10, walk_step: float = 0.05,
                  seed: int = 0) -> Figure:
    """Two walks through one generator's latent space, side by side: each row from one random
    point to another, and each row from one z with walk_step added to every coordinate per frame
    (the faces tutorial's walk)."""
    import torch

    from gan.config import make_config
    from gan.sample import interpolation_latents, walk_latents

    generator = load_generator(row)
    cfg = make_config({"latent_dim": int(row["latent_dim"]), "latent_dist": row["latent_dist"]})
    torch.manual_seed(seed)
    paths = {"between two points": interpolation_latents(rows, k, cfg),
             f"z + {walk_step:g} per frame": walk_latents(rows, k, walk_step, cfg)}
    fig, axes = plt.subplots(1, 2, figsize=(2 * k * 0.9, rows * 0.9 + 0.6))
    for ax, (name, z) in zip(axes, paths.items(), strict=True):
        ax.imshow(_grid(generator(z), nrow=k))
        ax.set_title(f"{name}, {row['label'] or row['trial_id']}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def memorisation(row: pd.Series, n: int = 2000, seed: int = 0) -> Figure:
    """Left: 16 samples, each followed by its 3 nearest training images (feature space); right:
    the distance from each sample, and from each held-out real image, to its nearest training
    image. A generator that copies has its samples' distances well left of the held-out ones."""
    import torch

    check = analyses.memorisation(row, n, seed)
    groups = torch.cat([check.samples[:, None], check.neighbours], dim=1)  # (16, 1 + k, ...)
    per_group = groups.shape[1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2),
                                      gridspec_kw={"width_ratios": [1.2, 1]})
    left.imshow(_grid(groups.flatten(0, 1), nrow=2 * per_group))
    left.set_title(f"each sample, then its {per_group - 1} nearest training images", fontsize=9)
    left.axis("off")
    bins = np.linspace(0, float(torch.cat([check.sample_distances,
                                          check.held_out_distances]).max()), 40)
    right.hist(check.held_out_distances.numpy(), bins=bins, alpha=0.6,
               label="held-out real images")
    right.hist(check.sample_distances.numpy(), bins=bins, alpha=0.6, label="samples")
    right.set_xlabel("distance to the nearest training image (feature space)")
    right.set_title(f"median ratio {check.median_ratio:.2f}; "
                    f"{check.near_copies:.1%} of samples nearer than 99% of held-out images",
                    fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def progress_strip(record: StudyRecord, row: pd.Series, max_frames: int = 8) -> Figure:
    """The fixed-noise sample grid a trial logged at each evaluation, as a strip."""
    frames = progress_frames(record, row["run_id"])
    if len(frames) > max_frames:  # evenly spaced, always the last
        idx = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in idx]
    fig, axes = plt.subplots(1, max(1, len(frames)), figsize=(2.6 * max(1, len(frames)), 3),
                             squeeze=False)
    for ax, (step, path) in zip(axes[0], frames, strict=False):
        with Image.open(path) as image:
            ax.imshow(np.asarray(image.convert("RGB")))
        ax.set_title(f"step {step}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def importances(study: optuna.Study) -> Figure | None:
    """Parameter importances by two of Optuna's evaluators (fANOVA, PED-ANOVA), side by side.
    None when fewer than two trials completed (nothing to attribute)."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return None
    evaluators = {"fANOVA": optuna.importance.FanovaImportanceEvaluator(seed=0),
                  "PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator()}
    table = pd.DataFrame({name: optuna.importance.get_param_importances(study, evaluator=ev)
                          for name, ev in evaluators.items()}).fillna(0.0)
    ax = table.sort_values("fANOVA").plot.barh(figsize=(8, 0.4 * len(table) + 1.5))
    ax.set_xlabel("importance (normalised)")
    ax.set_title("which hyperparameters mattered for the final metric")
    ax.figure.tight_layout()
    return ax.figure


def compare_best(records: list[StudyRecord], n: int = 36) -> Figure:
    """The best generator of each study, side by side."""
    bests = []
    for record in records:
        best = leaderboard(record).head(1).copy()
        best["label"] = record.name
        bests.append(best)
    metric = records[0].spec.metric
    return sample_grids(pd.concat(bests), metric, n)


def pareto_front(record: StudyRecord) -> Figure | None:
    """The first objective against the second for every completed search trial: the Pareto
    front joined as a staircase, the baseline a red cross. None for a study of one metric or
    with no completed trial."""
    front = pareto(record)
    if front.empty:
        return None
    first, second = record.spec.targets[:2]
    board = leaderboard(record)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(board[second], board[first], s=18, color="grey", alpha=0.6, label="trials")
    front = front.sort_values(second)
    ax.step(front[second], front[first], where="post", color="tab:blue", alpha=0.5)
    ax.scatter(front[second], front[first], s=36, color="tab:blue", label="Pareto front")
    base = board[board["baseline"]]
    ax.scatter(base[second], base[first], marker="x", s=70, color="red", label="baseline")
    ax.set_xlabel(f"final {second}")
    ax.set_ylabel(f"final {first}")
    if first in ("fid", "kid") and (board[first] > 0).all():
        ax.set_yscale("log")
    ax.set_title(f"{first} against {second}: {len(front)} trials on the front")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def by_choice(record: StudyRecord, columns: int = 4) -> Figure | None:
    """The final metric of every completed search trial, by the value of each searched
    parameter (a numeric one by thirds): each trial a dot, each value's median a bar, the
    baseline a red cross. None when no trial completed."""
    groups = analyses.by_choice(record)
    if not groups:
        return None
    metric = record.spec.metric
    columns = min(columns, len(groups))
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.9 * rows), squeeze=False)
    jitter = np.random.default_rng(0)
    for ax, (key, frame) in zip(axes.flat, groups.items(), strict=False):
        order = sorted(frame["value"].unique())
        for i, value in enumerate(order):
            ys = frame.loc[frame["value"] == value, metric]
            ax.scatter(i + jitter.uniform(-0.15, 0.15, len(ys)), ys, s=14, alpha=0.7)
            ax.hlines(ys.median(), i - 0.3, i + 0.3, color="black")
        base = frame[frame["baseline"]]
        ax.scatter([order.index(v) for v in base["value"]], base[metric], marker="x", s=60,
                   color="red", label="baseline")
        ax.set_xticks(range(len(order)), order, rotation=30, fontsize=8)
        ax.set_title(key, fontsize=10)
        if metric in ("fid", "kid") and (frame[metric] > 0).all():
            ax.set_yscale("log")
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    axes[0][0].set_ylabel(f"final {metric}")
    fig.tight_layout()
    return fig


def expected_best(records: list[StudyRecord]) -> Figure:
    """The best metric to expect after k trials, k = 1..n, with its 90% band (bootstrap over
    each study's trials); one curve per study."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for record in records:
        frame = analyses.expected_best(record).replace([np.inf, -np.inf], np.nan)
        label = f"{record.name} ({record.spec.searcher.label}, {record.spec.scheduler.type})"
        ax.plot(frame.index, frame["median"], marker="o", ms=3, label=label)
        ax.fill_between(frame.index, frame["low"], frame["high"], alpha=0.2)
    metric = records[0].spec.metric
    ax.set_xlabel("trials")
    ax.set_ylabel(f"best {metric} found (median, 90% band)")
    if metric in ("fid", "kid"):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
