"""What a folder given to ``mnetim segment`` holds: one case, or a batch of cases; and the batch summary.

A folder is a **batch** when it holds image files at its top (each file is a case), or when its
subfolders hold the CTs of different studies (each such subfolder is a case: a planning-system export
with one folder per patient, however deeply the DICOM files are nested inside and whatever they are
named). Otherwise it is **one case**: a DICOM folder whose CT series (scouts and second reconstructions
included) belong to one study, the planning CT being chosen by :func:`..dicomrt.ct_series.find_ct_series`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional

from ..core.commit import is_temp_name
from ..core.files import IMAGE_SUFFIXES, atomic_path, suffix_of
from ..dicomrt.common import dcmread_lenient

# Columns of the per-case summary a batch writes (``warnings``: '; '-joined, empty when none).
SUMMARY_COLUMNS = ("case", "input", "output", "status", "ctv_ml", "seconds", "warnings")
SUMMARY_NAME = "summary.csv"


def _first_ct_study(folder: Path) -> Optional[tuple]:
    """(PatientID, StudyInstanceUID) of the first CT slice under ``folder``, or None if it holds none."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            try:
                ds = dcmread_lenient(Path(dirpath) / name, stop_before_pixels=True,
                                     specific_tags=["Modality", "PatientID", "StudyInstanceUID"])
            except Exception:  # not DICOM, damaged: the case reader reports it if it matters
                continue
            if str(ds.get("Modality", "")).upper() == "CT":
                return str(ds.get("PatientID", "")), str(ds.get("StudyInstanceUID", ""))
    return None


def is_batch_folder(folder: Path) -> bool:
    """True if ``folder`` is a folder of cases (image files, or CT folders of different studies)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(p.is_file() and suffix_of(p) in IMAGE_SUFFIXES for p in entries):
        return True
    # Files at the top (DICOM slices, a DICOMDIR, notes) do not decide: the subfolders' studies do.
    studies = {s for s in (_first_ct_study(p) for p in sorted(entries) if p.is_dir()) if s is not None}
    return len(studies) > 1


def find_cases(folder: Path) -> list:
    """The cases of a batch folder: [(path, name)] for image files and for subfolders."""
    cases = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or is_temp_name(p.name):
            continue
        suffix = suffix_of(p)
        if p.is_file() and suffix in IMAGE_SUFFIXES:
            cases.append((p, p.name[: -len(suffix)]))
        elif p.is_dir():
            cases.append((p, p.name))
    return cases


def _case_name(path: str) -> str:
    name, suffix = Path(path).name, suffix_of(path)
    return name[: -len(suffix)] if suffix in IMAGE_SUFFIXES else name


def summary_rows(cases: list, failures: list) -> list:
    """One row per case (done, skipped or failed), in the order of :data:`SUMMARY_COLUMNS`."""
    rows = []
    for c in cases:
        status = "skipped (already done)" if c.get("skipped") else "done"
        rows.append({"case": _case_name(c["input"]), "input": c["input"], "output": c["output"],
                     "status": status, "ctv_ml": c.get("ctv_ml", ""), "seconds": c.get("seconds", ""),
                     "warnings": "; ".join(c.get("warnings", []))})
    for f in failures:
        rows.append({"case": _case_name(f["input"]), "input": f["input"], "output": "",
                     "status": f"failed: {f['error']}", "ctv_ml": "", "seconds": "", "warnings": ""})
    return sorted(rows, key=lambda r: r["case"])


def write_summary(out: Path, cases: list, failures: list) -> Path:
    """``out/summary.csv``, replaced atomically (a reader never sees half a table)."""
    path = out / SUMMARY_NAME
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows(summary_rows(cases, failures))
    return path
