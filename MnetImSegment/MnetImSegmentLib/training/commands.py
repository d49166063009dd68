"""``mnetim crossval``, ``mnetim compare`` (train several models and compare) and ``mnetim export``.

``cli.py`` wires these in with :func:`add_commands`. The training options are those of ``mnetim
train``, with the same names, defaults and meaning (:func:`add_train_options`), so a command line
that trains one model also runs an experiment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path



def add_train_options(p) -> None:
    """The training options of ``mnetim train`` (same flags, defaults and meaning)."""
    g = p.add_argument_group("training options (as for mnetim train)")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--windows-per-epoch", type=int, default=0, help="0 = one pass over the training ROI slices")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--lr-milestones", type=int, nargs="*", default=[1, 2, 3],
                   help="epochs after which lr *= gamma (paper: 1 2 3)")
    g.add_argument("--lr-gamma", type=float, default=0.1)
    g.add_argument("--patience", type=int, default=5, help="early stopping: epochs without a better validation Dice")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu"])
    g.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    g.add_argument("--max-minutes", type=float, default=0.0,
                   help="per training run: stop after the epoch that passes this budget (0: none)")
    g.add_argument("--roi-size", type=int, default=None, metavar="PX",
                   help="network input, square, a multiple of 16 (default: 128); stored in the card")
    g.add_argument("--roi-spacing", type=float, default=None, metavar="MM",
                   help="in-plane spacing of the ROI crop (default: 1.0); size x spacing is the field of view")
    g.add_argument("--model-options", type=_json_object, default=None, metavar="JSON",
                   help='build options per model, e.g. \'{"Mnet_Im": {"norm": "none"}}\' (default: the paper\'s)')
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs even if tensorboard is installed")


def train_config_from_args(args, model: str = "Mnet_Im"):
    """A TrainConfig from the options of :func:`add_train_options` (or of ``mnetim train``)."""
    from ..roi import RoiSpec
    from .trainer import TrainConfig

    roi = RoiSpec().to_dict()
    if args.roi_size is not None:
        roi["size_px"] = [args.roi_size, args.roi_size]
    if args.roi_spacing is not None:
        roi["spacing_mm"] = [args.roi_spacing, args.roi_spacing]
    return TrainConfig(model=model, epochs=args.epochs, windows_per_epoch=args.windows_per_epoch,
                       batch_size=args.batch_size, lr=args.lr, lr_milestones=tuple(args.lr_milestones),
                       lr_gamma=args.lr_gamma, patience=args.patience, seed=args.seed, device=args.device,
                       num_threads=args.threads, max_minutes=args.max_minutes, roi=roi)


def _json_object(text: str) -> dict:
    import argparse

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError('expected {"MODEL": {"option": value, ...}, ...}')
    return value


def _command_line() -> str:
    return "mnetim " + " ".join(sys.argv[1:])


def _quiet_main(args) -> bool:
    """Print results only once in a torchrun job, and never with --json."""
    from .distributed import is_main_process

    return is_main_process() and not args.json


def cmd_crossval(args) -> int:
    """``mnetim crossval``: see :func:`.experiments.run_crossval`."""
    from .experiments import run_crossval

    config = train_config_from_args(args, model=args.model)
    verbose = _quiet_main(args)
    report = run_crossval(args.manifest, args.output, config, folds=args.folds, model_options=args.model_options,
                          command=_command_line(), progress=verbose, tensorboard=False if args.no_tensorboard else None,
                          log=(lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None))
    from .distributed import is_main_process

    if not is_main_process():
        return 0
    if args.json:
        print(json.dumps({"output": str(args.output), **{k: report[k] for k in ("model", "folds", "average_of_folds")}},
                         default=float))
    else:
        print((Path(args.output) / "crossval.md").read_text(encoding="utf-8"))
    return 0


def cmd_compare_models(args) -> int:
    """``mnetim compare``: see :func:`.experiments.run_compare`."""
    from .experiments import run_compare

    config = train_config_from_args(args)
    verbose = _quiet_main(args)
    report = run_compare(args.manifest, args.output, args.models, config, model_options=args.model_options,
                         command=_command_line(), progress=verbose, tensorboard=False if args.no_tensorboard else None,
                         log=(lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None),
                         reference=args.reference)
    from .distributed import is_main_process

    if not is_main_process():
        return 0
    if args.json:
        print(json.dumps({"output": str(args.output), **report}, default=float))
    else:
        print(Path(report["tables"]).read_text(encoding="utf-8"))
    return 0


def cmd_export(args) -> int:
    """``mnetim export``: see :func:`.export.export_run`."""
    from ..weights import read_card
    from .export import export_run

    folder = export_run(args.run_dir, args.output, name=args.name, version=args.version, intended_use=args.intended_use)
    card = read_card(folder).raw
    if args.json:
        print(json.dumps({"output": str(folder), "name": card["name"], "version": card["version"],
                          "architecture": card["architecture"], "threshold": card["threshold"]}))
    else:
        print(f"{card['name']} {card['version']} ({card['architecture']}, threshold {card['threshold']}) -> {folder}")
    return 0


def add_commands(subparsers, compare_name: str = "compare") -> None:
    """Register ``crossval``, ``compare`` and ``export`` on the ``mnetim`` sub-command parser (sets ``func``).

    Args:
        subparsers: The object ``ArgumentParser.add_subparsers`` returned.
        compare_name: Name of the train-and-compare command. ``evaluation.add_commands`` also
            registers a ``compare`` (scoring existing prediction folders); wire one of the two under
            another name.

    Raises:
        ValueError: ``compare_name`` (or ``crossval``/``export``) is already registered.
    """
    taken = [n for n in ("crossval", compare_name, "export") if n in getattr(subparsers, "choices", {})]
    if taken:
        raise ValueError(f"mnetim sub-command(s) {', '.join(taken)} already registered; call "
                         "add_commands(subparsers, compare_name=...) with a free name for train-and-compare.")
    c = subparsers.add_parser(
        "crossval", help="k-fold cross-validation by scan, grouped by patient (paper Table 3)",
        description="Train one model per fold (each fold's scans are its test set; all scans of a patient stay in "
                    "one fold), segment each fold's test scans and tabulate ASD, HD95, SO, SD and VD per fold and "
                    "on average. Re-running the command continues an interrupted experiment.")
    c.add_argument("manifest", help="CSV: image, mask, patient_id, scan_id (a split column is ignored)")
    c.add_argument("-o", "--output", required=True, help="experiment folder (new, or an unfinished one to continue)")
    c.add_argument("--folds", type=int, default=4, help="number of folds (paper: 4)")
    c.add_argument("--model", default="Mnet_Im")
    add_train_options(c)
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_crossval)

    m = subparsers.add_parser(
        compare_name, help="train several models on the same split and compare them (paper Tables 1, 4, 5)",
        description="Train each model on the same split into OUTPUT/<model>/, segment the test scans with each, "
                    "and write one table (mean ± variance, median) and box plots of ASD, HD95, SO, SD and VD. "
                    "Re-running the command continues an interrupted experiment.")
    m.add_argument("manifest", help="CSV: image, mask, patient_id, scan_id[, split]")
    m.add_argument("-o", "--output", required=True, help="experiment folder (new, or an unfinished one to continue)")
    m.add_argument("--models", nargs="+", required=True, help="model names, e.g. Mnet_Im M-Net U-Net")
    m.add_argument("--reference", help="model whose VD picks the best/worst cases of the figure (default: the first)")
    add_train_options(m)
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(func=cmd_compare_models)

    e = subparsers.add_parser(
        "export", help="turn a training run folder into a weights folder for segment and Slicer",
        description="Write RUN_DIR's best weights (best.safetensors, config.json, the validation threshold) as a "
                    "weights folder with its model card, loadable by mnetim segment --weights and the Slicer module.")
    e.add_argument("run_dir", help="a folder written by mnetim train (finished or not)")
    e.add_argument("-o", "--output", required=True, help="new weights folder")
    e.add_argument("--name", help="model name in the card (default: the run's)")
    e.add_argument("--version", help="version in the card (default: the run's, else 0.1.0)")
    e.add_argument("--intended-use", help="intended-use statement in the card (default: the run's / research use)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_export)


__all__ = ["add_commands", "add_train_options", "train_config_from_args"]
