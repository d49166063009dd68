"""``mnetim segment``: one CT (file or DICOM series) or a whole folder of them."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ..core.commit import OutputTransaction, refuse_output_equals_input
from ..core.errors import InputError, OutputError
from ..core.files import suffix_of
from ..core.validate import validate_segment_options
from ..dicomrt.export import DICOM_FORMATS, write_segmentation_dicom
from ..engine.batch import looks_like_series, segment_folder, write_result
from ..engine.fractions import dicom_identity, fuse_result, load_prior, propagate_loaded
from ..engine.inference import Segmenter
from ..engine.io import IMAGE_WRITE_SUFFIXES, mask_kind, read_image, write_image
from ..engine.quality import parse_point, strict_check
from .options import add_device, add_input_output, add_json, add_overwrite, add_trust, emit, warn


def add_parser(sub) -> None:
    s = sub.add_parser("segment", help="segment the CTV of a CT (DICOM folder or image file), or of every CT in a folder")
    add_input_output(s, "input", "DICOM series folder, image file (.nii.gz/.nrrd/.mha), or a folder of them (batch)",
                     ".seg.nrrd (Slicer segmentation) or .nii.gz/.nrrd/.mha labelmap; a folder in batch mode")
    s.add_argument("--weights", help="weights folder (default: the shipped demo weights)")
    add_device(s)
    s.add_argument("--threshold", type=float, help="probability threshold (default: the model card's)")
    s.add_argument("--no-largest-component", action="store_true", help="keep every connected piece, not only the largest")
    s.add_argument("--probability", help="also write the probability map to this image file")
    s.add_argument("--series", help="DICOM SeriesInstanceUID when the folder holds several CT series")
    s.add_argument("--batch", action="store_true", help="treat INPUT as a folder of cases; needed only when "
                   "automatic detection (image files, or subfolders of different studies) says otherwise")
    s.add_argument("--format", help="rtstruct or dicom-seg (OUTPUT is then a folder; INPUT a DICOM series); "
                   "in batch mode the file format (.seg.nrrd default, .nii.gz, ...); else the OUTPUT suffix decides")
    s.add_argument("--batch-size", type=int, default=16, help="windows per network pass")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 on CUDA and on CPUs with native bf16 (Dice >= 0.999 to fp32), else fp32")
    add_trust(s)
    s.add_argument("--prior-ct", help="previous fraction's CT (DICOM folder or image file): its approved CTV guides this one")
    s.add_argument("--prior-ctv", help="previous fraction's approved CTV: .seg.nrrd, labelmap, or RTSTRUCT file on --prior-ct")
    add_overwrite(s)
    add_json(s)
    s.set_defaults(func=run)


def run(args) -> int:
    inp, out = Path(args.input), Path(args.output)
    t0 = time.perf_counter()
    validate_segment_options(args)
    if args.batch or (inp.is_dir() and not looks_like_series(inp)):
        return _run_batch(args, inp, out)
    dicom_out = args.format in DICOM_FORMATS
    if dicom_out:
        if not inp.is_dir():
            raise InputError(f"--format {args.format} needs a DICOM CT series folder as input (the export references its images).")
    elif args.format not in (None, "auto"):
        raise OutputError(f"Unknown --format '{args.format}' for one CT: use rtstruct, dicom-seg, or let the output suffix decide.")
    else:
        mask_kind(out)
        if out.exists() and not args.overwrite:
            raise OutputError(f"'{out}' already exists; choose another output or pass --overwrite.")
    _check_single_outputs(args, inp, out)
    center = parse_point(args.roi_center) if args.roi_center else None
    prior = load_prior(args.prior_ct, args.prior_ctv) if (args.prior_ct or args.prior_ctv) else None
    volume = read_image(inp, series_uid=args.series)
    propagation = propagate_loaded(prior, volume, dicom_identity(inp)) if prior else None
    segmenter = Segmenter(args.weights, device=args.device, batch_size=args.batch_size, precision=args.precision)
    result = segmenter.segment(volume, threshold=args.threshold, largest_component=not args.no_largest_component,
                               keep_probability=args.probability is not None or prior is not None, roi_center=center)
    prior_report = None
    if propagation is not None:  # fused before --strict and before anything is written
        result, prior_report = fuse_result(result, propagation)
    if args.strict:
        strict_check(result.warnings)
    # One transaction: the mask (or DICOM object) and the probability map commit together or not at all.
    made_folder = dicom_out and not out.exists()
    try:
        with OutputTransaction(overwrite=args.overwrite) as tx:
            if dicom_out:
                out = write_segmentation_dicom(result.mask, inp, out, args.format, model_label=result.model,
                                               overwrite=args.overwrite, tx=tx, warnings=result.warnings)
                if args.probability:
                    write_image(result.probability, Path(args.probability), tx=tx)
            else:
                write_result(result, out, args.overwrite, Path(args.probability) if args.probability else None, tx=tx)
    except BaseException:
        if made_folder:  # the DICOM folder this run made, empty again: a failed run leaves nothing
            with contextlib.suppress(OSError):
                Path(args.output).rmdir()
        raise
    warn(result.warnings)  # once the result is written: a failed write stays one error line
    report = {"input": str(inp), "output": str(out), "ctv_ml": round(result.volume_ml, 2),
              "seconds": round(time.perf_counter() - t0, 3), "device": result.device,
              "precision": segmenter.precision,
              "threshold": result.threshold, "model": result.model, "roi": result.roi.to_dict(),
              "stage_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
              "warnings": result.warnings, "quality": result.quality}
    if prior_report is not None:
        report["prior"] = {k: v for k, v in prior_report.items() if k != "warnings"}
    emit(args, report, lambda: f"CTV {report['ctv_ml']:.1f} ml -> {out} ({report['seconds']:.1f} s on {result.device})")
    return 0


def _check_single_outputs(args, inp: Path, out: Path) -> None:
    """Refuse, before reading the CT, outputs that are an input, each other, or already exist."""
    probability = Path(args.probability) if args.probability else None
    refuse_output_equals_input([out, probability], [inp])
    if probability is None:
        return
    if suffix_of(probability) not in IMAGE_WRITE_SUFFIXES:
        raise OutputError(f"Cannot write the probability map to '{probability}': use {', '.join(IMAGE_WRITE_SUFFIXES)}.")
    if os.path.abspath(probability) == os.path.abspath(out):
        raise OutputError(f"--probability and -o name the same file '{out}'; choose distinct outputs.")
    if os.path.lexists(probability) and not args.overwrite:
        raise OutputError(f"'{probability}' already exists; choose another output or pass --overwrite.")


def _run_batch(args, inp: Path, out: Path) -> int:
    if args.prior_ct or args.prior_ctv:
        raise InputError("--prior-ct/--prior-ctv guide one CT; they cannot be used in batch mode.")
    report = segment_folder(inp, out, weights=args.weights, device=args.device, batch_size=args.batch_size,
                            precision=args.precision, fmt=args.format, threshold=args.threshold,
                            largest_component=not args.no_largest_component, overwrite=args.overwrite,
                            progress=not args.json, strict=args.strict)
    results, failures = report["cases"], report["failed"]
    emit(args, report, f"{len(results)} CT(s) done, {len(failures)} failed -> {out} (per case: {report['summary']})")
    return 1 if failures and not results else 0
