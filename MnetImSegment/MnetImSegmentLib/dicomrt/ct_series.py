"""DICOM CT series: finding and reading them in a folder tree, and putting a mask on their grid.

Reading works on headers first (pydicom, no pixel data) so that a tree of thousands of files can be
indexed quickly and each RT structure set paired with its CT by UIDs; the pixels of the chosen series
are then decoded by SimpleITK (GDCM handles the compressed transfer syntaxes) while the geometry is
computed here from ImagePositionPatient / ImageOrientationPatient, and checked (one orientation,
positions on a line along the slice normal, regular spacing, no duplicate positions).

Writing a series is :mod:`.ct_writer`; writing a segmentation next to its CT is :mod:`.export`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..core.errors import InputError, OutputError
from ..core.volume import Geometry, Volume
from .common import CT_IMAGE_STORAGE, MEDIA_STORAGE_DIRECTORY, RT_STRUCTURE_SET_STORAGE, dcmread_lenient

# Geometry tolerances, in mm: far below any CT voxel, far above float/DS rounding (DS keeps ~1e-5 mm).
POSITION_TOL_MM = 0.01
ORIENTATION_TOL = 1e-4

# The header fields the tree index needs; reading only these keeps a scan of a large tree fast.
_INDEX_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "SeriesInstanceUID", "StudyInstanceUID",
    "FrameOfReferenceUID", "PatientID", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "Rows", "Columns", "SeriesDescription", "SeriesNumber", "NumberOfFrames",
    "InstanceNumber", "ImageType",
]

# Series that are never the planning CT: a localizer (ImageType LOCALIZER) or a series this short.
MIN_PLANNING_SLICES = 3
_SCOUT_WORDS = ("localizer", "localiser", "scout", "topogram", "surview", "scanogram", "pilot")


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
    image_type: tuple = ()  # ImageType of the first slice, upper case (ORIGINAL/DERIVED, AXIAL/LOCALIZER, ...)
    selection: str = ""  # why find_ct_series chose this series among several (empty when it was the only one)

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
        for f in self.files:
            check_pixel_data_length(f)
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



def check_pixel_data_length(path) -> None:
    """Refuse a slice whose pixel data is not Rows x Columns x samples x bits long.

    ITK decodes a short or mis-sized block anyway (sheared stripes, zero padding), which would give
    a wrong CTV with exit status 0. Compressed (encapsulated) pixel data is left to the decoder.

    Raises:
        InputError: Naming the file, the bytes found and the bytes its header announces.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path), defer_size=1024, force=True)  # pixel data not loaded, only its length
        element = ds.get_item("PixelData") if "PixelData" in ds else None
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except OSError as exc:
        raise InputError(f"Cannot read the CT slice '{path}': {exc.strerror or exc}.") from None
    except Exception as exc:  # pydicom raises many kinds on damaged headers
        raise InputError(f"The CT slice '{path}' has an unreadable header ({type(exc).__name__}).") from None
    if element is None:
        raise InputError(f"The CT slice '{path}' holds no pixel data.")
    if syntax is not None and getattr(syntax, "is_compressed", False):
        return
    # A deferred (large) element is still raw and knows its length; a small one was read already.
    raw_length = getattr(element, "length", None)
    if raw_length is None and getattr(element, "is_undefined_length", False):
        return
    length = int(raw_length) if raw_length is not None else len(element.value or b"")
    if length == 0xFFFFFFFF:  # undefined length: encapsulated frames, decoded (and checked) by ITK
        return
    expected = rows * cols * samples * frames * bits // 8
    if expected <= 0 or length not in (expected, expected + 1):  # +1: DICOM pads odd lengths
        raise InputError(f"The CT slice '{path}' holds {length} bytes of pixel data where Rows x Columns x "
                         f"samples x bits ({rows} x {cols} x {samples} x {bits}) needs {expected}: it is truncated "
                         "or corrupt.")


def _header(path: Path):
    """The index fields of a file, or None (with a reason) if it is not readable DICOM."""
    from pydicom.errors import InvalidDicomError

    try:
        if not path.is_file():  # a FIFO would block forever, a link to /dev/zero never ends
            return None, "not a regular file (a pipe, device or socket)"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or type(exc).__name__})"
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
        image_type=tuple(str(v).upper() for v in (first.get("ImageType") or ())),
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
    """The CT series under ``folder``: the one with ``series_uid``, the only one, or the planning CT.

    Several CT series (a scout next to the planning CT, a second reconstruction) are resolved by
    :func:`choose_planning_ct`; ``--series UID`` overrides it.

    Raises:
        InputError: No CT series, none usable, or the chosen one is absent.
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
        return choose_planning_ct(list(tree.ct_series.values()), folder)
    return next(iter(tree.ct_series.values()))


def is_localizer(series: CtSeries) -> bool:
    """A scout/topogram/localizer, or a series too short to be a planning CT."""
    description = series.description.lower()
    return ("LOCALIZER" in series.image_type or series.n_slices < MIN_PLANNING_SLICES
            or any(word in description for word in _SCOUT_WORDS))


def _slice_step_mm(series: CtSeries) -> Optional[float]:
    """The regular slice spacing, or None when the series is not one regular axial-ish grid."""
    try:
        geometry, _ = series.grid()
    except InputError:
        return None
    return geometry.spacing[2]


def _axial(series: CtSeries) -> bool:
    if series.orientation is None:
        return False
    normal = np.cross(np.asarray(series.orientation[:3], float), np.asarray(series.orientation[3:], float))
    return abs(normal[2]) > 0.9


def choose_planning_ct(candidates: list, folder="") -> CtSeries:
    """The planning CT among several CT series of one folder (the rule of docs/dicom.md).

    Localizers are skipped (ImageType LOCALIZER, fewer than ``MIN_PLANNING_SLICES`` slices, or a
    description naming a scout/topogram); of the rest, a readable regular grid beats an unreadable one,
    then an axial series, then the most slices, then the thinnest slices, then ORIGINAL over DERIVED
    (a full tie keeps the first found). The choice and its reason go to ``selection``.

    Raises:
        InputError: Every series is a localizer or cannot be read, or the series belong to several patients.
    """
    def listing(series_list):
        return "; ".join(f"{s.series_instance_uid} ({s.n_slices} slices, '{s.description}')" for s in series_list)

    volumetric = [s for s in candidates if not is_localizer(s)]
    usable = [s for s in volumetric if _slice_step_mm(s) is not None]
    if not usable:
        raise InputError(f"'{folder}' holds {len(candidates)} CT series but none is a usable planning CT "
                         f"(localizers, scouts or irregular series); choose one with --series UID: {listing(candidates)}.")
    patients = {s.patient_id for s in usable}
    if len(patients) > 1:
        raise InputError(f"'{folder}' holds the CTs of {len(patients)} patients; give one patient's folder, or a "
                         "folder with one subfolder per patient (segmented as a batch).")
    best = min(usable, key=lambda s: (not _axial(s), -s.n_slices, round(_slice_step_mm(s), 3),
                                      "DERIVED" in s.image_type))
    skipped = [s for s in candidates if s is not best]
    best.selection = (f"chose CT series {best.series_instance_uid} ({best.n_slices} slices, '{best.description}') "
                      f"of {len(candidates)}: localizers skipped, then axial, most slices, thinnest spacing, "
                      f"ORIGINAL first (pass --series UID to choose another: {listing(skipped)})")
    return best


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

