"""``mnetim train``: train one model on a manifest and export a weights folder."""

from __future__ import annotations

import json
from pathlib import Path

from ..engine.weights import default_weights_dir
from ..research.training.distributed import is_main_process
from ..research.training.export import INTENDED_USE_RESEARCH, train_and_export
from .options import add_input_output, add_json, add_train_options, command_line, emit, train_config_from_args


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model on a manifest and export a weights folder")
    add_input_output(t, "manifest", "CSV: image, mask, patient_id, scan_id[, split]",
                     "run folder (must be new, or --resume)")
    t.add_argument("--model", default="Mnet_Im")
    add_train_options(t)
    t.add_argument("--name", default="Mnet_Im")
    t.add_argument("--version", default="0.1.0")
    t.add_argument("--intended-use")
    t.add_argument("--data-description", help="JSON object describing the training data, stored in the card")
    t.add_argument("--init-weights", metavar="DIR",
                   help="fine-tune: start from this weights folder ('shipped' = the demo weights); its network and "
                        "input (ROI size/spacing) must match this run's; the new card names it as parent")
    t.add_argument("--prior-bias", action="store_true",
                   help="M-Net family, with --applicator-prior atlas: add w * logit(prior) to the output, so the network "
                        "predicts a correction to the CTV atlas and falls back to it where the image shows nothing "
                        "(models/mnet.py; default: off)")
    t.add_argument("--resume", action="store_true",
                   help="continue an unfinished run (epochs, patience, --max-minutes, device, threads may change)")
    add_json(t)
    t.set_defaults(func=run)


def run(args) -> int:
    cfg = train_config_from_args(args, model=args.model)
    if args.init_weights:
        cfg.init_weights = str(default_weights_dir() if args.init_weights == "shipped" else args.init_weights)
    overrides = dict((args.model_options or {}).get(args.model) or {})
    if args.prior_bias:
        overrides["prior_bias"] = True
    if overrides:
        cfg.model_overrides = overrides
    summary = train_and_export(args.manifest, args.output, cfg, name=args.name, version=args.version,
                               intended_use=args.intended_use or INTENDED_USE_RESEARCH,
                               training_data=json.loads(args.data_description) if args.data_description else None,
                               command=command_line(), resume=args.resume, progress=not args.json,
                               tensorboard=False if args.no_tensorboard else None)
    if not is_main_process():  # under torchrun, rank 0 reports for everyone
        return 0
    emit(args, summary, lambda: [f"warning: {w}" for w in summary.get("warnings", [])] + [f"best validation Dice {summary['val_dice']:.3f} (threshold {summary['threshold']}), "
                                f"test Dice {summary['test']['volumetric_dice_mean']} -> {Path(args.output) / 'weights'}"])
    return 0
