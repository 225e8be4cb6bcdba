"""Checkpoints: models, optimizers, step and RNG states in one file, loaded without code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from gan.config import TrainConfig, make_config
from gan.errors import CheckpointError
from gan.fileio import atomic_torch_save

FORMAT = 1
BEST_FILE = "best.pt"  # in a run's folder: the generator of its best evaluation
GENERATOR_KEYS = ("format", "config", "step", "generator")
TRAINING_KEYS = (*GENERATOR_KEYS, "discriminator", "opt_g", "opt_d", "rng", "best", "fixed_noise")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save({"format": FORMAT, **state}, path)


def load_checkpoint(path: str | Path, full: bool = True) -> dict[str, Any]:
    """A checkpoint's state dict, on CPU; a clear CheckpointError for missing or corrupt files.

    `full=False` accepts a generator-only checkpoint (best.pt), enough to sample and score.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises loading the file unsafely: never say that of a file
        # nobody knows
        raise CheckpointError(f"{path}: not a readable checkpoint (it holds objects other than "
                              "tensors: not a ganstudy checkpoint)") from None
    except Exception:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated, or not a "
                              "checkpoint file)") from None
    required = TRAINING_KEYS if full else GENERATOR_KEYS
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise CheckpointError(f"{path}: not a ganstudy checkpoint (missing keys)")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']}, expected {FORMAT}")
    return state


def checkpoint_config(state: dict[str, Any], path: str | Path) -> TrainConfig:
    return make_config(state["config"], f"{path}: config")


def load_generator(path: str | Path, device: str | torch.device = "cpu"
                   ) -> tuple[torch.nn.Module, TrainConfig]:
    """The generator of a checkpoint, in eval mode, and the config it was trained with."""
    from gan.models import build_generator

    state = load_checkpoint(path, full=False)
    cfg = checkpoint_config(state, path)
    generator = build_generator(cfg)
    try:
        generator.load_state_dict(state["generator"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: generator weights do not fit its config ({err})") from None
    return generator.to(device).eval(), cfg
