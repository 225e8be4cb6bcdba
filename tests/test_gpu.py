"""On a CUDA machine: the trainer on the GPU, with mixed precision and channels-last."""

import json

import pytest
import torch

from gan.checkpoint import load_generator
from gan.config import make_config
from gan.train import train
from tests.conftest import tiny

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("amp", "channels_last"), [(False, False), (True, True)])
def test_dcgan_trains_on_cuda_and_its_checkpoint_loads_on_cpu(tmp_path, amp, channels_last):
    cfg = make_config(tiny(arch="dcgan", steps=20, log_every=10, checkpoint_every=10,
                           sample_every=10, device="cuda", amp=amp, channels_last=channels_last,
                           eval_every=10, eval_n=200, final_n=300))
    result = train(cfg, tmp_path)
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all()
               for r in result.records)
    assert result.final["fid"] > 0
    generator, loaded = load_generator(tmp_path / "best.pt", "cpu")
    assert next(generator.parameters()).device.type == "cpu" and loaded.device == "cuda"
    assert json.loads((tmp_path / "config.json").read_text())["amp"] is amp


def test_a_cuda_trial_reports_cuda_when_ray_gives_it_a_gpu(tmp_path):
    import subprocess
    import sys

    code = ("import ray, torch; from study.trainable import trial_device\n"
            "ray.init(num_gpus=1, num_cpus=1, include_dashboard=False)\n"
            "print(ray.get(ray.remote(num_gpus=1)(trial_device).remote()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "cuda", out.stderr[-2000:]
