"""Inference in a separate process: the worker entry point, its client, and the bridge on REAL MRML.

* the worker (``python -m MnetImSegmentLib.engine.worker``) streams JSON events and writes a mask
  equal, voxel for voxel, to the in-process engine's on an oblique, flipped, anisotropic grid;
* through the logic (slicer-core scene): launch -> progress -> completion creates the same
  segmentation as the synchronous ``process()``; one run cancelled and another completed; a worker
  killed with SIGKILL mid-run leaves the scene unchanged and gives one sentence naming the signal;
* the temporary files are removed in every case.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import slicer
from MnetImSegmentLib.core.errors import Cancelled, MnetImError
from MnetImSegmentLib.core.volume import Geometry
from MnetImSegmentLib.engine.inference import Segmenter
from MnetImSegmentLib.logic import MnetImSegmentLogic
from MnetImSegmentLib.mrml import worker_client
from MnetImSegmentLib.mrml.worker_client import WorkerProcess, childEnvironment, describeExit, workerInterpreter
from MnetImSegmentLib.research.phantom import make_phantom, rotation_matrix
from helpers.slicer_scene import add_volume, new_scene, scene  # noqa: F401 (fixture)

THREADS = int(os.environ.get("MNETIM_TEST_THREADS", "1"))




@pytest.fixture(scope="module")
def oblique_phantom():
    """Oblique, flipped, anisotropic: a wrong axis anywhere in the file hand-over would show."""
    direction = rotation_matrix(0, 8, 14) @ np.diag([1.0, -1.0, 1.0])
    return make_phantom(seed=32, matrix=112, slice_mm=3.0, z_extent_mm=80, direction=direction)  # in scope (applicator found)


def node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def poll_until(run, predicate, timeout=120.0):
    """Poll a BackgroundRun until ``predicate(event)`` holds for an event or the run ends; return all events."""
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = run.poll()
        events += new
        if any(predicate(e) for e in new) or run.worker.finished:
            return events
        time.sleep(0.01)
    raise AssertionError(f"no matching event within {timeout} s: {events[-5:]}")


def exported(scene, seg_node, segment_id, reference) -> np.ndarray:
    """The segment on ``reference``'s grid, exported by Slicer's own code (the temporary labelmap removed)."""
    import vtk

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg_node, ids, labelmap, reference)
        return slicer.util.arrayFromVolume(labelmap).copy() > 0
    finally:
        scene.RemoveNode(labelmap)


def tag(segment, key: str) -> str:
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(key, value), f"tag {key} missing"
    return str(value)


def loading(event) -> bool:
    """The worker has read the CT and is loading the model: certainly mid-run."""
    return event.get("event") == "progress" and str(event.get("message", "")).startswith("loading")


# --------------------------------------------------------------------------- the worker itself
def run_worker(request_path: Path):
    env = childEnvironment()
    return subprocess.run([sys.executable, "-m", "MnetImSegmentLib.engine.worker", str(request_path)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_worker_streams_events_and_writes_the_engines_mask(tmp_path, oblique_phantom, tiny_weights):
    import SimpleITK as sitk

    ct = oblique_phantom.ct
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "ct.nrrd"))
    request = {"image": str(tmp_path / "ct.nrrd"), "weights": str(tiny_weights), "device": "cpu",
               "threshold": 0.45, "largest_component": None, "mask": str(tmp_path / "out" / "mask.nrrd"),
               "probability": str(tmp_path / "out" / "probability.nrrd"), "threads": THREADS}
    (tmp_path / "out").mkdir()
    (tmp_path / "request.json").write_text(json.dumps(request))
    proc = run_worker(tmp_path / "request.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line is one JSON event
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1 and "error" not in kinds
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions and max(fractions) == pytest.approx(1.0) and all(0.0 <= f <= 1.0 for f in fractions)
    done = events[-1]
    assert done["threshold"] == pytest.approx(0.45) and done["device"] == "cpu"

    mask = sitk.ReadImage(request["mask"])
    geometry = Geometry(mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection())
    assert geometry.allclose(ct.geometry, atol=1e-6)
    expected = Segmenter(tiny_weights, device="cpu").segment(ct, threshold=0.45, keep_probability=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected.mask.array)
    box = tuple(slice(a, b) for a, b in done["probability_box"])
    probability = sitk.GetArrayFromImage(sitk.ReadImage(request["probability"]))
    np.testing.assert_allclose(probability, expected.probability.array[box], atol=1e-6)
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "temporary files left"


def test_worker_reports_a_bad_request_in_one_sentence_and_fails(tmp_path, tiny_weights):
    request = {"image": str(tmp_path / "missing.nrrd"), "weights": str(tiny_weights), "device": "cpu",
               "mask": str(tmp_path / "mask.nrrd"), "probability": str(tmp_path / "p.nrrd")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    proc = run_worker(tmp_path / "request.json")
    assert proc.returncode != 0
    (event,) = [json.loads(line) for line in proc.stdout.splitlines()[-1:]]
    assert event["event"] == "error" and "Cannot read the CT" in event["message"]
    assert "\n" not in event["message"] and "Traceback" not in proc.stdout
    assert not (tmp_path / "mask.nrrd").exists()

    (tmp_path / "bad.json").write_text("{not json")
    proc = run_worker(tmp_path / "bad.json")
    assert proc.returncode != 0 and "not valid JSON" in json.loads(proc.stdout.splitlines()[-1])["message"]


def test_interpreter_is_pythonslicer_inside_slicer_and_the_package_is_importable(tmp_path):
    app = tmp_path / "Slicer-5.8" / "bin"
    app.mkdir(parents=True)
    (app / "SlicerApp-real").write_text("")
    assert workerInterpreter(str(app / "SlicerApp-real")) == str(app / "SlicerApp-real")
    (app / "PythonSlicer").write_text("")
    assert workerInterpreter(str(app / "SlicerApp-real")) == str(app / "PythonSlicer")
    env = childEnvironment({"PYTHONPATH": os.pathsep.join(["/elsewhere", str(worker_client.PACKAGE_DIR.parent)])})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(worker_client.PACKAGE_DIR.parent), "/elsewhere"]
    assert describeExit(-signal.SIGKILL) == "signal SIGKILL" and describeExit(3) == "exit code 3"


# --------------------------------------------------------------------------- through the logic, on MRML
def test_background_run_creates_the_same_segmentation_as_process(scene, oblique_phantom, tiny_weights):
    node = add_volume(scene, oblique_phantom.ct, "CT")
    logic = MnetImSegmentLogic()
    before = node_ids(scene)
    run = logic.startProcess(node, weights=tiny_weights, device="cpu", threads=THREADS)
    work_dir = run.workDir
    assert (work_dir / "ct.nrrd").is_file()
    events = poll_until(run, lambda e: e.get("event") == "done")
    while not run.worker.finished:
        events += logic.pollProcess(run)
        time.sleep(0.01)
    assert node_ids(scene) == before, "the worker must not touch the scene"
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) >= 3 and progress[-1]["fraction"] == pytest.approx(1.0)
    seg = logic.finishProcess(node, run)
    assert not work_dir.exists(), "temporary files must be removed"

    reference = logic.process(node, weights=tiny_weights, device="cpu")
    ids = [seg.GetSegmentation().GetSegmentIdBySegmentName("CTV") for seg in (seg, reference)]
    assert all(ids)
    got, want = (exported(scene, s, i, node) for s, i in zip((seg, reference), ids))
    assert got.sum() > 0
    np.testing.assert_array_equal(got, want)
    for key in ("MnetImSegment.Model", "MnetImSegment.Threshold", "MnetImSegment.Device", "MnetImSegment.RoiMethod"):
        a, b = (tag(s.GetSegmentation().GetSegment(i), key) for s, i in zip((seg, reference), ids))
        assert a and a == b, key
    assert logic.rethreshold(seg, 0.3) >= logic.rethreshold(seg, 0.7)


def test_cancel_one_run_then_complete_another(scene, oblique_phantom, tiny_weights):
    node = add_volume(scene, oblique_phantom.ct, "CT")
    logic = MnetImSegmentLogic()
    before = node_ids(scene)
    first = logic.startProcess(node, weights=tiny_weights, device="cpu", threads=THREADS)
    poll_until(first, loading)
    assert not first.worker.finished, "the first run ended before it could be cancelled"
    first.cancel()
    events = poll_until(first, lambda e: False, timeout=30)
    assert first.worker.finished and first.worker.process.returncode != 0
    assert not any(e["event"] == "done" for e in events)
    with pytest.raises(Cancelled):
        logic.finishProcess(node, first)
    assert not first.workDir.exists()
    assert node_ids(scene) == before

    second = logic.startProcess(node, weights=tiny_weights, device="cpu", threads=THREADS)
    poll_until(second, lambda e: False, timeout=180)
    seg = logic.finishProcess(node, second)
    assert seg.GetSegmentation().GetSegmentIdBySegmentName("CTV")
    assert node_ids(scene) - before == {seg.GetID(), seg.GetDisplayNode().GetID()} | (
        {seg.GetStorageNode().GetID()} if seg.GetStorageNode() else set())


def test_killed_worker_leaves_the_scene_unchanged_with_one_clear_message(scene, oblique_phantom, tiny_weights):
    node = add_volume(scene, oblique_phantom.ct, "CT")
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "picked")
    before, mtime = node_ids(scene), target.GetMTime()
    logic = MnetImSegmentLogic()
    run = logic.startProcess(node, weights=tiny_weights, device="cpu", threads=THREADS)
    poll_until(run, loading)
    assert not run.worker.finished
    os.kill(run.worker.pid, signal.SIGKILL)  # what the out-of-memory killer or a torch crash looks like
    events = poll_until(run, lambda e: False, timeout=30)
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1, events
    message = errors[0]["message"]
    assert "SIGKILL" in message and "scene was not changed" in message and "\n" not in message
    with pytest.raises(MnetImError) as info:
        logic.finishProcess(node, run, outputSegmentation=target)
    assert str(info.value) == message
    assert node_ids(scene) == before and target.GetMTime() == mtime
    assert target.GetSegmentation().GetNumberOfSegments() == 0
    assert not run.workDir.exists()
