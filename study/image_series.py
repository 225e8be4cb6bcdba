"""Sample grids as an MLflow image series, stored from the bytes the trial made.

MLflow's `log_image(key=, step=)` takes a decoded image and encodes it twice: the PNG, and a
compressed preview that its UI's image grid shows. On the driver, where every trial's grids
arrive, that was most of a result's write. Here the trial makes both files and the driver only
stores them, under the names MLflow's UI reads. Those names are MLflow's own format, kept in this
one module; a test logs an image with `log_image` and fails if its files are named otherwise.
"""

from __future__ import annotations

import io
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.tracking.multimedia import compress_image_size
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES
from mlflow.utils.time import get_current_time_millis
from PIL import Image

IMAGE_DIR = "images"
IMAGE_STEP = re.compile(r"\+step\+(\d+)\+")
PREVIEW_SUFFIX = "+compressed.webp"


@dataclass(frozen=True)
class SampleGrid:
    """A sample grid's PNG and the preview MLflow's UI shows of it."""

    png: bytes
    preview: bytes

    @classmethod
    def from_png(cls, png: bytes) -> SampleGrid:
        with Image.open(io.BytesIO(png)) as image:
            small = compress_image_size(image.convert("RGB"))
        out = io.BytesIO()
        small.save(out, format="WEBP")
        return cls(png, out.getvalue())


def series_name(key: str, step: int, timestamp_ms: int) -> str:
    """The file name (without suffix) of one step of an image series, as log_image makes it."""
    safe_key = key.replace("/", "~")
    return f"{safe_key}+step+{step}+timestamp+{timestamp_ms}+{uuid.uuid4()}"


def log_grid(client: MlflowClient, run_id: str, key: str, step: int, grid: SampleGrid,
             first: bool) -> None:
    """One step of the run's image series `key`; `first`: the run's first image, which MLflow
    marks with a tag so that its UI shows the run's images."""
    name = series_name(key, step, get_current_time_millis())
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{name}.png").write_bytes(grid.png)
        (Path(tmp) / f"{name}{PREVIEW_SUFFIX}").write_bytes(grid.preview)
        client.log_artifacts(run_id, tmp, IMAGE_DIR)
    if first:
        client.set_tag(run_id, MLFLOW_LOGGED_IMAGES, True)


def logged_steps(client: MlflowClient, run_id: str, key: str) -> dict[int, str]:
    """The full-size images of a run's series `key`: artifact path by step."""
    found = {}
    for item in client.list_artifacts(run_id, IMAGE_DIR):
        name = Path(item.path).name
        match = IMAGE_STEP.search(name)
        if name.startswith(f"{key}+") and match and name.endswith(".png"):
            found[int(match.group(1))] = item.path
    return found
