"""The previous fraction in the scene: its CTV read off a segmentation node, the carried-over CTV written back.

Only MRML classes (``slicer.vtk*``) and ``slicer.util`` array helpers: runs in Slicer and in slicer-core.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import vtk

import slicer
import slicer.util

from ..core.errors import InputError, MnetImError
from ..core.style import CTV_NAME
from ..engine.fractions import Prior, fuse_result, propagate_loaded
from .geometry import orientedImage
from .phases import EngineRun, PreparedInput

PRIOR_SEGMENT_NAME = "CTV (previous fraction)"
PRIOR_SEGMENT_COLOR = (0.35, 0.65, 1.0)  # blue beside the CTV's colour: the comparison stays readable


def priorSegmentId(segNode) -> str:
    """The approved CTV of a previous fraction's segmentation: segment ``CTV``, else its only segment."""
    if segNode is None or not hasattr(segNode, "IsA") or not segNode.IsA("vtkMRMLSegmentationNode"):
        raise InputError("The previous fraction's CTV must be a segmentation node.")
    segmentation = segNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(CTV_NAME)
    if segmentId:
        return segmentId
    if segmentation.GetNumberOfSegments() == 1:
        return segmentation.GetNthSegmentID(0)
    raise InputError(f"'{segNode.GetName()}' has no segment named '{CTV_NAME}' (and not exactly one segment); "
                     "rename the approved CTV to 'CTV'.")


def segmentMaskOnVolume(segNode, segmentId: str, volumeNode) -> np.ndarray:
    """The segment as a (z, y, x) uint8 array on ``volumeNode``'s voxel grid (Slicer's own export)."""
    scene = volumeNode.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MnetImSegment prior export")
    created = [labelmap]
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentId)
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segNode, ids, labelmap, volumeNode):
            raise MnetImError(f"Slicer could not export the previous fraction's CTV from '{segNode.GetName()}'.")
        created += [scene.GetNodeByID(i) for i in {scene.GetNthNode(k).GetID() for k in range(scene.GetNumberOfNodes())} - before]
        return (slicer.util.arrayFromVolume(labelmap) > 0).astype(np.uint8).copy()
    finally:
        for node in created:
            if node is not None and node.GetScene() is not None:
                scene.RemoveNode(node)


def writePriorSegment(segNode, mask: np.ndarray, ijkToRas: np.ndarray) -> str:
    """Put the carried-over CTV into segment ``PRIOR_SEGMENT_NAME`` (replaced if present); return its ID."""
    segmentation = segNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(PRIOR_SEGMENT_NAME)
    if not segmentId:
        segmentId = segmentation.AddEmptySegment(segmentation.GenerateUniqueSegmentID("CTV_previous_fraction"),
                                                 PRIOR_SEGMENT_NAME, list(PRIOR_SEGMENT_COLOR))
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        orientedImage(mask, ijkToRas), segNode, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None)
    if not ok:
        raise MnetImError(f"Slicer could not write the previous fraction's CTV into '{segNode.GetName()}'.")
    return segmentId


class PreviousFractionMixin:
    """The logic's previous-fraction steps: carry the approved CTV across, show it, fuse it with the network."""

    def propagatePrior(self, prepared: PreparedInput, priorVolume=None, priorSegmentation=None):
        """The previous fraction's CTV carried onto ``prepared``'s grid (main thread), or None without one."""
        if priorVolume is None and priorSegmentation is None:
            return None
        if priorVolume is None or priorSegmentation is None:
            raise InputError("A previous fraction needs both its CT and its approved CTV segmentation.")
        segmentId = priorSegmentId(priorSegmentation)
        priorPrepared = self.prepareInput(priorVolume)
        priorMask = segmentMaskOnVolume(priorSegmentation, segmentId, priorVolume)
        prior = Prior(priorPrepared.volume, priorPrepared.volume.with_array(priorMask), {})
        return propagate_loaded(prior, prepared.volume)

    @staticmethod
    def addPriorSegment(segNode, propagation, ijkToRas) -> str:
        """Show the carried-over CTV as segment "CTV (previous fraction)" of ``segNode``; return its ID."""
        return writePriorSegment(segNode, propagation.mask.array, ijkToRas)

    def fusePrior(self, run: EngineRun, propagation) -> EngineRun:
        """The engine run with its CTV fused with the carried-over prior; warnings and report kept on the logic."""
        result, report = fuse_result(run.result, propagation)
        self.lastPriorReport = report
        warnings = list(run.warnings) + report["warnings"]
        self.lastWarnings = warnings
        self.lastRun = dataclasses.replace(run, result=result, warnings=warnings)
        return self.lastRun

