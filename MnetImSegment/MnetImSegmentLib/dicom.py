"""DICOM CT series: writing them from a Volume, finding and reading them in a folder tree.

Writing (``write_ct_series``): one CT Image Storage file per slice, with the slice geometry taken
from the volume's :class:`~MnetImSegmentLib.volume.Geometry` (LPS, SimpleITK conventions):

* ImageOrientationPatient = the physical directions of the i (row) and j (column) index axes,
  so oblique grids stay oblique;
* ImagePositionPatient of slice ``k`` = ``origin + direction[:, 2] * spacing_z * k``;
* PixelSpacing = (row spacing, column spacing) = (spacing_y, spacing_x), DICOM's order;
* HU stored as unsigned 16-bit with RescaleIntercept -1024 when they fit (what most scanners do,
  so readers exercise their rescale path), signed otherwise.

Reading works on headers first (pydicom, no pixel data) so that a tree of thousands of files can be
indexed quickly and each RT structure set paired with its CT by UIDs; the pixels of the chosen series
are then decoded by SimpleITK (GDCM handles the compressed transfer syntaxes) while the geometry is
computed here from ImagePositionPatient / ImageOrientationPatient, and checked (one orientation,
positions on a line along the slice normal, regular spacing, no duplicate positions).

``write_segmentation_dicom`` is the one entry point for writing a segmentation as DICOM next to its
CT (RTSTRUCT or DICOM SEG); the formats themselves live in ``rtstruct`` and ``dicom_seg``.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InputError, OutputError
from .volume import Geometry, Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# Geometry tolerances, in mm: far below any CT voxel, far above float/DS rounding (DS keeps ~1e-5 mm).
POSITION_TOL_MM = 0.01
ORIENTATION_TOL = 1e-4

# The header fields the tree index needs; reading only these keeps a scan of a large tree fast.
_INDEX_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "SeriesInstanceUID", "StudyInstanceUID",
    "FrameOfReferenceUID", "PatientID", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "Rows", "Columns", "SeriesDescription", "SeriesNumber", "NumberOfFrames",
    "InstanceNumber",
]


def new_uid() -> str:
    """A fresh globally unique DICOM UID (2.25 root, from a random UUID)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=None))


def _ds(values) -> list:
    """Decimal strings that fit DICOM's 16 characters, at the best precision that does."""
    from pydicom.valuerep import DSfloat

    return [DSfloat(float(v), auto_format=True) for v in np.ravel(values)]


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


