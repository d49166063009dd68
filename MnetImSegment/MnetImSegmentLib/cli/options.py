"""Flags several ``mnetim`` commands share, so each has one spelling, default and meaning."""

from __future__ import annotations

import argparse
import json
import sys

from ..core.errors import InputError
from ..engine.applicator_prior import APPLICATOR_PRIORS
from ..engine.metal_reduction import METAL_REDUCTIONS
from ..engine.roi import RoiSpec
from ..engine.windows import InputSpec
from ..research.training.data import parse_style_weights
from ..research.training.augment import AUGMENT_LEVELS
from ..research.training.trainer import TrainConfig

DEVICES = ["auto", "cpu", "cuda", "gpu"]


def add_device(p, **kwargs) -> None:
    """``--device auto|cpu|cuda|gpu`` (default auto)."""
    p.add_argument("--device", default="auto", choices=DEVICES, **kwargs)


def add_json(p) -> None:
    """``--json``: print one JSON object on stdout instead of the human summary."""
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_input_output(p, name: str, help: str, output_help: str) -> None:
    """The positional input ``name`` and the required ``-o/--output``."""
    p.add_argument(name, help=help)
    p.add_argument("-o", "--output", required=True, help=output_help)


def add_overwrite(p, help: str = "replace existing outputs") -> None:
    p.add_argument("--overwrite", action="store_true", help=help)


def emit(args, report: dict, human, **json_options) -> None:
    """Print ``report`` as one JSON object with ``--json``, else the human summary.

    Args:
        args: The parsed arguments (``args.json`` decides).
        report: What ``--json`` prints.
        human: A line, a list of lines, or a callable returning either (called only without ``--json``).
        json_options: Passed to ``json.dumps`` (e.g. ``default=float``).
    """
    if args.json:
        print(json.dumps(report, **json_options))
        return
    text = human() if callable(human) else human
    for line in [text] if isinstance(text, str) else text:
        print(line)


def add_trust(p) -> None:
    """``--roi-center X,Y,Z`` (overrides the ROI and the scope refusal) and ``--strict``."""
    p.add_argument("--roi-center", metavar="X,Y,Z", help="ROI centre in LPS mm: segments a CT refused as out of "
                   "scope (e.g. no applicator found); its reasons become warnings")
    p.add_argument("--strict", action="store_true", help="any quality warning: exit 3 and write nothing")


def warn(warnings: list) -> None:
    """Each warning to stderr as one line ``warning: ...``."""
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def command_line() -> str:
    """The command as typed, for run folders and model cards."""
    return "mnetim " + " ".join(sys.argv[1:])


def json_object(text: str) -> dict:
    """argparse type of ``--model-options``: a JSON object of objects."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError('expected {"MODEL": {"option": value, ...}, ...}')
    return value


def _style_weights(text: str) -> dict:
    try:
        return parse_style_weights(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _share(text: str) -> float:
    """A share of training windows: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got '{text}'")
    return value


