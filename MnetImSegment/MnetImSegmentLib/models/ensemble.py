"""Several trained networks of one configuration, voting on the same 2.5D window.

Two networks trained on different mixes fail on different scans (docs/generalisation.md, session 20):
averaging their outputs keeps what both get right. Each member votes with its *own* decision
boundary: its logit is shifted by ``logit(threshold)`` of the threshold its validation chose (0.35
for one, 0.7 for another), so a mean logit of 0 (probability 0.5) is where the members' votes
balance. Averaging raw probabilities instead would let the member with the lower threshold draw a
CTV the other one rejects.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .base import SegmentationModel

MAX_MEMBERS = 8


def check_member_thresholds(thresholds: Sequence[float]) -> list[float]:
    """The members' thresholds as floats, or ValueError: 2..MAX_MEMBERS values strictly inside (0, 1)."""
    values = [float(t) for t in thresholds]
    if not 2 <= len(values) <= MAX_MEMBERS:
        raise ValueError(f"an ensemble needs 2 to {MAX_MEMBERS} members, not {len(values)}")
    bad = [t for t in values if not (math.isfinite(t) and 0.0 < t < 1.0)]
    if bad:
        raise ValueError(f"a member's threshold must lie strictly between 0 and 1, not {bad[0]}")
    return values


class OutputEnsemble(SegmentationModel):
    """The mean of threshold-shifted member logits: (N, C, H, W) -> logits (N, 1, H, W).

    Args:
        members: Networks that take the same input (same channels and size multiple).
        member_thresholds: Each member's own probability threshold, in the members' order.

    The state dict holds the members' tensors under ``members.<i>.``; the shifts are derived from
    ``member_thresholds`` (which the model card stores), not saved as tensors.
    """

    def __init__(self, members: Sequence[SegmentationModel], member_thresholds: Sequence[float]):
        thresholds = check_member_thresholds(member_thresholds)
        if len(members) != len(thresholds):
            raise ValueError(f"{len(members)} members but {len(thresholds)} member thresholds")
        shapes = {(m.in_channels, m.size_multiple) for m in members}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members must take the same input; got (channels, size multiple) {sorted(shapes)}")
        (in_channels, size_multiple), = shapes
        super().__init__(in_channels=in_channels, size_multiple=size_multiple)
        self.members = nn.ModuleList(members)
        self.member_thresholds = thresholds
        shifts = torch.tensor([math.log(t / (1.0 - t)) for t in thresholds], dtype=torch.float32)
        self.register_buffer("shifts", shifts, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        votes = []
        for member, shift in zip(self.members, self.shifts):
            out = member(x)
            if isinstance(out, (list, tuple)):  # a member in training mode returns its deep-supervision maps
                out = out[0]
            votes.append(out.float() - shift)  # summed in fp32 under autocast: the members' bf16 maps differ little
        return torch.stack(votes).mean(0).to(out.dtype)
