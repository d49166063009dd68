"""Segmenting in a worker process: the CT out to a file, the worker's result back into an ``EngineRun``.

The bridge's three phases (:mod:`.phases`) stay the same; only phase 2 moves to another process:

1. :func:`startBackgroundRun` writes the prepared input (already LPS, via :mod:`.geometry`) as a
   temporary ``.nrrd`` with SimpleITK, writes the worker request and starts :class:`.worker_client.WorkerProcess`;
2. the caller polls ``run.worker.poll()`` (progress, log, done, error events);
3. :meth:`BackgroundRun.engineRun` reads the mask and probability back, checks they lie on the CT's
   own grid, and returns the same ``EngineRun`` the in-process ``runEngine`` returns, so the scene
   is written by the same ``createOutput``.

Nothing here touches an MRML node: a failed or cancelled run leaves the scene as it was.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import Cancelled, MnetImError
from ..core.volume import Volume
from ..engine.inference import SegmentationResult
from ..engine.roi import Roi
from ..engine.weights import ModelCard
from .phases import EngineRun, PreparedInput
from .worker_client import WorkerProcess

INPUT_NAME = "ct.nrrd"
MASK_NAME = "mask.nrrd"
PROBABILITY_NAME = "probability.nrrd"
REQUEST_NAME = "request.json"


@dataclass
class BackgroundRun:
    """A segmentation running in a worker process, and what is needed to read its result back."""

    worker: WorkerProcess
    prepared: PreparedInput
    card: ModelCard
    weights: Path

    @property
    def workDir(self) -> Path:
        return self.worker.workDir

    def poll(self) -> list:
        return self.worker.poll()

    def cancel(self) -> None:
        self.worker.cancel()

    def engineRun(self) -> EngineRun:
        """The finished run as an ``EngineRun`` (the same object the in-process path produces).

        Raises:
            Cancelled: The run was cancelled.
            MnetImError: The worker failed or died (its one sentence), or its output is unusable.
        """
        if self.worker.cancelled:
            raise Cancelled("Segmentation cancelled; the scene was not changed.")
        if not self.worker.finished:
            raise MnetImError("The segmentation is still running.")
        if self.worker.result is None:
            raise MnetImError(self.worker.error or "The segmentation process failed; the scene was not changed.")
        return readEngineRun(self.worker.result, self.workDir, self.prepared, self.card, self.weights)

    def cleanup(self) -> None:
        """Stop the worker if it still runs and remove the temporary files."""
        self.worker.cleanup()


def writeRequest(prepared: PreparedInput, workDir: Path, weights: Path, device: str, threshold: Optional[float],
                 largestComponent: Optional[bool], threads: Optional[int] = None) -> Path:
    """Write the input CT (LPS, SimpleITK conventions) and the worker request into ``workDir``."""
    import SimpleITK as sitk

    image = workDir / INPUT_NAME
    # Uncompressed: the worker reads it once, at once; compressing a 512x512x120 CT costs seconds.
    sitk.WriteImage(prepared.volume.to_sitk(), str(image), False)
    request = {"image": str(image), "weights": str(weights), "device": str(device), "threshold": threshold,
               "largest_component": largestComponent, "mask": str(workDir / MASK_NAME),
               "probability": str(workDir / PROBABILITY_NAME), "threads": threads}
    path = workDir / REQUEST_NAME
    path.write_text(json.dumps(request, indent=1))
    return path


def startBackgroundRun(prepared: PreparedInput, weights: Path, card: ModelCard, device: str = "auto",
                       threshold: Optional[float] = None, largestComponent: Optional[bool] = None,
                       python: Optional[str] = None, env: Optional[dict] = None,
                       threads: Optional[int] = None) -> BackgroundRun:
    """Hand a prepared input to a new worker process and return the running :class:`BackgroundRun`."""
    workDir = Path(tempfile.mkdtemp(prefix="mnetim-run-"))
    worker = WorkerProcess(workDir / REQUEST_NAME, workDir, python=python, env=env)
    try:
        writeRequest(prepared, workDir, weights, device, threshold, largestComponent, threads)
        worker.start()
    except BaseException:
        worker.cleanup()
        raise
    return BackgroundRun(worker, prepared, card, Path(weights))


def readEngineRun(done: dict, workDir: Path, prepared: PreparedInput, card: ModelCard, weights: Path) -> EngineRun:
    """Rebuild the engine's result from the worker's files and its ``done`` event."""
    import SimpleITK as sitk

    try:
        mask = Volume.from_sitk(sitk.ReadImage(str(workDir / MASK_NAME)))
        probabilityBox = sitk.GetArrayFromImage(sitk.ReadImage(str(workDir / PROBABILITY_NAME)))
    except RuntimeError as exc:
        raise MnetImError(f"The segmentation process left no readable result ({str(exc).strip().splitlines()[-1][:160]}).") from None
    if mask.shape != prepared.volume.shape or not mask.geometry.allclose(prepared.volume.geometry, atol=1e-5):
        raise MnetImError("The segmentation process returned a result on another grid than the CT's; run it again.")
    probability = np.zeros(prepared.volume.shape, np.float32)
    box = None
    if done.get("probability_box"):
        box = tuple(slice(int(a), int(b)) for a, b in done["probability_box"])
        if probability[box].shape != probabilityBox.shape:
            raise MnetImError("The segmentation process returned an inconsistent probability map; run it again.")
        probability[box] = probabilityBox
    roiFields = done.get("roi") or {}
    roi = Roi(tuple(roiFields.get("center_lps_mm", (0.0, 0.0, 0.0))), int(roiFields.get("slice_axis", 2)),
              tuple(roiFields.get("slice_range", (0, 0))), str(roiFields.get("method", "")))
    result = SegmentationResult(mask=prepared.volume.with_array(mask.array.astype(np.uint8)),
                                probability=prepared.volume.with_array(probability),
                                threshold=float(done["threshold"]), roi=roi, device=str(done.get("device", "")),
                                seconds=dict(done.get("seconds") or {}), model=str(done.get("model", card.label)),
                                probability_box=box)
    return EngineRun(result, card, Path(weights), bool(done.get("largest_component", card.largest_component)),
                     result.device, list(done.get("warnings") or []), prepared)
