"""The MRML bridge: a CT volume node in, a segmentation node with one ``CTV`` segment out.

This is the only place where Slicer's RAS world meets the engine's LPS world (``volume.py``):

* volume node -> ``slicer.util.arrayFromVolume`` (already (k, j, i) = (z, y, x) order) plus the node's
  IJK-to-RAS matrix, turned into an engine :class:`~MnetImSegmentLib.volume.Geometry` by
  ``IJKToLPS = diag(-1, -1, 1, 1) @ IJKToRAS``;
* engine mask -> a ``vtkOrientedImageData`` carrying the *same* IJK-to-RAS matrix the voxels came
  with -> the segment's binary labelmap. The mask lives on the input's own voxel grid, so no
  resampling happens in either direction and any direction matrix (oblique, flipped, anisotropic)
  round-trips exactly.

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

import importlib.util
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
import slicer.util

from . import __version__
from .errors import Cancelled, InputError, MnetImError, WeightsError
from .inference import SegmentationResult, threshold_mask
from .io import CTV_COLOR, CTV_TERMINOLOGY, segmentation_tags
from .volume import Geometry, Volume
from .weights import CARD, TENSORS, ModelCard, default_weights_dir, read_card

SEGMENT_NAME = "CTV"
TAG_PREFIX = "MnetImSegment."
LARGEST_COMPONENT_TAG = TAG_PREFIX + "LargestComponent"
THRESHOLD_TAG = TAG_PREFIX + "Threshold"
PROBABILITY_REFERENCE_ROLE = "MnetImSegment.probabilityVolume"

# Threshold range the GUI offers and re-thresholding accepts. The kept probability map is cropped
# to where it reaches MIN_THRESHOLD, so any threshold in range gives exactly the mask the engine
# would give on the full map.
MIN_THRESHOLD = 0.01
MAX_THRESHOLD = 0.99

# RAS = diag(-1, -1, 1) LPS, and the matrix is its own inverse.
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# How many kept probability maps the logic holds in memory (a few MB each: only the ROI box).
MAX_KEPT_RESULTS = 8

ProgressCallback = Callable[[float, str], None]
CancelArg = Union[None, Callable[[], bool], threading.Event]


# --------------------------------------------------------------------------- geometry
def geometryFromIJKToRAS(ijkToRas) -> Geometry:
    """Engine geometry (LPS, SimpleITK conventions) of a voxel grid given by its IJK-to-RAS matrix.

    Args:
        ijkToRas: 4x4 numpy array or ``vtkMatrix4x4``.

    Returns:
        The :class:`Geometry` whose ``index_to_physical_matrix()`` is ``diag(-1, -1, 1, 1) @ ijkToRas``.
    """
    m = _asArray(ijkToRas)
    ijkToLps = LPS_RAS @ m
    axes = ijkToLps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if not np.all(spacing > 0):
        raise InputError(f"The volume's IJK-to-RAS matrix has a zero-length axis (spacing {spacing.round(4).tolist()}).")
    return Geometry(spacing, ijkToLps[:3, 3], (axes / spacing).ravel())


def ijkToRASFromGeometry(geometry: Geometry) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of an engine geometry (inverse of :func:`geometryFromIJKToRAS`)."""
    return LPS_RAS @ geometry.index_to_physical_matrix()


def _asArray(matrix) -> np.ndarray:
    if isinstance(matrix, vtk.vtkMatrix4x4):
        return slicer.util.arrayFromVTKMatrix(matrix).astype(float)
    return np.asarray(matrix, dtype=float).reshape(4, 4)


def _vtkMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    slicer.util.updateVTKMatrixFromArray(m, np.asarray(array, dtype=float))
    return m


def nodeIJKToRAS(volumeNode) -> np.ndarray:
    """The volume node's IJK-to-RAS matrix as a 4x4 numpy array (its own, without parent transforms)."""
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m).astype(float)


