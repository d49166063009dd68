"""The ROI centre a Slicer user gives as a placed point, and the scope refusal worded for Slicer.

The engine takes the ROI centre as an LPS point in the CT's own frame (``Segmenter.segment(roi_center=)``);
giving one also segments a CT refused as out of scope (``engine.quality``). In Slicer that point is
the first control point of a markups point list ("ROI centre (optional)" in the module panel):

* its *world* position is read (``GetNthControlPointPositionWorld``), so a point list under a
  transform counts where the user sees it;
* it is brought into the CT's own frame, because the engine works on the CT's own IJK-to-RAS matrix
  (:func:`.geometry.nodeIJKToRAS`, parent transforms excluded) and the CTV is placed under the CT's
  transform: a point seen on the transformed CT is the same anatomical point for the engine;
* RAS -> LPS with :data:`.geometry.LPS_RAS`, the sign flip of :mod:`.geometry`.

The engine's refusal tells a command-line user to pass ``--roi-center``; :func:`slicerScopeRefusal`
says the same reasons with the Slicer way to override (place a point).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import vtk

import slicer

from ..core.errors import InputError
from ..core.volume import Geometry
from ..engine.quality import OutOfScopeError, scope_refusal
from .geometry import LPS_RAS

#: How a Slicer user overrides a scope refusal (the end of the refusal's one sentence).
SLICER_OVERRIDE_HINT = ('place a point at the cervix (external os) as "ROI centre (optional)" in the MnetImSegment '
                        'module and run again to segment it anyway')

Point = tuple[float, float, float]


def roiCenterFromMarkup(markupsNode, frameNode=None) -> Optional[Point]:
    """The ROI centre (LPS mm) given by the first placed control point of a markups node.

    Args:
        markupsNode: A markups node (normally a ``vtkMRMLMarkupsFiducialNode``), or ``None``.
        frameNode: The CT volume node the point is for. When it lies under a transform, the point's
            world position is brought into the CT's own frame (the frame the engine works in).
            ``None``: the world frame.

    Returns:
        ``(L, P, S)`` in mm, or ``None`` when ``markupsNode`` is ``None``.

    Raises:
        InputError: The node is not a markups node, or has no placed point.
    """
    if markupsNode is None:
        return None
    if not hasattr(markupsNode, "IsA") or not markupsNode.IsA("vtkMRMLMarkupsNode"):
        kind = markupsNode.GetClassName() if hasattr(markupsNode, "GetClassName") else type(markupsNode).__name__
        raise InputError(f"The ROI centre must be a markups point list, not a {kind}.")
    index = _firstPlacedPoint(markupsNode)
    if index is None:
        raise InputError(f"The ROI centre '{markupsNode.GetName()}' has no placed point: place one at the cervix "
                         "(external os), or set the ROI centre to None.")
    world = [0.0, 0.0, 0.0]
    markupsNode.GetNthControlPointPositionWorld(index, world)
    lps = LPS_RAS[:3, :3] @ worldToNodeFrame(world, frameNode)
    return (float(lps[0]), float(lps[1]), float(lps[2]))


def _firstPlacedPoint(markupsNode) -> Optional[int]:
    """Index of the first control point with a defined position (not one still being placed)."""
    for index in range(markupsNode.GetNumberOfControlPoints()):
        if markupsNode.GetNthControlPointPositionStatus(index) == markupsNode.PositionDefined:
            return index
    return None


def worldToNodeFrame(world, node=None) -> np.ndarray:
    """A world RAS point in ``node``'s own frame (under its parent transforms); unchanged without one."""
    parent = node.GetParentTransformNode() if node is not None else None
    if parent is None:
        return np.asarray(world, dtype=float)
    worldToLocal = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, worldToLocal)
    return np.asarray(worldToLocal.TransformPoint([float(v) for v in world]), dtype=float)


def resolveRoiCenter(roiCenter=None, roiCenterNode=None, frameNode=None) -> Optional[Point]:
    """The ROI centre (LPS mm, the CT's frame) from a point or from a markups node; at most one of them.

    Raises:
        InputError: Both were given, the point is not three finite numbers, or the node has no point.
    """
    if roiCenter is not None and roiCenterNode is not None:
        raise InputError("Give the ROI centre either as a point (roiCenter) or as a markups point list "
                         "(roiCenterNode), not both.")
    if roiCenterNode is not None:
        return roiCenterFromMarkup(roiCenterNode, frameNode)
    if roiCenter is None:
        return None
    try:
        point = tuple(float(v) for v in roiCenter)
    except (TypeError, ValueError):
        point = ()
    if len(point) != 3 or not all(np.isfinite(point)):
        raise InputError(f"The ROI centre must be three finite numbers (LPS mm), got {roiCenter!r}.")
    return point


def checkCenterInside(center: Optional[Point], geometry: Geometry, shape, volumeName: str) -> None:
    """Refuse, in one sentence, an ROI centre outside the CT (e.g. a point placed on another image).

    Args:
        center: LPS mm, or ``None`` (nothing to check).
        geometry: The CT's engine geometry.
        shape: The CT's (z, y, x) shape.
        volumeName: For the message.
    """
    if center is None:
        return
    ijk = geometry.physical_to_index(np.asarray(center, dtype=float))
    extent = np.asarray(shape[::-1], dtype=float)  # (x, y, z) voxels, as ijk
    if np.all(ijk >= -0.5) and np.all(ijk <= extent - 0.5):
        return
    raise InputError(f"The ROI centre (LPS {center[0]:.1f}, {center[1]:.1f}, {center[2]:.1f} mm) lies outside "
                     f"'{volumeName}': place it on that CT, at the cervix (external os).")


def slicerScopeRefusal(error: OutOfScopeError) -> OutOfScopeError:
    """The same refusal, ending with how a Slicer user overrides it (a placed point) instead of ``--roi-center``."""
    if not error.reasons:  # not from engine.quality.refuse: nothing to reword
        return error
    return scope_refusal(error.reasons, SLICER_OVERRIDE_HINT)
