"""The paper's non-M-Net baselines (U-Net, Unetd2, Unet++, V3_R, V3_D), built with segmentation-models-pytorch.

Huang et al. (2023) compare Mnet_Im with U-Net, Unet++ and DeepLabV3+ and state only that "all parameters
are ... the same as they are set when they are first proposed". The choices below fill that gap; every
one of them is a key of :func:`baseline_config` and can be overridden (``build_model("U-Net",
encoder_name="tu-resnet50")``), and the full configuration is stored in each model card.

Common to all
    * 5 input channels (the 2.5D window), 1 output map of logits (sigmoid is applied by the caller).
    * ``encoder_weights=None`` always: the paper trains from scratch, ImageNet weights expect 3-channel
      RGB (not a 5-slice CT window), and nothing here may download at run time.

U-Net, Unet++ -- ``smp.Unet`` / ``smp.UnetPlusPlus`` with a ResNet-34 encoder (``tu-resnet34``).
    smp has no encoder that reproduces Ronneberger's plain contracting path: its VGG encoders have the
    right block structure (two 3x3 convolutions per level) but smp's U-Net decoder drops their
    full-resolution feature map (it treats the first encoder output as the input-resolution identity),
    so the result would be neither the original nor smp's tested configuration. ResNet-34 is smp's
    reference encoder for both decoders, has the original U-Net's 64-128-256-512 widths, and is the
    usual form of these baselines in recent segmentation papers. The timm build of ResNet-34 (``tu-``)
    is used rather than smp's torchvision one because it is the same network and lets Unetd2 change
    the widths (below), so U-Net and Unetd2 differ in width only. smp's Unet++ has no deep-supervision
    heads (the UNet++ paper's optional "accurate mode"); it is trained on its final output.

Unetd2 -- U-Net with half the feature maps (paper: "shrinking the number of feature maps by a factor of 2").
    Halved: the four residual stages (64-128-256-512 -> 32-64-128-256, timm ``channels``) and the five
    decoder blocks (256-128-64-32-16 -> 128-64-32-16-8). Not halved: the single 7x7 stem convolution,
    which timm fixes at 64 channels for a non-"deep" stem (about 16 k of Unetd2's parameters).

V3_R -- ``smp.DeepLabV3Plus`` with the same ResNet-34 encoder, output stride 16 (the DeepLabV3+ paper's
    training setting: the last stage dilated instead of strided) and ASPP rates 6/12/18, the DeepLabV3+
    rates for output stride 16 (smp's default 12/24/36 are the output-stride-8 rates; on a 128x128 ROI
    the 8x8 ASPP input would make every such branch a 1x1 convolution). Same encoder as U-Net so that
    the Table 1 difference is the decoder, not the backbone.

V3_D -- DeepLabV3+ with a DenseNet-121 encoder, output stride 16.
    smp refuses dilated DenseNets ("DenseNet encoders do not support dilated mode due to pooling
    operation for downsampling"), so this module makes the encoder dilated the way DeepLab does a
    ResNet: the average pooling of the last transition layer is removed (the last dense block runs at
    1/16 instead of 1/32) and that block's convolutions get dilation 2 (smp's own
    ``replace_strides_with_dilation``) so its receptive field is preserved. Decoder and head are smp's
    ``DeepLabV3PlusDecoder`` and ``SegmentationHead`` exactly as ``smp.DeepLabV3Plus`` wires them. The
    whole DenseNet-121 is kept (a depth-4 encoder would avoid the change but drop its last dense block).

Both DeepLabV3+ variants need at least 2 windows per batch in training: the ASPP image-pooling branch
batch-normalises a 1x1 map, which a single window cannot.

Importing this module never imports segmentation-models-pytorch; building a baseline does, and tells
the user how to install it when it is missing.
"""

from __future__ import annotations

import copy
import json

from ..core.errors import MnetImError
from .base import SegmentationModel

SMP_INSTALL_HINT = "pip install segmentation-models-pytorch"

_RESNET34 = "tu-resnet34"
_UNET_DECODER = (256, 128, 64, 32, 16)