def _orientedImage(mask: np.ndarray, ijkToRas: np.ndarray):
    """A uint8 ``vtkOrientedImageData`` holding a (z, y, x) mask on the grid ``ijkToRas`` describes.

    Carrying the geometry in the image itself is why no temporary labelmap node is needed. Only the
    mask's bounding box (plus one voxel, so surfaces close) is handed over, as a VTK extent on the
    same grid: the CTV fills ~0.2 % of a CT, and Slicer's copy and closed-surface conversion cost
    what the extent holds, not what the segment holds.
    """
    nz, ny, nx = mask.shape
    box = [(0, n - 1) for n in (nz, ny, nx)]
    if mask.any():
        box = []
        for axis, n in enumerate((nz, ny, nx)):
            hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            box.append((max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 1, n - 1)))
    (k0, k1), (j0, j1), (i0, i1) = box
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i1, j0, j1, k0, k1)
    # Share the (cropped) mask's memory: Slicer copies the voxels into the segment anyway.
    # numpy_to_vtk keeps a reference to the array for as long as VTK holds it.
    flat = np.ascontiguousarray(mask[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1], np.uint8).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=False, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(_vtkMatrix(ijkToRas))
    return image


# --------------------------------------------------------------------------- data holders
@dataclass
class PreparedInput:
    """A validated copy of the input CT, taken on the main thread, safe to hand to a worker."""

    volume: Volume
    ijkToRas: np.ndarray
    volumeNodeID: str
    name: str


@dataclass
class EngineRun:
    """What :meth:`MnetImSegmentLogic.runEngine` produced, plus how it was produced."""

    result: SegmentationResult
    card: ModelCard
    weights: Path
    largestComponent: bool
    device: str
    warnings: list = field(default_factory=list)
    prepared: Optional[PreparedInput] = None

    @property
    def seconds(self) -> float:
        return float(self.result.seconds.get("total", 0.0))


@dataclass
class _KeptProbability:
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
    def fromFullMap(cls, probability: np.ndarray, within=None, **kwargs) -> "_KeptProbability":
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


def _cancelFunction(cancel) -> Optional[Callable[[], bool]]:
    if cancel is None:
        return None
    if hasattr(cancel, "is_set"):  # threading.Event
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise TypeError("cancel must be None, a callable returning True to stop, or a threading.Event.")


