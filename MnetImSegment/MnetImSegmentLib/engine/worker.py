"""The network in a process of its own: ``python -m MnetImSegmentLib.engine.worker REQUEST.json``.

Slicer runs inference here rather than on a thread of its own process: a crash in torch cannot take
the user's unsaved scene with it, the network does not compete with Qt's event loop for the GIL,
and cancelling is ending the process.

The request (JSON) names files only::

    {"image": "ct.nrrd", "weights": "folder", "device": "auto", "threshold": null,
     "largest_component": null, "probability": "probability.nrrd", "mask": "mask.nrrd", "threads": null}

``image`` is a CT in HU (SimpleITK's LPS conventions). On success the mask (uint8, the CT's grid)
and the probability map cropped to the box outside which it is zero are written atomically, then
``done`` is reported. stdout carries only JSON lines, one event each::

    {"event": "progress", "fraction": 0.4, "message": "network: 12/40 slices"}
    {"event": "log", "message": "..."}
    {"event": "done", "threshold": 0.5, "device": "cpu", "model": "...", "seconds": {...},
     "probability_box": [[z0, z1], [y0, y1], [x0, x1]] or null, "warnings": [...], "volume_ml": 12.3}
    {"event": "error", "message": "One sentence.", "kind": "InputError"}
    {"event": "error", "message": "...", "kind": "OutOfScopeError", "reasons": ["no intrauterine applicator ..."]}

The exit status is 0 after ``done`` and non-zero after ``error``. Anything else a library prints
goes to stderr, so it cannot corrupt the event stream.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import Cancelled, InputError, MnetImError
from ..core.files import transaction
from ..core.volume import Geometry, Volume
from .device import is_cuda_failure, release_cuda_cache
from .inference import SegmentationResult, Segmenter
from .io import image_readback_check
from .quality import OutOfScopeError
from .roi import Roi
from .weights import read_card

#: Keys a request must have.
REQUIRED_KEYS = ("image", "weights", "probability", "mask")


class EventStream:
    """Writes one JSON object per line to the real stdout and flushes it at once."""

    def __init__(self, stream):
        self._stream = stream

    def emit(self, event: str, **fields) -> None:
        self._stream.write(json.dumps({"event": event, **fields}) + "\n")
        self._stream.flush()

    def progress(self, fraction: float, message: str) -> None:
        self.emit("progress", fraction=round(float(fraction), 4), message=str(message))

    def log(self, message: str) -> None:
        self.emit("log", message=str(message))


def read_request(path) -> dict:
    """The request file as a dict.

    Raises:
        InputError: Unreadable, not JSON, or a required key is missing.
    """
    try:
        request = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"Cannot read the worker request '{path}' ({exc.strerror}).") from None
    except ValueError:
        raise InputError(f"The worker request '{path}' is not valid JSON.") from None
    missing = [k for k in REQUIRED_KEYS if not request.get(k)]
    if missing:
        raise InputError(f"The worker request '{path}' lacks {', '.join(missing)}.")
    return request


def _box_list(box) -> Optional[list]:
    return None if box is None else [[int(s.start), int(s.stop)] for s in box]


def run_request(request: dict, events: EventStream) -> dict:
    """Segment the request's CT and write its outputs; return the ``done`` fields."""
    import SimpleITK as sitk

    started = time.perf_counter()
    if request.get("threads"):
        import torch

        torch.set_num_threads(int(request["threads"]))
    events.progress(0.0, "reading the CT")
    try:
        volume = Volume.from_sitk(sitk.ReadImage(str(request["image"])))
    except RuntimeError as exc:
        raise InputError(f"Cannot read the CT handed to the worker ({str(exc).strip().splitlines()[-1][:160]}).") from None
    weights = Path(request["weights"])
    card = read_card(weights)
    device = str(request.get("device") or "auto")
    threshold = request.get("threshold")
    largest = request.get("largest_component")
    largest = card.largest_component if largest is None else bool(largest)
    warnings = []

    def attempt(dev: str):
        events.progress(0.0, f"loading {card.label} on {dev}")
        segmenter = Segmenter(weights, device=dev)
        return segmenter.segment(volume, threshold=threshold, largest_component=largest, keep_probability=True,
                                 progress=lambda fraction, message: events.progress(0.95 * fraction, message),
                                 roi_center=request.get("roi_center"))

    try:
        result = attempt(device)
    except MnetImError:
        raise
    except Exception as exc:
        if device == "cpu" or not is_cuda_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        message = f"The GPU failed ({first}); segmenting on the CPU instead."
        warnings.append(message)
        events.log(message)
        release_cuda_cache()
        result = attempt("cpu")

    events.progress(0.96, "writing the result")
    box = result.probability_box
    # Only the box outside which the probability is zero: a fraction of the CT to write and read.
    probability = result.probability.array[box] if box is not None else np.zeros((1, 1, 1), np.float32)
    probability = Volume(np.ascontiguousarray(probability, np.float32), Geometry())
    # The one commit path: both files read back and compared voxel by voxel, committed together.
    with transaction(overwrite=True) as tx:
        tmp = tx.path_for(request["mask"])
        sitk.WriteImage(result.mask.to_sitk(), str(tmp), True)
        tx.verify(request["mask"], image_readback_check(result.mask.array, result.mask.geometry))
        tmp = tx.path_for(request["probability"])
        sitk.WriteImage(probability.to_sitk(), str(tmp))  # uncompressed: read once, by the client
        tx.verify(request["probability"], image_readback_check(probability.array, probability.geometry))
    events.progress(1.0, "done")
    import torch

    seconds = dict(result.seconds)
    seconds["worker"] = time.perf_counter() - started
    return dict(threshold=float(result.threshold), device=result.device, model=result.model, seconds=seconds,
                probability_box=_box_list(box), warnings=warnings + result.warnings, volume_ml=result.volume_ml,
                quality_warnings=result.warnings, quality=result.quality, roi=result.roi.to_dict(),
                largest_component=largest, torch=torch.__version__, cuda=torch.version.cuda,
                cuda_available=bool(torch.cuda.is_available()))