# --------------------------------------------------------------------------- CT series header index
@dataclass
class CtSeries:
    """One CT series found on disk: its files in slice order and what pairing and export need.

    ``files``, ``sop_instance_uids`` and ``positions`` are sorted along the slice normal (the order
    SimpleITK/GDCM also uses), so slice ``k`` of :meth:`read_volume` is ``files[k]``.
    Identifiers (``patient_id``) are kept in memory for pairing only; nothing here prints them.
    """

    series_instance_uid: str
    study_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    patient_id: str = ""
    description: str = ""
    files: list = field(default_factory=list)
    sop_instance_uids: list = field(default_factory=list)
    sop_class_uid: str = CT_IMAGE_STORAGE
    positions: Optional[np.ndarray] = None  # (n, 3) ImagePositionPatient, LPS mm
    orientation: Optional[np.ndarray] = None  # (6,) ImageOrientationPatient of the first slice
    pixel_spacing: Optional[tuple] = None  # (row spacing, column spacing)
    rows: int = 0
    columns: int = 0
    problems: list = field(default_factory=list)  # header inconsistencies found while indexing

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def grid(self) -> tuple[Geometry, tuple[int, int, int]]:
        """The voxel grid the series defines, checked: (Geometry, (nz, ny, nx)).

        Raises:
            InputError: The series is not one regular 3D grid (mixed orientations or sizes,
                duplicate or missing slices, gantry-tilt shear, single slice).
        """
        label = f"CT series {self.series_instance_uid}"
        if self.problems:
            raise InputError(f"{label} cannot be used: {self.problems[0]}")
        if self.n_slices < 1 or self.positions is None or self.orientation is None or self.pixel_spacing is None:
            raise InputError(f"{label} has no slice with position, orientation and pixel spacing.")
        row, col = np.asarray(self.orientation[:3], float), np.asarray(self.orientation[3:], float)
        normal = np.cross(row, col)
        if abs(np.linalg.norm(normal) - 1) > 1e-3 or abs(row @ col) > 1e-3:
            raise InputError(f"{label} has an ImageOrientationPatient whose directions are not orthonormal.")
        pos = self.positions
        dz_mm = 1.0
        if self.n_slices > 1:
            offsets = pos @ normal
            gaps = np.diff(offsets)
            if gaps.min() <= POSITION_TOL_MM:
                raise InputError(f"{label} has two slices at the same position; remove the duplicates first.")
            if gaps.max() - gaps.min() > max(0.01 * np.median(gaps), 0.05):
                raise InputError(f"{label} has irregular slice spacing ({gaps.min():.2f} to {gaps.max():.2f} mm, "
                                 "missing slices?); export it again complete.")
            step = (pos[-1] - pos[0]) / (self.n_slices - 1)
            dz_mm = float(np.linalg.norm(step))
            lateral = np.linalg.norm(pos - (pos[0] + np.outer(np.arange(self.n_slices), step)), axis=1).max()
            if lateral > max(POSITION_TOL_MM * 10, 0.01 * dz_mm) or np.linalg.norm(np.cross(step / dz_mm, normal)) > 1e-3:
                raise InputError(f"{label} is sheared (gantry tilt: slice positions do not move along the slice normal); "
                                 "resample it to an orthogonal grid first.")
        spacing = (float(self.pixel_spacing[1]), float(self.pixel_spacing[0]), dz_mm)
        direction = np.stack([row, col, normal], axis=1)
        return Geometry(spacing, tuple(pos[0]), tuple(direction.ravel())), (self.n_slices, self.rows, self.columns)

    def read_volume(self) -> Volume:
        """The series' voxels (HU after rescale) on :meth:`grid`.

        Raises:
            InputError: A file cannot be decoded (corrupt, truncated, unsupported compression).
        """
        import SimpleITK as sitk

        geometry, shape = self.grid()
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in self.files])
        try:
            image = reader.Execute()
        except RuntimeError:
            # ITK's message names C++ classes and memory addresses: no help to the person reading it.
            raise InputError(f"CT series {self.series_instance_uid} could not be decoded (a slice is truncated, "
                             "corrupt, or uses an unsupported compression).") from None
        array = sitk.GetArrayFromImage(image)
        if array.shape != shape:
            raise InputError(f"CT series {self.series_instance_uid} decoded to {array.shape} voxels, "
                             f"its headers say {shape}.")
        if array.dtype != np.int16 and np.issubdtype(array.dtype, np.number):
            if np.all(np.mod(array, 1) == 0) and array.min() >= -32768 and array.max() <= 32767:
                array = array.astype(np.int16)
        return Volume(np.ascontiguousarray(array), geometry)

    def read_datasets(self, stop_before_pixels: bool = False) -> list:
        """Every slice as a pydicom Dataset, in slice order."""
        import pydicom

        return [pydicom.dcmread(str(f), stop_before_pixels=stop_before_pixels) for f in self.files]


@dataclass
class DicomTree:
    """What a folder tree holds: CT series, RT structure sets, and the files that were not usable."""

    root: Path
    ct_series: dict = field(default_factory=dict)  # SeriesInstanceUID -> CtSeries
    rtstructs: list = field(default_factory=list)  # Paths
    unreadable: list = field(default_factory=list)  # (Path, reason)
    other: int = 0  # readable DICOM files of other kinds (MR, RT plans, dose, ...)


