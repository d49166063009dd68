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


def test_ctv_reveal_shifts_the_ctv_with_a_soft_edge_and_nothing_else():
    """The CTV moves by the shift (either sign), its edge by part of it; far pixels, metal, air and the
    caller's array stay; no CTV, nothing moves."""
    from MnetImSegmentLib.research.training.data import reveal_ctv

    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[:80, :80]
    lab = ((((xx - 40) / 14.0) ** 2 + ((yy - 40) / 9.0) ** 2) < 1).astype(np.uint8)
    win = (0.5 + rng.normal(0, 0.01, (5, 80, 80))).astype(np.float32)  # iso-dense: no contrast at all
    win[:, 39:42, 39:42] = 1.0  # a tandem through the CTV: clipped bright, not tissue
    win[:, :, :4] = 0.0  # air at the window's edge
    masks = np.repeat(lab[None], 5, 0)
    before = win.copy()
    for shift in (0.12, -0.12):
        out = reveal_ctv(win, masks, shift)
        assert np.array_equal(win, before)  # not modified in place
        core = np.zeros_like(masks, bool)
        core[:, 36:45, 30:51] = True  # well inside the ellipse (half-axes 14 x 9 px)
        core &= win < 0.99
        assert np.allclose(out[core] - win[core], shift, atol=1e-6)
        assert _contrast(out, lab) > 0.1 and _contrast(before, lab) < 0.02
        edge = (masks > 0) & ~core & (win < 0.99)
        moved = (out - win)[edge] / shift
        assert moved.min() > 0.3 and moved.max() <= 1.0 + 1e-6  # partial volume on the edge, never beyond
        far = np.ones((80, 80), bool)
        far[28:53, 23:58] = False  # outside the ellipse and its 1 px fade
        assert np.array_equal(out[:, far], win[:, far])
        assert np.all(out[:, 39:42, 39:42] == 1.0) and np.all(out[:, :, :4] == 0.0)
    assert np.array_equal(reveal_ctv(win, np.zeros_like(masks), 0.12), win)


def test_sampler_reveal_is_off_by_default_and_keeps_the_random_stream():
    """ctv_reveal=0 draws nothing extra (earlier runs stay reproducible); 1.0 gives iso-dense CTVs a contrast."""
    from MnetImSegmentLib.research.training.trainer import TrainConfig

    yy, xx = np.mgrid[:112, :112]
    disc = (((xx - 56) ** 2 + (yy - 56) ** 2) < 15**2).astype(np.uint8)
    mask = np.repeat(disc[None], 20, 0)
    img = (0.5 + np.random.default_rng(4).normal(0, 0.02, mask.shape)).astype(np.float16)  # iso-dense CTV
    scans = [PreparedScan("s", img, mask, None, (1.6, 1.6, 2.5))]
    plain = WindowSampler(scans, (80, 80), 5, augment="basic").batch(np.random.default_rng(9), 8)
    off = WindowSampler(scans, (80, 80), 5, augment="basic", ctv_reveal=0.0).batch(np.random.default_rng(9), 8)
    assert np.array_equal(plain[0], off[0]) and np.array_equal(plain[1], off[1])
    on = WindowSampler(scans, (80, 80), 5, augment="basic", ctv_reveal=1.0).batch(np.random.default_rng(9), 8)
    contrast = [[_contrast(x[b], y[b, 0]) for b in range(8) if y[b, 0].sum() > 50] for x, y in (plain, on)]
    assert max(contrast[0]) < 0.03 and min(contrast[1]) > 0.03  # 20-80 HU of a 500 HU window: 0.04-0.16
    assert WindowSampler(scans, (80, 80), 5, augment="none", ctv_reveal=1.0).reveal == 0.0  # validation
    assert "ctv_reveal" not in TrainConfig().to_dict()
    assert TrainConfig.from_dict(TrainConfig(ctv_reveal=0.4).to_dict()).ctv_reveal == 0.4


def test_ctv_reveal_option_and_its_bad_values(capsys):
    from MnetImSegmentLib.cli import build_parser
    from MnetImSegmentLib.cli.options import train_config_from_args

    parser = build_parser()
    assert train_config_from_args(parser.parse_args(["train", "m.csv", "-o", "run", "--ctv-reveal", "0.4"])).ctv_reveal == 0.4
    assert train_config_from_args(parser.parse_args(["train", "m.csv", "-o", "run"])).ctv_reveal == 0.0
    for bad in ("2", "-0.5", "inf"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["train", "m.csv", "-o", "run", "--ctv-reveal", bad])
        assert exc.value.code != 0 and f"must be a share from 0 to 1, got '{bad}'" in capsys.readouterr().err


def _fat_ringed(rng, hu_window=(-200.0, 300.0)):
    """5 slices (normalised): tissue 40 HU, a CTV disc (r 12 px) at 70 HU, fat (-100 HU) from r 16 to 24 px
    around it, a gas pocket (-900 HU) inside the fat, fat again from r 40 px out; and the CTV masks."""
    yy, xx = np.mgrid[:112, :112]
    r = np.hypot(xx - 56, yy - 56)
    hu = np.full((112, 112), 40.0)
    hu[r < 12] = 70.0
    hu[(r >= 16) & (r < 24)] = -100.0
    hu[(np.hypot(xx - 76, yy - 56) < 3)] = -900.0  # gas at r 20: inside the fat ring
    hu[r >= 40] = -100.0
    hu = np.repeat(hu[None], 5, 0) + rng.normal(0, 5, (5, 112, 112))
    win = np.clip((hu - hu_window[0]) / (hu_window[1] - hu_window[0]), 0, 1).astype(np.float32)
    return win, np.repeat((r < 12)[None], 5, 0).astype(np.uint8), r


