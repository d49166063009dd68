"""CUDA checks, deselected by default: run with ``pytest -m gpu`` (``make test-gpu``) on a GPU machine.

They check correctness on the GPU (speed is the benchmark's job, not a test's): CUDA inference with
mixed precision agrees with the CPU fp32 path, repeats exactly, and falls back cleanly.
"""

import numpy as np
import pytest
import torch

from MnetImSegmentLib.engine.inference import Segmenter
from MnetImSegmentLib.research.metrics import volumetric_dice as dice
from MnetImSegmentLib.research.phantom import make_phantom

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(20231, matrix=512, slice_mm=2.5, z_extent_mm=250)


def test_cuda_amp_matches_cpu_fp32(phantom, demo_weights):
    cpu = Segmenter(demo_weights, device="cpu", precision="fp32").segment(phantom.ct).mask.array
    gpu = Segmenter(demo_weights, device="cuda", precision="auto").segment(phantom.ct)
    assert gpu.device.startswith("cuda")
    assert dice(gpu.mask.array, cpu) >= 0.999


def test_cuda_is_repeatable(phantom, demo_weights):
    seg = Segmenter(demo_weights, device="cuda")
    a = seg.segment(phantom.ct, keep_probability=True)
    b = seg.segment(phantom.ct, keep_probability=True)
    assert np.array_equal(a.mask.array, b.mask.array)
    assert np.abs(a.probability.array - b.probability.array).max() < 1e-3


def test_cuda_training_step_with_amp(tmp_path):
    from helpers.research_data import tiny_config, write_dataset

    from MnetImSegmentLib.research.training import Trainer

    manifest = write_dataset(tmp_path / "data", [31, 32, 33], splits=["train", "train", "val"])
    Trainer(manifest, tmp_path / "run", tiny_config(epochs=1, device="cuda"), progress=False).run()
    assert (tmp_path / "run" / "best.safetensors").exists()