# --------------------------------------------------------------------------- the logic
class MnetImSegmentLogic:
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
        self._segmenters = {}
        self._kept: "OrderedDict[str, _KeptProbability]" = OrderedDict()
        self.lastWarnings: list[str] = []

    # ------------------------------------------------------------------ dependencies
    @staticmethod
    def missingDependencies() -> list[str]:
        """Python packages the network needs that this Python cannot import (pip names)."""
        needed = {"torch": "torch", "safetensors": "safetensors", "SimpleITK": "SimpleITK"}
        return [pip for module, pip in needed.items() if importlib.util.find_spec(module) is None]

    def checkDependencies(self) -> None:
        """Raise a clear error if a package the network needs is missing."""
        missing = self.missingDependencies()
        if not missing:
            return
        if "torch" in missing:
            raise MnetImError(
                "PyTorch is not installed in Slicer's Python. Click 'Segment CTV' in the MnetImSegment module to "
                "install it (through the PyTorch extension when it is installed), or install it from the "
                "PyTorch Utils module; then try again."
            )
        raise MnetImError(
            f"The Python package(s) {', '.join(missing)} are missing. Click 'Segment CTV' in the MnetImSegment "
            f"module to install them, or run slicer.util.pip_install('{' '.join(missing)}') in the Python console."
        )

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def validateInput(inputVolume) -> None:
        """Raise :class:`InputError` with one clear sentence if ``inputVolume`` is not a usable CT node."""
        if inputVolume is None:
            raise InputError("No input volume: select the CT volume to segment.")
        if not hasattr(inputVolume, "IsA") or not inputVolume.IsA("vtkMRMLVolumeNode"):
            kind = inputVolume.GetClassName() if hasattr(inputVolume, "GetClassName") else type(inputVolume).__name__
            raise InputError(f"The input must be a CT volume node, not a {kind}.")
        name = inputVolume.GetName()
        if inputVolume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError(f"'{name}' is a labelmap volume (a segmentation), not a CT: select the CT image volume.")
        if not inputVolume.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(f"'{name}' is a {inputVolume.GetClassName()}, not a scalar CT volume.")
        image = inputVolume.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise InputError(f"'{name}' has no voxels (it is empty or not loaded yet).")
        components = image.GetNumberOfScalarComponents()
        if components != 1 or inputVolume.IsA("vtkMRMLVectorVolumeNode"):
            raise InputError(f"'{name}' has {components} values per voxel (a colour or vector image); "
                             "a scalar CT volume in Hounsfield units is needed.")
        dims = image.GetDimensions()
        if min(dims) < 2:
            raise InputError(f"'{name}' is a single 2D image ({dims[0]} x {dims[1]} x {dims[2]} voxels); "
                             "a 3D CT volume with several slices is needed.")
        if inputVolume.GetScene() is None:
            raise InputError(f"'{name}' is not in the scene (was it removed?); select the CT again.")

    def prepareInput(self, inputVolume) -> PreparedInput:
        """Validate ``inputVolume`` and copy its voxels and geometry for the engine (main thread).

        The copy is what makes the input safe: the engine and the worker thread never see the
        node's own buffer, so nothing can modify the user's CT.
        """
        self.validateInput(inputVolume)
        ijkToRas = nodeIJKToRAS(inputVolume)
        geometry = geometryFromIJKToRAS(ijkToRas)
        array = np.array(slicer.util.arrayFromVolume(inputVolume), copy=True)
        return PreparedInput(Volume(array, geometry), ijkToRas, inputVolume.GetID(), inputVolume.GetName())

    @staticmethod
    def resolveWeights(weights=None) -> Path:
        """The weights folder to use (``None``, '' or '.' mean the shipped demo weights), with a valid card."""
        if weights is None or str(weights).strip() in ("", "."):
            folder = default_weights_dir()
        else:
            folder = Path(weights).expanduser()
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
        import torch

        requested = (device or "auto").strip().lower()
        if requested == "gpu":
            requested = "cuda"
        if requested == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cpu":
            return "cpu"
        if requested.startswith("cuda"):
            if torch.cuda.is_available():
                return requested
            if getattr(torch.version, "cuda", None) is None:
                why = (f"the installed PyTorch {torch.__version__} is a CPU-only build (reinstall PyTorch with "
                       "the PyTorch Utils module to get a CUDA build)")
            else:
                why = "PyTorch finds no usable NVIDIA GPU or driver"
            raise MnetImError(f"A GPU (CUDA) was requested but {why}; choose device 'auto' or 'CPU'.")
        raise MnetImError(f"Unknown device '{device}': choose auto, cpu or cuda.")

    # ------------------------------------------------------------------ phase 2: the network
    def _segmenter(self, weights: Path, device: str):
        """A cached engine Segmenter; the key includes the files' times so a replaced model reloads."""
        from .inference import Segmenter

        stamp = tuple((weights / f).stat().st_mtime_ns for f in (TENSORS, CARD))
        key = (str(weights.resolve()), device, stamp)
        segmenter = self._segmenters.get(key)
        if segmenter is None:
            # One model per device is plenty; holding stale ones would only hold GPU memory.
            for old in [k for k in self._segmenters if k[1] == device]:
                del self._segmenters[old]
            segmenter = Segmenter(weights, device=device)
            self._segmenters[key] = segmenter
        return segmenter

    def _forgetSegmenters(self, device: str) -> None:
        for key in [k for k in self._segmenters if k[1] == device]:
            del self._segmenters[key]

    @staticmethod
    def _isCudaFailure(exc: BaseException) -> bool:
        try:
            import torch

            if isinstance(exc, torch.cuda.OutOfMemoryError):
                return True
        except (ImportError, AttributeError):
            pass
        if not isinstance(exc, RuntimeError):
            return False
        text = str(exc)
        return any(word in text for word in ("CUDA", "cuDNN", "CUBLAS", "cublas", "out of memory"))

    def runEngine(self, prepared: PreparedInput, weights=None, device: str = "auto", threshold: Optional[float] = None,
                  largestComponent: Optional[bool] = None, progressCallback: Optional[ProgressCallback] = None,
                  cancel: CancelArg = None) -> EngineRun:
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

        Raises:
            Cancelled: The run was cancelled; nothing was produced.
            MnetImError: With a message for the user (input, weights, device, dependencies).
        """
        self.checkDependencies()
        isCancelled = _cancelFunction(cancel)
        report = progressCallback or (lambda fraction, message: None)
        folder = self.resolveWeights(weights)
        resolved = self.resolveDevice(device)
        card = read_card(folder)
        if threshold is not None and not (0.0 < float(threshold) < 1.0):
            raise InputError(f"The threshold must lie strictly between 0 and 1, got {threshold}.")
        keepLargest = card.largest_component if largestComponent is None else bool(largestComponent)
        warnings = []

        def attempt(dev: str) -> SegmentationResult:
            if isCancelled is not None and isCancelled():
                raise Cancelled("Segmentation cancelled; the scene was not changed.")
            report(0.0, f"loading {card.label} on {dev}")
            segmenter = self._segmenter(folder, dev)
            # The probability map is always kept: it is what makes re-thresholding instant.
            return segmenter.segment(prepared.volume, threshold=threshold, largest_component=keepLargest,
                                     keep_probability=True, progress=report, cancel=isCancelled)

        try:
            result = attempt(resolved)
        except Cancelled:
            raise
        except Exception as exc:
            if not (resolved.startswith("cuda") and self._isCudaFailure(exc)):
                raise
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            message = f"The GPU failed ({first}); segmenting on the CPU instead."
            logging.warning(message)
            warnings.append(message)
            report(0.0, message)
            self._forgetSegmenters(resolved)
            try:
                import torch

                torch.cuda.empty_cache()
            except Exception:  # the GPU is already in trouble; freeing its cache is best effort
                pass
            resolved = "cpu"
            result = attempt(resolved)
        if isCancelled is not None and isCancelled():
            raise Cancelled("Segmentation cancelled; the scene was not changed.")
        self.lastWarnings = warnings
        return EngineRun(result, card, folder, keepLargest, resolved, warnings, prepared)

    # ------------------------------------------------------------------ phase 3: MRML output
    def createOutput(self, inputVolume, run: EngineRun, outputSegmentation=None, keepProbability: bool = False):
        """Write an engine result into the scene (main thread) and return the segmentation node.

        Args:
            inputVolume: The CT the result was computed from (it must still have the same grid).
            run: From :meth:`runEngine`.
            outputSegmentation: ``None`` creates a new node (the default: nothing the user has is
                overwritten); a node the user picked gets its ``CTV`` segment replaced or added and
                keeps its other segments.
            keepProbability: Also add the probability map as a scalar volume node.
        """
        self.validateInput(inputVolume)
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
            if not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
                raise InputError(f"The output must be a segmentation node, not a {outputSegmentation.GetClassName()}.")
            if outputSegmentation.GetScene() is not scene:
                raise InputError(f"The output segmentation '{outputSegmentation.GetName()}' is not in the CT's scene "
                                 "(was it removed?); choose the output again.")

        created = []
        try:
            if outputSegmentation is None:
                segNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                  scene.GenerateUniqueName(f"{inputVolume.GetName()} CTV"))
                created.append(segNode)
                segNode.CreateDefaultDisplayNodes()
                self._placeBeside(segNode, inputVolume)
                if inputVolume.GetTransformNodeID():  # keep the contour on the CT if the CT is transformed
                    segNode.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            else:
                segNode = outputSegmentation
            segNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
            segmentId = self._writeCTV(segNode, result.mask.array, ijkToRas)
            self._tagCTV(segNode, segmentId, run, result.threshold)
            segNode.CreateClosedSurfaceRepresentation()

            kept = _KeptProbability.fromFullMap(result.probability.array, within=result.probability_box,
                                                ijkToRas=ijkToRas, segmentId=segmentId,
                                                largestComponent=run.largestComponent)
            kept.remember(result.mask.array)
            if keepProbability:
                probNode = self._addProbabilityVolume(inputVolume, result.probability.array, ijkToRas)
                created.append(probNode)
                segNode.SetNodeReferenceID(PROBABILITY_REFERENCE_ROLE, probNode.GetID())
            elif outputSegmentation is not None:
                # A stale probability volume from an earlier run must not drive re-thresholding.
                segNode.RemoveNodeReferenceIDs(PROBABILITY_REFERENCE_ROLE)
        except BaseException:
            for node in reversed(created):
                scene.RemoveNode(node)
            raise
        self._keep(segNode.GetID(), kept)
        return segNode

    def _writeCTV(self, segNode, mask: np.ndarray, ijkToRas: np.ndarray) -> str:
        """Put ``mask`` into the node's ``CTV`` segment (created if absent); return the segment ID."""
        segmentation = segNode.GetSegmentation()
        labelmapName = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        if segmentation.GetNumberOfSegments() and segmentation.GetSourceRepresentationName() != labelmapName:
            # e.g. a node loaded from RTSTRUCT (planar contours): voxels can only be written to labelmaps.
            segNode.CreateBinaryLabelmapRepresentation()
            segmentation.SetSourceRepresentationName(labelmapName)
        segmentId = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME)
        if not segmentId:
            # A segment with ID "CTV" may exist under another name (the user renamed it): keep it.
            wanted = SEGMENT_NAME
            if segmentation.GetSegment(SEGMENT_NAME) is not None:
                wanted = segmentation.GenerateUniqueSegmentID(SEGMENT_NAME)
            segmentId = segmentation.AddEmptySegment(wanted, SEGMENT_NAME, list(CTV_COLOR))
            if not segmentId:
                raise MnetImError("Slicer could not add a segment to the segmentation (is the Segmentations "
                                  "module logic available?).")
        ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            _orientedImage(mask, ijkToRas), segNode, segmentId,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None)
        if not ok:
            raise MnetImError(f"Slicer could not write the CTV into '{segNode.GetName()}'.")
        return segmentId

    @staticmethod
    def _tagCTV(segNode, segmentId: str, run: EngineRun, threshold: float) -> None:
        segment = segNode.GetSegmentation().GetSegment(segmentId)
        segment.SetName(SEGMENT_NAME)
        segment.SetNameAutoGenerated(False)
        segment.SetColor(*CTV_COLOR)
        segment.SetColorAutoGenerated(False)
        segment.SetTerminology(CTV_TERMINOLOGY)
        card = run.card
        tags = segmentation_tags(card.label, threshold, {
            TAG_PREFIX + "ModelName": str(card.raw.get("name", "")),
            TAG_PREFIX + "ModelVersion": str(card.raw.get("version", "")),
            TAG_PREFIX + "Architecture": card.architecture,
            LARGEST_COMPONENT_TAG: "true" if run.largestComponent else "false",
            TAG_PREFIX + "Device": run.device,
            TAG_PREFIX + "RoiMethod": run.result.roi.method,
            TAG_PREFIX + "Software": f"MnetImSegment {__version__}",
        })
        for key, value in tags.items():
            segment.SetTag(key, value)

    @staticmethod
    def _placeBeside(node, besideNode) -> None:
        """Put ``node`` under the subject hierarchy parent (the study) of ``besideNode``.

        DICOM RTSTRUCT export offers the segmentations that share the CT's study.
        """
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(besideNode.GetScene())
        if sh is None:
            return
        besideItem = sh.GetItemByDataNode(besideNode)
        if not besideItem:
            return
        parent = sh.GetItemParent(besideItem)
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, parent)
        else:  # a scene without Slicer's subject hierarchy plugins does not create items by itself
            sh.CreateItem(parent, node)

    def _addProbabilityVolume(self, inputVolume, probability: np.ndarray, ijkToRas: np.ndarray):
        scene = inputVolume.GetScene()
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                       scene.GenerateUniqueName(f"{inputVolume.GetName()} CTV probability"))
        try:
            slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(probability, np.float32))
            node.SetIJKToRASMatrix(_vtkMatrix(ijkToRas))
            if inputVolume.GetTransformNodeID():
                node.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            if display is not None:
                display.AutoWindowLevelOff()
                display.SetWindowLevelMinMax(0.0, 1.0)
            self._placeBeside(node, inputVolume)
        except BaseException:
            scene.RemoveNode(node)
            raise
        return node

    def _keep(self, nodeId: str, kept: _KeptProbability) -> None:
        self._kept[nodeId] = kept
        self._kept.move_to_end(nodeId)
        while len(self._kept) > MAX_KEPT_RESULTS:
            self._kept.popitem(last=False)

    # ------------------------------------------------------------------ all phases
    def process(self, inputVolume, outputSegmentation=None, device: str = "auto", threshold: Optional[float] = None,
                progressCallback: Optional[ProgressCallback] = None, weights=None,
                largestComponent: Optional[bool] = None, keepProbability: bool = False, cancel: CancelArg = None):
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

        Raises:
            Cancelled: Cancelled by ``cancel``; the scene is unchanged.
            MnetImError: A message for the user; the scene is unchanged.
        """
        start = time.perf_counter()
        prepared = self.prepareInput(inputVolume)
        run = self.runEngine(prepared, weights=weights, device=device, threshold=threshold,
                             largestComponent=largestComponent, progressCallback=progressCallback, cancel=cancel)
        segNode = self.createOutput(inputVolume, run, outputSegmentation, keepProbability=keepProbability)
        logging.info(f"MnetImSegment: CTV {run.result.volume_ml:.1f} ml in '{segNode.GetName()}' "
                     f"({time.perf_counter() - start:.1f} s on {run.device}, {run.card.label})")
        return segNode

    # ------------------------------------------------------------------ re-thresholding
    def _keptFor(self, segNode) -> Optional[_KeptProbability]:
        kept = self._kept.get(segNode.GetID())
        if kept is not None:
            return kept
        # After a scene reload the memory is gone, but a probability volume the user kept still works.
        probNode = segNode.GetNodeReference(PROBABILITY_REFERENCE_ROLE)
        segmentation = segNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME)
        if probNode is None or probNode.GetImageData() is None or not segmentId:
            return None
        segment = segmentation.GetSegment(segmentId)
        largestText = self._tag(segment, LARGEST_COMPONENT_TAG)
        thresholdText = self._tag(segment, THRESHOLD_TAG)
        ijkToRas = nodeIJKToRAS(probNode)
        kept = _KeptProbability.fromFullMap(slicer.util.arrayFromVolume(probNode).astype(np.float32),
                                            ijkToRas=ijkToRas, segmentId=segmentId,
                                            largestComponent=largestText != "false")
        if thresholdText:
            kept.remember(kept.mask(float(thresholdText)))
        self._keep(segNode.GetID(), kept)
        return kept

    @staticmethod
    def _tag(segment, key: str) -> str:
        value = vtk.reference("")
        return str(value) if segment.GetTag(key, value) else ""

    def hasProbability(self, segNode) -> bool:
        """Whether :meth:`rethreshold` can work on ``segNode`` (a result of this logic or with a kept map)."""
        return segNode is not None and self._keptFor(segNode) is not None

    def _segmentUnchanged(self, segNode, kept: _KeptProbability) -> bool:
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
        kept = self._keptFor(segmentationNode)
        if kept is None:
            raise MnetImError(f"'{segmentationNode.GetName()}' has no probability map to re-threshold; run "
                              "'Segment CTV' again (tick 'keep probability map' to keep it with the scene).")
        if segmentationNode.GetSegmentation().GetSegment(kept.segmentId) is None:
            raise MnetImError(f"The CTV segment of '{segmentationNode.GetName()}' was deleted; run 'Segment CTV' again.")
        if not self._segmentUnchanged(segmentationNode, kept):
            raise MnetImError(f"The CTV in '{segmentationNode.GetName()}' was edited after it was computed; "
                              "re-thresholding would discard those edits, so it was not changed. Run "
                              "'Segment CTV' again for a new segmentation.")
        mask = kept.mask(threshold)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            _orientedImage(mask, kept.ijkToRas), segmentationNode, kept.segmentId,
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
            self._kept.clear()
            self._segmenters.clear()
        else:
            self._kept.pop(segmentationNode.GetID(), None)
