"""Evaluate predicted CTV masks against the truth: per-case metrics, the paper's tables and figures.

``mnetim evaluate --pred DIR --truth DIR --out DIR`` (and :func:`evaluate`) scores one model;
``mnetim compare --model NAME=DIR ...`` (and :func:`compare_models`) scores several on the same cases.
Files are paired by case id, the file name without its image suffix (``case07.seg.nrrd`` and
``case07.nii.gz`` are both case ``case07``). Predictions and truths may be Slicer segmentations
(``.seg.nrrd``, the segment named ``--segment``) or labelmaps (``.nii.gz``, ``.nii``, ``.nrrd``,
``.mha``, ``.mhd``; voxels equal to ``--label``).

Written to the output folder (names in ``REPORT_FILES``):

* ``per_case.csv``: every metric of :mod:`.metrics` per case (and model), with volumes;
* ``summary.csv`` / ``summary.md``: mean, sample variance and median per metric and model, laid out
  like the paper's Table 1 (mean +- variance) and Table 2 (median), with the definitions, tolerance,
  units and empty-mask convention stated under the tables;
* ``boxplots.png``: one subplot per metric, one box per model, red dots at the means (Figure 4);
* ``best_worst.png``: the five cases with the lowest and the five with the highest VD (Figure 3):
  middle CTV slice, prediction filled orange, truth contour green, on the CT if ``--images`` is given;
* ``per_slice.csv`` with ``--per-slice``: the same metrics in 2D on every slice holding CTV;
* ``evaluation.json``: what was run (tolerance, units, folders, cases, missing cases, files).

Statistics leave out infinite distances (a case whose prediction is empty has ASD = HD95 = inf by the
convention of :mod:`.metrics`) and say how many were left out; VD, SO and SD count such cases as 0.

Safety: an output folder that already holds these results is refused unless ``overwrite``; even then
only those result files are replaced (and stale ones that the previous run recorded as its own
removed). Everything is rendered into a temporary folder first, so a failed run changes nothing.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from . import __version__
from .errors import DatasetError, OutputError
from .metrics import (ALL_KEYS, DEFAULT_TOLERANCE_MM, EMPTY_MASK_CONVENTION, METRIC_DEFINITIONS, METRICS,
                      TOLERANCE_RATIONALE, segmentation_metrics)
from .volume import Geometry, Volume

REPORT_FILES = ("per_case.csv", "summary.csv", "summary.md", "boxplots.png", "best_worst.png", "per_slice.csv",
                "evaluation.json")
MASK_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
UNITS = ("mm", "voxel")
VARIANCE_NOTE = "variance = sample variance (n - 1 denominator) over cases"
N_EXTREMES = 5  # the paper's Figure 3 shows the five worst and the five best cases

# Soft-tissue window for the overlays (level 40 HU, width 400 HU).
_CT_WINDOW = (-160.0, 240.0)
_ORANGE = (1.0, 0.55, 0.0)
_GREEN = "#00e000"


# --------------------------------------------------------------------------- case discovery and reading
def case_id_of(path: Path) -> Optional[str]:
    """The case id of a mask or image file (name without its image suffix), or None if not one."""
    name = path.name
    lower = name.lower()
    for suffix in MASK_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def find_cases(folder, what: str, allow_dirs: bool = False) -> dict[str, Path]:
    """Map case id -> file for every mask (or image) file directly in ``folder``.

    Args:
        folder: The folder to list.
        what: How messages name the folder ("prediction", "truth", "image").
        allow_dirs: Also accept sub-folders as cases (DICOM series folders for CT images).

    Raises:
        DatasetError: The folder does not exist, holds no usable file, or two files share a case id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"The {what} folder '{folder}' does not exist.")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        case = path.name if (allow_dirs and path.is_dir()) else (case_id_of(path) if path.is_file() else None)
        if case is None:
            continue
        if case in cases:
            raise DatasetError(f"The {what} folder '{folder}' holds two files for case '{case}': "
                               f"'{cases[case].name}' and '{path.name}'; keep one.")
        cases[case] = path
    if not cases:
        kind = "image files or DICOM folders" if allow_dirs else "mask files"
        raise DatasetError(f"The {what} folder '{folder}' holds no {kind} ({', '.join(MASK_SUFFIXES)}).")
    return cases


