"""Base class of every segmentation network here: input checks with an error a person understands."""

from __future__ import annotations

import torch
from torch import nn


class SegmentationModel(nn.Module):
    """A 2.5D segmentation network: (N, in_channels, H, W) -> logits (N, 1, H, W).

    Args:
        in_channels: Channels (slices per window) the network expects.
        size_multiple: H and W must be multiples of this (2 ** number of down-samplings).
    """

    def __init__(self, in_channels: int, size_multiple: int):
        super().__init__()
        self.in_channels = in_channels
        self.size_multiple = size_multiple

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"{type(self).__name__} expects a batch of 2.5D windows shaped (N, {self.in_channels}, H, W); "
                f"got a tensor with {x.ndim} dimensions {tuple(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} slices per window (channel dim 1); "
                f"got {x.shape[1]} in a tensor shaped {tuple(x.shape)}."
            )
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"{type(self).__name__} needs H and W divisible by {self.size_multiple}; got {h} x {w}. "
                "Crop or pad the region of interest to a multiple of that size."
            )
