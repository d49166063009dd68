"""Deep-supervision loss of Mnet_Im (Huang et al. 2023, Methods).

Per scale: ``L_i = alpha * BCE + beta * (1 - Dice)``, alpha = 0.1, beta = 0.9; in total
``L = sum_i w_i L_i``. The paper's Discussion takes the mean over scales, so the default weights are
``1 / number_of_outputs``.

Ground truth at a coarser output is the full-resolution mask **average-pooled** to that size: each
coarse pixel's target is the fraction of its area inside the CTV. That is exact for area (the coarse
map's total equals the fine mask's area / 4**l) and makes BCE and soft Dice well defined at
boundaries, where nearest-neighbour decimation would flip pixels at random.

The Dice term is computed per image (as in the paper's formula over (H, W)) and averaged over the
batch; ``smooth`` (default 1) keeps an empty truth with an empty prediction at zero loss instead of
0/0.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def reduce_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Area-average a (N, 1, H, W) mask to ``size`` (H and W must be integer multiples of it)."""
    h, w = target.shape[-2:]
    if (h, w) == tuple(size):
        return target
    fh, fw = h // size[0], w // size[1]
    if fh * size[0] != h or fw * size[1] != w:
        raise ValueError(f"target {h}x{w} is not an integer multiple of output {size[0]}x{size[1]}")
    return F.avg_pool2d(target, (fh, fw))


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.1, beta: float = 0.9,
                  smooth: float = 1.0) -> torch.Tensor:
    """alpha * mean BCE + beta * mean over images of (1 - soft Dice), for one scale."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    prob = torch.sigmoid(logits.float()).flatten(1)
    tgt = target.float().flatten(1)
    dice = (2 * (prob * tgt).sum(1) + smooth) / (prob.sum(1) + tgt.sum(1) + smooth)
    return alpha * bce + beta * (1 - dice).mean()


class DeepSupervisionLoss(nn.Module):
    """Sum of per-scale BCE + Dice losses over a model's outputs.

    Args:
        alpha: BCE weight (paper: 0.1).
        beta: Dice-loss weight (paper: 0.9).
        scale_weights: ``w_i`` per output, finest first; ``None`` = equal weights summing to 1.
        smooth: Dice smoothing constant.
    """

    def __init__(self, alpha: float = 0.1, beta: float = 0.9, scale_weights: Sequence[float] | None = None,
                 smooth: float = 1.0):
        super().__init__()
        self.alpha, self.beta, self.smooth = alpha, beta, smooth
        self.scale_weights = None if scale_weights is None else [float(w) for w in scale_weights]

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        outputs = [outputs] if torch.is_tensor(outputs) else list(outputs)
        weights = self.scale_weights or [1.0 / len(outputs)] * len(outputs)
        if len(weights) != len(outputs):
            raise ValueError(f"{len(weights)} scale weights for {len(outputs)} model outputs")
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs):
            total = total + w * bce_dice_loss(out, reduce_target(target, out.shape[-2:]),
                                              self.alpha, self.beta, self.smooth)
        return total