def dcmread_lenient(path, **kwargs):
    """pydicom.dcmread that also accepts DICOM datasets written without the Part 10 header.

    Some planning systems still export bare datasets (no 128-byte preamble, no 'DICM'); they are
    accepted when forced reading finds a standard SOP Class UID and a modality, so random bytes are
    still refused.

    Raises:
        pydicom.errors.InvalidDicomError: Not DICOM.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), **kwargs)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(str(path), force=True, **kwargs)
            ok = str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008.") and bool(ds.get("Modality"))
        except Exception:
            ok = False
        if not ok:
            raise InvalidDicomError(f"'{path}' is not a DICOM file") from None
        return ds


def _header(path: Path):
    """The index fields of a file, or None (with a reason) if it is not readable DICOM."""
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread_lenient(path, stop_before_pixels=True, specific_tags=_INDEX_TAGS)
    except InvalidDicomError:
        return None, "not a DICOM file"
    except Exception as exc:  # pydicom raises many kinds on damaged files; all mean "unusable"
        return None, f"unreadable DICOM ({type(exc).__name__})"
    if getattr(ds, "file_meta", None) is not None and ds.file_meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        return None, "DICOMDIR index (ignored)"
    return ds, ""


def _floats(value, n: int):
    try:
        out = np.asarray([float(v) for v in value], float)
    except (TypeError, ValueError):
        return None
    return out if out.size == n and np.all(np.isfinite(out)) else None


def index_dicom_files(paths: Sequence, root=None) -> DicomTree:
    """Index the given files: group CT slices into series, list RTSTRUCTs and unusable files."""
    tree = DicomTree(Path(root) if root is not None else Path("."))
    slices: dict[str, list] = {}
    for path in paths:
        path = Path(path)
        ds, reason = _header(path)
        if ds is None:
            tree.unreadable.append((path, reason))
            continue
        modality = str(ds.get("Modality", "")).upper()
        sop_class = str(ds.get("SOPClassUID", ""))
        if modality == "RTSTRUCT" or sop_class == RT_STRUCTURE_SET_STORAGE:
            tree.rtstructs.append(path)
        elif modality == "CT" and ds.get("SeriesInstanceUID"):
            slices.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
        else:
            tree.other += 1
    for uid, items in slices.items():
        tree.ct_series[uid] = _series_from_headers(uid, items)
    return tree


def _series_from_headers(uid: str, items: list) -> CtSeries:
    first = items[0][1]
    series = CtSeries(
        series_instance_uid=uid, study_instance_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")), patient_id=str(first.get("PatientID", "")),
        description=str(first.get("SeriesDescription", "")), sop_class_uid=str(first.get("SOPClassUID", CT_IMAGE_STORAGE)),
    )
    good = []
    for path, ds in items:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            series.problems.append("it is a multi-frame (enhanced) CT, which is not supported; export it as classic CT slices.")
            continue
        ipp, iop = _floats(ds.get("ImagePositionPatient", ()), 3), _floats(ds.get("ImageOrientationPatient", ()), 6)
        ps = _floats(ds.get("PixelSpacing", ()), 2)
        if ipp is None or iop is None or ps is None:
            series.problems.append("a slice lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing.")
            continue
        good.append((path, ds, ipp, iop, ps))
    if not good:
        return series
    iop0, ps0 = good[0][3], good[0][4]
    rows0, cols0 = int(good[0][1].get("Rows", 0)), int(good[0][1].get("Columns", 0))
    for _, ds, _, iop, ps in good:
        if np.abs(iop - iop0).max() > ORIENTATION_TOL * 10:
            series.problems.append("its slices have different orientations.")
            break
        if np.abs(ps - ps0).max() > 1e-4 or int(ds.get("Rows", 0)) != rows0 or int(ds.get("Columns", 0)) != cols0:
            series.problems.append("its slices have different sizes or pixel spacings.")
            break
    normal = np.cross(iop0[:3], iop0[3:])
    good.sort(key=lambda g: float(g[2] @ normal))
    series.files = [g[0] for g in good]
    series.sop_instance_uids = [str(g[1].get("SOPInstanceUID", "")) for g in good]
    series.positions = np.stack([g[2] for g in good])
    series.orientation, series.pixel_spacing, series.rows, series.columns = iop0, tuple(ps0), rows0, cols0
    return series


def _walk_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # hidden files: editor/OS debris and our own temporary files
            out.append(Path(dirpath) / name)
    return out


def scan_tree(root) -> DicomTree:
    """Index every file under ``root`` (any nesting).

    Raises:
        InputError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"'{root}' is not a folder.")
    return index_dicom_files(_walk_files(root), root)


