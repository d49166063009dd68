"""Trust in Slicer (issue 12), on REAL MRML scenes from slicer-core: an out-of-scope CT is refused
with the scene unchanged; given a centre it is segmented, the warnings come back from the logic and
sit on the segment's tags, in process and through the worker process alike."""

from __future__ import annotations

import os
import time

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from MnetImSegmentLib.engine.quality import OutOfScopeError  # noqa: E402
from MnetImSegmentLib.logic import MnetImSegmentLogic  # noqa: E402
from MnetImSegmentLib.research.phantom import make_phantom  # noqa: E402
from helpers.slicer_scene import add_volume, new_scene, scene  # noqa: E402,F401 (scene is a fixture)

THREADS = int(os.environ.get("MNETIM_TEST_THREADS", "1"))




@pytest.fixture(scope="module")
def no_applicator():
    return make_phantom(seed=43, matrix=160, slice_mm=3.0, z_extent_mm=90, applicator=None)


def _tags(seg):
    segmentation = seg.GetSegmentation()
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("CTV"))
    out = {}
    for key in ("QualityStatus", "QualityWarnings", "LowConfidenceSlices"):
        value = __import__("vtk").mutable("")
        assert segment.GetTag("MnetImSegment." + key, value), key
        out[key] = str(value)
    return out


def test_refused_in_process_then_warned_and_tagged(scene, no_applicator, tiny_weights):
    node = add_volume(scene, no_applicator.ct, "CT")
    logic = MnetImSegmentLogic()
    count = scene.GetNumberOfNodes()
    with pytest.raises(OutOfScopeError, match="--roi-center"):
        logic.process(node, weights=tiny_weights, device="cpu")
    assert scene.GetNumberOfNodes() == count
    seg = logic.process(node, weights=tiny_weights, device="cpu", roiCenter=no_applicator.params["cervix_os_lps"])
    assert any("out of scope" in w for w in logic.lastWarnings)
    tags = _tags(seg)
    assert tags["QualityStatus"] == "red" and "out of scope" in tags["QualityWarnings"]


def test_worker_carries_the_warnings(scene, no_applicator, tiny_weights):
    node = add_volume(scene, no_applicator.ct, "CT")
    logic = MnetImSegmentLogic()
    run = logic.startProcess(node, weights=tiny_weights, device="cpu", threads=THREADS,
                             roiCenter=no_applicator.params["cervix_os_lps"])
    deadline = time.time() + 300
    while not run.worker.finished and time.time() < deadline:
        logic.pollProcess(run)
        time.sleep(0.05)
    seg = logic.finishProcess(node, run)
    assert any("out of scope" in w for w in logic.lastWarnings)
    assert logic.lastRun.result.quality["status"] == "red"
    assert _tags(seg)["QualityStatus"] == "red"
