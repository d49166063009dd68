"""Builders for the DICOM RT tests: tiny CT series and hand-made RTSTRUCTs (good and deliberately bad).

The RTSTRUCT writer here is deliberately separate from ``MnetImSegmentLib.dicomrt.rtstruct_writer.write_rtstruct``:
it writes arbitrary contours (open, points, self-intersecting, wrong frame of reference) that the
product never would, and it keeps importer tests independent of the exporter.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from MnetImSegmentLib.core.volume import Geometry, Volume
from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series
from MnetImSegmentLib.research.metrics import volumetric_dice

PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "MRN12345"
BIRTH_DATE = "19700101"


def ct_volume(shape=(8, 32, 32), spacing=(1.5, 1.5, 2.5), origin=(-24.0, -24.0, 0.0), direction=None, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    return Volume(rng.integers(-1000, 1500, size=shape).astype(np.int16), Geometry(spacing, origin, tuple(d.ravel())))


def write_ct(folder, volume=None, patient_id=PATIENT_ID, patient_name=PATIENT_NAME, birth_date=BIRTH_DATE, **kw):
    """A CT series with identifying patient data (to check they never leak into reports)."""
    import pydicom

    volume = volume if volume is not None else ct_volume()
    Path(folder).parent.mkdir(parents=True, exist_ok=True)
    series = write_ct_series(volume, folder, patient_id=patient_id, patient_name=patient_name, **kw)
    if birth_date:
        for f in series.files:
            ds = pydicom.dcmread(f)
            ds.PatientBirthDate = birth_date
            ds.save_as(f)
    return series


def square(cx, cy, half, z):
    return np.array([[cx - half, cy - half, z], [cx + half, cy - half, z], [cx + half, cy + half, z], [cx - half, cy + half, z]], float)


def circle(cx, cy, r, z, n=48):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t), np.full(n, float(z))])


def write_rs(path, series=None, rois=None, frame_of_reference_uid=None, referenced_series_uid=None,
             patient_id=PATIENT_ID, patient_name=PATIENT_NAME, image_refs=True, date="20240101", time="120000"):
    """An RTSTRUCT with the given ROIs: {name: [(points (n, 3), geometric type), ...] or None (no ContourSequence)}."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, BIRTH_DATE, "F"
    ds.StudyInstanceUID = series.study_instance_uid if series else generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "test"
    ds.StructureSetDate, ds.StructureSetTime = date, time
    for_uid = frame_of_reference_uid or (series.frame_of_reference_uid if series else generate_uid())
    fr = Dataset()
    fr.FrameOfReferenceUID = for_uid
    if series is not None or referenced_series_uid:
        se = Dataset()
        se.SeriesInstanceUID = referenced_series_uid or series.series_instance_uid
        st = Dataset()
        st.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        st.ReferencedSOPInstanceUID = ds.StudyInstanceUID
        st.RTReferencedSeriesSequence = Sequence([se])
        fr.RTReferencedStudySequence = Sequence([st])
    ds.ReferencedFrameOfReferenceSequence = Sequence([fr])
    ssroi, rcs, obs = [], [], []
    for number, (name, contours) in enumerate((rois or {}).items(), start=1):
        r = Dataset()
        r.ROINumber, r.ReferencedFrameOfReferenceUID, r.ROIName, r.ROIGenerationAlgorithm = number, for_uid, name, "MANUAL"
        ssroi.append(r)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [255, 0, 0]
        if contours is not None:
            items = []
            for pts, gtype in contours:
                c = Dataset()
                if image_refs and series is not None and len(pts):
                    k = int(np.argmin(np.abs(series.positions[:, 2] - pts[:, 2].mean())))
                    im = Dataset()
                    im.ReferencedSOPClassUID = series.sop_class_uid
                    im.ReferencedSOPInstanceUID = series.sop_instance_uids[k]
                    c.ContourImageSequence = Sequence([im])
                c.ContourGeometricType = gtype
                c.NumberOfContourPoints = len(pts)
                c.ContourData = [f"{v:.4f}" for v in np.ravel(pts)]
                items.append(c)
            rc.ContourSequence = Sequence(items)
        rcs.append(rc)
        o = Dataset()
        o.ObservationNumber, o.ReferencedROINumber, o.RTROIInterpretedType, o.ROIInterpreter = number, number, "", ""
        obs.append(o)
    ds.StructureSetROISequence = Sequence(ssroi)
    ds.ROIContourSequence = Sequence(rcs)
    ds.RTROIObservationsSequence = Sequence(obs)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def dice(a, b) -> float:
    """Volumetric Dice of two masks of any dtype (non-zero = inside)."""
    return volumetric_dice(np.asarray(a).astype(bool), np.asarray(b).astype(bool))


def dciodvfy_errors(path) -> list[str]:
    """dciodvfy's error lines for a file ([] when clean); the caller skips when dciodvfy is absent."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


def have_dciodvfy() -> bool:
    return shutil.which("dciodvfy") is not None


def load_dicompyler_parser():
    """dicompyler-core's DicomParser module, skipping the test when the package is absent.

    dicompyler-core 0.5.6 imports ``pydicom.dicomio.read_file``, which pydicom 3 renamed ``dcmread``
    (same call); the alias below is the only adaptation, and it is made in tests only.
    """
    import pydicom
    import pydicom.dicomio
    import pytest

    if not hasattr(pydicom.dicomio, "read_file"):
        pydicom.dicomio.read_file = pydicom.dcmread
    return pytest.importorskip("dicompylercore.dicomparser")


def independent_rtstruct_mask(rs_path, roi_name, geometry: Geometry, shape) -> np.ndarray:
    """Rasterise an ROI with dicompyler-core's parser and matplotlib's point-in-path test, the way
    dicompyler-core's DVH code does (XOR of the contours of a plane), on an axial grid.

    This shares no code with MnetImSegmentLib.dicomrt: it is the independent reader of the tests.
    """
    import matplotlib.path

    dicomparser = load_dicompyler_parser()

    d = geometry.direction_matrix
    assert np.allclose(d, np.eye(3), atol=1e-6), "the independent reader handles axial grids only"
    parser = dicomparser.DicomParser(str(rs_path))
    number = next(n for n, s in parser.GetStructures().items() if s["name"] == roi_name)
    planes = parser.GetStructureCoordinates(number)
    nz, ny, nx = shape
    sx, sy, sz = geometry.spacing
    ox, oy, oz = geometry.origin
    xs, ys = ox + sx * np.arange(nx), oy + sy * np.arange(ny)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.column_stack([gx.ravel(), gy.ravel()])
    out = np.zeros(shape, bool)
    for zkey, contours in planes.items():
        k = int(round((float(zkey) - oz) / sz))
        if not 0 <= k < nz:
            continue
        grid = np.zeros(ny * nx, bool)
        for c in contours:
            poly = np.asarray(c["data"], float)[:, :2]
            grid ^= matplotlib.path.Path(poly).contains_points(pts)
        out[k] = grid.reshape(ny, nx)
    return out
