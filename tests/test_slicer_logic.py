"""The MRML bridge (MnetImSegmentLib.logic) on REAL MRML scenes from slicer-core (no Slicer GUI, no mocks).

What is checked, and why:

* registration: on axial, 10-20 degree oblique, flipped and anisotropic grids the CTV segment, exported
  back to a labelmap in RAS by Slicer's own code, holds the engine's LPS mask voxel for voxel, and
  its centroid in RAS is where the engine's centroid lies after the LPS->RAS flip computed here by
  hand (a wrong sign in the bridge cannot cancel out in that comparison);
* the user's data is safe: input voxels and matrix unchanged, no temporary nodes left, re-runs make
  new nodes, a cancelled run changes nothing, re-thresholding refuses to overwrite an edited CTV;
* files: ``.seg.nrrd`` written by the storage node and by the engine's ``io.write_segmentation``
  (slicerio) load with names, colours, tags and voxels intact;
* every bad input raises an :class:`MnetImError` with a sentence a user can act on.

Plumbing tests use ``tiny_weights`` (random); accuracy tests use the shipped ``demo_weights``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import vtk

import slicer
from MnetImSegmentLib.core import style
from MnetImSegmentLib.core.errors import Cancelled, InputError, MnetImError, WeightsError
from MnetImSegmentLib.core.volume import Geometry
from MnetImSegmentLib.engine import io as engine_io
from MnetImSegmentLib.engine.inference import Segmenter
from MnetImSegmentLib.logic import MnetImSegmentLogic
from MnetImSegmentLib.mrml.geometry import LPS_RAS, geometryFromIJKToRAS, ijkToRASFromGeometry, nodeIJKToRAS
from MnetImSegmentLib.mrml.kept_probability import PROBABILITY_REFERENCE_ROLE
from MnetImSegmentLib.research.phantom import PhantomAnatomy, make_phantom, rotation_matrix
from helpers.slicer_scene import add_volume, new_scene, scene  # noqa: F401 (fixture)

TAG_MODEL = "MnetImSegment.Model"
TAG_THRESHOLD = "MnetImSegment.Threshold"


# --------------------------------------------------------------------------- scene


def node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def add_ct(scene, phantom, name="CT", study=True):
    """The phantom CT as a volume node (IJKToRAS built by hand from the LPS geometry, not by the logic)."""
    node = add_volume(scene, phantom.ct, name)
    if study:
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient")
        st = sh.CreateStudyItem(patient, "Brachy study")
        sh.CreateItem(st, node)
    return node


def export_segment(scene, seg_node, segment_id, reference):
    """The segment as a (z, y, x) array on ``reference``'s grid, exported by Slicer's own code.

    Every node the export creates (labelmap, its display and colour table) is removed again, so
    the scene-content assertions of the tests see only what the logic did.
    """
    before = node_ids(scene)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg_node, ids, labelmap, reference)
        return slicer.util.arrayFromVolume(labelmap).copy() > 0, nodeIJKToRAS(labelmap)
    finally:
        for node_id in node_ids(scene) - before:
            node = scene.GetNodeByID(node_id)
            if node is not None:
                scene.RemoveNode(node)


def ctv_id(seg_node) -> str:
    segment_id = seg_node.GetSegmentation().GetSegmentIdBySegmentName("CTV")
    assert segment_id, "no segment named CTV"
    return segment_id


def tag(segment, key) -> str:
    value = vtk.reference("")
    assert segment.GetTag(key, value), f"tag {key} missing"
    return str(value)


def centroid_ras(mask: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    kji = np.argwhere(mask).mean(0)
    ijk1 = np.array([kji[2], kji[1], kji[0], 1.0])
    return (ijk_to_ras @ ijk1)[:3]


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


# --------------------------------------------------------------------------- phantoms
def phantom_on_grid(seed, direction, spacing, shape_zyx):
    """A phantom sampled on a grid centred on its CTV (any direction, any spacing)."""
    anatomy = PhantomAnatomy(seed)
    d = np.asarray(direction, float).reshape(3, 3)
    size_xyz = np.array(shape_zyx[::-1], float)
    center = np.array([anatomy.body_center[0], anatomy.body_center[1], anatomy.ctv_center[2]])
    origin = center - d @ (np.asarray(spacing) * (size_xyz - 1) / 2)
    return anatomy.sample(Geometry(spacing, origin, tuple(d.ravel())), tuple(shape_zyx))


GRIDS = {
    # axial, identity direction
    "axial": dict(direction=np.eye(3), spacing=(2.4, 2.4, 2.5), shape=(36, 144, 144)),
    # 10-20 degree oblique about all three axes
    "oblique": dict(direction=rotation_matrix(14, -11, 18), spacing=(2.4, 2.4, 2.5), shape=(36, 144, 144)),
    # flipped i and k (a feet-first / mirrored file), oblique, anisotropic in-plane and through-plane
    "flipped-anisotropic": dict(direction=rotation_matrix(0, 0, 12) @ np.diag([-1.0, 1.0, -1.0]),
                                spacing=(2.1, 2.7, 3.0), shape=(30, 130, 160)),
}


@pytest.fixture(scope="module", params=list(GRIDS))
def grid_phantom(request):
    g = GRIDS[request.param]
    return request.param, phantom_on_grid(31, g["direction"], g["spacing"], g["shape"])


@pytest.fixture(scope="module")
def phantom():
    """A small axial phantom for everything that is not about geometry."""
    return make_phantom(seed=23, matrix=128, slice_mm=2.5, z_extent_mm=85)


# --------------------------------------------------------------------------- geometry
def test_geometry_conversion_matches_simpleitk_lps_convention():
    direction = rotation_matrix(17, -12, 9) @ np.diag([1.0, -1.0, -1.0])
    geometry = Geometry((0.7, 0.9, 3.0), (-120.5, 80.25, -33.0), tuple(direction.ravel()))
    ijk_to_ras = ijkToRASFromGeometry(geometry)
    # A voxel's RAS position is its LPS position with x and y negated.
    ijk = np.array([5.0, 7.0, 3.0])
    lps = geometry.index_to_physical(ijk)
    np.testing.assert_allclose((ijk_to_ras @ np.r_[ijk, 1])[:3], lps * [-1, -1, 1], atol=1e-9)
    back = geometryFromIJKToRAS(ijk_to_ras)
    assert back.allclose(geometry, atol=1e-9)
    np.testing.assert_allclose(LPS_RAS @ LPS_RAS, np.eye(4))


def test_prepare_input_reads_voxels_and_geometry_exactly(scene, grid_phantom):
    _, ph = grid_phantom
    node = add_ct(scene, ph)
    prepared = MnetImSegmentLogic().prepareInput(node)
    np.testing.assert_array_equal(prepared.volume.array, ph.ct.array)
    assert prepared.volume.geometry.allclose(ph.ct.geometry, atol=1e-9)
    # A copy, not a view: the engine can never write into the user's CT.
    assert not np.shares_memory(prepared.volume.array, slicer.util.arrayFromVolume(node))


# --------------------------------------------------------------------------- registration
def test_ctv_is_registered_with_the_engine_result(scene, grid_phantom, tiny_weights):
    name, ph = grid_phantom
    node = add_ct(scene, ph)
    voxels_before = slicer.util.arrayFromVolume(node).copy()
    matrix_before = nodeIJKToRAS(node)
    ids_before = node_ids(scene)

    seg = MnetImSegmentLogic().process(node, device="cpu", weights=tiny_weights)

    engine = Segmenter(tiny_weights, device="cpu").segment(ph.ct)  # the engine alone, in LPS
    assert engine.mask.array.any(), "the plumbing weights should give a non-empty mask"
    exported, labelmap_ijk_to_ras = export_segment(scene, seg, ctv_id(seg), node)
    np.testing.assert_allclose(labelmap_ijk_to_ras, matrix_before, atol=1e-6)
    differ = np.count_nonzero(exported != (engine.mask.array > 0))
    assert differ <= max(2, 0.001 * engine.mask.array.sum()), f"{name}: {differ} voxels differ"

    # Independent of the bridge's own conversion: engine centroid LPS -> RAS by hand.
    kji = np.argwhere(engine.mask.array).mean(0)
    engine_lps = ph.ct.geometry.index_to_physical(kji[::-1])
    np.testing.assert_allclose(centroid_ras(exported, matrix_before), engine_lps * [-1, -1, 1], atol=0.5)

    # The user's CT is untouched and nothing but the result was added.
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels_before)
    np.testing.assert_array_equal(nodeIJKToRAS(node), matrix_before)
    added = [scene.GetNodeByID(i) for i in node_ids(scene) - ids_before]
    assert seg in added
    leftovers = [n.GetClassName() for n in added if n is not seg and n is not seg.GetDisplayNode()]
    assert leftovers == [], f"unexpected nodes left in the scene: {leftovers}"
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is node


# The demo model's held-out Dice is 0.91 mean, 0.76 worst (its card); on these grids it scores 0.89
# (oblique, 2.4 mm voxels) and 0.91. Below 0.8 therefore means a registration or pipeline regression
# (a misregistered CTV scores near 0), not the model's spread.
ACCURACY_CASES = {
    # 15 degrees in-plane plus a 5 degree tilt: an oblique grid the axial-trained model still reads
    "oblique": (14, dict(direction=rotation_matrix(5, 0, 15), spacing=(2.4, 2.4, 2.5), shape=(36, 144, 144))),
    "flipped-anisotropic": (41, GRIDS["flipped-anisotropic"]),
}


@pytest.mark.parametrize("case", list(ACCURACY_CASES))
def test_demo_weights_find_the_phantom_ctv_on_any_grid(scene, demo_weights, case):
    seed, g = ACCURACY_CASES[case]
    ph = phantom_on_grid(seed, g["direction"], g["spacing"], g["shape"])
    node = add_ct(scene, ph)
    seg = MnetImSegmentLogic().process(node, device="cpu", weights=demo_weights)
    exported, m = export_segment(scene, seg, ctv_id(seg), node)
    truth = ph.mask("CTV").array > 0
    assert dice(exported, truth) >= 0.8, f"{case}: Dice {dice(exported, truth):.3f}"
    # The truth's RAS centroid, computed by hand from its LPS geometry.
    kji = np.argwhere(truth).mean(0)
    truth_ras = ph.ct.geometry.index_to_physical(kji[::-1]) * [-1, -1, 1]
    assert np.linalg.norm(centroid_ras(exported, m) - truth_ras) < 5.0


# --------------------------------------------------------------------------- the segmentation node
def test_segment_name_colour_terminology_tags_surface_and_study(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    seg = MnetImSegmentLogic().process(node, device="cpu", weights=tiny_weights, threshold=0.5)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetSegment(ctv_id(seg))
    assert segment.GetName() == "CTV"
    np.testing.assert_allclose(segment.GetColor(), style.CTV_COLOR, atol=1e-6)
    assert segment.GetTerminology() == style.CTV_TERMINOLOGY
    assert tag(segment, TAG_MODEL) == "test-Mnet_Im 0.0.0"
    assert tag(segment, TAG_THRESHOLD) == "0.5"
    assert tag(segment, "MnetImSegment.ModelVersion") == "0.0.0"
    assert tag(segment, "MnetImSegment.Device") == "cpu"
    assert segmentation.ContainsRepresentation("Closed surface")
    surface = segment.GetRepresentation("Closed surface")
    assert surface is not None and surface.GetNumberOfPoints() > 0
    # Same study as the CT, so DICOM RTSTRUCT export offers it with the CT.
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    ct_parent = sh.GetItemParent(sh.GetItemByDataNode(node))
    assert sh.GetItemLevel(ct_parent) == "Study"
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == ct_parent
    assert seg.GetName() == "CT CTV"


def test_rerun_makes_a_new_node_and_leaves_the_first_untouched(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    logic = MnetImSegmentLogic()
    first = logic.process(node, device="cpu", weights=tiny_weights)
    first_voxels, _ = export_segment(scene, first, ctv_id(first), node)
    second = logic.process(node, device="cpu", weights=tiny_weights, threshold=0.3)
    assert second is not first and second.GetID() != first.GetID()
    assert second.GetName() != first.GetName()
    again, _ = export_segment(scene, first, ctv_id(first), node)
    np.testing.assert_array_equal(again, first_voxels)
    assert tag(first.GetSegmentation().GetSegment(ctv_id(first)), TAG_THRESHOLD) == "0.5"


def test_picked_output_gets_its_ctv_replaced_and_keeps_other_segments(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Plan structures")
    target.CreateDefaultDisplayNodes()
    target.SetReferenceImageGeometryParameterFromVolumeNode(node)
    bladder = np.zeros(phantom.ct.shape, np.uint8)
    bladder[10:20, 40:60, 50:70] = 1
    from MnetImSegmentLib.mrml.geometry import orientedImage as _orientedImage

    bladder_id = target.GetSegmentation().AddEmptySegment("Bladder", "Bladder", [1.0, 1.0, 0.0])
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        _orientedImage(bladder, nodeIJKToRAS(node)), target, bladder_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None)
    old_ctv = target.GetSegmentation().AddEmptySegment("CTV", "CTV", [0.0, 1.0, 0.0])
    assert old_ctv

    out = MnetImSegmentLogic().process(node, outputSegmentation=target, device="cpu", weights=tiny_weights)
    assert out is target
    segmentation = target.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    kept_bladder, _ = export_segment(scene, target, bladder_id, node)
    np.testing.assert_array_equal(kept_bladder, bladder > 0)
    ctv, _ = export_segment(scene, target, ctv_id(target), node)
    engine = Segmenter(tiny_weights, device="cpu").segment(phantom.ct)
    assert np.count_nonzero(ctv != (engine.mask.array > 0)) <= 2
    np.testing.assert_allclose(segmentation.GetSegment(ctv_id(target)).GetColor(), style.CTV_COLOR, atol=1e-6)


def test_picked_output_made_of_contours_gets_a_labelmap_ctv(scene, phantom, tiny_weights):
    """Structures imported from RTSTRUCT keep closed surfaces/contours as their source representation."""
    node = add_ct(scene, phantom)
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "From RTSTRUCT")
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*(nodeIJKToRAS(node) @ [64, 64, 17, 1])[:3])
    sphere.SetRadius(15)
    sphere.Update()
    target.GetSegmentation().SetSourceRepresentationName("Closed surface")
    target.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "Bladder", [1.0, 1.0, 0.0])
    out = MnetImSegmentLogic().process(node, outputSegmentation=target, device="cpu", weights=tiny_weights)
    assert out.GetSegmentation().GetSourceRepresentationName() == "Binary labelmap"
    assert out.GetSegmentation().GetNumberOfSegments() == 2
    ctv, _ = export_segment(scene, out, ctv_id(out), node)
    engine = Segmenter(tiny_weights, device="cpu").segment(phantom.ct)
    assert np.count_nonzero(ctv != (engine.mask.array > 0)) <= 2
    bladder, _ = export_segment(scene, out, out.GetSegmentation().GetSegmentIdBySegmentName("Bladder"), node)
    assert bladder.sum() > 0


def test_output_removed_during_the_run_is_reported(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "picked")
    logic = MnetImSegmentLogic()
    run = logic.runEngine(logic.prepareInput(node), weights=tiny_weights, device="cpu")
    scene.RemoveNode(target)
    with pytest.raises(InputError, match="not in the CT's scene"):
        logic.createOutput(node, run, target)
    scene.RemoveNode(node)
    with pytest.raises(InputError, match="removed"):
        logic.createOutput(node, run)


def test_input_under_a_transform_gets_a_segmentation_under_the_same_transform(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 12.0)
    transform.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(transform.GetID())
    seg = MnetImSegmentLogic().process(node, device="cpu", weights=tiny_weights)
    assert seg.GetTransformNodeID() == transform.GetID()


# --------------------------------------------------------------------------- files
def test_seg_nrrd_round_trip_through_the_storage_node(scene, phantom, tiny_weights, tmp_path):
    node = add_ct(scene, phantom)
    seg = MnetImSegmentLogic().process(node, device="cpu", weights=tiny_weights, threshold=0.5)
    before, _ = export_segment(scene, seg, ctv_id(seg), node)
    path = tmp_path / "ctv.seg.nrrd"
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(path))
    assert writer.WriteData(seg)

    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    segment = loaded.GetSegmentation().GetSegment(ctv_id(loaded))
    assert segment.GetName() == "CTV"
    np.testing.assert_allclose(segment.GetColor(), style.CTV_COLOR, atol=1e-6)
    assert segment.GetTerminology() == style.CTV_TERMINOLOGY
    assert tag(segment, TAG_MODEL) == "test-Mnet_Im 0.0.0"
    assert tag(segment, TAG_THRESHOLD) == "0.5"
    after, _ = export_segment(scene, loaded, ctv_id(loaded), node)
    np.testing.assert_array_equal(after, before)


def test_engine_seg_nrrd_written_by_slicerio_loads_in_slicer(scene, tmp_path):
    g = GRIDS["flipped-anisotropic"]
    ph = phantom_on_grid(5, g["direction"], g["spacing"], g["shape"])
    truth = ph.mask("CTV")
    path = engine_io.write_segmentation(truth, tmp_path / "engine.seg.nrrd", model="Mnet_Im_test 1.2.3", threshold=0.45)
    node = add_ct(scene, ph)

    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "from engine")
    reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    segmentation = loaded.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetSegment(ctv_id(loaded))
    np.testing.assert_allclose(segment.GetColor(), style.CTV_COLOR, atol=1e-6)
    assert tag(segment, TAG_MODEL) == "Mnet_Im_test 1.2.3"
    assert tag(segment, TAG_THRESHOLD) == "0.45"
    assert segment.GetTerminology() == style.CTV_TERMINOLOGY
    # Geometry: the stored labelmap lies on the CT's grid (same IJK->RAS), voxels identical.
    image = segment.GetRepresentation("Binary labelmap")
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(m), nodeIJKToRAS(node), atol=1e-4)
    exported, _ = export_segment(scene, loaded, ctv_id(loaded), node)
    np.testing.assert_array_equal(exported, truth.array > 0)


# --------------------------------------------------------------------------- cancel
def test_cancel_leaves_the_scene_unchanged(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "picked")
    ids_before, mtime_before = node_ids(scene), target.GetMTime()
    logic = MnetImSegmentLogic()
    with pytest.raises(Cancelled):
        logic.process(node, device="cpu", weights=tiny_weights, cancel=lambda: True)
    with pytest.raises(Cancelled):
        logic.process(node, outputSegmentation=target, device="cpu", weights=tiny_weights, cancel=lambda: True)

    # Cancelled mid-run from another thread's point of view: an Event set while the network works.
    event = threading.Event()

    def progress(fraction, message):
        if fraction > 0.2:
            event.set()

    with pytest.raises(Cancelled):
        logic.process(node, device="cpu", weights=tiny_weights, progressCallback=progress, cancel=event)
    assert node_ids(scene) == ids_before
    assert target.GetSegmentation().GetNumberOfSegments() == 0
    assert target.GetMTime() == mtime_before


def test_engine_phase_runs_on_a_worker_thread_and_output_on_the_main_thread(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    logic = MnetImSegmentLogic()
    prepared = logic.prepareInput(node)
    ids_before = node_ids(scene)
    box = {}
    messages = []
    worker = threading.Thread(target=lambda: box.setdefault("run", logic.runEngine(
        prepared, weights=tiny_weights, device="cpu", progressCallback=lambda f, m: messages.append((f, m)))))
    worker.start()
    worker.join(60)
    assert node_ids(scene) == ids_before, "the worker phase must not touch the scene"
    assert messages and messages[-1][0] == pytest.approx(1.0)
    assert all(b[0] >= a[0] for a, b in zip(messages, messages[1:]) if a[0] > 0)
    seg = logic.createOutput(node, box["run"])
    assert ctv_id(seg)


def test_output_refused_if_the_input_changed_during_the_run(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    logic = MnetImSegmentLogic()
    run = logic.runEngine(logic.prepareInput(node), weights=tiny_weights, device="cpu")
    node.SetSpacing(1.0, 1.0, 1.0)
    ids_before = node_ids(scene)
    with pytest.raises(InputError, match="changed"):
        logic.createOutput(node, run)
    assert node_ids(scene) == ids_before


# --------------------------------------------------------------------------- re-threshold
def test_rethreshold_is_monotonic_and_equals_the_engine_threshold(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    logic = MnetImSegmentLogic()
    seg = logic.process(node, device="cpu", weights=tiny_weights, largestComponent=False)
    prob = Segmenter(tiny_weights, device="cpu").segment(phantom.ct, keep_probability=True).probability.array
    inside = prob[prob > 0.01]
    thresholds = sorted({round(float(q), 4) for q in np.quantile(inside, [0.05, 0.3, 0.5, 0.7, 0.95])} | {0.02, 0.98})
    counts = []
    for t in thresholds:
        counts.append(logic.rethreshold(seg, t))
        exported, _ = export_segment(scene, seg, ctv_id(seg), node)
        assert exported.sum() == counts[-1]
        expected = prob >= t
        assert np.count_nonzero(exported != expected) <= max(2, 0.001 * expected.sum()), t
        assert tag(seg.GetSegmentation().GetSegment(ctv_id(seg)), TAG_THRESHOLD) == f"{t:.4g}"
    assert counts == sorted(counts, reverse=True), counts
    assert counts[0] > counts[-1]
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")
    with pytest.raises(InputError):
        logic.rethreshold(seg, 1.5)


def test_rethreshold_refuses_to_overwrite_an_edited_ctv(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    logic = MnetImSegmentLogic()
    seg = logic.process(node, device="cpu", weights=tiny_weights)
    assert logic.rethreshold(seg, 0.45) >= 0  # untouched: allowed
    edited, _ = export_segment(scene, seg, ctv_id(seg), node)
    edited = edited.astype(np.uint8)
    edited[5:8, 60:70, 60:70] ^= 1  # the user paints / erases a few voxels in Segment Editor
    from MnetImSegmentLib.mrml.geometry import orientedImage as _orientedImage

    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        _orientedImage(edited, nodeIJKToRAS(node)), seg, ctv_id(seg),
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None)
    with pytest.raises(MnetImError, match="edited"):
        logic.rethreshold(seg, 0.3)
    after, _ = export_segment(scene, seg, ctv_id(seg), node)
    np.testing.assert_array_equal(after, edited > 0)


def test_rethreshold_sees_edits_far_from_the_ctv_but_not_other_segments(scene, phantom, tiny_weights):
    from MnetImSegmentLib.mrml.geometry import orientedImage as _orientedImage

    node = add_ct(scene, phantom)
    logic = MnetImSegmentLogic()
    seg = logic.process(node, device="cpu", weights=tiny_weights)
    ijk_to_ras = nodeIJKToRAS(node)
    # Another structure drawn in the same segmentation (it may share the CTV's labelmap layer).
    other = np.zeros(phantom.ct.shape, np.uint8)
    other[0:3, 0:10, 0:10] = 1
    other_id = seg.GetSegmentation().AddEmptySegment("Bladder", "Bladder", [1.0, 1.0, 0.0])
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        _orientedImage(other, ijk_to_ras), seg, other_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None)
    assert logic.rethreshold(seg, 0.4) > 0
    kept_other, _ = export_segment(scene, seg, other_id, node)
    np.testing.assert_array_equal(kept_other, other > 0)
    # A stroke in a corner of the CT, far outside the network's region of interest.
    ctv, _ = export_segment(scene, seg, ctv_id(seg), node)
    ctv = ctv.astype(np.uint8)
    ctv[-3:, -10:, -10:] = 1
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        _orientedImage(ctv, ijk_to_ras), seg, ctv_id(seg), slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None)
    with pytest.raises(MnetImError, match="edited"):
        logic.rethreshold(seg, 0.6)


def test_rethreshold_from_a_kept_probability_volume_after_the_memory_is_gone(scene, phantom, tiny_weights):
    node = add_ct(scene, phantom)
    seg = MnetImSegmentLogic().process(node, device="cpu", weights=tiny_weights, keepProbability=True)
    prob_node = seg.GetNodeReference(PROBABILITY_REFERENCE_ROLE)
    assert prob_node is not None and prob_node.IsA("vtkMRMLScalarVolumeNode")
    np.testing.assert_allclose(nodeIJKToRAS(prob_node), nodeIJKToRAS(node))
    prob = slicer.util.arrayFromVolume(prob_node)
    assert prob.dtype == np.float32 and 0.0 <= prob.min() and prob.max() <= 1.0
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(prob_node)) == sh.GetItemParent(sh.GetItemByDataNode(node))

    fresh = MnetImSegmentLogic()  # e.g. after the scene was saved and loaded again
    assert fresh.hasProbability(seg)
    low, high = fresh.rethreshold(seg, 0.1), fresh.rethreshold(seg, 0.9)
    assert low >= high
    assert not MnetImSegmentLogic().hasProbability(scene.AddNewNodeByClass("vtkMRMLSegmentationNode"))


# --------------------------------------------------------------------------- bad input
def _vector_volume(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "RGB photo")
    slicer.util.updateVolumeFromArray(node, np.zeros((4, 32, 32, 3), np.uint8))
    return node


def _labelmap(scene):
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "CTV labels")
    slicer.util.updateVolumeFromArray(node, np.zeros((10, 64, 64), np.uint8))
    return node


def _single_slice(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Scout")
    slicer.util.updateVolumeFromArray(node, np.full((1, 64, 64), -1000, np.int16))
    return node


def _empty(scene):
    return scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty")


@pytest.mark.parametrize("make, words", [
    (lambda scene: None, "No input volume"),
    (_single_slice, "2D"),
    (_labelmap, "labelmap"),
    (_vector_volume, "values per voxel"),
    (_empty, "no voxels"),
])
def test_bad_input_volumes_are_refused_clearly(scene, tiny_weights, make, words):
    node = make(scene)
    ids_before = node_ids(scene)
    with pytest.raises(InputError, match=words):
        MnetImSegmentLogic().process(node, device="cpu", weights=tiny_weights)
    assert node_ids(scene) == ids_before


def test_mr_like_intensities_are_refused_clearly(scene, tiny_weights):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR")
    slicer.util.updateVolumeFromArray(node, np.random.default_rng(0).integers(0, 800, (12, 64, 64)).astype(np.int16))
    with pytest.raises(InputError, match="Hounsfield"):
        MnetImSegmentLogic().process(node, device="cpu", weights=tiny_weights)


def test_weights_folder_without_a_valid_card_is_refused_clearly(scene, phantom, tmp_path):
    node = add_ct(scene, phantom)
    logic = MnetImSegmentLogic()
    with pytest.raises(WeightsError, match="no model card"):
        logic.process(node, device="cpu", weights=tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        logic.process(node, device="cpu", weights=tmp_path)
    (tmp_path / "model.json").write_text('{"format_version": 1, "name": "x"}')
    with pytest.raises(WeightsError, match="lacks the field"):
        logic.process(node, device="cpu", weights=tmp_path)
    with pytest.raises(WeightsError, match="does not exist"):
        logic.process(node, device="cpu", weights=tmp_path / "missing")


def test_cuda_requested_without_a_gpu_is_refused_clearly(scene, phantom, tiny_weights):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    node = add_ct(scene, phantom)
    ids_before = node_ids(scene)
    with pytest.raises(MnetImError, match="GPU \\(CUDA\\) was requested"):
        MnetImSegmentLogic().process(node, device="cuda", weights=tiny_weights)
    assert node_ids(scene) == ids_before
    with pytest.raises(MnetImError, match="Unknown device"):
        MnetImSegmentLogic().process(node, device="tpu", weights=tiny_weights)


def test_missing_torch_is_reported_clearly(scene, phantom, tiny_weights, monkeypatch):
    node = add_ct(scene, phantom)
    monkeypatch.setattr(MnetImSegmentLogic, "missingDependencies", staticmethod(lambda: ["torch"]))
    ids_before = node_ids(scene)
    with pytest.raises(MnetImError, match="PyTorch is not installed"):
        MnetImSegmentLogic().process(node, device="cpu", weights=tiny_weights)
    monkeypatch.setattr(MnetImSegmentLogic, "missingDependencies", staticmethod(lambda: ["safetensors"]))
    with pytest.raises(MnetImError, match="safetensors"):
        MnetImSegmentLogic().process(node, device="cpu", weights=tiny_weights)
    assert node_ids(scene) == ids_before


def test_nothing_is_missing_here():
    assert MnetImSegmentLogic.missingDependencies() == []


def test_cuda_failure_falls_back_to_the_cpu_with_a_message(scene, phantom, tiny_weights, monkeypatch):
    node = add_ct(scene, phantom)
    logic = MnetImSegmentLogic()
    real = MnetImSegmentLogic._segmenter

    class FailingGpu:
        def segment(self, *args, **kwargs):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def segmenter(self, weights, device):
        return FailingGpu() if device.startswith("cuda") else real(self, weights, device)

    monkeypatch.setattr(MnetImSegmentLogic, "resolveDevice", staticmethod(lambda device: "cuda"))
    monkeypatch.setattr(MnetImSegmentLogic, "_segmenter", segmenter)
    messages = []
    run = logic.runEngine(logic.prepareInput(node), weights=tiny_weights, device="auto",
                          progressCallback=lambda f, m: messages.append(m))
    assert run.device == "cpu"
    assert run.warnings and "CPU instead" in run.warnings[0] and "out of memory" in run.warnings[0]
    assert any("CPU instead" in m for m in messages)
    seg = logic.createOutput(node, run)
    assert tag(seg.GetSegmentation().GetSegment(ctv_id(seg)), "MnetImSegment.Device") == "cpu"

    class BrokenModel:
        def segment(self, *args, **kwargs):
            raise ValueError("a bug, not a GPU problem")

    monkeypatch.setattr(MnetImSegmentLogic, "_segmenter", lambda self, weights, device: BrokenModel())
    with pytest.raises(ValueError):  # only CUDA failures fall back; bugs surface
        logic.runEngine(logic.prepareInput(node), weights=tiny_weights, device="auto")
