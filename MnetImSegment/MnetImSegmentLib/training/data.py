"""Training data: a manifest of scans, splits by scan (grouped by patient), ROI crops, 2.5D windows.

Manifest: a CSV with columns ``image, mask, patient_id, scan_id`` and optionally ``split``
(``train``/``val``/``test``); paths are relative to the manifest's folder. Without a ``split`` column
scans are split with the paper's proportions (164/35/36 scans ~ 70/15/15 %), all scans of one
patient in the same split so nothing leaks.

Each scan is reduced once to what the network sees: the automatic ROI (the same code inference
uses), cropped with ``jitter_px`` extra context on each side so training can shift the crop, then
normalised. Augmentation, chosen for CT: random in-plane shift of the crop (ROI-location error),
left-right mirroring (the pelvis is near-symmetric), a global HU offset and small gain (scanner
calibration), Gaussian noise (dose). No rotations or elastic warps of the HU values: phantoms and
patients already vary in pose.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DatasetError
from ..roi import Roi, RoiSpec, crop, locate_roi
from ..volume import Volume
from ..windows import InputSpec, normalise, window_indices

SPLITS = ("train", "val", "test")
PAPER_FRACTIONS = (164 / 235, 35 / 235, 36 / 235)


@dataclass(frozen=True)
class ScanRecord:
    image: Path
    mask: Path
    patient_id: str
    scan_id: str
    split: Optional[str] = None


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
        records.append(ScanRecord(image, mask, row["patient_id"], row["scan_id"], split))
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
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "mask", "patient_id", "scan_id", "split"])
        for r in records:
            w.writerow([Path(r.image).relative_to(path.parent).as_posix(), Path(r.mask).relative_to(path.parent).as_posix(),
                        r.patient_id, r.scan_id, r.split or ""])


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


def read_volume_pair(record: ScanRecord) -> tuple[Volume, Volume]:
    from ..io import read_image

    image = read_image(record.image)
    mask = read_image(record.mask)
    if image.shape != mask.shape or not image.geometry.allclose(mask.geometry, atol=1e-3):
        raise DatasetError(f"Scan '{record.scan_id}': mask grid {mask.shape} {mask.geometry} differs from image grid "
                           f"{image.shape} {image.geometry}.")
    return image, mask


@dataclass
class PreparedScan:
    """One scan as the network sees it: normalised ROI stack with context, and its CTV mask."""

    scan_id: str
    image: np.ndarray  # (slices, H + 2 jitter, W + 2 jitter) float16 in [0, 1]
    mask: np.ndarray  # same shape, uint8
    roi: Roi
    spacing_mm: tuple[float, float, float]  # of the crop, (x, y, z)


def ctv_mask(labels: np.ndarray, label_value: int = 1) -> np.ndarray:
    """The CTV of a mask file as booleans: ``== label_value`` in a multi-label map, else ``> 0``."""
    return (labels == label_value) if labels.max() > 1 else (labels > 0)


class DatasetWarning(UserWarning):
    """Data that can be used but deserves a look (a scan without CTV, a CTV cut by the ROI)."""


# Below this share of the CTV volume inside the training crop, the ROI location probably failed.
MIN_CTV_INSIDE_CROP = 0.9


def prepare_scan(record: ScanRecord, roi_spec: RoiSpec, input_spec: InputSpec, jitter_px: int = 16,
                 label_value: int = 1) -> PreparedScan:
    """Crop, normalise and binarise one scan (see the module docstring).

    A scan without CTV is kept (its windows are negative examples) with a :class:`DatasetWarning`;
    so is a scan whose CTV lies partly outside the crop, since that points at a failed ROI location.
    """
    image, mask = read_volume_pair(record)
    roi = locate_roi(image, roi_spec)
    padded = replace(roi_spec, size_px=(roi_spec.size_px[0] + 2 * jitter_px, roi_spec.size_px[1] + 2 * jitter_px))
    img = crop(image, roi, padded)
    target = ctv_mask(mask.array, label_value)
    msk = crop(mask.with_array(target.astype(np.float32)), roi, padded, default=0.0)
    binary = (msk.array >= 0.5).astype(np.uint8)
    if not target.any():
        warnings.warn(f"Scan '{record.scan_id}': the mask '{record.mask}' holds no CTV; the scan is kept as a "
                      "negative example.", DatasetWarning, stacklevel=2)
    else:
        # Compare physical volumes: the crop is resampled in-plane, so voxel counts differ.
        ml_all = float(target.sum()) * float(np.prod(mask.geometry.spacing))
        ml_kept = float(binary.sum()) * float(np.prod(msk.geometry.spacing))
        if ml_kept < MIN_CTV_INSIDE_CROP * ml_all:
            warnings.warn(f"Scan '{record.scan_id}': only {100 * ml_kept / ml_all:.0f}% of the CTV lies inside the "
                          f"training crop around the located ROI (method '{roi.method}'); check the ROI location "
                          "or enlarge the ROI.", DatasetWarning, stacklevel=2)
    return PreparedScan(record.scan_id, normalise(img.array, input_spec).astype(np.float16), binary, roi,
                        img.geometry.spacing)


class WindowSampler:
    """Random training batches of (windows, middle-slice masks) with CT-appropriate augmentation.

    Args:
        scans: Prepared training scans.
        size_px: Network input (W, H).
        slices_per_window: 5 in the paper.
        positive_fraction: Share of windows whose middle slice contains CTV (the CTV is small).
        hu_window_width: Width of the HU window, to express HU offsets in normalised units.
    """

    def __init__(self, scans: list[PreparedScan], size_px, slices_per_window: int = 5,
                 positive_fraction: float = 0.7, hu_window_width: float = 500.0, augment: bool = True):
        if not scans:
            raise DatasetError("No training scans.")
        self.scans = scans
        self.size = (int(size_px[1]), int(size_px[0]))  # (H, W)
        self.w = slices_per_window
        self.positive_fraction = positive_fraction
        self.hu_unit = 1.0 / hu_window_width
        self.augment = augment
        self.index_pos, self.index_neg = [], []
        for s_i, s in enumerate(scans):
            has = s.mask.reshape(s.mask.shape[0], -1).any(1)
            self.index_pos += [(s_i, z) for z in np.flatnonzero(has)]
            self.index_neg += [(s_i, z) for z in np.flatnonzero(~has)]
        if not self.index_pos:
            raise DatasetError("No training slice contains any CTV (inside the ROI crops): a dataset without CTV "
                               "cannot train; check the masks, the label value and the ROI.")

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        x = np.empty((batch_size, self.w, h, w), np.float32)
        y = np.empty((batch_size, 1, h, w), np.float32)
        for b in range(batch_size):
            pool = self.index_pos if (rng.random() < self.positive_fraction or not self.index_neg) else self.index_neg
            s_i, z = pool[rng.integers(len(pool))]
            scan = self.scans[s_i]
            H, W = scan.image.shape[1:]
            if self.augment:
                oy, ox = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
            else:
                oy, ox = (H - h) // 2, (W - w) // 2
            idx = window_indices(scan.image.shape[0], [z], self.w)[0]
            win = scan.image[idx, oy:oy + h, ox:ox + w].astype(np.float32)
            lab = scan.mask[z, oy:oy + h, ox:ox + w].astype(np.float32)
            if self.augment:
                if rng.random() < 0.5:
                    win, lab = win[:, :, ::-1], lab[:, ::-1]
                win = win * rng.uniform(0.95, 1.05) + rng.normal(0, 15) * self.hu_unit
                win = win + rng.normal(0, rng.uniform(0, 10) * self.hu_unit, win.shape).astype(np.float32)
            x[b] = win
            y[b, 0] = lab
        return x, y
