"""DICOM SEG export through highdicom: pixels back on the source images, description, validity."""

from __future__ import annotations

import numpy as np
import pytest

from MnetImSegmentLib.core.errors import OutputError
from MnetImSegmentLib.dicomrt.ct_writer import write_ct_series
from MnetImSegmentLib.dicomrt.export import write_segmentation_dicom
from MnetImSegmentLib.research.phantom import make_phantom, rotation_matrix

from helpers.rt_fixtures import dciodvfy_errors, have_dciodvfy

hd = pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def seg_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    ph = make_phantom(seed=4, matrix=96, slice_mm=3.0, z_extent_mm=60, direction=rotation_matrix(0, 0, 8))
    series = write_ct_series(ph.ct, root / "ct", patient_id="PHANTOM0004")
    path = write_segmentation_dicom(ph.mask(), root / "ct", root / "out", fmt="dicom-seg", model_label="Mnet_Im 0.1.0")
    return ph, series, path, root


def test_seg_pixels_map_back_to_the_ct_slices(seg_case):
    ph, series, path, _ = seg_case
    seg = hd.seg.segread(str(path))
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == series.study_instance_uid
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    pixels = seg.get_pixels_by_source_instance(series.sop_instance_uids, segment_numbers=[1],
                                               ignore_spatial_locations=True)
    assert (pixels[..., 0].astype(bool) == ph.mask().array.astype(bool)).all()


def test_seg_describes_ctv_and_model(seg_case):
    _, _, path, _ = seg_case
    seg = hd.seg.segread(str(path))
    desc = seg.get_segment_description(1)
    assert desc.segment_label == "CTV" and desc.segmented_property_type.value == "228793007"
    assert str(desc.algorithm_type.value) == "AUTOMATIC"
    algo = desc.algorithm_identification[0]
    assert algo.AlgorithmName == "Mnet_Im" and algo.AlgorithmVersion == "0.1.0"


@pytest.mark.skipif(not have_dciodvfy(), reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_seg_passes_dciodvfy(seg_case):
    assert dciodvfy_errors(seg_case[2]) == []


def test_seg_refusals(seg_case, tmp_path):
    ph, _, _, root = seg_case
    with pytest.raises(OutputError, match="already exists"):
        write_segmentation_dicom(ph.mask(), root / "ct", root / "out", fmt="dicom-seg", model_label="m")
    with pytest.raises(OutputError, match="empty"):
        write_segmentation_dicom(ph.mask().with_array(np.zeros(ph.ct.shape, np.uint8)), root / "ct", tmp_path, "dicom-seg", "m")
    assert not any(tmp_path.iterdir())
