"""One configurable M-Net builder: Mnet_Im, M-Net and their ablations are configurations of it.

Mnet_Im is defined in Huang et al., "Segmentation of Clinical Target Volume From CT Images for
Cervical Cancer Using Deep Learning", Technology in Cancer Research & Treatment 22 (2023),
DOI 10.1177/15330338221139164. It improves M-Net (Fu et al., IEEE TMI 37(7), 2018) by

1. an extra input branch and an extra output branch at the bottom level (1/16 resolution),
2. progressive fusion of the side outputs (coarse output upsampled x2 and summed with the next finer
   one, level by level) instead of upsampling each straight to full size and averaging,
3. deep supervision on every scale (see ``losses.py``),
4. homogenised input branches: every convolution fed directly by a down-scaled image has the same
   number of kernels (64) instead of M-Net's 64/128/256.

Beyond the paper, ``prior_bias`` (off by default) makes the network predict a correction to a
probability prior given as its last input channel (the CTV atlas, ``engine/applicator_prior.py``):
every output gets ``w * logit(prior)`` added, the prior area-averaged to that output's scale. Where
the image says nothing the output falls back to the prior, as an oncologist falls back to where the
CTV lies around the applicator; where it shows the CTV the network overrules the prior.

The structure, level ``l`` running at resolution 1/2**l (the last level is the bottom)::

    image ─ConvBlock─ enc0 ───────────────────────────── concat ─ConvBlock─ dec0 ─1x1─ side0
             │maxpool                                    ↑ up
    avgpool(image)─conv─┐                                 │
             concat ─ConvBlock─ enc1 ─────────── concat ─ConvBlock─ dec1 ─1x1─ side1
             ...                                   ...
             concat ─ConvBlock─ enc4 (bottom) = dec4 ─1x1─ side4 (Mnet_Im only)

No code of M-Net's original (Keras, CC BY-NC-SA) was used; this follows the papers' descriptions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationModel

# The prior is an average of a few hundred (synthetic) training CTVs: never trust it beyond 95 : 5, so
# its logit stays within +-2.9 and the network can always overrule it.
PRIOR_CLIP = 0.05


@dataclass(frozen=True)
class MNetConfig:
    """Everything that distinguishes the members of the M-Net family.

    Args:
        in_channels: Slices per 2.5D window (5 in the paper).
        out_channels: Output maps (1: CTV logits).
        features: Channels of each level's two-convolution block, full resolution first; the last
            level is the bottom. M-Net: (32, 64, 128, 256, 512).
        input_levels: Levels that receive the average-pooled image (multi-scale input). M-Net:
            (1, 2, 3); Mnet_Im adds the bottom level 4; ``()`` gives a plain U-Net encoder.
        input_branch_channels: Kernels of the convolution applied to each down-scaled image, one per
            entry of ``input_levels`` (M-Net grows them 64/128/256; Mnet_Im homogenises to 64).
        output_levels: Levels with a 1x1 side output. M-Net: (0, 1, 2, 3); Mnet_Im: (0, 1, 2, 3, 4).
        fusion: ``"average"`` (M-Net: every side output upsampled to full size, then averaged) or
            ``"progressive"`` (Mnet_Im: coarse to fine, x2 upsample and sum).
        norm: ``"batch"`` or ``"none"``. The paper is silent; M-Net's original has none. We default
            to batch norm because it made 2.5D CT training stable at batch size 8.
        prior_bias: Add ``w * logit(clip(prior))`` to every output, ``prior`` the last input channel
            (a probability map), ``w`` a learnt scalar starting at 1. A window whose prior is all zero
            (no trusted applicator fit: the prior is absent, not "no CTV") gets no bias. Not in the
            paper; off by default.
    """

    in_channels: int = 5
    out_channels: int = 1
    features: tuple[int, ...] = (32, 64, 128, 256, 512)
    input_levels: tuple[int, ...] = (1, 2, 3, 4)
    input_branch_channels: tuple[int, ...] = (64, 64, 64, 64)
    output_levels: tuple[int, ...] = (0, 1, 2, 3, 4)
    fusion: str = "progressive"
    norm: str = "batch"
    prior_bias: bool = False

    def __post_init__(self):
        for name in ("features", "input_levels", "input_branch_channels", "output_levels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        depth = len(self.features)
        if depth < 2:
            raise ValueError("an M-Net needs at least two levels")
        if len(self.input_levels) != len(self.input_branch_channels):
            raise ValueError("input_levels and input_branch_channels must have the same length")
        if any(not 0 < lv < depth for lv in self.input_levels):
            raise ValueError(f"input_levels must lie in 1..{depth - 1}")
        if not self.output_levels or any(not 0 <= lv < depth for lv in self.output_levels):
            raise ValueError(f"output_levels must be a non-empty subset of 0..{depth - 1}")
        if 0 not in self.output_levels:
            raise ValueError("output level 0 (full resolution) is required")
        if self.fusion not in ("average", "progressive"):
            raise ValueError("fusion must be 'average' or 'progressive'")
        if self.norm not in ("batch", "none"):
            raise ValueError("norm must be 'batch' or 'none'")
        object.__setattr__(self, "prior_bias", bool(self.prior_bias))
        if self.prior_bias and self.in_channels < 2:
            raise ValueError("prior_bias reads the last input channel as a prior: it needs image channels before it")

    def to_dict(self) -> dict:
        return asdict(self)


class ConvNormAct(nn.Sequential):
    """3x3 convolution, optional batch norm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, norm: str):
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=norm == "none")]
        if norm == "batch":
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ConvBlock(nn.Sequential):
    """The two 3x3 convolutions every U-Net / M-Net level applies."""

    def __init__(self, in_ch: int, out_ch: int, norm: str):
        super().__init__(ConvNormAct(in_ch, out_ch, norm), ConvNormAct(out_ch, out_ch, norm))