def find_ct_series(folder, series_uid: Optional[str] = None) -> CtSeries:
    """The one CT series under ``folder`` (or the one with ``series_uid``).

    Raises:
        InputError: No CT series, several without a choice, or the chosen one is absent.
    """
    tree = scan_tree(folder)
    if series_uid:
        if series_uid not in tree.ct_series:
            raise InputError(f"CT series {series_uid} is not in '{folder}'.")
        return tree.ct_series[series_uid]
    if not tree.ct_series:
        found = (f"it holds {tree.other + len(tree.rtstructs)} DICOM file(s) of other kinds (MR, RT plan, structure "
                 "set, ...)" if tree.other or tree.rtstructs else "it holds no DICOM files")
        raise InputError(f"No CT series was found in '{folder}': {found}.")
    if len(tree.ct_series) > 1:
        listing = "; ".join(f"{s.series_instance_uid} ({s.n_slices} slices, '{s.description}')"
                            for s in tree.ct_series.values())
        raise InputError(f"'{folder}' holds {len(tree.ct_series)} CT series; choose one with --series UID: {listing}.")
    return next(iter(tree.ct_series.values()))


# --------------------------------------------------------------------------- writing a CT series
def _check_orthonormal(geometry: Geometry) -> np.ndarray:
    d = geometry.direction_matrix
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise OutputError("The volume's direction matrix is not orthonormal; DICOM CT slices cannot describe it.")
    return d


def _encode_hu(array: np.ndarray) -> tuple[np.ndarray, int, float]:
    """Stored pixel values, PixelRepresentation and RescaleIntercept for HU values."""
    values = np.rint(np.asarray(array, dtype=np.float64))
    lo, hi = float(values.min()), float(values.max())
    if lo >= -1024 and hi - (-1024) <= 65535:
        return (values + 1024).astype(np.uint16), 0, -1024.0
    if lo >= -32768 and hi <= 32767:
        return values.astype(np.int16), 1, 0.0
    raise OutputError(f"The volume's values ({lo:.0f} to {hi:.0f}) do not fit 16-bit CT pixels.")