# Every key is a build option; build_baseline(name, **baseline_config(name)) rebuilds the same network.
_DEFAULTS: dict[str, dict] = {
    "U-Net": {"arch": "Unet", "encoder_name": _RESNET34, "encoder_depth": 5, "encoder_kwargs": {},
              "decoder_channels": list(_UNET_DECODER)},
    "Unetd2": {"arch": "Unet", "encoder_name": _RESNET34, "encoder_depth": 5,
               "encoder_kwargs": {"channels": [32, 64, 128, 256]},
               "decoder_channels": [c // 2 for c in _UNET_DECODER]},
    "Unet++": {"arch": "UnetPlusPlus", "encoder_name": _RESNET34, "encoder_depth": 5, "encoder_kwargs": {},
               "decoder_channels": list(_UNET_DECODER)},
    "V3_R": {"arch": "DeepLabV3Plus", "encoder_name": _RESNET34, "encoder_depth": 5, "encoder_kwargs": {},
             "encoder_output_stride": 16, "decoder_channels": 256, "decoder_atrous_rates": [6, 12, 18]},
    "V3_D": {"arch": "DeepLabV3Plus", "encoder_name": "densenet121", "encoder_depth": 5, "encoder_kwargs": {},
             "encoder_output_stride": 16, "decoder_channels": 256, "decoder_atrous_rates": [6, 12, 18]},
}
for _cfg in _DEFAULTS.values():
    _cfg.update(in_channels=5, out_channels=1)

BASELINES = tuple(_DEFAULTS)
_ARCHS = ("Unet", "UnetPlusPlus", "DeepLabV3Plus")


class BaselineDependencyError(MnetImError, ImportError):
    """segmentation-models-pytorch (or the torchvision/timm it needs) cannot be imported."""


def import_smp():
    """Import segmentation-models-pytorch, or raise :class:`BaselineDependencyError` saying how to install it."""
    try:
        import segmentation_models_pytorch as smp
    except Exception as exc:  # a torchvision built for another torch fails with RuntimeError, not ImportError
        raise BaselineDependencyError(
            "The baselines U-Net, Unetd2, Unet++, V3_R and V3_D need segmentation-models-pytorch, which could "
            f"not be imported ({type(exc).__name__}: {exc}). Install it with `{SMP_INSTALL_HINT}` "
            "(it needs a torchvision built for your torch)."
        ) from exc
    return smp


def smp_available() -> bool:
    """True when the baselines can be built here (used by tests to skip with a reason)."""
    try:
        import_smp()
    except BaselineDependencyError:
        return False
    return True


def _jsonable(value):
    """Tuples to lists, recursively, so a config equals its JSON round trip."""
    return json.loads(json.dumps(value))


def baseline_config(name: str, **overrides) -> dict:
    """The full, JSON-able configuration of a baseline (what model cards store).

    Args:
        name: One of ``BASELINES``.
        **overrides: Keys of the default configuration to change, e.g. ``in_channels=3`` or
            ``encoder_name="tu-resnet50"``; ``encoder_kwargs`` replaces the whole dict.

    Returns:
        A dict such that ``build_baseline(name, **config)`` builds the same network.

    Raises:
        ValueError: Unknown name, unknown key, or an invalid value.
    """
    if name not in _DEFAULTS:
        raise ValueError(f"Unknown baseline '{name}'. Known baselines: {', '.join(BASELINES)}.")
    config = copy.deepcopy(_DEFAULTS[name])
    if "encoder_weights" in overrides:
        if overrides.pop("encoder_weights") is not None:
            raise ValueError("Baselines are trained from scratch: encoder_weights must be None "
                             "(nothing is downloaded at run time).")
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"Unknown option(s) {', '.join(unknown)} for baseline '{name}'; "
                         f"known: {', '.join(sorted(config))}.")
    config.update(overrides)
    config = _jsonable(config)
    if config["arch"] not in _ARCHS:
        raise ValueError(f"arch must be one of {', '.join(_ARCHS)}, got '{config['arch']}'.")
    if int(config["in_channels"]) < 1 or int(config["out_channels"]) < 1:
        raise ValueError("in_channels and out_channels must be positive.")
    if not isinstance(config["encoder_kwargs"], dict):
        raise ValueError("encoder_kwargs must be a dict of keyword arguments for the timm encoder.")
    if config["arch"] == "DeepLabV3Plus" and config["encoder_output_stride"] not in (8, 16):
        raise ValueError("DeepLabV3+ needs encoder_output_stride 8 or 16.")
    return config


class BaselineModel(SegmentationModel):
    """An smp network behind the project's input checks: (N, in_channels, H, W) -> logits (N, 1, H, W).

    It has a single output, so in training mode it returns one tensor (no deep supervision), which
    ``DeepSupervisionLoss`` treats as one scale.

    Args:
        name: The paper's name of the model (kept for messages and cards).
        config: A configuration from :func:`baseline_config`.
        net: The smp model built from it.
    """

    def __init__(self, name: str, config: dict, net):
        super().__init__(in_channels=int(config["in_channels"]), size_multiple=int(net.encoder.output_stride))
        self.name = name
        self.config = config
        self.net = net

    def check_input(self, x) -> None:
        try:
            super().check_input(x)
        except ValueError as exc:  # name the paper's model, not this wrapper class
            raise ValueError(str(exc).replace(type(self).__name__, self.name, 1)) from None

    def forward(self, x):
        self.check_input(x)
        return self.net(x)


def build_baseline(name: str, **overrides) -> BaselineModel:
    """Build a baseline of the paper (see the module docstring for what each name means).

    Args:
        name: One of ``BASELINES``.
        **overrides: See :func:`baseline_config`.

    Raises:
        ValueError: Invalid configuration.
        BaselineDependencyError: segmentation-models-pytorch is not installed (says how to install it).
    """
    config = baseline_config(name, **overrides)
    smp = import_smp()
    common = dict(encoder_name=config["encoder_name"], encoder_depth=config["encoder_depth"], encoder_weights=None,
                  in_channels=config["in_channels"], classes=config["out_channels"], **config["encoder_kwargs"])
    try:
        if config["arch"] == "DeepLabV3Plus":
            deeplab = dict(encoder_output_stride=config["encoder_output_stride"],
                           decoder_channels=config["decoder_channels"],
                           decoder_atrous_rates=tuple(config["decoder_atrous_rates"]))
            if config["encoder_name"].startswith("densenet"):
                net = _dilated_densenet_deeplabv3plus(smp, **common, **deeplab)
            else:
                net = smp.DeepLabV3Plus(**common, **deeplab)
        else:
            arch = smp.Unet if config["arch"] == "Unet" else smp.UnetPlusPlus
            net = arch(decoder_channels=tuple(config["decoder_channels"]), **common)
    except (KeyError, TypeError, AssertionError) as exc:  # smp/timm reject bad names and widths this way
        raise ValueError(f"segmentation-models-pytorch cannot build '{name}' with {config}: {exc}") from None
    return BaselineModel(name, config, net)


def _dilated_densenet_deeplabv3plus(smp, encoder_name, encoder_depth, encoder_weights, in_channels, classes,
                                    encoder_output_stride, decoder_channels, decoder_atrous_rates, **kwargs):
    """DeepLabV3+ on a DenseNet made dilated as DeepLab does a ResNet (module docstring, V3_D)."""
    from torch import nn
    from segmentation_models_pytorch.base import SegmentationHead
    from segmentation_models_pytorch.base import SegmentationModel as SmpSegmentationModel
    from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
    from segmentation_models_pytorch.encoders import get_encoder
    from segmentation_models_pytorch.encoders._utils import replace_strides_with_dilation

    if kwargs:
        raise ValueError(f"DenseNet encoders take no encoder_kwargs, got {sorted(kwargs)}")
    if encoder_depth != 5:
        raise ValueError("the dilated DenseNet DeepLabV3+ needs encoder_depth 5")
    encoder = get_encoder(encoder_name, in_channels=in_channels, depth=5, weights=encoder_weights)
    features = encoder.features
    # Remove the poolings below 1/output_stride; a block behind k removed poolings needs dilation 2**k
    # to keep the receptive field it had (as DeepLab does for ResNet stages).
    removed = ("transition3",) if encoder_output_stride == 16 else ("transition2", "transition3")
    for transition in removed:
        getattr(features, transition).pool = nn.Identity()
    if encoder_output_stride == 8:
        replace_strides_with_dilation(features.denseblock3, 2)
    replace_strides_with_dilation(features.denseblock4, 2 if encoder_output_stride == 16 else 4)
    encoder._output_stride = encoder_output_stride

    class DenseNetDeepLabV3Plus(SmpSegmentationModel):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.decoder = DeepLabV3PlusDecoder(
                encoder_channels=encoder.out_channels, encoder_depth=5, out_channels=decoder_channels,
                atrous_rates=decoder_atrous_rates, output_stride=encoder_output_stride,
                aspp_separable=True, aspp_dropout=0.5)
            # upsampling=4: the decoder's output is at 1/4 of the input, as in smp.DeepLabV3Plus.
            self.segmentation_head = SegmentationHead(in_channels=decoder_channels, out_channels=classes,
                                                      activation=None, kernel_size=1, upsampling=4)
            self.classification_head = None
            self.name = f"deeplabv3plus-{encoder_name}-dilated"
            self.initialize()

    return DenseNetDeepLabV3Plus()