def read_mask(path: Path, label: int = 1, segment: str = "CTV") -> Volume:
    """A boolean mask with its geometry: the named segment of a ``.seg.nrrd``, or ``labelmap == label``.

    Raises:
        DatasetError: The segment is missing, or the labelmap holds non-integer values (a probability
            map or a CT rather than a mask).
    """
    path = Path(path)
    if path.name.lower().endswith(".seg.nrrd"):
        import slicerio

        from .io import read_segmentation_mask

        try:
            mask = read_segmentation_mask(path, segment_name=segment)
        except KeyError:
            names = [s.get("name", "?") for s in slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]]
            raise DatasetError(f"'{path}' has no segment named '{segment}' (it has: {', '.join(names) or 'none'}); "
                               "choose one with --segment.") from None
        except Exception as exc:  # pynrrd/slicerio raise many types for a damaged file; the user needs one line
            raise DatasetError(f"'{path}' is not a readable Slicer segmentation ({type(exc).__name__}: {exc}).") from None
        return mask.with_array(mask.array.astype(bool))
    from .io import read_image

    volume = read_image(path)
    array = volume.array
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise DatasetError(f"'{path}' holds non-integer values: it is not a labelmap (a probability map? "
                           "threshold it first).")
    return volume.with_array(array == label)


def _describe(shape, g: Geometry) -> str:
    sx, sy, sz = g.spacing
    return (f"{shape[2]}x{shape[1]}x{shape[0]} voxels of {sx:.4g}x{sy:.4g}x{sz:.4g} mm at origin "
            f"({', '.join(f'{v:.4g}' for v in g.origin)})")