def write_ct_series(volume: Volume, folder, patient_id: str = "ANONYMOUS", patient_name: Optional[str] = None,
                    study_instance_uid: Optional[str] = None, series_instance_uid: Optional[str] = None,
                    frame_of_reference_uid: Optional[str] = None, study_id: str = "1", series_number: int = 1,
                    series_description: str = "MnetImSegment CT", study_description: str = "",
                    accession_number: str = "", patient_position: str = "HFS", body_part: str = "PELVIS",
                    overwrite: bool = False) -> CtSeries:
    """Write a volume as a DICOM CT series (one CT Image Storage file per slice).

    Files are written into a temporary sibling folder renamed into place when complete, so an
    interrupted write leaves nothing behind.

    Args:
        volume: HU values in (z, y, x) with their geometry (any orthonormal direction: axial,
            oblique or flipped).
        folder: Output folder; it must not exist (or ``overwrite``).
        patient_id: PatientID to write; use an anonymised one (phantoms: e.g. ``PHANTOM0007``).
        patient_name: PatientName (default: the patient id as family name).
        study_instance_uid, series_instance_uid, frame_of_reference_uid: Given UIDs (default: new).
        study_id, series_number, series_description, study_description, accession_number: Labels.
        patient_position: PatientPosition (HFS, FFS, ...); only a label, geometry is in the positions.
        body_part: BodyPartExamined (an unpaired part, so no Laterality is needed).
        overwrite: Replace an existing folder.

    Returns:
        The written series (files, UIDs, positions), as :func:`scan_tree` would index it.

    Raises:
        OutputError: The folder exists, cannot be written, or the volume cannot be encoded.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise OutputError(f"'{folder}' already exists; choose another output or allow overwriting.")
    parent = folder.parent
    if not parent.is_dir():
        raise OutputError(f"The output folder '{parent}' does not exist.")
    d = _check_orthonormal(volume.geometry)
    stored, pixel_rep, intercept = _encode_hu(volume.array)
    nz, ny, nx = volume.shape
    g = volume.geometry
    study_instance_uid = study_instance_uid or new_uid()
    series_instance_uid = series_instance_uid or new_uid()
    frame_of_reference_uid = frame_of_reference_uid or new_uid()
    date, time = _now()
    row_dir, col_dir = d[:, 0], d[:, 1]
    normal = np.cross(row_dir, col_dir)

    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 100"
    base.SOPClassUID = CT_IMAGE_STORAGE
    base.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]  # synthetic or resampled: never ORIGINAL
    base.StudyDate, base.StudyTime = date, time
    base.SeriesDate, base.SeriesTime = date, time
    base.ContentDate, base.ContentTime = date, time
    base.AccessionNumber = accession_number
    base.Modality = "CT"
    base.Manufacturer = "MnetImSegment"
    base.ReferringPhysicianName = ""
    base.StudyDescription = study_description
    base.SeriesDescription = series_description
    base.ManufacturerModelName = "MnetImSegment"
    # A trailing caret marks a one-component name as a family name (not the retired free-text form).
    base.PatientName = patient_name if patient_name is not None else (patient_id if "^" in patient_id else patient_id + "^")
    base.PatientID = patient_id
    base.PatientBirthDate = ""
    base.PatientSex = ""
    base.KVP = ""
    base.SliceThickness = _ds([g.spacing[2]])[0]
    base.PatientPosition = patient_position
    base.BodyPartExamined = body_part
    base.StudyInstanceUID = study_instance_uid
    base.SeriesInstanceUID = series_instance_uid
    base.StudyID = study_id
    base.SeriesNumber = int(series_number)
    base.AcquisitionNumber = 1
    base.ImageOrientationPatient = _ds(np.concatenate([row_dir, col_dir]))
    base.FrameOfReferenceUID = frame_of_reference_uid
    base.PositionReferenceIndicator = ""
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = ny, nx
    base.PixelSpacing = _ds([g.spacing[1], g.spacing[0]])  # (between rows, between columns)
    base.BitsAllocated, base.BitsStored, base.HighBit = 16, 16, 15
    base.PixelRepresentation = pixel_rep
    base.WindowCenter, base.WindowWidth = _ds([40])[0], _ds([400])[0]
    base.RescaleIntercept = _ds([intercept])[0]
    base.RescaleSlope = _ds([1])[0]
    base.RescaleType = "HU"

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
    files, uids, positions = [], [], []
    try:
        for k in range(nz):
            ds = Dataset()
            ds.update(base)
            uid = new_uid()
            position = np.asarray(g.origin) + d[:, 2] * g.spacing[2] * k
            ds.SOPInstanceUID = uid
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = _ds(position)
            ds.SliceLocation = _ds([position @ normal])[0]
            ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            name = f"CT_{k + 1:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            files.append(folder / name)
            uids.append(uid)
            positions.append(position)
        _replace_folder(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"Could not write the CT series to '{folder}' ({exc.strerror or exc}).") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    order = np.argsort(np.asarray(positions) @ normal)  # index order == slice order unless k is flipped
    return CtSeries(
        series_instance_uid=series_instance_uid, study_instance_uid=study_instance_uid,
        frame_of_reference_uid=frame_of_reference_uid, patient_id=patient_id, description=series_description,
        files=[files[i] for i in order], sop_instance_uids=[uids[i] for i in order],
        positions=np.asarray(positions)[order], orientation=np.concatenate([row_dir, col_dir]),
        pixel_spacing=(g.spacing[1], g.spacing[0]), rows=ny, columns=nx,
    )


def _replace_folder(tmp: Path, folder: Path) -> None:
    """Move a completed temporary folder into place, replacing an old one only once the new one is complete."""
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.rmdir(old)
        os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except BaseException:
            os.replace(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


# --------------------------------------------------------------------------- mask on a CT series
def mask_on_ct_grid(mask: Volume, series: CtSeries) -> np.ndarray:
    """The mask's voxels re-indexed onto the CT series' own (z, y, x) layout.

    The mask must lie on the CT's voxel grid, but its axes may be flipped or permuted (a labelmap read
    from NIfTI, a series read with the slice axis reversed): that is a pure re-indexing, no resampling.

    Raises:
        OutputError: The mask is on another grid than the CT series.
    """
    geometry, shape = series.grid()
    nz, ny, nx = shape
    far = np.array([nx - 1, ny - 1, nz - 1], float)
    ct_idx = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], far])
    in_mask = mask.geometry.physical_to_index(geometry.index_to_physical(ct_idx))  # CT (i,j,k) -> mask (i,j,k)
    origin, axes = in_mask[0], in_mask[1:4] - in_mask[0]  # axes[a] = mask-index step per CT index step a
    perm = np.rint(axes).astype(int)
    start = np.rint(origin).astype(int)
    mismatch = (f"The segmentation is not on the grid of CT series {series.series_instance_uid} "
                f"(segmentation {mask.shape} voxels, spacing {tuple(round(s, 3) for s in mask.geometry.spacing)}; "
                f"CT {shape}, spacing {tuple(round(s, 3) for s in geometry.spacing)}); segment that CT series.")
    # A signed permutation, integer offset, and no drift across the whole grid (checked at the far corner).
    if (np.abs(axes - perm).max() > 1e-3 or np.abs(origin - start).max() > 1e-2
            or sorted(np.abs(perm).sum(0).tolist()) != [1, 1, 1] or sorted(np.abs(perm).sum(1).tolist()) != [1, 1, 1]
            or np.abs(in_mask[4] - (start + far @ perm)).max() > 0.05):
        raise OutputError(mismatch)
    # Pure re-indexing: transpose the mask's axes into the CT's order, then slice with the right sign.
    mask_len = mask.shape[::-1]  # extent along mask index axes (i, j, k)
    src_axis = [int(np.argmax(np.abs(perm[a]))) for a in range(3)]  # mask index axis fed by CT axis a
    out = mask.array.transpose([2 - src_axis[2], 2 - src_axis[1], 2 - src_axis[0]])  # numpy (k, j, i) of the CT
    slices = []
    for a, n in ((2, nz), (1, ny), (0, nx)):
        b, sign, o = src_axis[a], perm[a][src_axis[a]], start[src_axis[a]]
        last = o + sign * (n - 1)
        if min(o, last) < 0 or max(o, last) >= mask_len[b]:
            raise OutputError(mismatch)
        slices.append(slice(o, last + 1) if sign > 0 else slice(o, last - 1 if last > 0 else None, -1))
    return np.ascontiguousarray(out[tuple(slices)])


# --------------------------------------------------------------------------- segmentation as DICOM
def write_segmentation_dicom(result_mask: Volume, ct_folder, out_dir, fmt: str = "rtstruct", model_label: str = "",
                             overwrite: bool = False, roi_name: str = "CTV") -> Path:
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
    out_dir.mkdir(parents=True, exist_ok=True)
    safe_roi = "".join(c if c.isalnum() or c in "-_" else "_" for c in roi_name) or "ROI"
    if fmt == "rtstruct":
        from .rtstruct import write_rtstruct

        return write_rtstruct(result_mask, series, out_dir / f"RTSTRUCT_{safe_roi}.dcm", model_label=model_label,
                              roi_name=roi_name, overwrite=overwrite)
    from .dicom_seg import write_dicom_seg

    return write_dicom_seg(result_mask, series, out_dir / f"SEG_{safe_roi}.dcm", model_label=model_label,
                           segment_label=roi_name, overwrite=overwrite)


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
