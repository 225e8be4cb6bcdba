"""Pictures a run leaves behind: sample grids, the progress GIF and the loss curves."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torchvision.utils import make_grid

from gan.fileio import atomic_write


def grid_image(images: torch.Tensor, nrow: int = 8):
    """Images in [-1, 1] (N, C, H, W) as one PIL image."""
    from PIL import Image

    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, normalize=True,
                     value_range=(-1, 1))
    array = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    return Image.fromarray(array)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (N, C, H, W) -> uint8 (N, H, W, C), rounded as torchvision saves them."""
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).add_(0.5).clamp_(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def save_png_folder(images: torch.Tensor, folder: Path, start: int = 0) -> list[Path]:
    """One PNG per image, numbered (000000.png, ...): the layout image-folder tools read."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, array in enumerate(to_uint8(images).numpy(), start):
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        path = folder / f"{i:06d}.png"
        atomic_write(path, lambda f, im=image: im.save(f, format="PNG"))
        paths.append(path)
    return paths


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    image = grid_image(images, nrow)
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def write_progress_gif(sample_dir: Path, path: Path, frame_ms: int = 400) -> None:
    from PIL import Image

    frames = [Image.open(p).convert("RGB") for p in sorted(sample_dir.glob("step_*.png"))]
    if not frames:
        return
    # Hold the last frame longer: it is the one people look at.
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms * 5]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations,
                   loop=0)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_losses(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if "loss_d" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_d) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(steps, [r["loss_d"] for r in rows], label="D loss")
    ax_loss.plot(steps, [r["loss_g"] for r in rows], label="G loss")
    ax_loss.set_xlabel("generator updates")
    ax_loss.legend()
    ax_d.plot(steps, [r["d_real"] for r in rows], label="D(x)")
    ax_d.plot(steps, [r["d_fake"] for r in rows], label="D(G(z))")
    ax_d.set_xlabel("generator updates")
    ax_d.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
