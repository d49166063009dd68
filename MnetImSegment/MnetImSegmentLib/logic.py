"""The MRML bridge: a CT volume node in, a segmentation node with one ``CTV`` segment out.

Slicer's RAS world meets the engine's LPS world in exactly one place, :mod:`.mrml.geometry`: the
mask lives on the input's own voxel grid, so nothing is resampled and any direction matrix
round-trips exactly. :mod:`.mrml.segments` writes the CTV segment, :mod:`.mrml.kept_probability`
keeps probability maps for instant re-thresholding.

The work is split in three phases so that a GUI can run the slow one on a worker thread:

1. :meth:`MnetImSegmentLogic.prepareInput` (main thread): validate and copy the input voxels;
2. :meth:`MnetImSegmentLogic.runEngine` (any thread, touches no MRML node): the network;
3. :meth:`MnetImSegmentLogic.createOutput` (main thread): create or update the segmentation.

:meth:`MnetImSegmentLogic.process` runs the three in a row for scripts and the Python console.
A cancelled or failed run stops before phase 3, so it never leaves a half-made node in the scene.

Only ``vtk``, MRML classes (``slicer.vtk*``), ``slicer.util`` array helpers and the engine are used,
so the same code runs in 3D Slicer and in the ``slicer-core`` wheel the tests use.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

import slicer
import slicer.util

from .core.errors import Cancelled, InputError, MnetImError, WeightsError
from .core.style import CTV_NAME, THRESHOLD_TAG
from .core.volume import Volume
from .engine.device import is_cuda_failure, release_cuda_cache, resolve_device
from .engine.inference import SegmentationResult, SegmenterCache
from .engine.quality import OutOfScopeError
from .engine.weights import TENSORS, ModelCard, read_card, resolve_weights_dir
from .mrml.background import BackgroundRun, startBackgroundRun
from .mrml.dependencies import raiseForMissingDependencies
from .mrml.fractions import PreviousFractionMixin
from .mrml.geometry import geometryFromIJKToRAS, nodeIJKToRAS, orientedImage
from .mrml.kept_probability import (RethresholdingMixin, MAX_THRESHOLD, MIN_THRESHOLD, PROBABILITY_REFERENCE_ROLE, KeptProbabilities,
                                    KeptProbability, segmentUnchanged)
from .mrml.phases import CancelArg, EngineRun, PreparedInput, ProgressCallback, cancelFunction
from .mrml.roi_center import checkCenterInside, resolveRoiCenter, slicerScopeRefusal
from .mrml.segments import (addProbabilityVolume, newSegmentationBeside, tagCTV, validateOutputNode, validateVolumeNode,
                            writeCTV)

SEGMENT_NAME = CTV_NAME


# --------------------------------------------------------------------------- the logic
class MnetImSegmentLogic(PreviousFractionMixin, RethresholdingMixin):
    """CTV segmentation of CT volume nodes with Mnet_Im; usable from the GUI and from scripts.

    Example (Slicer's Python console)::

        from MnetImSegmentLib.logic import MnetImSegmentLogic
        logic = MnetImSegmentLogic()
        seg = logic.process(getNode("CT"), device="auto")
        logic.rethreshold(seg, 0.4)

    The logic keeps loaded models (per weights folder and device) and the probability maps of its
    results (per segmentation node ID) so that re-runs and re-thresholding are fast.
    """

    def __init__(self):
        self._segmenters = SegmenterCache()
        self._kept = KeptProbabilities()
        self.lastWarnings: list[str] = []
        self.lastRun: Optional[EngineRun] = None
        self.lastPriorReport: Optional[dict] = None

    # ------------------------------------------------------------------ dependencies
    @staticmethod
    def missingDependencies() -> list[str]:
        """Python packages the network needs that this Python cannot import (pip names)."""
        needed = {"torch": "torch", "safetensors": "safetensors", "SimpleITK": "SimpleITK"}
        return [pip for module, pip in needed.items() if importlib.util.find_spec(module) is None]

    def checkDependencies(self) -> None:
        """Raise a clear error if a package the network needs is missing."""
        raiseForMissingDependencies(self.missingDependencies())

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def validateInput(inputVolume) -> None:
        """Raise :class:`InputError` with one clear sentence if ``inputVolume`` is not a usable CT node."""
        validateVolumeNode(inputVolume)

    def prepareInput(self, inputVolume) -> PreparedInput:
        """Validate ``inputVolume`` and copy its voxels and geometry for the engine (main thread).

        The copy is what makes the input safe: the engine and the worker thread never see the
        node's own buffer, so nothing can modify the user's CT.
        """
        validateVolumeNode(inputVolume)
        ijkToRas = nodeIJKToRAS(inputVolume)
        geometry = geometryFromIJKToRAS(ijkToRas)
        array = np.array(slicer.util.arrayFromVolume(inputVolume), copy=True)
        return PreparedInput(Volume(array, geometry), ijkToRas, inputVolume.GetID(), inputVolume.GetName())

    @staticmethod
    def resolveRoiCenter(roiCenter=None, roiCenterNode=None, inputVolume=None):
        """The ROI centre (LPS mm, in ``inputVolume``'s own frame) from a point or a markups node, or ``None``.

        Args:
            roiCenter: Three numbers, LPS mm.
            roiCenterNode: A markups point list (``vtkMRMLMarkupsFiducialNode``): its first placed point,
                at its world position (a point list under a transform counts where it is shown).
            inputVolume: The CT the point is for; a CT under a transform gets the point in its own frame.

        Raises:
            InputError: Both were given, or the point list has no placed point (one sentence).
        """
        return resolveRoiCenter(roiCenter, roiCenterNode, inputVolume)

    @staticmethod
    def resolveWeights(weights=None) -> Path:
        """The weights folder to use (``None``, '' or '.' mean the shipped demo weights), with a valid card."""
        folder = resolve_weights_dir(weights)
        read_card(folder)  # raises WeightsError with the reason
        if not (folder / TENSORS).is_file():
            raise WeightsError(f"Weights folder '{folder}' has a model card but no {TENSORS}.")
        return folder

    @staticmethod
    def modelCard(weights=None) -> ModelCard:
        """The model card of a weights folder (cheap: no torch needed), e.g. for its threshold."""
        return read_card(MnetImSegmentLogic.resolveWeights(weights))

    @staticmethod
    def resolveDevice(device: str = "auto") -> str:
        """'auto' -> 'cuda' if PyTorch sees a CUDA GPU, else 'cpu'; 'cuda'/'gpu' without one is an error."""
        return resolve_device(device)

    # ------------------------------------------------------------------ phase 2: the network
    def _segmenter(self, weights: Path, device: str):
        """A cached engine Segmenter (reloaded when the weights files change)."""
        return self._segmenters.get(weights, device)

    def runEngine(self, prepared: PreparedInput, weights=None, device: str = "auto", threshold: Optional[float] = None,
                  largestComponent: Optional[bool] = None, progressCallback: Optional[ProgressCallback] = None,
                  cancel: CancelArg = None, roiCenter=None) -> EngineRun:
        """Run the network on a prepared input. Touches no MRML node, so it may run on a worker thread.

        Args:
            prepared: From :meth:`prepareInput`.
            weights: Weights folder; ``None`` for the shipped demo weights.
            device: 'auto', 'cpu' or 'cuda'. A CUDA failure (out of memory, driver error) falls back to
                the CPU with a warning in ``EngineRun.warnings``.
            threshold: Probability threshold; ``None`` for the model card's.
            largestComponent: Keep only the largest connected component; ``None`` for the card's choice.
            progressCallback: ``progressCallback(fraction, message)``.
            cancel: A callable returning True, or a ``threading.Event``, to stop between batches.
            roiCenter: A point (LPS mm, the CT's own frame) to centre the ROI on; it also segments a CT
                refused as out of scope (the reasons then become warnings). It must lie inside the CT.

        Raises:
            Cancelled: The run was cancelled; nothing was produced.
            OutOfScopeError: The CT is out of scope (no applicator, not a pelvis...) and no roiCenter;
                the sentence tells a Slicer user to place a point as ROI centre.
            MnetImError: With a message for the user (input, weights, device, dependencies).
        """
        self.checkDependencies()
        isCancelled = cancelFunction(cancel)
        report = progressCallback or (lambda fraction, message: None)
        folder = self.resolveWeights(weights)
        resolved = self.resolveDevice(device)
        card = read_card(folder)
        if threshold is not None and not (0.0 < float(threshold) < 1.0):
            raise InputError(f"The threshold must lie strictly between 0 and 1, got {threshold}.")
        keepLargest = card.largest_component if largestComponent is None else bool(largestComponent)
        roiCenter = resolveRoiCenter(roiCenter)
        checkCenterInside(roiCenter, prepared.volume.geometry, prepared.volume.shape, prepared.name)
        warnings = []

        def attempt(dev: str) -> SegmentationResult:
            if isCancelled is not None and isCancelled():
                raise Cancelled("Segmentation cancelled; the scene was not changed.")
            report(0.0, f"loading {card.label} on {dev}")
            segmenter = self._segmenter(folder, dev)
            try:
                # The probability map is always kept: it is what makes re-thresholding instant.
                return segmenter.segment(prepared.volume, threshold=threshold, largest_component=keepLargest,
                                         keep_probability=True, progress=report, cancel=isCancelled,
                                         roi_center=roiCenter)
            except OutOfScopeError as exc:  # the engine's sentence says --roi-center; Slicer's, a placed point
                raise slicerScopeRefusal(exc) from None

        try:
            result = attempt(resolved)
        except Cancelled:
            raise
        except Exception as exc:
            if not (resolved.startswith("cuda") and is_cuda_failure(exc)):
                raise
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            message = f"The GPU failed ({first}); segmenting on the CPU instead."
            logging.warning(message)
            warnings.append(message)
            report(0.0, message)
            self._segmenters.forget(resolved)
            release_cuda_cache()
            resolved = "cpu"
            result = attempt(resolved)
        if isCancelled is not None and isCancelled():
            raise Cancelled("Segmentation cancelled; the scene was not changed.")
        warnings.extend(result.warnings)  # the quality checks' (engine/quality.py); also on the segment's tags
        self.lastWarnings = warnings
        self.lastRun = EngineRun(result, card, folder, keepLargest, resolved, warnings, prepared)
        return self.lastRun

    # ------------------------------------------------------------------ phase 3: MRML output
    def createOutput(self, inputVolume, run: EngineRun, outputSegmentation=None, keepProbability: bool = False,
                     propagation=None):
        """Write an engine result into the scene (main thread) and return the segmentation node.

        Args:
            inputVolume: The CT the result was computed from (it must still have the same grid).
            run: From :meth:`runEngine`.
            outputSegmentation: ``None`` creates a new node (the default: nothing the user has is
                overwritten); a node the user picked gets its ``CTV`` segment replaced or added and
                keeps its other segments.
            keepProbability: Also add the probability map as a scalar volume node.
            propagation: The previous fraction's carried-over CTV (:meth:`propagatePrior`): the CTV is
                fused with it and it is added as segment "CTV (previous fraction)".
        """
        validateVolumeNode(inputVolume)
        if propagation is not None:
            run = self.fusePrior(run, propagation)
        prepared = run.prepared
        if prepared is not None:
            same = (prepared.volumeNodeID == inputVolume.GetID()
                    and np.allclose(nodeIJKToRAS(inputVolume), prepared.ijkToRas, atol=1e-6)
                    and tuple(inputVolume.GetImageData().GetDimensions())[::-1] == prepared.volume.shape)
            if not same:
                raise InputError(f"'{inputVolume.GetName()}' changed (or another volume was selected) while it was "
                                 "being segmented; run the segmentation again.")
            ijkToRas = prepared.ijkToRas
        else:
            ijkToRas = nodeIJKToRAS(inputVolume)
        result = run.result
        if tuple(inputVolume.GetImageData().GetDimensions())[::-1] != result.mask.shape:
            raise InputError("The result does not match the input volume's grid; run the segmentation again.")
        scene = inputVolume.GetScene()
        if outputSegmentation is not None:
            validateOutputNode(outputSegmentation, scene)

        created = []
        try:
            if outputSegmentation is None:
                segNode = newSegmentationBeside(inputVolume)
                created.append(segNode)
            else:
                segNode = outputSegmentation
            segNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
            segmentId = writeCTV(segNode, result.mask.array, ijkToRas)
            tagCTV(segNode, segmentId, run, result.threshold)
            segNode.CreateClosedSurfaceRepresentation()

            kept = KeptProbability.fromFullMap(result.probability.array, within=result.probability_box,
                                               ijkToRas=ijkToRas, segmentId=segmentId,
                                               largestComponent=run.largestComponent)
            kept.remember(result.mask.array)
            if keepProbability:
                probNode = addProbabilityVolume(inputVolume, result.probability.array, ijkToRas)
                created.append(probNode)
                segNode.SetNodeReferenceID(PROBABILITY_REFERENCE_ROLE, probNode.GetID())
            elif outputSegmentation is not None:
                # A stale probability volume from an earlier run must not drive re-thresholding.
                segNode.RemoveNodeReferenceIDs(PROBABILITY_REFERENCE_ROLE)
        except BaseException:
            for node in reversed(created):
                scene.RemoveNode(node)
            raise
        self._kept.keep(segNode.GetID(), kept)
        if propagation is not None:
            self.addPriorSegment(segNode, propagation, ijkToRas)
        return segNode

    # ------------------------------------------------------------------ all phases
    def process(self, inputVolume, outputSegmentation=None, device: str = "auto", threshold: Optional[float] = None,
                progressCallback: Optional[ProgressCallback] = None, weights=None,
                largestComponent: Optional[bool] = None, keepProbability: bool = False, cancel: CancelArg = None,
                roiCenter=None, priorVolume=None, priorSegmentation=None, roiCenterNode=None):
        """Segment the CTV of ``inputVolume``; return the ``vtkMRMLSegmentationNode`` holding segment ``CTV``.

        Args:
            inputVolume: A ``vtkMRMLScalarVolumeNode`` with a CT in Hounsfield units; never modified.
            outputSegmentation: ``None`` (default) creates a new node, even when the same CT was
                segmented before; a given node gets its ``CTV`` segment replaced.
            device: 'auto' (GPU if available), 'cpu' or 'cuda'.
            threshold: Probability threshold; ``None`` for the model card's.
            progressCallback: ``progressCallback(fraction, message)``.
            weights: Weights folder (``model.safetensors`` + ``model.json``); ``None`` for the shipped
                demo weights (synthetic training data, not for clinical use).
            largestComponent: Keep only the largest connected component (``None``: the card's choice).
            keepProbability: Also add the probability map to the scene as a scalar volume.
            cancel: A callable returning True, or a ``threading.Event``, to stop the run.
            roiCenter: A point (LPS mm) to centre the ROI on; it also segments a CT refused as out of
                scope (the reasons then become warnings, status red).
            roiCenterNode: The same as a markups point list (its first placed point); not with ``roiCenter``.
            priorVolume, priorSegmentation: The previous fraction's CT and its approved CTV (segment
                ``CTV``): carried onto this CT, fused with the network, and added as the second segment
                "CTV (previous fraction)" for comparison (``engine.fractions``).

        Raises:
            Cancelled: Cancelled by ``cancel``; the scene is unchanged.
            MnetImError: A message for the user; the scene is unchanged.
        """
        start = time.perf_counter()
        prepared = self.prepareInput(inputVolume)
        roiCenter = resolveRoiCenter(roiCenter, roiCenterNode, inputVolume)
        propagation = self.propagatePrior(prepared, priorVolume, priorSegmentation)
        run = self.runEngine(prepared, weights=weights, device=device, threshold=threshold,
                             largestComponent=largestComponent, progressCallback=progressCallback, cancel=cancel,
                             roiCenter=roiCenter)
        if propagation is not None:
            run = self.fusePrior(run, propagation)
        segNode = self.createOutput(inputVolume, run, outputSegmentation, keepProbability=keepProbability)
        if propagation is not None:
            self.addPriorSegment(segNode, propagation, prepared.ijkToRas)
        logging.info(f"MnetImSegment: CTV {run.result.volume_ml:.1f} ml in '{segNode.GetName()}' "
                     f"({time.perf_counter() - start:.1f} s on {run.device}, {run.card.label})")
        return segNode

    # ------------------------------------------------------------------ phase 2 in a worker process
    def startProcess(self, inputVolume, weights=None, device: str = "auto", threshold: Optional[float] = None,
                     largestComponent: Optional[bool] = None, python: Optional[str] = None,
                     threads: Optional[int] = None, roiCenter=None, roiCenterNode=None) -> BackgroundRun:
        """Start the network on ``inputVolume`` in a separate process (what the GUI uses); see :mod:`.mrml.background`.

        Poll with :meth:`pollProcess`, then call :meth:`finishProcess` (or ``run.cancel()`` and
        ``run.cleanup()``). The scene is touched only by :meth:`finishProcess`. ``roiCenter`` /
        ``roiCenterNode`` are those of :meth:`process`.
        """
        prepared = self.prepareInput(inputVolume)
        roiCenter = resolveRoiCenter(roiCenter, roiCenterNode, inputVolume)
        checkCenterInside(roiCenter, prepared.volume.geometry, prepared.volume.shape, prepared.name)
        folder = self.resolveWeights(weights)
        if threshold is not None and not (0.0 < float(threshold) < 1.0):
            raise InputError(f"The threshold must lie strictly between 0 and 1, got {threshold}.")
        return startBackgroundRun(prepared, folder, read_card(folder), device, threshold, largestComponent, python,
                                  threads=threads, roiCenter=roiCenter)

    @staticmethod
    def pollProcess(run: BackgroundRun) -> list:
        """The worker's events since the last poll: progress, log, then one done or error (never blocks)."""
        return run.poll()

    def finishProcess(self, inputVolume, run: BackgroundRun, outputSegmentation=None, keepProbability: bool = False,
                      propagation=None):
        """Read a finished worker's result into the scene through :meth:`createOutput`; always removes its files.

        Raises:
            Cancelled: The run was cancelled; the scene is unchanged.
            OutOfScopeError: The CT is out of scope (the sentence says how to override in Slicer).
            MnetImError: The worker failed or died (one sentence); the scene is unchanged.
        """
        try:
            engineRun = self.lastRun = run.engineRun()
            self.lastWarnings = list(engineRun.warnings)
            return self.createOutput(inputVolume, engineRun, outputSegmentation, keepProbability=keepProbability,
                                     propagation=propagation)
        finally:
            run.cleanup()
