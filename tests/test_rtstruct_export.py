"""Mask -> RTSTRUCT -> mask on DICOM phantoms: validity (dciodvfy), references, independent re-reading."""

from __future__ import annotations

import argparse

import numpy as np
import pydicom
import pytest

from MnetImSegmentLib.cli.import_rt import add_parser as add_commands
from MnetImSegmentLib.core.errors import InputError, MnetImError, OutputError
from MnetImSegmentLib.core.volume import Volume
from MnetImSegmentLib.dicomrt.ct_series import find_ct_series
from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series
from MnetImSegmentLib.dicomrt.export import write_segmentation_dicom
from MnetImSegmentLib.dicomrt.rasterize import rasterize_structure_set
from MnetImSegmentLib.dicomrt.structure_set import read_structure_set
from MnetImSegmentLib.engine.io import read_image
from MnetImSegmentLib.research.phantom import PhantomAnatomy, make_phantom, rotation_matrix

from helpers.rt_fixtures import dciodvfy_errors, dice, have_dciodvfy, independent_rtstruct_mask


@pytest.fixture(scope="module")
def axial_case(tmp_path_factory):
    """A DICOM phantom CT series, its truth, and write_segmentation_dicom's RTSTRUCT of the truth."""
    root = tmp_path_factory.mktemp("axial")
    ph = make_phantom(seed=11, matrix=192, slice_mm=2.5, z_extent_mm=100)
    series = write_ct_series(ph.ct, root / "ct", patient_id="PHANTOM0011")
    rs = write_segmentation_dicom(ph.mask(), root / "ct", root / "out", fmt="rtstruct", model_label="Mnet_Im 0.1.0")
    return ph, series, rs, root


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("oblique")
    anatomy = PhantomAnatomy(5)
    geometry, shape = anatomy.default_grid(matrix=160, slice_mm=2.5, z_extent_mm=90, direction=rotation_matrix(9, -6, 14))
    ph = anatomy.sample(geometry, shape)
    series = write_ct_series(ph.ct, root / "ct", patient_id="PHANTOM0005")
    rs = write_segmentation_dicom(ph.mask(), root / "ct", root / "out", fmt="rtstruct", model_label="Mnet_Im 0.1.0")
    return ph, series, rs, root


def _cli(argv) -> int:
    """``mnetim`` as the lead's main() runs it: MnetImError -> one line, exit code."""
    parser = argparse.ArgumentParser(prog="mnetim")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MnetImError as exc:
        print(f"mnetim: error: {exc}")
        return exc.exit_code


def test_rtstruct_read_by_independent_reader(axial_case):
    ph, series, rs, _ = axial_case
    geometry, shape = series.grid()
    theirs = independent_rtstruct_mask(rs, "CTV", geometry, shape)
    assert dice(theirs, ph.mask().array) >= 0.95


def test_phantom_rtstruct_imported_back_through_cli(axial_case, capsys):
    ph, series, rs, root = axial_case
    out = root / "imported.nii.gz"
    assert _cli(["import-rt", str(root / "ct"), str(rs), "--roi", "ctv", "-o", str(out), "--image", str(root / "ct.nii.gz")]) == 0
    assert "CTV" in capsys.readouterr().out
    mask, image = read_image(out), read_image(root / "ct.nii.gz")
    assert mask.geometry.allclose(ph.ct.geometry) and (image.array == ph.ct.array).all()
    assert dice(mask.array, ph.mask().array) >= 0.98


def test_rtstruct_references_and_roi_attributes(axial_case):
    ph, series, rs, _ = axial_case
    ds = pydicom.dcmread(rs)
    ct0 = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    assert ds.Modality == "RTSTRUCT" and ds.StudyInstanceUID == ct0.StudyInstanceUID and ds.PatientID == ct0.PatientID
    fr = ds.ReferencedFrameOfReferenceSequence[0]
    assert fr.FrameOfReferenceUID == ct0.FrameOfReferenceUID == ds.FrameOfReferenceUID
    se = fr.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert se.SeriesInstanceUID == ct0.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in se.ContourImageSequence} == set(series.sop_instance_uids)
    roi = ds.StructureSetROISequence[0]
    assert roi.ROIName == "CTV" and roi.ROIGenerationAlgorithm == "AUTOMATIC"
    assert "Mnet_Im" in roi.ROIGenerationDescription and "0.1.0" in roi.ROIGenerationDescription
    assert ds.RTROIObservationsSequence[0].RTROIInterpretedType == "CTV"
    # Every contour is closed, planar, on the slice it references.
    z_of = {u: p[2] for u, p in zip(series.sop_instance_uids, series.positions)}
    contours = ds.ROIContourSequence[0].ContourSequence
    slices = np.flatnonzero(ph.mask().array.reshape(ph.ct.shape[0], -1).any(1))
    assert {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in contours} == {series.sop_instance_uids[k] for k in slices}
    for c in contours:
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        assert c.ContourGeometricType == "CLOSED_PLANAR" and int(c.NumberOfContourPoints) == len(pts)
        assert np.allclose(pts[:, 2], z_of[c.ContourImageSequence[0].ReferencedSOPInstanceUID], atol=1e-3)