class UpBlock(nn.Module):
    """2x2 transposed convolution, concatenation with the encoder skip, ConvBlock."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, norm: str):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        self.conv = ConvBlock(out_ch + skip_ch, out_ch, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class MNet(SegmentationModel):
    """The M-Net family (M-Net, Mnet_Im, Mnet_32/64, wideMnet, Unet_mo) from one :class:`MNetConfig`.

    ``forward`` returns logits (N, out_channels, H, W). In training mode a model with more than one
    output level returns the list ``[final, per-scale...]`` for deep supervision:

    * progressive fusion: the fused logits at every output level, finest first; ``final`` is the
      full-resolution fused map, so the list has one entry per output level (5 for Mnet_Im);
    * average fusion (M-Net): the average, then each side output upsampled to full size.
    """

    def __init__(self, config: MNetConfig | None = None, **overrides):
        config = config or MNetConfig()
        if overrides:
            config = MNetConfig(**{**config.to_dict(), **overrides})
        super().__init__(in_channels=config.in_channels, size_multiple=2 ** (len(config.features) - 1))
        self.config = config
        f, norm = config.features, config.norm
        branch = dict(zip(config.input_levels, config.input_branch_channels))
        self.input_branches = nn.ModuleDict(
            {str(lv): ConvNormAct(config.in_channels, ch, norm) for lv, ch in branch.items()}
        )
        self.encoders = nn.ModuleList([ConvBlock(config.in_channels, f[0], norm)])
        for lv in range(1, len(f)):
            self.encoders.append(ConvBlock(f[lv - 1] + branch.get(lv, 0), f[lv], norm))
        self.decoders = nn.ModuleList(
            [UpBlock(f[lv + 1], f[lv], f[lv], norm) for lv in range(len(f) - 1)]
        )
        self.side_outputs = nn.ModuleDict(
            {str(lv): nn.Conv2d(f[lv], config.out_channels, 1) for lv in config.output_levels}
        )
        if config.prior_bias:
            self.prior_weight = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        skips = []
        h = x
        for lv, encoder in enumerate(self.encoders):
            if lv > 0:
                h = F.max_pool2d(h, 2)
                if str(lv) in self.input_branches:
                    scaled = F.avg_pool2d(x, 2**lv)
                    h = torch.cat([h, self.input_branches[str(lv)](scaled)], dim=1)
            h = encoder(h)
            skips.append(h)

        decoded = {len(skips) - 1: skips[-1]}
        for lv in range(len(skips) - 2, -1, -1):
            h = self.decoders[lv](h, skips[lv])
            decoded[lv] = h
        sides = {lv: self.side_outputs[str(lv)](decoded[lv]) for lv in self.config.output_levels}

        if self.config.fusion == "progressive":
            outputs = self._progressive(sides)
        else:
            size = x.shape[-2:]
            full = [_upsample(sides[lv], size) for lv in sorted(sides)]
            outputs = [torch.stack(full).mean(0)] + (full if len(full) > 1 else [])
        if self.config.prior_bias:
            outputs = [out + self._prior_logits(x, out) for out in outputs]
        return outputs if (self.training and len(outputs) > 1) else outputs[0]

    def _prior_logits(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``w * logit(prior)`` at ``out``'s resolution; zero for windows without a prior."""
        prior = x[:, -1:].float()
        present = (prior.flatten(1).amax(1) > 0).float().view(-1, 1, 1, 1)
        if prior.shape[-2:] != out.shape[-2:]:
            # Area average: the same reduction the deep-supervision truth gets at each scale.
            prior = F.adaptive_avg_pool2d(prior, out.shape[-2:])
        logits = torch.logit(prior.clamp(PRIOR_CLIP, 1.0 - PRIOR_CLIP))
        return (self.prior_weight * present * logits).to(out.dtype)

    @staticmethod
    def _progressive(sides: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """Coarse to fine: fused_l = side_l + up2(fused_{l+1}); returns fused maps, finest first."""
        fused: list[torch.Tensor] = []
        current = None
        for lv in range(max(sides), -1, -1):
            if current is not None:
                current = _upsample(current, scale=2)
            if lv in sides:
                current = sides[lv] if current is None else sides[lv] + current
                fused.append(current)
        return fused[::-1]


def _upsample(t: torch.Tensor, size=None, scale=None) -> torch.Tensor:
    if size is not None and tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, scale_factor=scale, mode="bilinear", align_corners=False)
