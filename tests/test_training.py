"""The training loop: loss falls, the paper's schedule, seeded runs repeat exactly."""

import numpy as np
import pytest
import torch

from MnetImSegmentLib.models import build_model
from MnetImSegmentLib.research.losses import DeepSupervisionLoss
from MnetImSegmentLib.research.training import TrainConfig, Trainer, lr_at

from helpers.research_data import tiny_config, write_dataset


def test_loss_falls_when_fitting_phantom_windows(small_phantom):
    """A few Adam steps on real phantom windows: the deep-supervision loss must drop clearly."""
    from MnetImSegmentLib.engine.roi import RoiSpec, crop, locate_roi
    from MnetImSegmentLib.engine.windows import make_windows, normalise

    torch.manual_seed(0)
    spec = RoiSpec(size_px=(64, 64), spacing_mm=(2.0, 2.0))
    roi = locate_roi(small_phantom.ct, spec)
    img = normalise(crop(small_phantom.ct, roi, spec).array)
    lab = crop(small_phantom.mask().with_array(small_phantom.mask().array.astype(np.float32)), roi, spec,
               default=0.0).array >= 0.5
    z = np.flatnonzero(lab.reshape(len(lab), -1).any(1))[:8]
    x = torch.from_numpy(make_windows(img, z))
    y = torch.from_numpy(lab[z][:, None].astype(np.float32))
    model = build_model("Mnet_Im", features=(8, 16, 32, 64, 128), input_branch_channels=(8, 8, 8, 8)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = DeepSupervisionLoss()
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_paper_learning_rate_schedule():
    cfg = TrainConfig()  # paper: 1e-3, x0.1 after each of the first three epochs
    assert [lr_at(cfg, e) for e in range(5)] == pytest.approx([1e-3, 1e-4, 1e-5, 1e-6, 1e-6])
    cfg = TrainConfig(lr_milestones=(10, 13, 15))  # the demo weights' schedule (small epochs)
    assert lr_at(cfg, 9) == pytest.approx(1e-3) and lr_at(cfg, 10) == pytest.approx(1e-4)
    assert lr_at(cfg, 15) == pytest.approx(1e-6)


def test_same_seed_same_weights(tmp_path):
    """Seeded training on CPU is reproducible to the bit (same data, same seed, same device)."""
    from safetensors.torch import load_file

    manifest = write_dataset(tmp_path / "data", [31, 32, 33], splits=["train", "train", "val"])
    runs = []
    for name in ("a", "b"):
        Trainer(manifest, tmp_path / name, tiny_config(epochs=1), progress=False).run()
        runs.append(load_file(str(tmp_path / name / "best.safetensors")))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