@pytest.mark.skipif(not have_dciodvfy(), reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_dciodvfy_reports_no_error(axial_case):
    _, series, rs, _ = axial_case
    assert dciodvfy_errors(rs) == []
    assert dciodvfy_errors(series.files[0]) == []


def test_oblique_phantom_round_trip(oblique_case):
    ph, series, rs, _ = oblique_case
    assert read_image(series.files[0].parent).geometry.allclose(ph.ct.geometry)
    geometry, shape = series.grid()
    mask, report = rasterize_structure_set(read_structure_set(rs), geometry, shape)
    assert report.non_axial == 0 and report.outside == 0
    assert dice(mask.array, ph.mask().array) >= 0.98
    pts = np.concatenate([c.points for c in read_structure_set(rs).rois[0].contours])
    assert np.ptp(pts[:, 2]) > 0 and not np.allclose(geometry.direction_matrix, np.eye(3))


def test_flipped_mask_and_holes(tmp_path):
    """A mask whose slice axis runs the other way (e.g. from NIfTI) and a ring with a hole."""
    ph = make_phantom(seed=3, matrix=64, slice_mm=3.0, z_extent_mm=30)
    series = write_ct_series(ph.ct, tmp_path / "ct", patient_id="P3")
    arr = np.zeros(ph.ct.shape, np.uint8)
    arr[2:8, 16:48, 16:48] = 1
    arr[3:7, 26:38, 26:38] = 0  # a hole through the middle slices
    arr[5, 30:34, 30:34] = 1  # and an island inside the hole
    g = ph.ct.geometry
    d = g.direction_matrix.copy()
    d[:, 2] *= -1
    flipped_origin = g.index_to_physical((0, 0, ph.ct.shape[0] - 1))
    flipped = Volume(arr[::-1].copy(), type(g)(g.spacing, flipped_origin, tuple(d.ravel())))
    rs = write_segmentation_dicom(flipped, tmp_path / "ct", tmp_path / "out", "rtstruct", "Mnet_Im 0.1.0")
    ss = read_structure_set(rs)
    assert len(ss.rois[0].contours) > arr[2:8].any(axis=(1, 2)).sum()  # inner boundaries written
    mask, _ = rasterize_structure_set(ss, *series.grid())
    assert (mask.array == arr).all()


def test_export_refuses_bad_requests(axial_case, tmp_path):
    ph, series, rs, root = axial_case
    with pytest.raises(OutputError, match="already exists"):
        write_segmentation_dicom(ph.mask(), root / "ct", root / "out", "rtstruct", "Mnet_Im 0.1.0")
    with pytest.raises(OutputError, match="empty"):
        write_segmentation_dicom(ph.mask().with_array(np.zeros(ph.ct.shape, np.uint8)), root / "ct", tmp_path, "rtstruct", "m")
    other = make_phantom(seed=2, matrix=64, slice_mm=3.0, z_extent_mm=30).mask()
    with pytest.raises(OutputError, match="not on the grid"):
        write_segmentation_dicom(other, root / "ct", tmp_path, "rtstruct", "m")
    with pytest.raises(OutputError, match="Unknown DICOM output format"):
        write_segmentation_dicom(ph.mask(), root / "ct", tmp_path, "nifti", "m")
    with pytest.raises(InputError, match="No CT series"):
        write_segmentation_dicom(ph.mask(), tmp_path, tmp_path / "x", "rtstruct", "m")
    assert not list(tmp_path.glob("*.dcm")) and not list((root / "out").glob(".*"))  # nothing half-written
    path = write_segmentation_dicom(ph.mask(), root / "ct", root / "out", "rtstruct", "Mnet_Im 0.2.0", overwrite=True)
    assert "0.2.0" in pydicom.dcmread(path).StructureSetROISequence[0].ROIGenerationDescription
    assert find_ct_series(root / "ct").series_instance_uid == series.series_instance_uid


def test_structure_set_without_part10_header_is_read(axial_case, tmp_path):
    """Some planning systems export bare datasets (no preamble, no file meta)."""
    ph, series, rs, root = axial_case
    ds = pydicom.dcmread(rs)
    del ds.file_meta
    ds.preamble = None
    bare = tmp_path / "bare_rs"
    ds.save_as(bare, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    from MnetImSegmentLib.dicomrt.ct_series import index_dicom_files

    tree = index_dicom_files([bare, *series.files], tmp_path)
    assert tree.rtstructs == [bare] and not tree.unreadable
    mask, _ = rasterize_structure_set(read_structure_set(bare), *series.grid())
    assert dice(mask.array, ph.mask().array) >= 0.98
