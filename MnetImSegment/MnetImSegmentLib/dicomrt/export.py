"""Writing a segmentation as DICOM next to its CT: pick the series, then RTSTRUCT or DICOM SEG."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..core.commit import output_error
from ..core.errors import InputError, OutputError
from ..core.style import CTV_NAME
from ..core.volume import Volume
from .ct_series import CtSeries, index_dicom_files, mask_on_ct_grid, scan_tree
from .rtstruct_writer import write_rtstruct
from .seg_writer import write_dicom_seg

# The --format values that write DICOM next to the CT instead of a file.
DICOM_FORMATS = ("rtstruct", "dicom-seg")


def write_segmentation_dicom(result_mask: Volume, ct_folder, out_dir, fmt: str = "rtstruct", model_label: str = "",
                             overwrite: bool = False, roi_name: str = CTV_NAME, tx=None, warnings=()) -> Path:
    """Write a CTV mask as an RTSTRUCT or DICOM SEG that references its CT series.

    Args:
        result_mask: The mask (non-zero = CTV) on the CT's grid (axes may be flipped).
        ct_folder: The CT series folder the mask was computed on (subfolders are searched; with
            several CT series, the one whose grid matches the mask is used).
        out_dir: Output folder (created if missing); the file is ``RTSTRUCT_<roi>.dcm`` or ``SEG_<roi>.dcm``.
        fmt: ``"rtstruct"`` or ``"dicom-seg"``.
        model_label: Model name and version, e.g. ``"Mnet_Im 0.1.0"``: stored as the ROI generation
            description (RTSTRUCT) or algorithm identification (SEG).
        overwrite: Replace an existing output file.
        roi_name: ROI / segment label.
        tx: An output transaction to commit with the run's other outputs (default: alone).
        warnings: Quality warnings: in the RTSTRUCT's ROI description and the series description
            (RTSTRUCT and SEG), sanitised and bounded (:func:`review_note`).

    Returns:
        The written file.

    Raises:
        InputError: No usable CT series in ``ct_folder``.
        OutputError: Unknown format, mask not on the CT grid, empty mask, file exists, not writable.
    """
    fmt = fmt.lower().replace("_", "-")
    if fmt not in ("rtstruct", "dicom-seg", "seg"):
        raise OutputError(f"Unknown DICOM output format '{fmt}': use rtstruct or dicom-seg.")
    series = _series_for_mask(result_mask, ct_folder)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"'{out_dir}' exists and is not a folder.")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(out_dir, exc, "create the folder") from None
    series_description = "MnetImSegment CTV" + (f" REVIEW: {review_note(warnings, 64 - 25)}" if warnings else "")
    safe_roi = "".join(c if c.isalnum() or c in "-_" else "_" for c in roi_name) or "ROI"
    try:
        if fmt == "rtstruct":
            return write_rtstruct(result_mask, series, out_dir / f"RTSTRUCT_{safe_roi}.dcm", model_label=model_label,
                                  roi_name=roi_name, overwrite=overwrite, tx=tx, series_description=series_description,
                                  roi_description=review_note(warnings, 1024))
        return write_dicom_seg(result_mask, series, out_dir / f"SEG_{safe_roi}.dcm", model_label=model_label,
                               segment_label=roi_name, overwrite=overwrite, tx=tx,
                               series_description=series_description)
    except BaseException:
        if created:  # a failed run leaves nothing, not even the folder it made
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def review_note(warnings, limit: int) -> str:
    """Warnings as one printable ASCII line of at most ``limit`` characters (DICOM LO is 64, ST 1024;
    backslash is the DICOM value separator, so it is replaced)."""
    text = "; ".join(str(w) for w in warnings)
    text = "".join(c if 32 <= ord(c) < 127 and c != "\\" else " " for c in text)
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _series_for_mask(mask: Volume, ct_folder) -> CtSeries:
    ct_folder = Path(ct_folder)
    if not ct_folder.exists():
        raise InputError(f"'{ct_folder}' does not exist.")
    tree = scan_tree(ct_folder) if ct_folder.is_dir() else index_dicom_files([ct_folder], ct_folder.parent)
    if not tree.ct_series:
        raise InputError(f"No CT series was found in '{ct_folder}'.")
    if len(tree.ct_series) == 1:
        return next(iter(tree.ct_series.values()))
    fitting = []
    for s in tree.ct_series.values():
        try:
            mask_on_ct_grid(mask, s)
            fitting.append(s)
        except (OutputError, InputError):
            continue
    if len(fitting) != 1:
        raise InputError(f"'{ct_folder}' holds {len(tree.ct_series)} CT series and {len(fitting)} of them match the "
                         "segmentation's grid; pass the folder of the one series that was segmented.")
    return fitting[0]