def add_train_options(p) -> None:
    """The training options of ``mnetim train``, ``crossval`` and ``compare`` (defaults: ``TrainConfig``'s)."""
    d = TrainConfig()
    g = p.add_argument_group("training options (as for mnetim train)")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--windows-per-epoch", type=int, default=d.windows_per_epoch,
                   help="0 = one pass over the training ROI slices")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--lr-milestones", type=int, nargs="*", default=list(d.lr_milestones),
                   help="epochs after which lr *= gamma (paper: 1 2 3)")
    g.add_argument("--lr-gamma", type=float, default=d.lr_gamma)
    g.add_argument("--patience", type=int, default=d.patience,
                   help="early stopping: epochs without a better validation Dice")
    g.add_argument("--seed", type=int, default=d.seed)
    add_device(g)
    g.add_argument("--threads", type=int, default=d.num_threads, help="CPU threads (0: torch's default)")
    g.add_argument("--max-minutes", type=float, default=d.max_minutes,
                   help="per training run: stop after the epoch that passes this budget (0: none)")
    g.add_argument("--roi-size", type=int, default=None, metavar="PX",
                   help="network input, square, a multiple of 16 (default: 128); stored in the card")
    g.add_argument("--roi-spacing", type=float, default=None, metavar="MM",
                   help="in-plane spacing of the ROI crop (default: 1.0); size x spacing is the field of view")
    g.add_argument("--model-options", type=json_object, default=None, metavar="JSON",
                   help='build options per model, e.g. \'{"Mnet_Im": {"norm": "none"}}\' (default: the paper\'s)')
    g.add_argument("--augment", default=d.augment, choices=AUGMENT_LEVELS,
                   help="training augmentation: basic = shift/mirror/HU offset/noise; full adds nnU-Net-style rotation, "
                        f"scaling, elastic, blur, brightness, contrast, low resolution, gamma (MONAI) (default: {d.augment})")
    g.add_argument("--style-weights", type=_style_weights, default=None, metavar="STYLE:W,...",
                   help="draw training scans of a manifest style this much more (or less) often, e.g. v2:3 keeps a "
                        "minority style from being forgotten (default: every scan equally)")
    g.add_argument("--ctv-camouflage", type=_share, default=0.0, metavar="P",
                   help="share of training windows (0-1) whose CTV is made iso-dense with the tissue around it, so "
                        "the network learns CTVs that CT barely shows (default: 0, off)")
    g.add_argument("--ctv-reveal", type=_share, default=0.0, metavar="P",
                   help="share of training windows (0-1) whose CTV is made 20-80 HU brighter or darker than it is, "
                        "so the network learns to follow a CTV edge it can see (default: 0, off)")
    g.add_argument("--fat-fill", type=_share, default=0.0, metavar="P",
                   help="share of training windows (0-1) whose fat within 6-26 mm of the CTV is raised to the soft "
                        "tissue's level, so the network cannot take the nearest fat boundary for the CTV's edge "
                        "(default: 0, off; at 0.4 it did not help the demo weights: docs/generalisation.md)")
    g.add_argument("--applicator-prior", default="none", choices=APPLICATOR_PRIORS,
                   help="an extra input channel (default: none, the paper's 5-slice input): 'tandem' = closeness "
                        "to the lower tandem found by the applicator localiser (engine/applicator_prior.py); 'atlas' = a CTV "
                        "atlas in the tandem's frame, built from the training split's labels and stored with the "
                        "weights; fine-tuning a model without a prior starts that channel at zero, one with the other "
                        "prior keeps it")
    g.add_argument("--metal-reduction", default="none", choices=METAL_REDUCTIONS,
                   help="metal-artefact reduction of the ROI before the network (default: none, the paper's input): "
                        "'normalised' = NMAR, 'linear' = LI-MAR (engine/metal_reduction.py); stored in the card, so "
                        "inference does the same")
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs even if tensorboard is installed")


def train_config_from_args(args, model: str = "Mnet_Im") -> TrainConfig:
    """A TrainConfig from the options of :func:`add_train_options`."""
    roi = RoiSpec().to_dict()
    if args.roi_size is not None:
        roi["size_px"] = [args.roi_size, args.roi_size]
    if args.roi_spacing is not None:
        roi["spacing_mm"] = [args.roi_spacing, args.roi_spacing]
    return TrainConfig(model=model, epochs=args.epochs, windows_per_epoch=args.windows_per_epoch,
                       batch_size=args.batch_size, lr=args.lr, lr_milestones=tuple(args.lr_milestones),
                       lr_gamma=args.lr_gamma, patience=args.patience, seed=args.seed, device=args.device,
                       num_threads=args.threads, max_minutes=args.max_minutes, roi=roi,
                       augment=getattr(args, "augment", TrainConfig.augment),
                       input=InputSpec(applicator_prior=getattr(args, "applicator_prior", "none"),
                                       metal_reduction=getattr(args, "metal_reduction", "none")).to_dict(),
                       style_weights=getattr(args, "style_weights", None),
                       ctv_camouflage=getattr(args, "ctv_camouflage", 0.0),
                       fat_fill=getattr(args, "fat_fill", 0.0),
                       ctv_reveal=getattr(args, "ctv_reveal", 0.0))
