"""Segmenting a whole folder of CTs: resumable, with reading and writing overlapped with the network."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from ..core.errors import InputError, MnetImError, OutputError
from ..core.commit import (batch_name_collisions, input_error, output_error,
                           refuse_output_equals_input, signal_cleanup)
from ..core.files import SEGMENTATION_SUFFIX, transaction
from ..dicomrt.export import DICOM_FORMATS
from .batch_cases import find_cases, is_batch_folder, write_summary
from .inference import Segmenter, SegmentationResult
from .io import mask_kind, read_image, write_image, write_mask
from .quality import strict_check


def write_result(result: SegmentationResult, output: Path, overwrite: bool = False,
                 probability_path: Optional[Path] = None, tx=None) -> None:
    """The mask (format from the suffix of ``output``) and, if asked and kept, the probability map.

    One transaction: both are read back and committed together, or neither is.
    """
    with transaction(tx, overwrite) as t:
        write_mask(result.mask, output, model=result.model, threshold=result.threshold, tx=t)
        if probability_path is not None and result.probability is not None:
            write_image(result.probability, probability_path, tx=t)


def looks_like_series(folder: Path) -> bool:
    """A folder is one case (not a batch): see :mod:`.batch_cases` for the rule."""
    return not is_batch_folder(folder)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def segment_folder(inp: Path, out: Path, *, weights=None, device: str = "auto", batch_size: int = 16,
                   precision: str = "auto", fmt: Optional[str] = None, threshold: Optional[float] = None,
                   largest_component: bool = True, overwrite: bool = False, progress: bool = True,
                   log: Callable[[str], None] = _stderr, strict: bool = False) -> dict:
    """Every image file (or DICOM series subfolder) of ``inp`` into ``out``; skips finished cases.

    Args:
        inp: Folder of image files and/or DICOM series subfolders.
        out: Output folder (created).
        weights, device, batch_size, precision: As for :class:`~.inference.Segmenter`.
        fmt: Output file format (``.seg.nrrd`` default, ``.nii.gz``, ...).
        threshold, largest_component: As for :meth:`~.inference.Segmenter.segment`.
        overwrite: Re-segment cases whose output exists (default: skip them, so a run resumes).
        progress: Show a progress bar.
        log: Called with one line per failed case and per quality warning.
        strict: A case with quality warnings is a failure and is not written.

    Returns:
        ``{"output", "cases": [...], "failed": [...], "summary"}``: one entry per case done or skipped, and
        per failure; ``summary`` is ``out/summary.csv`` (one row per case, :data:`.batch_cases.SUMMARY_COLUMNS`).

    Raises:
        InputError: ``inp`` is not a folder or holds nothing to segment.
        OutputError: A DICOM format was asked for (batch mode writes files only).
    """
    if not inp.is_dir():
        raise InputError(f"Batch input '{inp}' must be a folder.")
    # The output folder may not be (or lie inside, or hold) the input folder: results would
    # replace or mix with the CTs, and a resumed run would take CTs for results.
    refuse_output_equals_input([out], [inp])
    cases = find_cases(inp)
    if not cases:
        raise InputError(f"'{inp}' holds no image files or series folders to segment.")
    stems = dict(cases)
    collisions = batch_name_collisions(stems, stem=stems.__getitem__)
    if collisions:
        names = "; ".join(" and ".join(f"'{p.name}'" for p in group) for group in collisions.values())
        raise InputError(f"Several inputs of '{inp}' would write the same output ({names}); "
                         "rename them or segment them separately.")
    fmt = fmt or SEGMENTATION_SUFFIX
    if fmt in DICOM_FORMATS:
        raise OutputError("Batch mode writes .seg.nrrd or labelmaps; export DICOM RT one series at a time.")
    ext = fmt if fmt.startswith(".") else "." + fmt
    mask_kind(out / f"case{ext}")  # an unknown format is refused before any work
    segmenter = Segmenter(weights, device=device, batch_size=batch_size, precision=precision)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(out, exc, "create the folder") from None
    with signal_cleanup():  # the writer thread's transactions are cleaned on Ctrl-C / SIGTERM too
        return _segment_cases(cases, out, ext, segmenter, threshold, largest_component, overwrite, progress, log,
                              strict)


def _segment_cases(cases, out, ext, segmenter, threshold, largest_component, overwrite, progress, log,
                   strict=False) -> dict:
    from tqdm import tqdm

    results, failures = [], []
    todo = []
    for path, stem in cases:
        target = out / f"{stem}{ext}"
        if target.exists() and not overwrite:
            results.append({"input": str(path), "output": str(target), "skipped": "already done"})
        else:
            todo.append((path, target))

    def read(path):
        try:
            return read_image(path), None
        except MnetImError as exc:
            return None, exc
        except OSError as exc:
            return None, input_error(path, exc)
        except Exception as exc:  # a reader library's own error on one corrupt file: skip it, by name
            return None, InputError(f"'{path}' could not be read ({type(exc).__name__}: {str(exc)[:120]}).")

    def finish(pending) -> None:
        future, path, target, result, t0 = pending
        try:
            future.result()
            results.append({"input": str(path), "output": str(target), "ctv_ml": round(result.volume_ml, 2),
                            "seconds": round(time.perf_counter() - t0, 3), "device": result.device,
                            "warnings": result.warnings, "status": result.quality.get("status")})
        except MnetImError as exc:
            failures.append({"input": str(path), "error": str(exc)})
            log(f"skipped {path}: {exc}")

    # One reader and one writer thread overlap file I/O with the network, which releases the GIL:
    # while CT n is segmented, CT n+1 is read and result n-1 is written.
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending_read = reader.submit(read, todo[0][0]) if todo else None
        pending_write = None
        for i, (path, target) in enumerate(tqdm(todo, desc="CTs", unit="CT", disable=not progress)):
            t0 = time.perf_counter()
            volume, error = pending_read.result()
            pending_read = reader.submit(read, todo[i + 1][0]) if i + 1 < len(todo) else None
            try:
                if error is not None:
                    raise error
                result = segmenter.segment(volume, threshold=threshold, largest_component=largest_component)
                for w in result.warnings:
                    log(f"warning: {path}: {w}")
                if strict:
                    strict_check(result.warnings)
                if pending_write is not None:
                    finish(pending_write)
                pending_write = (writer.submit(write_result, result, target, overwrite), path, target, result, t0)
            except MnetImError as exc:
                failures.append({"input": str(path), "error": str(exc)})
                log(f"skipped {path}: {exc}")
        if pending_write is not None:
            finish(pending_write)
    summary = write_summary(out, results, failures)
    return {"output": str(out), "cases": results, "failed": failures, "summary": str(summary)}
