"""Segmenting in a worker process: the CT out to a file, the worker's result back into an ``EngineRun``.

The bridge's three phases (:mod:`.phases`) stay the same; only phase 2 moves to another process:

1. :func:`startBackgroundRun` writes the prepared input (already LPS, via :mod:`.geometry`) as a
   temporary ``.nrrd`` (``engine.worker.write_request``, SimpleITK), and starts :class:`.worker_client.WorkerProcess`;
2. the caller polls ``run.worker.poll()`` (progress, log, done, error events);
3. :meth:`BackgroundRun.engineRun` reads the mask and probability back, checks they lie on the CT's
   own grid, and returns the same ``EngineRun`` the in-process ``runEngine`` returns, so the scene
   is written by the same ``createOutput``.

Nothing here touches an MRML node: a failed or cancelled run leaves the scene as it was.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.errors import Cancelled, MnetImError
from ..engine.quality import scope_refusal
from ..engine.weights import ModelCard
from ..engine.worker import REQUEST_NAME, read_result, write_request
from .phases import EngineRun, PreparedInput
from .roi_center import SLICER_OVERRIDE_HINT
from .worker_client import WorkerProcess


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
            OutOfScopeError: The CT is out of scope (worded for Slicer: place a point as ROI centre).
            MnetImError: The worker failed or died (its one sentence), or its output is unusable.
        """
        if self.worker.cancelled:
            raise Cancelled("Segmentation cancelled; the scene was not changed.")
        if not self.worker.finished:
            raise MnetImError("The segmentation is still running.")
        if self.worker.result is None:
            event = self.worker.errorEvent or {}
            if event.get("kind") == "OutOfScopeError" and event.get("reasons"):
                raise scope_refusal(event["reasons"], SLICER_OVERRIDE_HINT)
            raise MnetImError(self.worker.error or "The segmentation process failed; the scene was not changed.")
        return readEngineRun(self.worker.result, self.workDir, self.prepared, self.card, self.weights)

    def cleanup(self) -> None:
        """Stop the worker if it still runs and remove the temporary files."""
        self.worker.cleanup()


def startBackgroundRun(prepared: PreparedInput, weights: Path, card: ModelCard, device: str = "auto",
                       threshold: Optional[float] = None, largestComponent: Optional[bool] = None,
                       python: Optional[str] = None, env: Optional[dict] = None,
                       threads: Optional[int] = None, roiCenter=None) -> BackgroundRun:
    """Hand a prepared input to a new worker process and return the running :class:`BackgroundRun`."""
    workDir = Path(tempfile.mkdtemp(prefix="mnetim-run-"))
    worker = WorkerProcess(workDir / REQUEST_NAME, workDir, python=python, env=env)
    try:
        write_request(prepared.volume, workDir, weights, device, threshold, largestComponent, threads, roiCenter)
        worker.start()
    except BaseException:
        worker.cleanup()
        raise
    return BackgroundRun(worker, prepared, card, Path(weights))


def readEngineRun(done: dict, workDir: Path, prepared: PreparedInput, card: ModelCard, weights: Path) -> EngineRun:
    """Rebuild the engine's result from the worker's files and its ``done`` event."""
    result = read_result(done, workDir, prepared.volume)
    result.model = result.model or card.label
    return EngineRun(result, card, Path(weights), bool(done.get("largest_component", card.largest_component)),
                     result.device, list(done.get("warnings") or []), prepared)
