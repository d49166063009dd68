"""Training augmentation (research/training/augment.py, WindowSampler levels): alignment and probabilities."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("monai")

from MnetImSegmentLib.core.errors import DatasetError  # noqa: E402
from MnetImSegmentLib.research.training.augment import FULL_PROBABILITIES, FullAugmentation  # noqa: E402
from MnetImSegmentLib.research.training.data import PreparedScan, WindowSampler  # noqa: E402

OFF = {k: 0.0 for k in FULL_PROBABILITIES}


def _pair(rng):
    """A dark window with a bright off-centre ellipse (all 5 slices) and its label."""
    yy, xx = np.mgrid[:80, :80]
    lab = ((((xx - 30) / 14.0) ** 2 + ((yy - 45) / 9.0) ** 2) < 1).astype(np.float32)
    win = np.repeat((0.2 + 0.6 * lab)[None], 5, 0) + rng.normal(0, 0.02, (5, 80, 80)).astype(np.float32)
    return win.astype(np.float32), lab


@pytest.mark.parametrize("which", ["rotate", "scale", "elastic"])
def test_spatial_transforms_keep_image_and_label_aligned(which):
    rng = np.random.default_rng(0)
    aug = FullAugmentation(seed=3, probabilities=dict(OFF, **{which: 1.0}))
    changed = 0
    for _ in range(6):
        win, lab = _pair(rng)
        out_win, out_lab = aug(win, lab)
        assert out_win.shape == win.shape and out_lab.shape == lab.shape
        assert set(np.unique(out_lab)) <= {0.0, 1.0} and out_lab.sum() > 50
        bright = out_win[2] > 0.5
        iou = (bright & (out_lab > 0)).sum() / (bright | (out_lab > 0)).sum()
        assert iou > 0.85, iou
        changed += not np.array_equal(out_lab, lab)
    assert changed >= 5


def test_probability_zero_is_identity_and_intensity_transforms_leave_the_label():
    rng = np.random.default_rng(1)
    win, lab = _pair(rng)
    out_win, out_lab = FullAugmentation(seed=0, probabilities=OFF)(win, lab)
    assert np.allclose(out_win, win) and np.array_equal(out_lab, lab)
    intensity = dict(OFF, blur=1.0, brightness=1.0, contrast=1.0, low_resolution=1.0, gamma=1.0, noise=1.0)
    out_win, out_lab = FullAugmentation(seed=0, probabilities=intensity)(win, lab)
    assert np.array_equal(out_lab, lab) and not np.allclose(out_win, win)


def test_rotation_probability_matches_nnunet_default():
    rng = np.random.default_rng(2)
    aug = FullAugmentation(seed=5, probabilities=dict(OFF, rotate=FULL_PROBABILITIES["rotate"]))
    win, lab = _pair(rng)
    hits = sum(not np.array_equal(aug(win, lab)[1], lab) for _ in range(300))
    assert 0.13 < hits / 300 < 0.27  # p = 0.2


def test_sampler_levels_determinism_and_bad_level():
    rng = np.random.default_rng(0)
    img = rng.random((20, 112, 112)).astype(np.float16)
    mask = np.zeros((20, 112, 112), np.uint8)
    mask[5:15, 40:70, 40:70] = 1
    scans = [PreparedScan("s", img, mask, None, (1.6, 1.6, 2.5))]
    a = WindowSampler(scans, (80, 80), 5, augment="full", seed=0).batch(np.random.default_rng(9), 4)
    b = WindowSampler(scans, (80, 80), 5, augment="full", seed=0).batch(np.random.default_rng(9), 4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    basic = WindowSampler(scans, (80, 80), 5, augment=True).batch(np.random.default_rng(9), 4)
    assert basic[0].shape == a[0].shape and not np.array_equal(basic[0], a[0])
    none = WindowSampler(scans, (80, 80), 5, augment="none")
    assert not none.augment and none.full is None
    with pytest.raises(DatasetError):
        WindowSampler(scans, (80, 80), 5, augment="wild")
