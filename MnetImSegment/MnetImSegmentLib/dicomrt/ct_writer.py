"""Writing a Volume as a DICOM CT series (one CT Image Storage file per slice).

The slice geometry is taken from the volume's :class:`~MnetImSegmentLib.core.volume.Geometry`
(LPS, SimpleITK conventions):

* ImageOrientationPatient = the physical directions of the i (row) and j (column) index axes,
  so oblique grids stay oblique;
* ImagePositionPatient of slice ``k`` = ``origin + direction[:, 2] * spacing_z * k``;
* PixelSpacing = (row spacing, column spacing) = (spacing_y, spacing_x), DICOM's order;
* HU stored as unsigned 16-bit with RescaleIntercept -1024 when they fit (what most scanners do,
  so readers exercise their rescale path), signed otherwise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import OutputError
from ..core.commit import check_tree_sha256
from ..core.files import transaction
from ..core.volume import Geometry, Volume
from .common import CT_IMAGE_STORAGE, decimal_strings, dicom_now, dicom_text, encode_dataset, new_uid
from .ct_series import CtSeries


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
                    overwrite: bool = False, tx=None) -> CtSeries:
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
    date, time = dicom_now()
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
    base.StudyDescription = dicom_text(study_description)
    base.SeriesDescription = dicom_text(series_description)
    base.ManufacturerModelName = "MnetImSegment"
    # A trailing caret marks a one-component name as a family name (not the retired free-text form).
    base.PatientName = patient_name if patient_name is not None else (patient_id if "^" in patient_id else patient_id + "^")
    base.PatientID = patient_id
    base.PatientBirthDate = ""
    base.PatientSex = ""
    base.KVP = ""
    base.SliceThickness = decimal_strings([g.spacing[2]])[0]
    base.PatientPosition = patient_position
    base.BodyPartExamined = body_part
    base.StudyInstanceUID = study_instance_uid
    base.SeriesInstanceUID = series_instance_uid
    base.StudyID = study_id
    base.SeriesNumber = int(series_number)
    base.AcquisitionNumber = 1
    base.ImageOrientationPatient = decimal_strings(np.concatenate([row_dir, col_dir]))
    base.FrameOfReferenceUID = frame_of_reference_uid
    base.PositionReferenceIndicator = ""
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = ny, nx
    base.PixelSpacing = decimal_strings([g.spacing[1], g.spacing[0]])  # (between rows, between columns)
    base.BitsAllocated, base.BitsStored, base.HighBit = 16, 16, 15
    base.PixelRepresentation = pixel_rep
    base.WindowCenter, base.WindowWidth = decimal_strings([40])[0], decimal_strings([400])[0]
    base.RescaleIntercept = decimal_strings([intercept])[0]
    base.RescaleSlope = decimal_strings([1])[0]
    base.RescaleType = "HU"

    files, uids, positions, hashes = [], [], [], {}
    # One transaction: every slice is hashed as encoded, the folder is read back file by file, and
    # it appears (or replaces the old one, with ``overwrite``) only complete.
    with transaction(tx, overwrite) as t:
        tmp = t.dir_for(folder)
        for k in range(nz):
            ds = Dataset()
            ds.update(base)
            uid = new_uid()
            position = np.asarray(g.origin) + d[:, 2] * g.spacing[2] * k
            ds.SOPInstanceUID = uid
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = decimal_strings(position)
            ds.SliceLocation = decimal_strings([position @ normal])[0]
            ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            name = f"CT_{k + 1:04d}.dcm"
            data = encode_dataset(ds)
            (tmp / name).write_bytes(data)
            hashes[name] = hashlib.sha256(data).hexdigest()
            files.append(folder / name)
            uids.append(uid)
            positions.append(position)
        t.verify(folder, check_tree_sha256(hashes))
    order = np.argsort(np.asarray(positions) @ normal)  # index order == slice order unless k is flipped
    return CtSeries(
        series_instance_uid=series_instance_uid, study_instance_uid=study_instance_uid,
        frame_of_reference_uid=frame_of_reference_uid, patient_id=patient_id, description=series_description,
        files=[files[i] for i in order], sop_instance_uids=[uids[i] for i in order],
        positions=np.asarray(positions)[order], orientation=np.concatenate([row_dir, col_dir]),
        pixel_spacing=(g.spacing[1], g.spacing[0]), rows=ny, columns=nx,
    )

