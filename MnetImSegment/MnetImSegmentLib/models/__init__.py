"""Model registry: ``build_model(name, **overrides)`` for the names the paper uses.

The M-Net family is one builder (:class:`MNet`) under different configurations, so an ablation is
a dictionary here, not a copy of a network. The segmentation-models-pytorch baselines (U-Net,
Unetd2, Unet++, V3_R, V3_D) are registered by ``baselines.py`` when that package is installed.
"""

from __future__ import annotations

from dataclasses import replace

from .base import SegmentationModel
from .mnet import MNet, MNetConfig

_MNET = MNetConfig(  # M-Net as Fu et al. build it (no bottom branches, growing input kernels, averaging)
    features=(32, 64, 128, 256, 512),
    input_levels=(1, 2, 3),
    input_branch_channels=(64, 128, 256),
    output_levels=(0, 1, 2, 3),
    fusion="average",
)
_MNET_IM = MNetConfig()  # the defaults are Mnet_Im

MNET_FAMILY: dict[str, MNetConfig] = {
    "Mnet_Im": _MNET_IM,
    "M-Net": _MNET,
    # M-Net with twice the feature maps everywhere (paper, "Experimental Results").
    "wideMnet": replace(_MNET, features=tuple(2 * c for c in _MNET.features),
                        input_branch_channels=tuple(2 * c for c in _MNET.input_branch_channels)),
    # M-Net with homogenised input branches (paper, Table 5).
    "Mnet_64": replace(_MNET, input_branch_channels=(64, 64, 64)),
    "Mnet_32": replace(_MNET, input_branch_channels=(32, 32, 32)),
    # U-Net whose expansive path is Mnet_Im's: multi-output, progressive fusion, no input pyramid.
    "Unet_mo": replace(_MNET_IM, input_levels=(), input_branch_channels=()),
}

BASELINE_NAMES = ("U-Net", "Unetd2", "Unet++", "V3_R", "V3_D")
MODEL_NAMES = tuple(MNET_FAMILY) + BASELINE_NAMES


def model_config(name: str, **overrides) -> dict:
    """The full configuration ``build_model(name, **overrides)`` would use, as a JSON-able dict."""
    if name in MNET_FAMILY:
        return replace(MNET_FAMILY[name], **overrides).to_dict()
    if name in BASELINE_NAMES:
        from .baselines import baseline_config

        return baseline_config(name, **overrides)
    raise ValueError(f"Unknown model '{name}'. Known models: {', '.join(MODEL_NAMES)}.")


def build_model(name: str, **overrides) -> SegmentationModel:
    """Build a model of the paper by name.

    Args:
        name: One of ``MODEL_NAMES``.
        **overrides: Configuration fields to change (e.g. ``in_channels=3``, ``norm="none"``).

    Returns:
        A network mapping (N, in_channels, H, W) to logits (N, 1, H, W).
    """
    if name in MNET_FAMILY:
        return MNet(replace(MNET_FAMILY[name], **overrides))
    if name in BASELINE_NAMES:
        from .baselines import build_baseline

        return build_baseline(name, **overrides)
    raise ValueError(f"Unknown model '{name}'. Known models: {', '.join(MODEL_NAMES)}.")


__all__ = ["MNet", "MNetConfig", "SegmentationModel", "build_model", "model_config", "MODEL_NAMES",
           "MNET_FAMILY", "BASELINE_NAMES"]
