"""A trial's best generator as an MLflow model: exported in the trial, logged by the driver.

Exporting a generator (torch.export, and the signature MLflow infers by running it) costs about
as much CPU as everything else the driver does for a trial. MLflow's `log_model` exports and
uploads in one call, which on a cluster would put every completed trial's export in the one
driver process. So the trial saves the model beside its best checkpoint, the model travels in
the trial's last checkpoint through Ray's storage, and the driver only uploads its files as a
LoggedModel of the trial's run, linked to the run as log_model links it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.models import Model

from gan.checkpoint import load_generator

MODEL_DIR = "generator_model"  # in a completed trial's last checkpoint
MODEL_NAME = "generator"
MLMODEL = "MLmodel"


def save_generator_model(best_checkpoint: Path, out: Path) -> None:
    """The checkpoint's generator as an MLflow PyTorch model in `out` (torch.export format: it
    loads without this project's code). Input: latent vectors (n, latent_dim) drawn as the
    run's latent_dist; output: images (n, C, H, W) in [-1, 1]."""
    generator, cfg = load_generator(best_checkpoint)
    version = torch.__version__.split("+")[0]
    mlflow.pytorch.save_model(
        generator, str(out), input_example=np.zeros((2, cfg.latent_dim), np.float32),
        pip_requirements=[f"torch=={version}"],
        metadata={"latent_dim": cfg.latent_dim, "latent_dist": cfg.latent_dist,
                  "image_size": cfg.image_size, "channels": cfg.channels})


def log_generator_model(client: MlflowClient, experiment_id: str, run_id: str,
                        model_dir: Path) -> str:
    """A saved model's files as a new LoggedModel of the run; its models:/ URI."""
    model = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
    client.log_model_artifacts(model.model_id, str(model_dir))
    # The saved MLmodel knows no model or run yet; the one uploaded over it does (the folder
    # itself is the trial's checkpoint, perhaps in Ray's storage: it is not written to).
    described = Model.load(str(model_dir / MLMODEL))
    described.model_id = described.model_uuid = model.model_id
    described.run_id, described.artifact_path = run_id, model.artifact_location
    with tempfile.TemporaryDirectory() as tmp:
        described.save(str(Path(tmp) / MLMODEL))
        client.log_model_artifacts(model.model_id, tmp)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return f"models:/{model.model_id}"
