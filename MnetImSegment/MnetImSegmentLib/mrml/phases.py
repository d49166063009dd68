"""What passes between the Slicer bridge's three phases (prepare -> run -> create), and how to cancel."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..core.volume import Volume
from ..engine.inference import SegmentationResult
from ..engine.weights import ModelCard

ProgressCallback = Callable[[float, str], None]
CancelArg = Union[None, Callable[[], bool], threading.Event]


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


def cancelFunction(cancel) -> Optional[Callable[[], bool]]:
    """The ``cancel`` argument as a function returning True to stop (None when not cancellable)."""
    if cancel is None:
        return None
    if hasattr(cancel, "is_set"):  # threading.Event
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise TypeError("cancel must be None, a callable returning True to stop, or a threading.Event.")
