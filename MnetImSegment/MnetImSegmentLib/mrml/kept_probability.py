"""Kept probability maps: instant re-thresholding of a result, and refusing when the CTV was edited.

A result's probability map is kept (cropped to where it can reach :data:`MIN_THRESHOLD`) per
segmentation node, in a small LRU; after a scene reload it is rebuilt from the probability volume
the node references, if the user kept one. Before re-thresholding, the CTV segment is compared with
the mask last written into it, so an edited CTV is never silently replaced.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
import slicer.util

from ..core.errors import InputError, MnetImError
from ..core.style import CTV_NAME, LARGEST_COMPONENT_TAG, THRESHOLD_TAG
from ..engine.inference import threshold_mask
from .geometry import nodeIJKToRAS, orientedImage

# Threshold range the GUI offers and re-thresholding accepts. The kept probability map is cropped
# to where it reaches MIN_THRESHOLD, so any threshold in range gives exactly the mask the engine
# would give on the full map.
MIN_THRESHOLD = 0.01
MAX_THRESHOLD = 0.99

# How many kept probability maps the logic holds in memory (a few MB each: only the ROI box).
MAX_KEPT_RESULTS = 8

# The node reference from a segmentation node to its probability volume (when the user keeps one).
PROBABILITY_REFERENCE_ROLE = "MnetImSegment.probabilityVolume"


@dataclass
class KeptProbability:
    """The probability map of one result, cropped to where it can matter, for live re-thresholding."""

    probability: np.ndarray  # float32, the box [z0:z1, y0:y1, x0:x1] of the full map
    offset: tuple  # (z0, y0, x0)
    shape: tuple  # the full (z, y, x) shape of the CT grid
    ijkToRas: np.ndarray
    segmentId: str
    largestComponent: bool
    written: Optional[np.ndarray] = None  # the mask last written into the segment, same box
    writtenCount: int = 0

    @classmethod
    def fromFullMap(cls, probability: np.ndarray, within=None, **kwargs) -> "KeptProbability":
        """Keep the part of ``probability`` that can reach any threshold; ``within`` (slices) is
        where the engine says the map can be non-zero, so only that part is scanned."""
        base = np.zeros(3, int)
        region = probability
        if within is not None:
            region = probability[within]
            base = np.array([s.start for s in within])
        reach = region >= MIN_THRESHOLD
        if not reach.any():
            box = np.zeros((0, 0, 0), np.float32)
            return cls(box, (0, 0, 0), tuple(probability.shape), **kwargs)
        spans = [np.flatnonzero(reach.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        lo = base + np.array([s[0] for s in spans])
        hi = base + np.array([s[-1] + 1 for s in spans])
        box = np.ascontiguousarray(probability[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], np.float32)
        return cls(box, tuple(int(v) for v in lo), tuple(probability.shape), **kwargs)

    def mask(self, threshold: float) -> np.ndarray:
        """The full-grid mask at ``threshold``: identical to the engine's own thresholding."""
        full = np.zeros(self.shape, np.uint8)
        if self.probability.size:
            box = threshold_mask(self.probability, threshold, self.largestComponent)
            z0, y0, x0 = self.offset
            bz, by, bx = box.shape
            full[z0:z0 + bz, y0:y0 + by, x0:x0 + bx] = box
        return full

    def remember(self, mask: np.ndarray) -> None:
        z0, y0, x0 = self.offset
        bz, by, bx = self.probability.shape
        self.written = mask[z0:z0 + bz, y0:y0 + by, x0:x0 + bx].astype(bool)
        self.writtenCount = int(np.count_nonzero(mask))


class KeptProbabilities:
    """The kept maps of the most recent results, by segmentation node ID (least recently used dropped)."""

    def __init__(self, maxResults: int = MAX_KEPT_RESULTS):
        self._kept: "OrderedDict[str, KeptProbability]" = OrderedDict()
        self.maxResults = maxResults

    def keep(self, nodeId: str, kept: KeptProbability) -> None:
        self._kept[nodeId] = kept
        self._kept.move_to_end(nodeId)
        while len(self._kept) > self.maxResults:
            self._kept.popitem(last=False)

    def forNode(self, segNode) -> Optional[KeptProbability]:
        """The kept map of ``segNode``: from memory, else rebuilt from its probability volume, else None."""
        kept = self._kept.get(segNode.GetID())
        if kept is None:
            kept = keptFromProbabilityNode(segNode)
            if kept is not None:
                self.keep(segNode.GetID(), kept)
        return kept

    def forget(self, nodeId: Optional[str] = None) -> None:
        """Drop one node's kept map, or all of them."""
        if nodeId is None:
            self._kept.clear()
        else:
            self._kept.pop(nodeId, None)


