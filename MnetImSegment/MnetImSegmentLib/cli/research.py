"""``mnetim crossval`` and ``mnetim compare`` (train, predict, evaluate), ``mnetim export`` (run -> weights) and
``mnetim ensemble`` (weights folders -> one voting weights folder).

The training options are those of ``mnetim train`` (:func:`.options.add_train_options`), so a command
line that trains one model also runs an experiment.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..engine.weights import read_card
from ..research.training.distributed import is_main_process
from ..research.training.experiments import run_compare as compare_experiment
from ..research.training.experiments import run_crossval as crossval_experiment
from ..research.training.export import export_ensemble, export_run
from .options import add_input_output, add_json, add_train_options, command_line, emit, train_config_from_args


EXPERIMENT_FOLDER = "experiment folder (new, or an unfinished one to continue)"


def _add_experiment(subparsers, name: str, run, manifest_help: str, arguments, **texts) -> None:
    """An experiment command: MANIFEST, -o OUTPUT, its own ``arguments``, the training options, --json."""
    p = subparsers.add_parser(name, **texts)
    add_input_output(p, "manifest", manifest_help, EXPERIMENT_FOLDER)
    for flags, options in arguments:
        p.add_argument(*flags, **options)
    add_train_options(p)
    add_json(p)
    p.set_defaults(func=run)


def add_parser(subparsers) -> None:
    """Register ``crossval``, ``compare`` and ``export`` (sets ``func``)."""
    _add_experiment(
        subparsers, "crossval", run_crossval, "CSV: image, mask, patient_id, scan_id (a split column is ignored)",
        [(["--folds"], dict(type=int, default=4, help="number of folds (paper: 4)")),
         (["--model"], dict(default="Mnet_Im"))],
        help="k-fold cross-validation by scan, grouped by patient (paper Table 3)",
        description="Train one model per fold (each fold's scans are its test set; all scans of a patient stay in "
                    "one fold), segment each fold's test scans and tabulate ASD, HD95, SO, SD and Dice per fold and "
                    "on average. Re-running the command continues an interrupted experiment.")
    _add_experiment(
        subparsers, "compare", run_compare, "CSV: image, mask, patient_id, scan_id[, split]",
        [(["--models"], dict(nargs="+", required=True, help="model names, e.g. Mnet_Im M-Net U-Net")),
         (["--reference"], dict(help="model whose Dice picks the best/worst cases of the figure (default: the first)"))],
        help="train several models on the same split and compare them (paper Tables 1, 4, 5)",
        description="Train each model on the same split into OUTPUT/<model>/, segment the test scans with each, "
                    "and write one table (mean ± SD, median) and box plots of ASD, HD95, SO, SD and Dice. "
                    "Re-running the command continues an interrupted experiment.")

    e = subparsers.add_parser(
        "export", help="turn a training run folder into a weights folder for segment and Slicer",
        description="Write RUN_DIR's best weights (best.safetensors, config.json, the validation threshold) as a "
                    "weights folder with its model card, loadable by mnetim segment --weights and the Slicer module.")
    add_input_output(e, "run_dir", "a folder written by mnetim train (finished or not)", "new weights folder")
    e.add_argument("--name", help="model name in the card (default: the run's)")
    e.add_argument("--version", help="version in the card (default: the run's, else 0.1.0)")
    e.add_argument("--intended-use", help="intended-use statement in the card (default: the run's / research use)")
    add_json(e)
    e.set_defaults(func=run_export)

    n = subparsers.add_parser(
        "ensemble", help="combine trained weights folders into one weights folder whose networks vote",
        description="Write one weights folder holding every MEMBER network: at inference each member's logit is "
                    "shifted by its own threshold and the mean is thresholded at 0.5, so each member votes with the "
                    "boundary its validation chose. The members must share the architecture, its configuration and "
                    "the input spec; with the atlas prior all use the first member's CTV atlas. Segmenting costs one "
                    "network pass per member.")
    n.add_argument("members", nargs="+", metavar="MEMBER", help="two or more weights folders")
    n.add_argument("-o", "--output", required=True, help="new weights folder")
    n.add_argument("--name", required=True, help="model name in the card")
    n.add_argument("--version", required=True, help="version in the card")
    n.add_argument("--intended-use", help="intended-use statement in the card (default: the first member's)")
    n.add_argument("--test-manifest", help="CSV of scans no member was trained or validated on: measured through the "
                                           "full pipeline into the card's test entry")
    n.add_argument("--device", default="cpu", help="device for the test measurement: cpu, cuda or auto")
    add_json(n)
    n.set_defaults(func=run_ensemble)


def _verbose(args) -> bool:
    """Print results only once in a torchrun job, and never with --json."""
    return is_main_process() and not args.json


def _log(verbose: bool):
    return (lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None)


def run_crossval(args) -> int:
    """``mnetim crossval``: see :func:`~..research.training.experiments.run_crossval`."""
    config = train_config_from_args(args, model=args.model)
    verbose = _verbose(args)
    report = crossval_experiment(args.manifest, args.output, config, folds=args.folds, model_options=args.model_options,
                                 command=command_line(), progress=verbose,
                                 tensorboard=False if args.no_tensorboard else None, log=_log(verbose))
    if not is_main_process():
        return 0
    emit(args, {"output": str(args.output), **{k: report[k] for k in ("model", "folds", "average_of_folds")}},
         lambda: (Path(args.output) / "crossval.md").read_text(encoding="utf-8"), default=float)
    return 0


def run_compare(args) -> int:
    """``mnetim compare``: see :func:`~..research.training.experiments.run_compare`."""
    config = train_config_from_args(args)
    verbose = _verbose(args)
    report = compare_experiment(args.manifest, args.output, args.models, config, model_options=args.model_options,
                                command=command_line(), progress=verbose,
                                tensorboard=False if args.no_tensorboard else None, log=_log(verbose),
                                reference=args.reference)
    if not is_main_process():
        return 0
    emit(args, {"output": str(args.output), **report}, lambda: Path(report["tables"]).read_text(encoding="utf-8"),
         default=float)
    return 0


def run_export(args) -> int:
    """``mnetim export``: see :func:`~..research.training.export.export_run`."""
    folder = export_run(args.run_dir, args.output, name=args.name, version=args.version, intended_use=args.intended_use)
    card = read_card(folder).raw
    emit(args, {"output": str(folder), "name": card["name"], "version": card["version"],
                "architecture": card["architecture"], "threshold": card["threshold"]},
         f"{card['name']} {card['version']} ({card['architecture']}, threshold {card['threshold']}) -> {folder}")
    return 0


def run_ensemble(args) -> int:
    """``mnetim ensemble``: see :func:`~..research.training.export.export_ensemble`."""
    folder = export_ensemble(args.members, args.output, name=args.name, version=args.version,
                             intended_use=args.intended_use, test_manifest=args.test_manifest,
                             command=command_line(), device=args.device)
    card = read_card(folder).raw
    test = card.get("test", {}).get("volumetric_dice_mean")
    emit(args, {"output": str(folder), "name": card["name"], "version": card["version"],
                "members": len(card["ensemble"]["member_thresholds"]), "test_dice": test},
         f"{card['name']} {card['version']} ({len(card['ensemble']['member_thresholds'])} x {card['architecture']}"
         + (f", test Dice {test:.3f}" if test is not None else "") + f") -> {folder}")
    return 0
