"""2.5D input: intensity normalisation and 5-slice windows.

The paper feeds "five consecutive CT image slices ... as one input sample with the middle slice
being the one that is really concerned". At the first and last two slices the missing neighbours
are *replicated* edge slices (not zeros: a zero slice would look like a slab of -200 HU tissue),
so a volume of fewer than five slices still yields one window per slice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .applicator_prior import applicator_prior_channels
from .metal_reduction import reduce_metal_artifacts


@dataclass(frozen=True)
class InputSpec:
    """What the network expects: stored in every model card."""

    slices_per_window: int = 5
    hu_window: tuple[float, float] = (-200.0, 300.0)
    normalisation: str = "clip HU to hu_window, then scale linearly to [0, 1]"
    # An extra channel after the CT slices (``applicator_prior.APPLICATOR_PRIORS``); "none" is the
    # paper's Mnet_Im input.
    applicator_prior: str = "none"
    # Metal-artefact reduction of the ROI before normalising (``metal_reduction.METAL_REDUCTIONS``);
    # "none" is the paper's input.
    metal_reduction: str = "none"

    @property
    def channels(self) -> int:
        """The network's input channels: the window's slices plus the prior's."""
        return self.slices_per_window + applicator_prior_channels(self.applicator_prior)

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "hu_window" in known:
            known["hu_window"] = tuple(float(v) for v in known["hu_window"])
        return cls(**known)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("applicator_prior", "metal_reduction"):
            if d[key] == "none":  # the paper's input: cards and run configs stay as before these options existed
                del d[key]
        return d


def normalise(hu: np.ndarray, spec: InputSpec = InputSpec()) -> np.ndarray:
    """Clip to the HU window and scale to [0, 1] (float32)."""
    lo, hi = spec.hu_window
    out = np.clip(hu.astype(np.float32, copy=False), lo, hi)
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


def network_input(hu: np.ndarray, spacing_xy, spec: InputSpec = InputSpec()) -> np.ndarray:
    """The normalised ROI stack the network reads: metal-artefact reduction (if the weights ask) then :func:`normalise`.

    ``hu``: (slices, rows, columns) ROI crop; ``spacing_xy``: its column and row spacing (mm).
    """
    if spec.metal_reduction != "none":
        hu = reduce_metal_artifacts(hu, spacing_xy, spec.metal_reduction)
    return normalise(hu, spec)


def window_indices(n_slices: int, centers, slices_per_window: int = 5) -> np.ndarray:
    """Slice indices of the window around each centre, edge-replicated: shape (len(centers), w)."""
    if slices_per_window % 2 != 1:
        raise ValueError("slices_per_window must be odd (the middle slice is the one predicted)")
    half = slices_per_window // 2
    centers = np.asarray(centers, dtype=np.int64)
    offsets = np.arange(-half, half + 1)
    return np.clip(centers[:, None] + offsets[None, :], 0, n_slices - 1)


def make_windows(stack: np.ndarray, centers=None, slices_per_window: int = 5, applicator_prior=None) -> np.ndarray:
    """Windows (N, w, H, W) from a (slices, H, W) stack, one per centre (default: every slice).

    With ``applicator_prior`` (a map of the stack's shape, ``engine.applicator_prior``), its middle slice is appended as
    channel ``w``: (N, w + 1, H, W).
    """
    if stack.ndim != 3:
        raise ValueError(f"expected a (slices, H, W) stack, got shape {stack.shape}")
    n = stack.shape[0]
    centers = np.arange(n) if centers is None else np.asarray(centers, int)
    windows = stack[window_indices(n, centers, slices_per_window)]
    if applicator_prior is None:
        return windows
    if applicator_prior.shape != stack.shape:
        raise ValueError(f"the prior's shape {applicator_prior.shape} differs from the stack's {stack.shape}")
    return np.concatenate([windows, applicator_prior[centers][:, None].astype(windows.dtype)], axis=1)
