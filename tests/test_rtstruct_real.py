"""Real structure sets from ../shared/data (skipped cleanly when that folder is absent).

* dicomrttool-neck: 4 CT slices + Varian RTSTRUCT, with DicomRTTool's own mask (1 = SpinalCord, 2 = BODY).
* brachy-cervix-rtstruct: two cervix brachytherapy structure sets without CT (applicator channels,
  'ctv' / 'HR-CTV', contours not exactly axial in RS.rotated).
"""

from __future__ import annotations

import numpy as np
import pytest

from MnetImSegmentLib.dicomrt.ct_series import find_ct_series
from MnetImSegmentLib.dicomrt.export import write_segmentation_dicom
from MnetImSegmentLib.dicomrt.rasterize import grid_from_contours, rasterize_rois, rasterize_structure_set
from MnetImSegmentLib.dicomrt.structure_set import read_structure_set, select_rois
from MnetImSegmentLib.engine.io import read_image

from helpers.rt_fixtures import dciodvfy_errors, dice, have_dciodvfy, independent_rtstruct_mask


@pytest.fixture
def neck(shared_data):
    folder = shared_data / "real-rt-samples" / "dicomrttool-neck"
    if not folder.is_dir():
        pytest.skip("dicomrttool-neck sample absent")
    return folder


@pytest.fixture
def brachy(shared_data):
    folder = shared_data / "real-rt-samples" / "brachy-cervix-rtstruct"
    if not folder.is_dir():
        pytest.skip("brachy-cervix-rtstruct sample absent")
    return folder


def test_neck_import_matches_dicomrttool(neck):
    series = find_ct_series(neck)
    reference_image, reference_mask = read_image(neck / "Image.nii.gz"), read_image(neck / "Mask.nii.gz")
    volume = series.read_volume()
    assert volume.shape == (4, 512, 512)  # fewer than 5 slices is fine for import
    assert volume.geometry.allclose(reference_image.geometry) and (volume.array == reference_image.array).all()
    ss = read_structure_set(neck / "RS.dcm")
    scores = {}
    for name, label in (("BODY", 2), ("SpinalCord", 1)):
        mask, report = rasterize_structure_set(ss, *series.grid(), pattern=name)
        scores[name] = dice(mask.array, reference_mask.array == label)
        assert report.used == 4 and not report.notes
    print(f"Dice vs DicomRTTool: BODY {scores['BODY']:.4f}, SpinalCord {scores['SpinalCord']:.4f}")
    assert scores["BODY"] >= 0.98
    # DicomRTTool counts pixels its outline touches (a thin cord gains ~14 % voxels): lower, reported.
    assert scores["SpinalCord"] >= 0.90


def test_neck_mask_to_rtstruct_round_trip(neck, tmp_path):
    series = find_ct_series(neck)
    body, _ = rasterize_structure_set(read_structure_set(neck / "RS.dcm"), *series.grid(), pattern="BODY")
    rs = write_segmentation_dicom(body, neck, tmp_path, "rtstruct", "Mnet_Im 0.1.0", roi_name="BODY")
    back, _ = rasterize_structure_set(read_structure_set(rs), *series.grid(), pattern="BODY")
    assert (back.array == body.array).all()
    theirs = independent_rtstruct_mask(rs, "BODY", *series.grid())
    assert dice(theirs, body.array) >= 0.95
    if have_dciodvfy():
        assert dciodvfy_errors(rs) == []


@pytest.mark.parametrize("name, roi, vmin, vmax", [("RS.PDR.dcm", "ctv", 40, 120), ("RS.rotated.dcm", "HR-CTV", 30, 100)])
def test_brachy_structure_sets_on_their_own_grid(brachy, name, roi, vmin, vmax):
    ss = read_structure_set(brachy / name)
    ctv = select_rois(ss)  # the default pattern finds 'ctv' and 'HR-CTV'
    assert [r.name for r in ctv] == [roi]
    geometry, shape = grid_from_contours(ctv, spacing_mm=1.0)
    mask, report = rasterize_rois(ctv, geometry, shape)
    print(f"{name}: {roi} {report.volume_ml:.1f} ml on {shape} {geometry.spacing}; notes: {report.notes}")
    assert vmin < report.volume_ml < vmax and report.outside == 0 and report.skipped_too_oblique == 0
    # Every ROI on a coarser grid around all of them: applicator channels and markers are skipped.
    g_all, s_all = grid_from_contours(ss.rois, spacing_mm=3.0)
    _, report_all = rasterize_rois(ss.rois, g_all, s_all, check_self_intersection=False)
    channels = sum(1 for r in ss.rois for c in r.contours if c.geometric_type.startswith("OPEN"))
    assert channels >= 3 and report_all.skipped_open == channels
    assert any("open contour" in n for n in report_all.notes)


def test_rotated_contours_on_axial_grid_are_reported(brachy):
    ss = read_structure_set(brachy / "RS.rotated.dcm")
    ctv = select_rois(ss, "hr-ctv")
    g_tilted, s_tilted = grid_from_contours(ctv, align_to_contours=True)
    g_axial, s_axial = grid_from_contours(ctv, align_to_contours=False)
    assert not np.allclose(g_tilted.direction_matrix, np.eye(3)) and np.allclose(g_axial.direction_matrix, np.eye(3))
    _, tilted = rasterize_rois(ctv, g_tilted, s_tilted)
    _, axial = rasterize_rois(ctv, g_axial, s_axial)
    assert tilted.non_axial == 0
    assert axial.non_axial == len(ctv[0].contours) and 3 < axial.max_spread_mm < 6
    assert any("not on one slice" in n for n in axial.notes)
    assert axial.volume_ml == pytest.approx(tilted.volume_ml, rel=0.05)
