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


def _contrast(win, lab):
    """|median inside - median of a 3-8 px ring| of the middle slice."""
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(lab.astype(np.float32))[None, None]
    ring = ((F.max_pool2d(m, 17, 1, 8) - F.max_pool2d(m, 7, 1, 3))[0, 0].numpy() > 0)
    return abs(float(np.median(win[2][lab > 0]) - np.median(win[2][ring])))


def test_ctv_camouflage_hides_the_ctv_and_nothing_else():
    """At full strength the CTV's level meets its surroundings'; far pixels, metal and the caller's array stay."""
    from MnetImSegmentLib.research.training.data import camouflage_ctv

    rng = np.random.default_rng(3)
    win, lab = _pair(rng)
    win[:, 44:47, 29:32] = 1.0  # a tandem through the CTV: clipped bright, not tissue
    masks = np.repeat(lab[None], 5, 0)
    before = win.copy()
    out = camouflage_ctv(win, masks, 1.0)
    assert np.array_equal(win, before)  # not modified in place
    assert _contrast(before, lab) > 0.5 and _contrast(out, lab) < 0.05
    half = camouflage_ctv(win, masks, 0.5)
    assert 0.2 < _contrast(half, lab) < 0.4
    far = np.ones_like(lab, bool)
    far[20:70, 5:55] = False  # well outside the CTV and its 2 px fade
    assert np.array_equal(out[:, far], win[:, far]) and np.all(out[:, 44:47, 29:32] == 1.0)
    assert np.array_equal(camouflage_ctv(win, np.zeros_like(masks), 1.0), win)  # no CTV: nothing to hide


def test_sampler_camouflage_is_off_by_default_and_keeps_the_random_stream():
    """ctv_camouflage=0 draws nothing extra (earlier runs stay reproducible); 1.0 lowers the CTV's contrast."""
    from MnetImSegmentLib.research.training.trainer import TrainConfig

    yy, xx = np.mgrid[:112, :112]
    disc = (((xx - 56) ** 2 + (yy - 56) ** 2) < 15**2).astype(np.uint8)
    mask = np.repeat(disc[None], 20, 0)
    rng = np.random.default_rng(4)
    img = (0.3 + 0.4 * mask + rng.normal(0, 0.02, mask.shape)).astype(np.float16)
    scans = [PreparedScan("s", img, mask, None, (1.6, 1.6, 2.5))]
    plain = WindowSampler(scans, (80, 80), 5, augment=True).batch(np.random.default_rng(9), 6)
    off = WindowSampler(scans, (80, 80), 5, augment=True, ctv_camouflage=0.0).batch(np.random.default_rng(9), 6)
    assert np.array_equal(plain[0], off[0]) and np.array_equal(plain[1], off[1])
    on = WindowSampler(scans, (80, 80), 5, augment=True, ctv_camouflage=1.0).batch(np.random.default_rng(9), 6)
    for x, y in ((plain[0], plain[1]), (on[0], on[1])):
        assert y.sum() > 0
    contrast = [np.mean([_contrast(x[b], y[b, 0]) for b in range(6) if y[b, 0].sum() > 50]) for x, y in (plain, on)]
    assert contrast[0] > 0.3 and contrast[1] < 0.5 * contrast[0]
    assert WindowSampler(scans, (80, 80), 5, augment="none", ctv_camouflage=1.0).camouflage == 0.0  # validation
    assert "ctv_camouflage" not in TrainConfig().to_dict()
    assert TrainConfig.from_dict(TrainConfig(ctv_camouflage=0.3).to_dict()).ctv_camouflage == 0.3


def test_ctv_camouflage_option_and_its_bad_values(capsys):
    from MnetImSegmentLib.cli import build_parser
    from MnetImSegmentLib.cli.options import train_config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "m.csv", "-o", "run", "--ctv-camouflage", "0.3"])
    assert train_config_from_args(args).ctv_camouflage == 0.3
    for bad in ("1.5", "-0.1", "nan", "often"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["train", "m.csv", "-o", "run", "--ctv-camouflage", bad])
        assert exc.value.code != 0 and f"must be a share from 0 to 1, got '{bad}'" in capsys.readouterr().err