def test_fat_fill_raises_the_fat_near_the_ctv_to_the_tissue_and_keeps_the_rest():
    """Fat within the reach takes the tissue's level (its noise kept); the CTV, gas, far fat and the caller's array stay."""
    from MnetImSegmentLib.research.training.data import fill_fat_around_ctv

    win, masks, r = _fat_ringed(np.random.default_rng(5))
    before = win.copy()
    out = fill_fat_around_ctv(win, masks, reach_px=16)
    assert np.array_equal(win, before)  # not modified in place
    unit = 1 / 500.0
    ring = (r >= 17) & (r < 23) & (np.hypot(*np.mgrid[:112, :112][::-1] - np.array([76, 56])[:, None, None]) > 6)
    tissue = (r >= 26) & (r < 36)
    assert abs(np.median(before[:, ring]) - np.median(before[:, tissue])) > 120 * unit  # a fat boundary as made...
    assert abs(np.median(out[:, ring]) - np.median(out[:, tissue])) < 8 * unit  # ...filled to the tissue's level
    assert np.std(out[:, ring]) == pytest.approx(np.std(before[:, ring]), rel=0.3)  # a shift: the noise stays
    assert np.array_equal(out[masks > 0], win[masks > 0])  # the CTV's own contrast is untouched
    gas = np.hypot(*np.mgrid[:112, :112][::-1] - np.array([76, 56])[:, None, None]) < 2
    assert np.array_equal(out[:, gas], win[:, gas])  # gas is not fat
    far = r > 16 + 12 + 4  # beyond the reach and its fade
    assert np.array_equal(out[:, far], win[:, far])
    near = fill_fat_around_ctv(win, masks, reach_px=6)  # a shorter reach fills only the fat's inner part
    assert np.median(near[:, (r >= 16) & (r < 17)]) > np.median(win[:, ring]) + 100 * unit
    outer = (r >= 23) & (r < 24)  # beyond 6 px (8.5 px diagonally: a square reach) and the fade
    assert np.array_equal(near[:, outer], win[:, outer])
    assert np.array_equal(fill_fat_around_ctv(win, np.zeros_like(masks), 16), win)  # no CTV: nothing to fill
    no_fat = np.clip(win, 0.4, None)
    assert np.array_equal(fill_fat_around_ctv(no_fat, masks, 16), no_fat)  # no fat: nothing to fill


def test_sampler_fat_fill_is_off_by_default_and_keeps_the_random_stream(capsys):
    """fat_fill=0 draws nothing extra; 1.0 fills the fat ring of every positive window; off in validation; the option."""
    from MnetImSegmentLib.cli import build_parser
    from MnetImSegmentLib.cli.options import train_config_from_args
    from MnetImSegmentLib.research.training.trainer import TrainConfig

    win, masks, r = _fat_ringed(np.random.default_rng(6))
    img = np.repeat(win[:1], 20, 0).astype(np.float16)
    mask = np.repeat(masks[:1], 20, 0)
    scans = [PreparedScan("s", img, mask, None, (1.6, 1.6, 2.5))]
    plain = WindowSampler(scans, (96, 96), 5, augment=True).batch(np.random.default_rng(9), 6)
    off = WindowSampler(scans, (96, 96), 5, augment=True, fat_fill=0.0).batch(np.random.default_rng(9), 6)
    assert np.array_equal(plain[0], off[0]) and np.array_equal(plain[1], off[1])
    on = WindowSampler(scans, (96, 96), 5, augment=True, fat_fill=1.0).batch(np.random.default_rng(9), 6)
    def level(batch, lo, hi):  # mean of the middle slices between lo and hi px from each window's CTV centre
        x, y = batch
        values = []
        for b in range(len(x)):
            cy, cx = np.argwhere(y[b, 0] > 0).mean(0)
            rr = np.hypot(*(np.mgrid[:96, :96] - np.array([cy, cx])[:, None, None]))
            values.append(x[b, 2][(rr >= lo) & (rr < hi)].mean())
        return np.mean(values) * 500.0  # HU above the window's bottom
    assert level(on, 16, 24) > level(plain, 16, 24) + 40  # the fat ring near the CTV is raised...
    assert level(on, 44, 60) < 150 and level(plain, 44, 60) < 150  # ...the far fat is not (fat 100, tissue 240)
    assert WindowSampler(scans, (96, 96), 5, augment="none", fat_fill=1.0).fat_fill == 0.0
    assert "fat_fill" not in TrainConfig().to_dict()
    assert TrainConfig.from_dict(TrainConfig(fat_fill=0.4).to_dict()).fat_fill == 0.4
    parser = build_parser()
    assert train_config_from_args(parser.parse_args(["train", "m.csv", "-o", "run", "--fat-fill", "0.4"])).fat_fill == 0.4
    for bad in ("1.5", "-0.1", "nan", "often"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["train", "m.csv", "-o", "run", "--fat-fill", bad])
        assert exc.value.code != 0 and f"must be a share from 0 to 1, got '{bad}'" in capsys.readouterr().err
