"""Evaluate predicted CTV masks against the truth: per-case metrics, the paper's tables and figures.

``mnetim evaluate --pred DIR --truth DIR --out DIR`` (and :func:`evaluate`) scores one model;
``mnetim evaluate-models --model NAME=DIR ...`` (and :func:`compare_models`) scores several on the same cases.
Files are paired by case id, the file name without its image suffix (``case07.seg.nrrd`` and
``case07.nii.gz`` are both case ``case07``). Predictions and truths may be Slicer segmentations
(``.seg.nrrd``, the segment named ``--segment``) or labelmaps (``.nii.gz``, ``.nii``, ``.nrrd``,
``.mha``, ``.mhd``; voxels equal to ``--label``).

Written to the output folder (names in ``REPORT_FILES``):

* ``per_case.csv``: every metric of :mod:`..metrics` per case (and model), with volumes;
* ``summary.csv`` / ``summary.md``: mean, SD, sample variance and median per metric and model, laid out
  like the paper's Table 1 (mean +- variance) and Table 2 (median), with the definitions, tolerance,
  units and empty-mask convention stated under the tables;
* ``boxplots.png``: one subplot per metric, one box per model, red dots at the means (Figure 4);
* ``best_worst.png``: the five cases with the lowest and the five with the highest volumetric Dice (Figure 3):
  middle CTV slice, prediction filled orange, truth contour green, on the CT if ``--images`` is given;
* ``per_slice.csv`` with ``--per-slice``: the same metrics in 2D on every slice holding CTV;
* ``evaluation.json``: what was run (tolerance, units, folders, cases, missing cases, files).

Statistics leave out infinite distances (a case whose prediction is empty has ASD = HD95 = inf by the
convention of :mod:`..metrics`) and say how many were left out; Dice, SO and SD count such cases as 0.

Safety: an output folder that already holds these results is refused unless ``overwrite``; even then
only those result files are replaced (and stale ones that the previous run recorded as its own
removed). Everything is rendered into a temporary folder first, so a failed run changes nothing.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ... import __version__
from ...core.errors import DatasetError
from ..metrics import (ALL_KEYS, DEFAULT_TOLERANCE_MM, EMPTY_MASK_CONVENTION, METRIC_DEFINITIONS, METRICS,
                       TOLERANCE_RATIONALE, segmentation_metrics)
from .cases import align_to, find_cases, read_mask
from .figures import best_worst_overlays, boxplots, middle_slice
from .report import N_EXTREMES, VARIANCE_NOTE, check_out_dir, json_number_dict, listing, publish, summary_markdown, write_csv, write_summary_csv

UNITS = ("mm", "voxel")


# --------------------------------------------------------------------------- statistics
def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample variance, standard deviation, median, min and max of the finite values.

    ``n`` counts the values used and ``n_infinite`` those left out (inf distances of empty masks);
    NaN where no (or, for the variance, fewer than two) finite values remain.
    """
    v = np.asarray([float(x) for x in values], float)
    finite = v[np.isfinite(v)]
    nan = float("nan")
    stats = {"n": int(finite.size), "n_infinite": int(v.size - finite.size)}
    if finite.size == 0:
        return {**stats, "mean": nan, "variance": nan, "std": nan, "median": nan, "min": nan, "max": nan}
    var = float(np.var(finite, ddof=1)) if finite.size > 1 else nan
    return {**stats, "mean": float(finite.mean()), "variance": var, "std": math.sqrt(var) if finite.size > 1 else nan,
            "median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max())}


# --------------------------------------------------------------------------- the evaluation itself
@dataclass
class EvaluationResult:
    """What an evaluation produced.

    Attributes:
        out_dir: The output folder.
        models: Model names, in the order given.
        cases: Case ids evaluated (present in the truth and in every model's folder).
        per_case: One row per (model, case): ``model``, ``case_id``, every metric key, volumes.
        summary: ``summary[model][metric]`` -> :func:`summarize` statistics.
        missing: ``missing[model]`` -> ``{"no_truth": [...], "no_prediction": [...]}`` case ids.
        empty_predictions: ``empty_predictions[model]`` -> case ids whose prediction is empty.
        tolerance_mm: Surface tolerance used for SO and SD (in voxels if ``units == "voxel"``).
        units: "mm" or "voxel".
        files: The result files written.
        per_slice: 2D rows with ``per_slice`` (else empty).
    """

    out_dir: Path
    models: list[str]
    cases: list[str]
    per_case: list[dict]
    summary: dict[str, dict[str, dict[str, float]]]
    missing: dict[str, dict[str, list[str]]]
    empty_predictions: dict[str, list[str]]
    tolerance_mm: float
    units: str
    files: list[Path]
    per_slice: list[dict] = field(default_factory=list)


def evaluate(pred_dir, truth_dir, out_dir, *, tolerance_mm: float = DEFAULT_TOLERANCE_MM, label: int = 1,
             segment: str = "CTV", images_dir=None, per_slice: bool = False, units: str = "mm",
             name: Optional[str] = None, overwrite: bool = False, progress: bool = False) -> EvaluationResult:
    """Score one folder of predictions against the truth and write the report (see module docstring).

    Args:
        pred_dir: Folder of predicted masks (``.seg.nrrd`` or labelmaps), one file per case.
        truth_dir: Folder of ground-truth masks, same case ids.
        out_dir: Result folder (created; refused if it already holds results, unless ``overwrite``).
        tolerance_mm: Surface tolerance tau of SO and SD.
        label: Label value of the CTV in labelmaps.
        segment: Segment name of the CTV in ``.seg.nrrd`` files.
        images_dir: Optional folder of the CTs (same case ids) to draw the overlays on.
        per_slice: Also compute the metrics in 2D on every slice holding CTV.
        units: "mm" (physical) or "voxel" (spacing taken as 1 in every axis, tolerance in voxels).
        name: Model name in the tables (default: the prediction folder's name).
        overwrite: Replace earlier results in ``out_dir``.
        progress: Show a progress bar.

    Raises:
        DatasetError: Folders missing or empty, no case names in common, grids that differ, an empty
            truth mask, unreadable masks.
        OutputError: ``out_dir`` holds results and ``overwrite`` is not set, or cannot be written.
    """
    pred_dir = Path(pred_dir)
    return _run({name or pred_dir.resolve().name: pred_dir}, truth_dir, out_dir, tolerance_mm=tolerance_mm,
                label=label, segment=segment, images_dir=images_dir, per_slice=per_slice, units=units,
                overwrite=overwrite, progress=progress, reference=None, command="evaluate")


def compare_models(pred_dirs: Mapping[str, Path], truth_dir, out_dir, *, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                   label: int = 1, segment: str = "CTV", images_dir=None, reference: Optional[str] = None,
                   per_slice: bool = False, units: str = "mm", overwrite: bool = False,
                   progress: bool = False) -> EvaluationResult:
    """Score several models on the same cases: one table (Tables 1 and 2) and one box plot (Figure 4).

    Only cases present in the truth folder and in *every* model's folder are scored, so each model is
    measured on the same scans; the others are listed in ``missing`` and in the report.

    Args:
        pred_dirs: Model name -> folder of that model's predicted masks (order kept in the outputs).
        truth_dir: Folder of ground-truth masks.
        out_dir: Result folder (see :func:`evaluate`).
        reference: Model whose volumetric Dice picks the best and worst cases for ``best_worst.png`` (the paper
            picks them by the proposed model); default the first model.
        tolerance_mm, label, segment, images_dir, per_slice, units, overwrite, progress: As for
            :func:`evaluate`.

    Returns:
        The :class:`EvaluationResult`.
    """
    if not pred_dirs:
        raise DatasetError("No prediction folders were given.")
    if reference is not None and reference not in pred_dirs:
        raise DatasetError(f"The reference model '{reference}' is not one of {', '.join(pred_dirs)}.")
    return _run(dict(pred_dirs), truth_dir, out_dir, tolerance_mm=tolerance_mm, label=label, segment=segment,
                images_dir=images_dir, per_slice=per_slice, units=units, overwrite=overwrite, progress=progress,
                reference=reference, command="compare")


def _run(pred_dirs: dict[str, Path], truth_dir, out_dir, *, tolerance_mm, label, segment, images_dir, per_slice,
         units, overwrite, progress, reference, command) -> EvaluationResult:
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    out_dir = Path(out_dir)
    previous = check_out_dir(out_dir, overwrite)  # before any work: refusing late wastes the user's time
    truth_cases = find_cases(truth_dir, "truth")
    pred_cases = {m: find_cases(d, f"prediction ('{m}')" if len(pred_dirs) > 1 else "prediction")
                  for m, d in pred_dirs.items()}
    cases = [c for c in truth_cases if all(c in pc for pc in pred_cases.values())]
    missing = {m: {"no_truth": sorted(set(pc) - set(truth_cases)), "no_prediction": sorted(set(truth_cases) - set(pc))}
               for m, pc in pred_cases.items()}
    if not cases:
        # Name the folder that does not match, not just the first one.
        m0 = next((m for m, pc in pred_cases.items() if not set(pc) & set(truth_cases)), None)
        if m0 is None:
            raise DatasetError(f"No case is in every prediction folder and the truth ({', '.join(pred_dirs)}): "
                               "compare needs the same cases for all models.")
        raise DatasetError(
            f"No case names match between the predictions ({listing(pred_cases[m0])} in '{pred_dirs[m0]}') and the "
            f"truth ({listing(truth_cases)} in '{truth_dir}'); a case id is the file name without its suffix.")
    images = find_cases(images_dir, "image", allow_dirs=True) if images_dir is not None else {}

    rows, slice_rows, snapshots = [], [], {}
    empty_predictions: dict[str, list[str]] = {m: [] for m in pred_dirs}
    from tqdm import tqdm

    # leave=False: the bar disappears when done or on an error, so an error stays one clean line.
    with tqdm(cases, desc="cases", unit="case", leave=False, disable=not progress) as iterator:
        for case in iterator:
            _evaluate_case(case, truth_cases, pred_cases, label, segment, units, tolerance_mm, per_slice,
                           rows, slice_rows, snapshots, empty_predictions)

    models = list(pred_dirs)
    summary = {m: {k: summarize([r[k] for r in rows if r["model"] == m]) for k in ALL_KEYS} for m in models}
    slice_summary = ({m: {k: summarize([r[k] for r in slice_rows if r["model"] == m]) for k in METRICS} for m in models}
                     if per_slice else None)
    info = {
        "tool": f"mnetim {command}", "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tolerance": tolerance_mm, "units": units, "label": label, "segment": segment,
        "models": {m: str(d) for m, d in pred_dirs.items()}, "truth": str(truth_dir),
        "images": str(images_dir) if images_dir is not None else None, "cases": cases, "missing": missing,
        "empty_predictions": empty_predictions, "definitions": {k: dict(v) for k, v in METRIC_DEFINITIONS.items()},
        "empty_mask_convention": EMPTY_MASK_CONVENTION, "tolerance_rationale": TOLERANCE_RATIONALE,
        "variance": VARIANCE_NOTE,
        "summary": {m: {k: json_number_dict(s) for k, s in summary[m].items()} for m in models},
    }
    reference = reference or models[0]
    ordered = sorted(cases, key=lambda c: next(r["vd"] for r in rows if r["model"] == reference and r["case_id"] == c))
    worst = ordered[:N_EXTREMES]
    best = [c for c in ordered[::-1][:N_EXTREMES] if c not in worst][::-1]

    def render(tmp: Path) -> list[str]:
        written = ["per_case.csv", "summary.csv", "summary.md", "boxplots.png", "best_worst.png"]
        write_csv(tmp / "per_case.csv", rows)
        write_summary_csv(tmp / "summary.csv", summary, units, tolerance_mm)
        (tmp / "summary.md").write_text(summary_markdown(summary, models, cases, missing, empty_predictions, tolerance_mm,
                                                          units, reference, slice_summary), encoding="utf-8")
        boxplots(tmp / "boxplots.png", rows, models, units, tolerance_mm)
        best_worst_overlays(tmp / "best_worst.png", worst, best, models, snapshots, rows, images)
        if per_slice:
            write_csv(tmp / "per_slice.csv", slice_rows)
            written.append("per_slice.csv")
        written.append("evaluation.json")
        info["files"] = written
        (tmp / "evaluation.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        return written

    written = publish(out_dir, render, previous)
    return EvaluationResult(out_dir, models, cases, rows, summary, missing, empty_predictions, tolerance_mm, units,
                            [out_dir / f for f in written], slice_rows)


def _evaluate_case(case, truth_cases, pred_cases, label, segment, units, tolerance_mm, per_slice,
                   rows, slice_rows, snapshots, empty_predictions) -> None:
    """Score every model on one case; append to ``rows``/``slice_rows``, keep the overlay snapshot."""
    truth_vol = read_mask(truth_cases[case], label, segment)
    truth = truth_vol.array
    if not truth.any():
        what = (f"segment '{segment}' is empty" if truth_cases[case].name.lower().endswith(".seg.nrrd")
                else f"no voxel has label {label}")
        raise DatasetError(f"Case '{case}': the truth mask '{truth_cases[case]}' is empty ({what}); "
                           "check --label / --segment, or remove the case.")
    spacing = tuple(reversed(truth_vol.geometry.spacing)) if units == "mm" else (1.0, 1.0, 1.0)
    voxel_ml = float(np.prod(truth_vol.geometry.spacing)) / 1000.0
    snap = middle_slice(truth, tuple(reversed(truth_vol.geometry.spacing)))
    snap.grid = (truth.shape, truth_vol.geometry)
    for model, pc in pred_cases.items():
        pred = align_to(read_mask(pc[case], label, segment), truth_vol, case, f"prediction of '{model}'")
        values = segmentation_metrics(pred, truth, spacing, tolerance_mm=tolerance_mm)
        if not pred.any():
            empty_predictions[model].append(case)
        truth_ml, pred_ml = int(np.count_nonzero(truth)) * voxel_ml, int(np.count_nonzero(pred)) * voxel_ml
        rows.append({"model": model, "case_id": case, **values, "truth_ml": truth_ml, "pred_ml": pred_ml,
                     "vol_diff_ml": pred_ml - truth_ml, "vol_diff_pct": 100.0 * (pred_ml - truth_ml) / truth_ml,
                     "empty_prediction": not pred.any(), "shape_zyx": "x".join(map(str, truth.shape)),
                     "spacing_zyx_mm": "x".join(f"{v:.6g}" for v in reversed(truth_vol.geometry.spacing)),
                     "prediction_file": str(pc[case]), "truth_file": str(truth_cases[case])})
        snap.pred[model] = pred[snap.z][snap.window].copy()
        if per_slice:
            slice_rows.extend(_per_slice_rows(model, case, pred, truth, spacing[1:], tolerance_mm))
    snapshots[case] = snap


def _per_slice_rows(model, case, pred, truth, spacing_yx, tolerance) -> list[dict]:
    rows = []
    for z in np.flatnonzero(pred.any(axis=(1, 2)) | truth.any(axis=(1, 2))):
        values = segmentation_metrics(pred[z], truth[z], spacing_yx, tolerance_mm=tolerance)
        rows.append({"model": model, "case_id": case, "slice": int(z), **{k: values[k] for k in ALL_KEYS}})
    return rows

