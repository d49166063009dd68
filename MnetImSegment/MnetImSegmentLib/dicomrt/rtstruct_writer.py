"""Writing a mask as an RT structure set: each slice traced with marching squares (``polygons``),
written in patient coordinates, referencing the CT's study, series, frame of reference and every
contoured image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import OutputError
from ..core.files import transaction
from ..core.style import CTV_COLOR_255, CTV_NAME
from ..core.volume import Volume
from .common import RT_STRUCTURE_SET_STORAGE, dicom_now, dicom_text, new_uid, save_dataset, split_model_label
from .ct_series import mask_on_ct_grid
from .polygons import mask_to_polygons
from .structure_set import CLOSED


def _ds_text(values: np.ndarray) -> str:
    """DS multi-value text, 4 decimals (0.1 micrometre), within DICOM's 16 characters per value."""
    parts = []
    for v in np.ravel(values):
        s = f"{v:.4f}".rstrip("0").rstrip(".")
        parts.append("0" if s in ("-0", "") else s)
    return "\\".join(parts)


def write_rtstruct(mask: Volume, series, path, model_label: str = "", roi_name: str = CTV_NAME,
                   overwrite: bool = False, color=CTV_COLOR_255, series_description: str = "MnetImSegment CTV",
                   tx=None, roi_description: str = "") -> Path:
    """Write a mask as an RTSTRUCT with one ROI referencing the CT series it lies on.

    Args:
        mask: Non-zero = ROI; on the CT's grid (axes may be flipped, see ``ct_series.mask_on_ct_grid``).
        series: The CT series (``ct_series.CtSeries``).
        path: Output file; written atomically.
        model_label: Model name and version for ROIGenerationDescription, e.g. "Mnet_Im 0.1.0".
        roi_name: ROIName; its RTROIInterpretedType is CTV.
        overwrite: Replace an existing file.
        color: ROIDisplayColor (RGB 0-255).
        series_description: SeriesDescription of the new RT series.
        tx: An output transaction to commit with (default: this file commits alone, read back
            byte for byte first).
        roi_description: ROIDescription of the CTV (e.g. the quality warnings); omitted when empty.

    Returns:
        ``path``.

    Raises:
        OutputError: Empty mask, mask not on the CT grid, or the file cannot be written.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    on_ct = mask_on_ct_grid(mask, series) > 0
    if not on_ct.any():
        raise OutputError(f"The segmentation is empty: there is no {roi_name} contour to write.")
    geometry, _ = series.grid()
    ct = pydicom.dcmread(str(series.files[0]), stop_before_pixels=True)
    date, time = dicom_now()
    model, version = split_model_label(model_label)

    ds = Dataset()
    if "SpecificCharacterSet" in ct:
        ds.SpecificCharacterSet = ct.SpecificCharacterSet
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = new_uid()
    # Patient and study come from the CT: the structure set belongs to the same patient and study.
    for kw in ("StudyDate", "StudyTime", "AccessionNumber"):
        setattr(ds, kw, ct.get(kw, ""))
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "MnetImSegment"
    ds.ReferringPhysicianName = ct.get("ReferringPhysicianName", "")
    if ct.get("StudyDescription"):
        ds.StudyDescription = ct.StudyDescription
    ds.SeriesDescription = dicom_text(series_description)
    ds.OperatorsName = ""
    ds.ManufacturerModelName = "MnetImSegment"
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, kw, ct.get(kw, ""))
    ds.SoftwareVersions = f"MnetImSegment {__version__}"
    ds.StudyInstanceUID = series.study_instance_uid or str(ct.get("StudyInstanceUID", ""))
    ds.SeriesInstanceUID = new_uid()
    ds.StudyID = ct.get("StudyID", "")
    # Recent editions of the RT Structure Set IOD include the Frame of Reference module.
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ct.get("PositionReferenceIndicator", "")
    ds.SeriesNumber = 9001
    ds.InstanceNumber = 1
    ds.StructureSetLabel = f"{roi_name} auto"[:16]
    ds.StructureSetName = f"{model} {roi_name}"[:64]
    ds.StructureSetDate, ds.StructureSetTime = date, time

    def image_ref(uid: str) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = series.sop_class_uid
        item.ReferencedSOPInstanceUID = uid
        return item

    rt_series = Dataset()
    rt_series.SeriesInstanceUID = series.series_instance_uid
    rt_series.ContourImageSequence = Sequence([image_ref(u) for u in series.sop_instance_uids])
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Study Component Management (detached study)
    rt_study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    rt_study.RTReferencedSeriesSequence = Sequence([rt_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = Sequence([rt_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])

    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
    roi.ROIName = dicom_text(roi_name)
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"{model} {version} (MnetImSegment), not reviewed"[:64]
    if roi_description:
        roi.ROIDescription = roi_description
    ds.StructureSetROISequence = Sequence([roi])

    contours = []
    for k in np.flatnonzero(on_ct.reshape(on_ct.shape[0], -1).any(1)):
        for poly in mask_to_polygons(on_ct[k]):
            ijk = np.column_stack([poly, np.full(len(poly), float(k))])
            item = Dataset()
            item.ContourImageSequence = Sequence([image_ref(series.sop_instance_uids[k])])
            item.ContourGeometricType = CLOSED
            item.NumberOfContourPoints = len(poly)
            item.ContourNumber = len(contours) + 1
            item.add_new(0x30060050, "DS", _ds_text(geometry.index_to_physical(ijk)))
            contours.append(item)
    roi_contour = Dataset()
    roi_contour.ROIDisplayColor = [int(c) for c in color]
    roi_contour.ContourSequence = Sequence(contours)
    roi_contour.ReferencedROINumber = 1
    ds.ROIContourSequence = Sequence([roi_contour])

    obs = Dataset()
    obs.ObservationNumber = 1
    obs.ReferencedROINumber = 1
    obs.RTROIInterpretedType = "CTV"
    obs.ROIInterpreter = ""
    ds.RTROIObservationsSequence = Sequence([obs])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    path = Path(path)
    with transaction(tx, overwrite) as t:
        t.verify(path, save_dataset(ds, path, t.path_for(path)))
    return path