def segmentTag(segment, key: str) -> str:
    """A segment's tag value ('' when absent)."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else ""


def keptFromProbabilityNode(segNode) -> Optional[KeptProbability]:
    """The kept map rebuilt from the probability volume a segmentation node references (after a scene
    reload the memory is gone, but a probability volume the user kept still works), or None."""
    probNode = segNode.GetNodeReference(PROBABILITY_REFERENCE_ROLE)
    segmentation = segNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(CTV_NAME)
    if probNode is None or probNode.GetImageData() is None or not segmentId:
        return None
    segment = segmentation.GetSegment(segmentId)
    largestText = segmentTag(segment, LARGEST_COMPONENT_TAG)
    thresholdText = segmentTag(segment, THRESHOLD_TAG)
    ijkToRas = nodeIJKToRAS(probNode)
    kept = KeptProbability.fromFullMap(slicer.util.arrayFromVolume(probNode).astype(np.float32),
                                        ijkToRas=ijkToRas, segmentId=segmentId,
                                        largestComponent=largestText != "false")
    if thresholdText:
        kept.remember(kept.mask(float(thresholdText)))
    return kept


def segmentUnchanged(segNode, kept: KeptProbability) -> bool:
    """Whether the CTV segment still holds exactly the voxels this logic last wrote into it."""
    if kept.written is None:
        return False
    image = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segNode, kept.segmentId, image):
        return False
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    if x1 < x0 or y1 < y0 or z1 < z0 or image.GetPointData().GetScalars() is None:
        return kept.writtenCount == 0
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    if not np.allclose(slicer.util.arrayFromVTKMatrix(m), kept.ijkToRas, atol=1e-6):
        return False
    # Segments may share one labelmap layer; this segment's voxels carry its own label value.
    label = segNode.GetSegmentation().GetSegment(kept.segmentId).GetLabelValue()
    current = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(
        z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1) == label
    count = int(np.count_nonzero(current))
    if count != kept.writtenCount:
        return False
    if count == 0:
        return True
    # Compare on the overlap of the segment's extent and the kept box; equal counts plus equal
    # overlap contents (each holding all its voxels) means equal masks.
    wz0, wy0, wx0 = kept.offset
    wz, wy, wx = kept.written.shape
    lo = np.maximum([z0, y0, x0], [wz0, wy0, wx0])
    hi = np.minimum([z1 + 1, y1 + 1, x1 + 1], [wz0 + wz, wy0 + wy, wx0 + wx])
    if np.any(hi <= lo):
        return False
    a = current[lo[0] - z0:hi[0] - z0, lo[1] - y0:hi[1] - y0, lo[2] - x0:hi[2] - x0]
    b = kept.written[lo[0] - wz0:hi[0] - wz0, lo[1] - wy0:hi[1] - wy0, lo[2] - wx0:hi[2] - wx0]
    return int(np.count_nonzero(a)) == count and np.array_equal(a, b)


class RethresholdingMixin:
    """The logic's re-thresholding of kept probability maps (needs ``self._kept`` and ``self._segmenters``)."""

    def hasProbability(self, segNode) -> bool:
        """Whether :meth:`rethreshold` can work on ``segNode`` (a result of this logic or with a kept map)."""
        return segNode is not None and self._kept.forNode(segNode) is not None

    def rethreshold(self, segmentationNode, threshold: float) -> int:
        """Re-threshold a result's kept probability map (no network run); return the CTV voxel count.

        Refuses, rather than silently discarding them, if the CTV was edited since it was computed.

        Raises:
            MnetImError: No probability map is kept for this node, the threshold is out of range,
                the CTV segment is gone, or it was edited.
        """
        if segmentationNode is None:
            raise InputError("No segmentation: run 'Segment CTV' first.")
        threshold = float(threshold)
        if not MIN_THRESHOLD <= threshold <= MAX_THRESHOLD:
            raise InputError(f"The threshold must lie between {MIN_THRESHOLD} and {MAX_THRESHOLD}, got {threshold:g}.")
        kept = self._kept.forNode(segmentationNode)
        if kept is None:
            raise MnetImError(f"'{segmentationNode.GetName()}' has no probability map to re-threshold; run "
                              "'Segment CTV' again (tick 'keep probability map' to keep it with the scene).")
        if segmentationNode.GetSegmentation().GetSegment(kept.segmentId) is None:
            raise MnetImError(f"The CTV segment of '{segmentationNode.GetName()}' was deleted; run 'Segment CTV' again.")
        if not segmentUnchanged(segmentationNode, kept):
            raise MnetImError(f"The CTV in '{segmentationNode.GetName()}' was edited after it was computed; "
                              "re-thresholding would discard those edits, so it was not changed. Run "
                              "'Segment CTV' again for a new segmentation.")
        mask = kept.mask(threshold)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            orientedImage(mask, kept.ijkToRas), segmentationNode, kept.segmentId,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None)
        if not ok:
            raise MnetImError(f"Slicer could not update the CTV in '{segmentationNode.GetName()}'.")
        kept.remember(mask)
        segment = segmentationNode.GetSegmentation().GetSegment(kept.segmentId)
        segment.SetTag(THRESHOLD_TAG, f"{threshold:.4g}")
        return kept.writtenCount

    def forget(self, segmentationNode=None) -> None:
        """Drop kept probability maps (of one node, or all) and loaded models (all) to free memory."""
        if segmentationNode is None:
            self._kept.forget()
            self._segmenters.forget()
        else:
            self._kept.forget(segmentationNode.GetID())