# --------------------------------------------------------------------------- the client's side of the files
INPUT_NAME = "ct.nrrd"
MASK_NAME = "mask.nrrd"
PROBABILITY_NAME = "probability.nrrd"
REQUEST_NAME = "request.json"


def write_request(volume: Volume, folder: Path, weights, device: str = "auto", threshold: Optional[float] = None,
                  largest_component: Optional[bool] = None, threads: Optional[int] = None, roi_center=None) -> Path:
    """Write a CT (LPS, SimpleITK conventions) and the request for it into ``folder``; return the request path."""
    import SimpleITK as sitk

    folder = Path(folder)
    image = folder / INPUT_NAME
    # Uncompressed: the worker reads it once; compressing a 512x512x120 CT would cost seconds.
    sitk.WriteImage(volume.to_sitk(), str(image), False)
    request = {"image": str(image), "weights": str(weights), "device": str(device), "threshold": threshold,
               "largest_component": largest_component, "mask": str(folder / MASK_NAME),
               "probability": str(folder / PROBABILITY_NAME), "threads": threads,
               "roi_center": None if roi_center is None else [float(v) for v in roi_center]}
    path = folder / REQUEST_NAME
    path.write_text(json.dumps(request, indent=1))
    return path


def read_result(done: dict, folder: Path, volume: Volume) -> SegmentationResult:
    """The worker's result as the engine's :class:`SegmentationResult` on ``volume``'s grid.

    Raises:
        MnetImError: The files are missing or unreadable, or not on the CT's grid.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    try:
        mask = Volume.from_sitk(sitk.ReadImage(str(folder / MASK_NAME)))
        inside = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / PROBABILITY_NAME)))
    except RuntimeError as exc:
        raise MnetImError("The segmentation process left no readable result "
                          f"({str(exc).strip().splitlines()[-1][:160]}).") from None
    if mask.shape != volume.shape or not mask.geometry.allclose(volume.geometry, atol=1e-5):
        raise MnetImError("The segmentation process returned a result on another grid than the CT's; run it again.")
    probability = np.zeros(volume.shape, np.float32)
    box = None
    if done.get("probability_box"):
        box = tuple(slice(int(a), int(b)) for a, b in done["probability_box"])
        if probability[box].shape != inside.shape:
            raise MnetImError("The segmentation process returned an inconsistent probability map; run it again.")
        probability[box] = inside
    fields = done.get("roi") or {}
    roi = Roi(tuple(fields.get("center_lps_mm", (0.0, 0.0, 0.0))), int(fields.get("slice_axis", 2)),
              tuple(fields.get("slice_range", (0, 0))), str(fields.get("method", "")))
    return SegmentationResult(mask=volume.with_array(mask.array.astype(np.uint8)),
                              probability=volume.with_array(probability), threshold=float(done["threshold"]),
                              roi=roi, device=str(done.get("device", "")), seconds=dict(done.get("seconds") or {}),
                              model=str(done.get("model", "")), probability_box=box,
                              warnings=list(done.get("quality_warnings") or []), quality=dict(done.get("quality") or {}))


def one_sentence(exc: BaseException) -> str:
    """The user-facing sentence of an exception (the project's own messages are already one)."""
    if isinstance(exc, MnetImError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"The segmentation failed ({type(exc).__name__}: {text[0][:200] if text else 'no details'})."


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    events = EventStream(sys.stdout)
    # Libraries that print must not corrupt the event stream.
    sys.stdout = sys.stderr
    try:
        if len(argv) != 1:
            raise InputError("Usage: python -m MnetImSegmentLib.engine.worker REQUEST.json")
        done = run_request(read_request(argv[0]), events)
    except Cancelled as exc:
        events.emit("error", message=str(exc), kind="Cancelled")
        return exc.exit_code
    except BaseException as exc:  # reported as one sentence; the client shows it
        # The refusal's reasons travel too, so the client can word its own way to override.
        extra = {"reasons": list(exc.reasons)} if isinstance(exc, OutOfScopeError) else {}
        events.emit("error", message=one_sentence(exc), kind=type(exc).__name__, **extra)
        return getattr(exc, "exit_code", 1) if isinstance(exc, MnetImError) else 1
    finally:
        sys.stdout = events._stream
    events.emit("done", **done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
