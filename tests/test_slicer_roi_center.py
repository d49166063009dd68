"""The ROI centre given as a placed markups point (issue 12), on REAL MRML scenes from slicer-core.

Geometry: the first placed point's world position, under oblique, flipped and scaled parent
transforms (nested too), is read back in LPS; with the CT itself under a transform the point comes
back in the CT's own frame, checked against a known voxel of an oblique, flipped, anisotropic grid.
Bad input (an empty list, both a point and a list, a non-markups node) is one sentence.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
vtk = pytest.importorskip("vtk")

from MnetImSegmentLib.core.errors import InputError  # noqa: E402
from MnetImSegmentLib.core.volume import Geometry, Volume  # noqa: E402
from MnetImSegmentLib.logic import MnetImSegmentLogic  # noqa: E402
from MnetImSegmentLib.mrml.roi_center import checkCenterInside, resolveRoiCenter, roiCenterFromMarkup  # noqa: E402
from MnetImSegmentLib.research.phantom import rotation_matrix  # noqa: E402
from helpers.slicer_scene import add_volume, scene  # noqa: E402,F401 (scene is a fixture)

LPS_RAS = np.diag([-1.0, -1.0, 1.0])

if not hasattr(slicer, "vtkMRMLMarkupsFiducialNode"):  # pragma: no cover - depends on the slicer-core build
    pytest.skip("this slicer-core build has no markups (vtkMRMLMarkupsFiducialNode)", allow_module_level=True)


def _linear_transform(scene, matrix4, parent=None, name="T"):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    m = vtk.vtkMatrix4x4()
    slicer.util.updateVTKMatrixFromArray(m, np.asarray(matrix4, float))
    node.SetMatrixTransformToParent(m)
    if parent is not None:
        node.SetAndObserveTransformNodeID(parent.GetID())
    return node


def _oblique_flipped(translation=(12.0, -30.0, 45.0), scale=(1.0, 1.0, 1.0)):
    """A 4x4 local->parent matrix: rotated off every axis, mirrored (det < 0), optionally scaled."""
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(10, -25, 33) @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(scale)
    m[:3, 3] = translation
    assert np.linalg.det(m[:3, :3]) < 0
    return m


def _points(scene, *ras, name="ROI centre"):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for point in ras:
        node.AddControlPoint(*[float(v) for v in point])
    return node


def test_first_point_in_lps_without_transform(scene):
    node = _points(scene, (10.0, -20.5, 33.0), (99.0, 99.0, 99.0))
    assert roiCenterFromMarkup(node) == pytest.approx((-10.0, 20.5, 33.0))
    assert roiCenterFromMarkup(None) is None


def test_point_under_nested_oblique_flipped_transforms_is_read_at_its_world_position(scene):
    outer = _linear_transform(scene, _oblique_flipped(), name="outer")
    inner = _linear_transform(scene, _oblique_flipped((-5.0, 7.0, 2.0), scale=(1.2, 0.9, 1.5)), parent=outer,
                              name="inner")
    local = np.array([14.0, -63.0, 21.0])
    node = _points(scene, local)
    node.SetAndObserveTransformNodeID(inner.GetID())
    outer_m, inner_m = _oblique_flipped(), _oblique_flipped((-5.0, 7.0, 2.0), scale=(1.2, 0.9, 1.5))
    world = (outer_m @ inner_m @ np.append(local, 1.0))[:3]
    assert not np.allclose(world, local, atol=1.0)  # the transforms really move the point
    assert np.asarray(roiCenterFromMarkup(node)) == pytest.approx(LPS_RAS @ world, abs=1e-6)


def test_point_comes_back_in_the_frame_of_a_transformed_ct(scene):
    # A known voxel of an oblique, flipped, anisotropic CT; the CT and the point list sit under
    # different transforms, and the point is placed where that voxel is shown in the world.
    direction = rotation_matrix(0, 8, 15) @ np.diag([-1.0, 1.0, -1.0])
    geometry = Geometry((0.8, 1.1, 2.7), (40.0, -12.0, 300.0), direction.ravel())
    ct = add_volume(scene, Volume(np.zeros((20, 30, 40), np.int16), geometry), "CT")
    ct_parent = _linear_transform(scene, _oblique_flipped(), name="CT registration")
    ct.SetAndObserveTransformNodeID(ct_parent.GetID())
    points_parent = _linear_transform(scene, _oblique_flipped((3.0, 4.0, -8.0)), name="points frame")

    ijk = np.array([17.0, 9.0, 6.0])
    voxel_lps = geometry.index_to_physical(ijk)
    voxel_world = (_oblique_flipped() @ np.append(LPS_RAS @ voxel_lps, 1.0))[:3]
    in_points_frame = np.linalg.solve(_oblique_flipped((3.0, 4.0, -8.0)), np.append(voxel_world, 1.0))[:3]
    node = _points(scene, in_points_frame)
    node.SetAndObserveTransformNodeID(points_parent.GetID())

    center = roiCenterFromMarkup(node, ct)
    assert np.asarray(center) == pytest.approx(voxel_lps, abs=1e-6)
    assert geometry.physical_to_index(center) == pytest.approx(ijk, abs=1e-6)
    # Without the CT as frame it is the world position: the CT's transform is not ignored silently.
    assert not np.allclose(roiCenterFromMarkup(node), voxel_lps, atol=1.0)
    assert MnetImSegmentLogic.resolveRoiCenter(roiCenterNode=node, inputVolume=ct) == pytest.approx(voxel_lps)


def test_the_first_placed_point_is_used_not_one_still_being_placed(scene):
    node = _points(scene, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), (7.0, 8.0, 9.0))
    node.SetNthControlPointPosition(0, 1.0, 2.0, 3.0, node.PositionPreview)  # the mouse is still moving it
    node.UnsetNthControlPointPosition(1)  # a point whose position the user cleared
    assert roiCenterFromMarkup(node) == pytest.approx((-7.0, -8.0, 9.0))


def test_an_empty_point_list_is_one_clear_sentence(scene):
    node = _points(scene, name="my centre")
    with pytest.raises(InputError) as refusal:
        roiCenterFromMarkup(node)
    text = str(refusal.value)
    assert "'my centre' has no placed point" in text and text.count(".") == 1 and "\n" not in text
    preview_only = _points(scene, (1.0, 2.0, 3.0))
    preview_only.SetNthControlPointPosition(0, 1.0, 2.0, 3.0, preview_only.PositionPreview)
    with pytest.raises(InputError, match="no placed point"):
        roiCenterFromMarkup(preview_only)


def test_bad_roi_centre_arguments(scene):
    node = _points(scene, (1.0, 2.0, 3.0))
    with pytest.raises(InputError, match="not both"):
        resolveRoiCenter((1.0, 2.0, 3.0), node)
    with pytest.raises(InputError, match="markups point list, not a vtkMRMLScalarVolumeNode"):
        roiCenterFromMarkup(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))
    for bad in ((1.0, 2.0), (1.0, float("nan"), 3.0), "1,2,3"):
        with pytest.raises(InputError, match="three finite numbers"):
            resolveRoiCenter(bad)
    assert resolveRoiCenter([1, 2, 3]) == (1.0, 2.0, 3.0)
    assert resolveRoiCenter() is None


def test_a_centre_outside_the_ct_is_refused():
    direction = rotation_matrix(0, 8, 15) @ np.diag([-1.0, 1.0, -1.0])
    geometry = Geometry((0.8, 1.1, 2.7), (40.0, -12.0, 300.0), direction.ravel())
    shape = (20, 30, 40)
    inside = geometry.index_to_physical([39.4, 0.0, 19.0])
    checkCenterInside(tuple(inside), geometry, shape, "CT")
    checkCenterInside(None, geometry, shape, "CT")
    outside = geometry.index_to_physical([20.0, 15.0, 21.0])  # two slices past the last one
    with pytest.raises(InputError, match="lies outside 'CT'"):
        checkCenterInside(tuple(outside), geometry, shape, "CT")
