"""``mnetim evaluate`` (one model's predictions) and ``mnetim evaluate-models`` (several, same cases)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..core.errors import DatasetError
from ..research.evaluation.report import json_number_dict, listing
from ..research.evaluation.scoring import UNITS, EvaluationResult, compare_models, evaluate
from ..research.metrics import DEFAULT_TOLERANCE_MM, METRIC_DEFINITIONS, METRICS
from .options import add_json, add_overwrite, emit


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _model_dir(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got '{text}'")
    return name, Path(folder)


def _common_arguments(p) -> None:
    p.add_argument("--truth", required=True, metavar="DIR", help="folder of ground-truth masks (.seg.nrrd or labelmaps)")
    p.add_argument("--out", required=True, metavar="DIR", help="result folder (tables, plots, per-case CSV)")
    p.add_argument("--tolerance-mm", type=_tolerance, default=DEFAULT_TOLERANCE_MM, metavar="T",
                   help=f"surface tolerance tau of SO and SD (default {DEFAULT_TOLERANCE_MM:g} mm; in voxels with --units voxel)")
    p.add_argument("--label", type=int, default=1, metavar="N", help="CTV label value in labelmaps (default 1)")
    p.add_argument("--segment", default="CTV", metavar="NAME", help="CTV segment name in .seg.nrrd files (default CTV)")
    p.add_argument("--images", metavar="DIR", help="folder of the CTs (same case ids) to draw the best/worst overlays on")
    p.add_argument("--per-slice", action="store_true", help="also compute 2D metrics on every slice holding CTV")
    p.add_argument("--units", choices=UNITS, default="mm", help="mm (default) or voxel (spacing taken as 1)")
    add_overwrite(p, help="replace earlier results in --out (nothing else is touched)")
    add_json(p)


def add_parser(subparsers) -> None:
    """Register ``evaluate`` and ``evaluate-models`` (sets ``func``)."""
    e = subparsers.add_parser("evaluate", help="score predicted CTV masks against the truth (ASD, HD95, SO, SD, Dice, volume difference)",
                              description="Score predicted CTV masks against the truth: per-case CSV, the paper's "
                                          "tables (mean ± variance, median), box plots and best/worst overlays.")
    e.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted masks (.seg.nrrd or labelmaps), one per case")
    e.add_argument("--name", help="model name in the tables (default: the --pred folder's name)")
    _common_arguments(e)
    e.set_defaults(func=run_evaluate)

    # ``compare`` is the research command that trains the models first (cli/research.py);
    # this one scores prediction folders that already exist.
    c = subparsers.add_parser("evaluate-models", help="score several models' predictions on the same cases (one table, one plot)",
                              description="Score several models on the same cases: Table 1/2-style summary and a "
                                          "Figure 4-style box plot with one box per model.")
    c.add_argument("--model", action="append", type=_model_dir, required=True, metavar="NAME=FOLDER",
                   help="a model's prediction folder; repeat for each model")
    c.add_argument("--reference", metavar="NAME", help="model whose Dice picks the best/worst cases (default: the first)")
    _common_arguments(c)
    c.set_defaults(func=run_evaluate_models)


def _report(result: EvaluationResult, args) -> int:
    for model in result.models:
        if result.empty_predictions[model]:
            print(f"mnetim: warning: '{model}' predicted nothing for {len(result.empty_predictions[model])} case(s): "
                  f"{listing(result.empty_predictions[model])} (Dice = SO = SD = 0, ASD = HD95 = inf).", file=sys.stderr)
        miss = result.missing[model]
        if miss["no_prediction"]:
            print(f"mnetim: warning: no prediction from '{model}' for {len(miss['no_prediction'])} truth case(s), not "
                  f"scored: {listing(miss['no_prediction'])}.", file=sys.stderr)
        if miss["no_truth"]:
            print(f"mnetim: warning: {len(miss['no_truth'])} prediction(s) of '{model}' have no truth, not scored: "
                  f"{listing(miss['no_truth'])}.", file=sys.stderr)
    report = {
        "output": str(result.out_dir), "cases": len(result.cases), "tolerance": result.tolerance_mm,
        "units": result.units, "files": [str(f) for f in result.files], "missing": result.missing,
        "empty_predictions": result.empty_predictions,
        "summary": {m: {k: json_number_dict(result.summary[m][k]) for k in METRICS} for m in result.models},
    }
    emit(args, report, lambda: [
        f"{model}: {len(result.cases)} case(s), " + ", ".join(
            f"{METRIC_DEFINITIONS[k]['name']} {result.summary[model][k]['mean']:.4f}" for k in METRICS) + " (means)"
        for model in result.models] + [f"results -> {result.out_dir}"])
    return 0


def _progress(args) -> bool:
    # A bar only for a person at a terminal: logs and pipes get the summary lines alone.
    return not args.json and sys.stderr.isatty()


def run_evaluate(args) -> int:
    """``mnetim evaluate``: see :func:`~..research.evaluation.scoring.evaluate`."""
    result = evaluate(args.pred, args.truth, args.out, tolerance_mm=args.tolerance_mm, label=args.label,
                      segment=args.segment, images_dir=args.images, per_slice=args.per_slice, units=args.units,
                      name=args.name, overwrite=args.overwrite, progress=_progress(args))
    return _report(result, args)


def run_evaluate_models(args) -> int:
    """``mnetim evaluate-models``: see :func:`~..research.evaluation.scoring.compare_models`."""
    dirs = {}
    for name, folder in args.model:
        if name in dirs:
            raise DatasetError(f"Model name '{name}' is given twice.")
        dirs[name] = folder
    result = compare_models(dirs, args.truth, args.out, tolerance_mm=args.tolerance_mm, label=args.label,
                            segment=args.segment, images_dir=args.images, reference=args.reference,
                            per_slice=args.per_slice, units=args.units, overwrite=args.overwrite,
                            progress=_progress(args))
    return _report(result, args)
