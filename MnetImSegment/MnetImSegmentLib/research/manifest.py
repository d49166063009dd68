"""Dataset manifests: a CSV of scans (image, mask, patient, scan, split) and the paper's split by patient.

Manifest: a CSV with columns ``image, mask, patient_id, scan_id`` and optionally ``split``
(``train``/``val``/``test``); paths are relative to the manifest's folder. Without a ``split`` column
scans are split with the paper's proportions (164/35/36 scans ~ 70/15/15 %), all scans of one
patient in the same split so nothing leaks. Written by dataset import and phantom generation, read by
training and the experiments.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import DatasetError
from ..core.files import write_text

SPLITS = ("train", "val", "test")
PAPER_FRACTIONS = (164 / 235, 35 / 235, 36 / 235)


@dataclass(frozen=True)
class ScanRecord:
    image: Path
    mask: Path
    patient_id: str
    scan_id: str
    split: Optional[str] = None
    style: Optional[str] = None  # phantom generator style, when the scan is a phantom


def read_manifest(path) -> list[ScanRecord]:
    """Read and check a manifest: files exist, ids unique, a patient never in two splits."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Manifest '{path}' does not exist.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = {"image", "mask", "patient_id", "scan_id"}
    if not rows or not need <= set(rows[0]):
        raise DatasetError(f"Manifest '{path}' needs the columns {', '.join(sorted(need))} and at least one row.")
    records, seen = [], set()
    for n, row in enumerate(rows, start=2):
        image, mask = path.parent / row["image"], path.parent / row["mask"]
        for p in (image, mask):
            if not p.exists():
                raise DatasetError(f"Manifest '{path}' line {n} names a missing file: '{p}'.")
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            raise DatasetError(f"Manifest '{path}' line {n}: split '{split}' is not one of {', '.join(SPLITS)}.")
        if row["scan_id"] in seen:
            raise DatasetError(f"Manifest '{path}' line {n}: scan_id '{row['scan_id']}' appears twice.")
        seen.add(row["scan_id"])
        style = (row.get("style") or "").strip() or None
        if style == "heldout" and split != "test":
            raise DatasetError(f"Manifest '{path}' line {n}: a held-out-style phantom must be a 'test' scan (it measures "
                               "generalisation and is never trained on).")
        records.append(ScanRecord(image, mask, row["patient_id"], row["scan_id"], split, style))
    splits_of: dict[str, set] = {}
    for r in records:
        if r.split:
            splits_of.setdefault(r.patient_id, set()).add(r.split)
    leaks = [p for p, s in splits_of.items() if len(s) > 1]
    if leaks:
        raise DatasetError(f"Manifest '{path}': patient '{leaks[0]}' has scans in several splits ({', '.join(sorted(splits_of[leaks[0]]))}).")
    return records


def write_manifest(path, records: list[ScanRecord]) -> None:
    path = Path(path)
    # Absolute on both sides: a dataset named by a relative path ('-o dataset') is written through a
    # temporary file whose path is absolute.
    base = Path(os.path.abspath(path)).parent

    def rel(p) -> str:  # '../other/...' for scans of another dataset (a manifest mixing several)
        return Path(os.path.relpath(os.path.abspath(p), base)).as_posix()

    styles = any(r.style for r in records)  # the style column only for phantom datasets
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer, lineterminator="\n")
    w.writerow(["image", "mask", "patient_id", "scan_id", "split"] + (["style"] if styles else []))
    for r in records:
        w.writerow([rel(r.image), rel(r.mask), r.patient_id, r.scan_id, r.split or ""] + ([r.style or ""] if styles else []))
    write_text(path, buffer.getvalue(), overwrite=True)  # the commit path: read back by checksum


def split_records(records: list[ScanRecord], seed: int = 0, fractions=PAPER_FRACTIONS) -> dict[str, list[ScanRecord]]:
    """Use the manifest's splits, or split patients randomly with the given fractions."""
    if all(r.split for r in records):
        return {s: [r for r in records if r.split == s] for s in SPLITS}
    patients = sorted({r.patient_id for r in records})
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n = len(patients)
    n_val = max(1, int(round(fractions[1] * n))) if n >= 3 else 0
    n_test = max(1, int(round(fractions[2] * n))) if n >= 3 else 0
    groups = {"val": set(patients[:n_val]), "test": set(patients[n_val:n_val + n_test])}
    out = {s: [] for s in SPLITS}
    for r in records:
        s = "val" if r.patient_id in groups["val"] else "test" if r.patient_id in groups["test"] else "train"
        out[s].append(replace(r, split=s))
    return out




# Below this many patients, a threshold or a Dice measured on the split rests on too few to trust.
MIN_PATIENTS_PER_SPLIT = 5


def split_size_warnings(splits: dict, minimum: int = MIN_PATIENTS_PER_SPLIT) -> list[str]:
    """One line per validation/test split with fewer than ``minimum`` patients (empty when all are large enough)."""
    what = {"val": "the threshold and early stopping", "test": "the test Dice"}
    out = []
    for split in ("val", "test"):
        patients = {r.patient_id for r in splits.get(split, [])}
        if 0 < len(patients) < minimum:
            out.append(f"the {split} split has {len(patients)} patient(s): {what[split]} rest(s) on few patients; "
                       f"with a small data set prefer `mnetim crossval` with k folds (docs/research.md).")
    return out


def style_counts(records) -> dict:
    """How many of ``records`` each phantom style has (sorted by style; scans without a style are not counted)."""
    return dict(sorted(Counter(r.style for r in records if r.style).items()))
