"""Deep-supervision loss against hand-computed values."""

import math

import pytest
import torch

from MnetImSegmentLib.research.losses import DeepSupervisionLoss, bce_dice_loss, reduce_target


def test_single_scale_hand_computed():
    # logits 0 -> p = 0.5 everywhere; target: 1 of 4 pixels.
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    bce = math.log(2)  # -log(0.5) for every pixel
    dice = (2 * 0.5 + 1) / (2.0 + 1.0 + 1)  # (2*sum(p*y) + 1) / (sum p + sum y + 1)
    expected = 0.1 * bce + 0.9 * (1 - dice)
    assert bce_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_perfect_prediction_has_small_loss_and_empty_pair_zero_dice_term():
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    logits = (target * 2 - 1) * 30
    assert bce_dice_loss(logits, target).item() < 1e-3
    empty = torch.zeros(1, 1, 4, 4)
    assert bce_dice_loss(torch.full_like(empty, -30.0), empty).item() < 1e-6


def test_target_reduction_is_area_average():
    t = torch.zeros(1, 1, 4, 4)
    t[..., 0, 0] = 1
    t[..., 0, 1] = 1
    r = reduce_target(t, (2, 2))
    assert r[0, 0].tolist() == [[0.5, 0.0], [0.0, 0.0]]
    assert reduce_target(t, (1, 1)).item() == pytest.approx(2 / 16)
    with pytest.raises(ValueError):
        reduce_target(t, (3, 3))


def test_deep_supervision_sums_weighted_scales():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    outs = [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 2, 2)]
    per = [bce_dice_loss(o, reduce_target(target, o.shape[-2:])) for o in outs]
    assert DeepSupervisionLoss()(outs, target).item() == pytest.approx(sum(per).item() / 3, rel=1e-6)
    w = [0.5, 0.3, 0.2]
    got = DeepSupervisionLoss(scale_weights=w)(outs, target).item()
    assert got == pytest.approx(sum(wi * p for wi, p in zip(w, per)).item(), rel=1e-6)
    assert DeepSupervisionLoss()(outs[0], target).item() == pytest.approx(per[0].item(), rel=1e-6)
    with pytest.raises(ValueError):
        DeepSupervisionLoss(scale_weights=[1.0])(outs, target)
