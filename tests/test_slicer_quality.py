"""Trust in Slicer (issue 12), on REAL MRML scenes from slicer-core: an out-of-scope CT is refused
with the scene unchanged and a sentence that tells a Slicer user to place a point as ROI centre;
given that point (a markups point list) it is segmented, the warnings come back from the logic and
sit on the segment's tags, in process and through the worker process alike."""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
vtk = pytest.importorskip("vtk")

from MnetImSegmentLib.core.errors import InputError  # noqa: E402
from MnetImSegmentLib.engine.quality import OutOfScopeError  # noqa: E402
from MnetImSegmentLib.logic import MnetImSegmentLogic  # noqa: E402
from MnetImSegmentLib.research.phantom import make_phantom, rotation_matrix  # noqa: E402
from helpers.slicer_scene import add_volume, new_scene, scene  # noqa: E402,F401 (scene is a fixture)

THREADS = int(os.environ.get("MNETIM_TEST_THREADS", "1"))
LPS_RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def no_applicator():
    return make_phantom(seed=43, matrix=160, slice_mm=3.0, z_extent_mm=90, applicator=None)


def _tags(seg):
    segmentation = seg.GetSegmentation()
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("CTV"))
    out = {}
    for key in ("QualityStatus", "QualityWarnings", "LowConfidenceSlices"):
        value = vtk.mutable("")
        assert segment.GetTag("MnetImSegment." + key, value), key
        out[key] = str(value)
    return out


def _transform(scene, name, translation):
    """An oblique, mirrored (det < 0) rigid transform node."""
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(6, -14, 25) @ np.diag([1.0, -1.0, 1.0])
    m[:3, 3] = translation
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    vm = vtk.vtkMatrix4x4()
    slicer.util.updateVTKMatrixFromArray(vm, m)
    node.SetMatrixTransformToParent(vm)
    return node, m


def _point_at(scene, lps, name="ROI centre"):
    """A markups point list with one point where the user would click: ``lps`` shown in Slicer's RAS."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.AddControlPoint(*[float(v) for v in LPS_RAS @ np.asarray(lps, float)])
    return node


def _assert_slicer_refusal(error):
    text = str(error)
    assert "out of scope" in text and "no intrauterine applicator" in text
    assert '"ROI centre (optional)"' in text and "--roi-center" not in text
    assert "\n" not in text and text.endswith("anyway.") and not re.search(r"\.\s", text)  # one sentence


def test_refused_in_process_then_segmented_from_a_placed_point(scene, no_applicator, tiny_weights):
    # The CT under an oblique, mirrored transform; the user places the point on the CT as shown.
    node = add_volume(scene, no_applicator.ct, "CT")
    ct_transform, m = _transform(scene, "CT registration", (20.0, -35.0, 60.0))
    node.SetAndObserveTransformNodeID(ct_transform.GetID())
    logic = MnetImSegmentLogic()
    count = scene.GetNumberOfNodes()
    with pytest.raises(OutOfScopeError) as refusal:
        logic.process(node, weights=tiny_weights, device="cpu")
    _assert_slicer_refusal(refusal.value)
    assert scene.GetNumberOfNodes() == count

    os_lps = np.asarray(no_applicator.params["cervix_os_lps"], float)
    world = (m @ np.append(LPS_RAS @ os_lps, 1.0))[:3]
    point = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "ROI centre")
    point.AddControlPoint(*world)
    seg = logic.process(node, weights=tiny_weights, device="cpu", roiCenterNode=point)
    # The engine centred the ROI on the cervix in the CT's own frame, not on the transformed position.
    assert np.asarray(logic.lastRun.result.roi.center) == pytest.approx(os_lps, abs=1e-6)
    assert any("out of scope" in w for w in logic.lastWarnings)
    tags = _tags(seg)
    assert tags["QualityStatus"] == "red" and "out of scope" in tags["QualityWarnings"]
    assert seg.GetTransformNodeID() == ct_transform.GetID()


def _wait(logic, run):
    deadline = time.time() + 300
    while not run.worker.finished and time.time() < deadline:
        logic.pollProcess(run)
        time.sleep(0.05)


def test_worker_refuses_in_slicer_words_then_carries_the_warnings(scene, no_applicator, tiny_weights):
    node = add_volume(scene, no_applicator.ct, "CT")
    logic = MnetImSegmentLogic()
    count = scene.GetNumberOfNodes()
    run = logic.startProcess(node, weights=tiny_weights, device="cpu", threads=THREADS)
    _wait(logic, run)
    with pytest.raises(OutOfScopeError) as refusal:
        logic.finishProcess(node, run)
    _assert_slicer_refusal(refusal.value)
    assert scene.GetNumberOfNodes() == count

    # What the widget does: the point read on the main thread, the numbers handed to the worker.
    point = _point_at(scene, no_applicator.params["cervix_os_lps"])
    center = logic.resolveRoiCenter(roiCenterNode=point, inputVolume=node)
    run = logic.startProcess(node, weights=tiny_weights, device="cpu", threads=THREADS, roiCenter=center)
    _wait(logic, run)
    seg = logic.finishProcess(node, run)
    assert any("out of scope" in w for w in logic.lastWarnings)
    assert logic.lastRun.result.quality["status"] == "red"
    assert np.asarray(logic.lastRun.result.roi.center) == pytest.approx(no_applicator.params["cervix_os_lps"],
                                                                        abs=1e-3)
    assert _tags(seg)["QualityStatus"] == "red"


def test_bad_roi_centre_leaves_the_scene_unchanged(scene, no_applicator, tiny_weights):
    node = add_volume(scene, no_applicator.ct, "CT")
    logic = MnetImSegmentLogic()
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "ROI centre")
    elsewhere = _point_at(scene, np.asarray(no_applicator.params["cervix_os_lps"]) + [0.0, 0.0, 400.0], "far")
    count = scene.GetNumberOfNodes()
    cases = [
        (dict(roiCenterNode=empty), "'ROI centre' has no placed point"),
        (dict(roiCenterNode=elsewhere, roiCenter=(0.0, 0.0, 0.0)), "not both"),
        (dict(roiCenterNode=elsewhere), "lies outside 'CT'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            logic.process(node, weights=tiny_weights, device="cpu", **kwargs)
        with pytest.raises(InputError, match=message):  # refused before any worker starts
            logic.startProcess(node, weights=tiny_weights, device="cpu", threads=THREADS, **kwargs)
        assert scene.GetNumberOfNodes() == count