def align_to(mask: Volume, reference: Volume, case: str, what: str) -> np.ndarray:
    """``mask`` as an array on ``reference``'s grid, or a clear error if the grids differ.

    A mask stored on the same voxel lattice but a smaller extent (Slicer crops ``.seg.nrrd`` files to
    the segments' extent) is pasted into place exactly; anything needing interpolation is refused:
    resampling a mask changes the very contours being measured.

    Raises:
        DatasetError: The lattices differ, or the mask has voxels outside the reference grid.
    """
    g, r = mask.geometry, reference.geometry
    same_lattice = (np.allclose(g.direction, r.direction, atol=1e-4)
                    and np.allclose(g.spacing, r.spacing, rtol=1e-4, atol=1e-6))
    offset = r.physical_to_index(g.origin) if same_lattice else None  # (i, j, k) of the mask's first voxel
    if offset is not None and np.allclose(offset, np.round(offset), atol=0.01):
        i, j, k = (int(v) for v in np.round(offset))
        if (k, j, i) == (0, 0, 0) and mask.shape == reference.shape:
            return mask.array
        out = np.zeros(reference.shape, bool)
        src = [slice(max(0, -o), min(n, N - o)) for o, n, N in zip((k, j, i), mask.shape, reference.shape)]
        dst = [slice(s.start + o, s.stop + o) for s, o in zip(src, (k, j, i))]
        if all(s.stop > s.start for s in src):
            out[tuple(dst)] = mask.array[tuple(src)]
        if int(out.sum()) == int(np.count_nonzero(mask.array)):
            return out
    raise DatasetError(f"Case '{case}': the {what} grid ({_describe(mask.shape, g)}) differs from the truth grid "
                       f"({_describe(reference.shape, r)}); masks must lie on the CT's voxel grid.")


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
class _Snapshot:
    """What the overlay figure needs of one case: a window of its middle CTV slice."""

    z: int
    window: tuple[slice, slice]
    truth: np.ndarray
    pred: dict[str, np.ndarray] = field(default_factory=dict)
    spacing_yx: tuple[float, float] = (1.0, 1.0)
    grid: Optional[tuple] = None  # (shape, Geometry) of the truth, to check the CT against


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
        reference: Model whose VD picks the best and worst cases for ``best_worst.png`` (the paper
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
    previous = _check_out_dir(out_dir, overwrite)  # before any work: refusing late wastes the user's time
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
            f"No case names match between the predictions ({_listing(pred_cases[m0])} in '{pred_dirs[m0]}') and the "
            f"truth ({_listing(truth_cases)} in '{truth_dir}'); a case id is the file name without its suffix.")
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
        "summary": {m: {k: _json_number_dict(s) for k, s in summary[m].items()} for m in models},
    }
    reference = reference or models[0]
    ordered = sorted(cases, key=lambda c: next(r["vd"] for r in rows if r["model"] == reference and r["case_id"] == c))
    worst = ordered[:N_EXTREMES]
    best = [c for c in ordered[::-1][:N_EXTREMES] if c not in worst][::-1]

    def render(tmp: Path) -> list[str]:
        written = ["per_case.csv", "summary.csv", "summary.md", "boxplots.png", "best_worst.png"]
        _write_csv(tmp / "per_case.csv", rows)
        _write_summary_csv(tmp / "summary.csv", summary, units, tolerance_mm)
        (tmp / "summary.md").write_text(_summary_markdown(summary, models, cases, missing, empty_predictions, tolerance_mm,
                                                          units, reference, slice_summary), encoding="utf-8")
        _boxplots(tmp / "boxplots.png", rows, models, units, tolerance_mm)
        _overlays(tmp / "best_worst.png", worst, best, models, snapshots, rows, images)
        if per_slice:
            _write_csv(tmp / "per_slice.csv", slice_rows)
            written.append("per_slice.csv")
        written.append("evaluation.json")
        info["files"] = written
        (tmp / "evaluation.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        return written

    written = _publish(out_dir, render, previous)
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
    snap = _middle_slice(truth, tuple(reversed(truth_vol.geometry.spacing)))
    snap.grid = (truth.shape, truth_vol.geometry)
    for model, pc in pred_cases.items():
        pred = align_to(read_mask(pc[case], label, segment), truth_vol, case, f"prediction of '{model}'")
        values = segmentation_metrics(pred, truth, spacing, tolerance_mm=tolerance_mm)
        if not pred.any():
            empty_predictions[model].append(case)
        rows.append({"model": model, "case_id": case, **values,
                     "truth_ml": int(np.count_nonzero(truth)) * voxel_ml, "pred_ml": int(np.count_nonzero(pred)) * voxel_ml,
                     "empty_prediction": not pred.any(), "shape_zyx": "x".join(map(str, truth.shape)),
                     "spacing_zyx_mm": "x".join(f"{v:.6g}" for v in reversed(truth_vol.geometry.spacing)),
                     "prediction_file": str(pc[case]), "truth_file": str(truth_cases[case])})
        snap.pred[model] = pred[snap.z][snap.window].copy()
        if per_slice:
            slice_rows.extend(_per_slice_rows(model, case, pred, truth, spacing[1:], tolerance_mm))
    snapshots[case] = snap


def _listing(cases, n: int = 3) -> str:
    names = sorted(cases)
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _middle_slice(truth: np.ndarray, spacing_zyx) -> _Snapshot:
    """The middle slice of the CTV's extent and a window around it (CTV box plus a margin of 20 mm)."""
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    z = int(zs[len(zs) // 2])
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    ys, xs = np.nonzero(truth[z])
    margin_y, margin_x = int(math.ceil(20.0 / sy)), int(math.ceil(20.0 / sx))
    window = (slice(max(0, ys.min() - margin_y), min(truth.shape[1], ys.max() + 1 + margin_y)),
              slice(max(0, xs.min() - margin_x), min(truth.shape[2], xs.max() + 1 + margin_x)))
    return _Snapshot(z, window, truth[z][window].copy(), spacing_yx=(sy, sx))


def _per_slice_rows(model, case, pred, truth, spacing_yx, tolerance) -> list[dict]:
    rows = []
    for z in np.flatnonzero(pred.any(axis=(1, 2)) | truth.any(axis=(1, 2))):
        values = segmentation_metrics(pred[z], truth[z], spacing_yx, tolerance_mm=tolerance)
        rows.append({"model": model, "case_id": case, "slice": int(z), **{k: values[k] for k in ALL_KEYS}})
    return rows


# --------------------------------------------------------------------------- output folder
def _check_out_dir(out_dir: Path, overwrite: bool) -> list[str]:
    """Refuse a folder holding results (unless overwrite); return the files the last run recorded."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"The output '{out_dir}' is a file; give a folder.")
    existing = [f for f in REPORT_FILES if (out_dir / f).exists()]
    if existing and not overwrite:
        raise OutputError(f"'{out_dir}' already holds evaluation results ({', '.join(existing)}); choose a new folder "
                          "or pass --overwrite (only those result files are replaced).")
    previous = []
    if (out_dir / "evaluation.json").is_file():
        try:
            previous = [f for f in json.loads((out_dir / "evaluation.json").read_text(encoding="utf-8")).get("files", [])
                        if f in REPORT_FILES]
        except (OSError, ValueError, AttributeError):
            previous = []
    return previous


def _publish(out_dir: Path, render, previous: list[str]) -> list[str]:
    """Render into a temporary folder inside ``out_dir``, then move each file into place."""
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".mnetim-evaluate-", dir=out_dir))
    except OSError as exc:
        raise OutputError(f"Cannot write in '{out_dir}' ({exc.strerror or exc}).") from None
    try:
        try:
            written = render(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):
                    out_dir.rmdir()  # the folder this run made, empty again: a failed run leaves nothing
            raise
        for name in written:
            os.replace(tmp / name, out_dir / name)
        # Results of the previous run that this one does not produce would be stale: remove only
        # those the previous run recorded as its own.
        for name in set(previous) - set(written):
            (out_dir / name).unlink(missing_ok=True)
        return written
    except OSError as exc:
        raise OutputError(f"Writing the results to '{out_dir}' failed ({exc.strerror or exc}).") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    return str(value)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        if not rows:
            f.write("\n")
            return
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(list(rows[0]))
        for row in rows:
            writer.writerow([_fmt(v) for v in row.values()])


def _unit(metric: str, units: str) -> str:
    unit = METRIC_DEFINITIONS[metric]["unit"] if metric in METRIC_DEFINITIONS else (
        "mm" if metric.startswith(("asd", "hd95")) else "fraction")
    return "voxel" if unit == "mm" and units == "voxel" else unit


def _write_summary_csv(path: Path, summary, units: str, tolerance: float) -> None:
    rows = []
    for model, metrics in summary.items():
        for metric, s in metrics.items():
            rows.append({"model": model, "metric": metric, "unit": _unit(metric, units), **s,
                         "tolerance": tolerance, "tolerance_unit": "voxel" if units == "voxel" else "mm"})
    _write_csv(path, rows)


def _json_number_dict(stats: dict) -> dict:
    return {k: (v if isinstance(v, int) or math.isfinite(v) else None) for k, v in stats.items()}


def _summary_markdown(summary, models, cases, missing, empty_predictions, tolerance, units, reference,
                      slice_summary) -> str:
    tol_unit = "voxel" if units == "voxel" else "mm"
    header = [f"{METRIC_DEFINITIONS[m]['name']}" + (f" ({_unit(m, units)})" if _unit(m, units) != "fraction" else "")
              for m in METRICS]

    def table(stat_fn, stat, source):
        lines = ["| Model | n | " + " | ".join(header) + " |", "|---|---:|" + "---:|" * len(METRICS)]
        for model in models:
            cells = []
            for metric in METRICS:
                s = source[model][metric]
                text = stat_fn(s)
                if s[stat] == best_of_src(source, metric, stat):
                    text = f"**{text}**"
                if s["n_infinite"]:
                    text += f" ({s['n_infinite']} inf)"
                cells.append(text)
            n = max(source[model][m]["n"] + source[model][m]["n_infinite"] for m in METRICS)
            lines.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def best_of_src(source, metric, stat):
        values = {m: source[m][metric][stat] for m in models if math.isfinite(source[m][metric][stat])}
        if len(models) < 2 or not values:
            return None
        return (min if METRIC_DEFINITIONS[metric]["better"] == "lower" else max)(values.values())

    num = lambda v: "-" if not math.isfinite(v) else f"{v:.4f}"  # noqa: E731
    out = [f"# Evaluation: {', '.join(models)}", "",
           f"{len(cases)} case(s); surface tolerance tau = {tolerance:g} {tol_unit}; distances in {tol_unit}.", "",
           "## Mean ± variance (as the paper's Table 1)", "",
           table(lambda s: f"{num(s['mean'])} ± {num(s['variance'])}", "mean", summary), "",
           "## Median (as the paper's Table 2)", "",
           table(lambda s: num(s["median"]), "median", summary), ""]
    if slice_summary is not None:
        out += ["## Per-slice (2D) mean ± variance, over every slice holding CTV in the truth or the prediction", "",
                table(lambda s: f"{num(s['mean'])} ± {num(s['variance'])}", "mean", slice_summary), ""]
    out += ["## Definitions", ""]
    for metric in METRICS:
        d = METRIC_DEFINITIONS[metric]
        out.append(f"- **{d['name']}** ({d['title']}, {_unit(metric, units)}, {d['better']} is better): "
                   f"{d['definition']}.")
    why = f" ({TOLERANCE_RATIONALE})" if units == "mm" and tolerance == DEFAULT_TOLERANCE_MM else ""
    unit_text = ("millimetres (voxel spacing of each scan)" if units == "mm"
                 else "voxels (spacing taken as 1 in every axis)")
    out += ["", f"- Tolerance: tau = {tolerance:g} {tol_unit}{why}.",
            f"- Units: {unit_text}.",
            f"- Empty masks: {EMPTY_MASK_CONVENTION}. Infinite distances are left out of the ASD/HD95 statistics "
            "(counted as 'inf' in the tables); VD, SO and SD count those cases as 0.",
            f"- {VARIANCE_NOTE[0].upper() + VARIANCE_NOTE[1:]}; bold marks the best model per column.",
            f"- best_worst.png: the {N_EXTREMES} lowest- and {N_EXTREMES} highest-VD cases of '{reference}'."]
    notes = []
    for model in models:
        if empty_predictions[model]:
            notes.append(f"- '{model}': empty prediction for {len(empty_predictions[model])} case(s): "
                         f"{', '.join(empty_predictions[model])}.")
        if missing[model]["no_prediction"]:
            notes.append(f"- '{model}': no prediction for {len(missing[model]['no_prediction'])} truth case(s), "
                         f"not scored: {', '.join(missing[model]['no_prediction'])}.")
        if missing[model]["no_truth"]:
            notes.append(f"- '{model}': {len(missing[model]['no_truth'])} prediction(s) without truth, not scored: "
                         f"{', '.join(missing[model]['no_truth'])}.")
    if notes:
        out += ["", "## Warnings", ""] + notes
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- figures
def _new_figure(width_in: float, height_in: float):
    # A bare Figure renders with Agg and never touches pyplot's global state (safe inside Slicer or a
    # notebook with another backend).
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=110, layout="constrained")


def _boxplots(path: Path, rows, models, units, tolerance) -> None:
    fig = _new_figure(2.2 + 2.3 * len(METRICS) + 0.25 * len(models) * len(METRICS), 4.2)
    axes = fig.subplots(1, len(METRICS))
    for ax, metric in zip(axes, METRICS):
        data, means, notes = [], [], []
        for model in models:
            v = np.asarray([r[metric] for r in rows if r["model"] == model], float)
            finite = v[np.isfinite(v)]
            data.append(finite)
            means.append(finite.mean() if finite.size else np.nan)
            notes.append(int(v.size - finite.size))
        ax.boxplot(data, showfliers=True, widths=0.6, medianprops={"color": "black"},
                   flierprops={"marker": "+", "markeredgecolor": "0.35"})
        ax.plot(range(1, len(models) + 1), means, "o", color="red", markersize=5, zorder=3, label="mean")
        ax.set_xticks(range(1, len(models) + 1))
        ax.set_xticklabels(models, rotation=45 if len(models) > 2 else 0, ha="right" if len(models) > 2 else "center",
                           fontsize=8)
        d = METRIC_DEFINITIONS[metric]
        unit = _unit(metric, units)
        ax.set_title(d["name"] + (f" ({unit})" if unit != "fraction" else ""), fontsize=10)
        for i, n in enumerate(notes):
            if n:
                ax.annotate(f"{n} inf", (i + 1, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                            fontsize=7, color="red")
        ax.grid(axis="y", alpha=0.3)
    tol_unit = "voxel" if units == "voxel" else "mm"
    fig.suptitle(f"Red dots: means. SO/SD at tau = {tolerance:g} {tol_unit}.", fontsize=9)
    fig.savefig(path)


def _ct_slice(path: Path, case: str, snap: _Snapshot) -> np.ndarray:
    from .io import read_image

    ct = read_image(path)
    shape, geometry = snap.grid
    if ct.shape != shape or not ct.geometry.allclose(geometry, atol=1e-3):
        raise DatasetError(f"Case '{case}': the CT grid ({_describe(ct.shape, ct.geometry)}) differs from the truth grid "
                           f"({_describe(shape, geometry)}); the overlay would be misregistered.")
    return ct.array[snap.z][snap.window].astype(np.float32)


def _draw_panel(ax, snap: _Snapshot, pred: np.ndarray, image: Optional[np.ndarray], title: str) -> None:
    h, w = snap.truth.shape
    sy, sx = snap.spacing_yx
    extent = (0, w * sx, h * sy, 0)  # millimetres, so anisotropic pixels keep their true shape
    if image is not None:
        ax.imshow(image, cmap="gray", vmin=_CT_WINDOW[0], vmax=_CT_WINDOW[1], extent=extent, interpolation="nearest")
    else:
        ax.imshow(np.zeros((h, w)), cmap="gray", vmin=0, vmax=1, extent=extent)
    overlay = np.zeros((h, w, 4))
    overlay[pred] = (*_ORANGE, 0.6)
    ax.imshow(overlay, extent=extent, interpolation="nearest")
    if snap.truth.any() and not snap.truth.all():
        # Contour through pixel centres: x = (i + 0.5) * sx, y = (j + 0.5) * sy.
        xs, ys = (np.arange(w) + 0.5) * sx, (np.arange(h) + 0.5) * sy
        ax.contour(xs, ys, snap.truth.astype(float), levels=[0.5], colors=[_GREEN], linewidths=1.3)
    ax.set_xlim(0, w * sx)
    ax.set_ylim(h * sy, 0)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _overlays(path: Path, worst, best, models, snapshots, rows, images) -> None:
    vd = {(r["model"], r["case_id"]): r["vd"] for r in rows}
    picked = worst + best
    ct = {case: _ct_slice(images[case], case, snapshots[case]) for case in picked if case in images}
    if len(models) == 1:
        # One model: the worst cases on the first row, the best on the second.
        model = models[0]
        ncols = max(len(worst), len(best), 1)
        nrows = 1 + bool(best)
        fig = _new_figure(2.3 * ncols, 2.5 * nrows + 0.3)
        axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
        for r, group in enumerate([worst, best][:nrows]):
            for c in range(ncols):
                ax = axes[r, c]
                if c >= len(group):
                    ax.set_axis_off()
                    continue
                case = group[c]
                snap = snapshots[case]
                _draw_panel(ax, snap, snap.pred[model], ct.get(case), f"{case} (z {snap.z})\nVD {vd[(model, case)]:.3f}")
            axes[r, 0].set_ylabel("lowest VD" if r == 0 else "highest VD", fontsize=9)
    else:
        fig = _new_figure(2.1 * len(models) + 0.8, 2.2 * len(picked) + 0.3)
        axes = fig.subplots(len(picked), len(models), squeeze=False)
        for r, case in enumerate(picked):
            snap = snapshots[case]
            for c, model in enumerate(models):
                _draw_panel(axes[r, c], snap, snap.pred[model], ct.get(case),
                            (f"{model}\n" if r == 0 else "") + f"VD {vd[(model, case)]:.3f}")
            axes[r, 0].set_ylabel(f"{case}\n{'low' if case in worst else 'high'}", fontsize=8)
    fig.suptitle("prediction: orange fill; truth: green contour" + ("" if ct else " (no CT given)"), fontsize=9)
    fig.savefig(path)


# --------------------------------------------------------------------------- command line
def _tolerance(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _model_dir(text: str) -> tuple[str, Path]:
    import argparse

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
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out (nothing else is touched)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_commands(subparsers) -> None:
    """Register ``evaluate`` and ``evaluate-models`` on the ``mnetim`` sub-command parser (sets ``func``)."""
    e = subparsers.add_parser("evaluate", help="score predicted CTV masks against the truth (ASD, HD95, SO, SD, VD)",
                              description="Score predicted CTV masks against the truth: per-case CSV, the paper's "
                                          "tables (mean ± variance, median), box plots and best/worst overlays.")
    e.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted masks (.seg.nrrd or labelmaps), one per case")
    e.add_argument("--name", help="model name in the tables (default: the --pred folder's name)")
    _common_arguments(e)
    e.set_defaults(func=cmd_evaluate)

    # ``compare`` is the research command that trains the models first (training/commands.py);
    # this one scores prediction folders that already exist.
    c = subparsers.add_parser("evaluate-models", help="score several models' predictions on the same cases (one table, one plot)",
                              description="Score several models on the same cases: Table 1/2-style summary and a "
                                          "Figure 4-style box plot with one box per model.")
    c.add_argument("--model", action="append", type=_model_dir, required=True, metavar="NAME=FOLDER",
                   help="a model's prediction folder; repeat for each model")
    c.add_argument("--reference", metavar="NAME", help="model whose VD picks the best/worst cases (default: the first)")
    _common_arguments(c)
    c.set_defaults(func=cmd_compare)


def _report(result: EvaluationResult, as_json: bool) -> int:
    for model in result.models:
        if result.empty_predictions[model]:
            print(f"mnetim: warning: '{model}' predicted nothing for {len(result.empty_predictions[model])} case(s): "
                  f"{_listing(result.empty_predictions[model])} (VD = SO = SD = 0, ASD = HD95 = inf).", file=sys.stderr)
        miss = result.missing[model]
        if miss["no_prediction"]:
            print(f"mnetim: warning: no prediction from '{model}' for {len(miss['no_prediction'])} truth case(s), not "
                  f"scored: {_listing(miss['no_prediction'])}.", file=sys.stderr)
        if miss["no_truth"]:
            print(f"mnetim: warning: {len(miss['no_truth'])} prediction(s) of '{model}' have no truth, not scored: "
                  f"{_listing(miss['no_truth'])}.", file=sys.stderr)
    if as_json:
        print(json.dumps({
            "output": str(result.out_dir), "cases": len(result.cases), "tolerance": result.tolerance_mm,
            "units": result.units, "files": [str(f) for f in result.files], "missing": result.missing,
            "empty_predictions": result.empty_predictions,
            "summary": {m: {k: _json_number_dict(result.summary[m][k]) for k in METRICS} for m in result.models},
        }))
    else:
        for model in result.models:
            s = result.summary[model]
            print(f"{model}: {len(result.cases)} case(s), " + ", ".join(
                f"{METRIC_DEFINITIONS[k]['name']} {s[k]['mean']:.4f}" for k in METRICS) + " (means)")
        print(f"results -> {result.out_dir}")
    return 0


def _progress(args) -> bool:
    # A bar only for a person at a terminal: logs and pipes get the summary lines alone.
    return not args.json and sys.stderr.isatty()


def cmd_evaluate(args) -> int:
    """``mnetim evaluate``: see :func:`evaluate`."""
    result = evaluate(args.pred, args.truth, args.out, tolerance_mm=args.tolerance_mm, label=args.label,
                      segment=args.segment, images_dir=args.images, per_slice=args.per_slice, units=args.units,
                      name=args.name, overwrite=args.overwrite, progress=_progress(args))
    return _report(result, args.json)


def cmd_compare(args) -> int:
    """``mnetim compare``: see :func:`compare_models`."""
    dirs = {}
    for name, folder in args.model:
        if name in dirs:
            raise DatasetError(f"Model name '{name}' is given twice.")
        dirs[name] = folder
    result = compare_models(dirs, args.truth, args.out, tolerance_mm=args.tolerance_mm, label=args.label,
                            segment=args.segment, images_dir=args.images, reference=args.reference,
                            per_slice=args.per_slice, units=args.units, overwrite=args.overwrite,
                            progress=_progress(args))
    return _report(result, args.json)
