"""The previous fraction in Slicer (issue 14) on a REAL MRML scene (slicer-core): prior CT + segmentation in,
CTV fused with the carried-over prior plus a second segment "CTV (previous fraction)" out."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MnetImSegmentLib.core.errors import InputError  # noqa: E402
from MnetImSegmentLib.logic import MnetImSegmentLogic  # noqa: E402
from MnetImSegmentLib.mrml.fractions import PRIOR_SEGMENT_NAME, priorSegmentId, segmentMaskOnVolume  # noqa: E402
from MnetImSegmentLib.mrml.geometry import nodeIJKToRAS  # noqa: E402
from MnetImSegmentLib.mrml.segments import writeCTV  # noqa: E402
from MnetImSegmentLib.research.fractions_phantom import make_fraction_series  # noqa: E402
from helpers.slicer_scene import add_volume, new_scene  # noqa: E402


@pytest.fixture
def scene():
    scene = new_scene()
    yield scene
    slicer.mrmlScene = scene._previous_mrml_scene
    scene.Clear(1)


@pytest.fixture(scope="module")
def series():
    return make_fraction_series(4, 2, matrix=96, slice_mm=3.0, z_extent_mm=120)


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_process_with_previous_fraction(scene, series, tiny_weights):
    first, second = series
    prior_ct = add_volume(scene, first.phantom.ct, "CT fraction 1")
    prior_seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CTV fraction 1")
    prior_seg.CreateDefaultDisplayNodes()
    writeCTV(prior_seg, first.phantom.mask().array, nodeIJKToRAS(prior_ct))
    ct = add_volume(scene, second.phantom.ct, "CT fraction 2")
    n_before = scene.GetNumberOfNodes()
    logic = MnetImSegmentLogic()
    seg = logic.process(ct, device="cpu", weights=tiny_weights, priorVolume=prior_ct, priorSegmentation=prior_seg)
    segmentation = seg.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    assert names == {"CTV", PRIOR_SEGMENT_NAME}
    carried = segmentMaskOnVolume(seg, segmentation.GetSegmentIdBySegmentName(PRIOR_SEGMENT_NAME), ct)
    assert dice(carried, second.phantom.mask().array) >= 0.85
    assert {"transform", "residual_mm", "dice_prior_vs_network"} <= set(logic.lastPriorReport)
    # No export node is left behind: only the result (and its display node) were added.
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0
    assert scene.GetNumberOfNodes() - n_before <= 3
    assert first.phantom.ct.array.sum() == slicer.util.arrayFromVolume(prior_ct).sum()  # prior CT untouched


def test_previous_fraction_bad_input(scene, series, tiny_weights):
    first, second = series
    ct = add_volume(scene, second.phantom.ct, "CT")
    prior_ct = add_volume(scene, first.phantom.ct, "prior")
    logic = MnetImSegmentLogic()
    with pytest.raises(InputError, match="needs both"):
        logic.process(ct, device="cpu", weights=tiny_weights, priorVolume=prior_ct)
    two = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "two")
    two.GetSegmentation().AddEmptySegment("a", "a")
    two.GetSegmentation().AddEmptySegment("b", "b")
    with pytest.raises(InputError, match="no segment named"):
        priorSegmentId(two)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    empty.GetSegmentation().AddEmptySegment("CTV", "CTV")
    n = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="empty"):
        logic.process(ct, device="cpu", weights=tiny_weights, priorVolume=prior_ct, priorSegmentation=empty)
    assert scene.GetNumberOfNodes() == n  # a refused prior changes nothing
