"""Applicator prior: an optional extra input channel that says where the tandem runs (issue 11).

Where the CTV's edge is not visible on CT (iso-dense tissue, heavy metal streaks), an oncologist
still draws it: around the cervix, which the intrauterine tandem runs through. The localiser
(:func:`.applicator.locate_applicator`) finds that tandem by what it is. With ``InputSpec.applicator_prior ==
"tandem"`` the network gets, next to its 5 CT slices, the middle slice of a map of "closeness to
the lower tandem", computed on the ROI grid from the localiser's os and axis:

    prior(p) = exp(-d(p)^2 / (2 * TANDEM_PRIOR_SIGMA_MM^2)),

``d`` the distance (mm) from the voxel's physical position to the segment that starts
``TANDEM_PRIOR_BELOW_MM`` below the os and runs ``TANDEM_PRIOR_ABOVE_MM`` up the tandem (or to
its tip if shorter). It is all zeros when the localiser does not trust what it found, so the
network must also work without it (training drops it at random for the same reason).

With ``applicator_prior == "atlas"`` the channel is instead a CTV atlas in the tandem's frame: how
often the training CTVs covered each point, placed by the localiser's os and axis
(:class:`CtvAtlas`). The tube above says *where* the cervix is; the atlas also says what shape the CTV
has around it, which is what an oncologist draws from when the CTV's edge is invisible on CT. The
atlas is a statistic of the training labels: ``mnetim train --applicator-prior atlas`` builds it from
the training split (:func:`build_ctv_atlas`), and it travels inside the weights' safetensors file.

Physical space throughout: the same patient on an axial, oblique or flipped grid gets the same
prior at the same point (tests/test_prior.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from ..core.volume import Geometry

APPLICATOR_PRIORS = ("none", "tandem", "atlas")
TANDEM_PRIOR_SIGMA_MM = 20.0  # the HR-CTV's radius around the tandem is ~15-30 mm
TANDEM_PRIOR_BELOW_MM = 15.0  # the CTV reaches below the os (the vaginal fornices)
TANDEM_PRIOR_ABOVE_MM = 50.0  # ...and ~50 mm up the uterine canal


def applicator_prior_channels(prior: str) -> int:
    """How many input channels ``prior`` adds to the CT slices."""
    return 0 if prior == "none" else 1


def _positions(geometry: Geometry, shape_zyx, origin_lps, rows: np.ndarray) -> np.ndarray:
    """Every voxel's position relative to ``origin_lps`` in the frame whose axes are ``rows`` (mm), (3, z, y, x).

    origin + M @ (i, j, k) evaluated per axis, so that no (N, 3) array of all voxels is built.
    """
    nz, ny, nx = (int(s) for s in shape_zyx)
    m = rows @ geometry.index_to_physical_matrix()[:3, :3]
    base = rows @ (np.asarray(geometry.origin, float) - np.asarray(origin_lps, float))
    k, j, i = (np.arange(n, dtype=np.float64) for n in (nz, ny, nx))
    return (base[:, None, None, None] + m[:, 0, None, None, None] * i[None, None, None, :]
            + m[:, 1, None, None, None] * j[None, None, :, None] + m[:, 2, None, None, None] * k[None, :, None, None])


def _fit_usable(fit) -> bool:
    return fit is not None and fit.found and fit.os_lps is not None and fit.axis_lps is not None


def tandem_prior(geometry: Geometry, shape_zyx, fit) -> np.ndarray:
    """The tandem prior (float32, ``shape_zyx``) on a grid, from an :class:`~.applicator.ApplicatorFit`.

    Args:
        geometry: The grid (usually the ROI crop's).
        shape_zyx: Its array shape.
        fit: The localiser's fit, or None; an untrusted fit (``found`` False) gives zeros.
    """
    nz, ny, nx = (int(s) for s in shape_zyx)
    if not _fit_usable(fit):
        return np.zeros((nz, ny, nx), np.float32)
    os_ = np.asarray(fit.os_lps, float)
    axis = np.asarray(fit.axis_lps, float)
    axis = axis / np.linalg.norm(axis)
    length = float(np.dot(np.asarray(fit.tip_lps, float) - os_, axis)) if fit.tip_lps is not None else TANDEM_PRIOR_ABOVE_MM
    lo, hi = -TANDEM_PRIOR_BELOW_MM, max(0.0, min(TANDEM_PRIOR_ABOVE_MM, length))
    rel = _positions(geometry, shape_zyx, os_, np.eye(3))
    t = np.tensordot(axis, rel, axes=1)  # along the tandem, mm from the os
    closest = np.clip(t, lo, hi)
    d2 = (rel**2).sum(0) - 2.0 * closest * t + closest**2  # |rel - closest * axis|^2
    return np.exp(-np.maximum(d2, 0.0) / (2.0 * TANDEM_PRIOR_SIGMA_MM**2)).astype(np.float32)


def tandem_frame(fit) -> tuple[np.ndarray, np.ndarray]:
    """The tandem's frame: (os, 3x3 rows e1, e2, e3), LPS.

    e3 runs up the tandem (os -> tip); e1 is the patient's right-to-left axis (LPS x) made orthogonal
    to it, so the frame turns with the applicator's anteversion and tilt but keeps the patient's
    left and right; e2 = e3 x e1 (anterior-posterior, roughly).
    """
    os_ = np.asarray(fit.os_lps, float)
    e3 = np.asarray(fit.axis_lps, float)
    e3 = e3 / np.linalg.norm(e3)
    e1 = np.array([1.0, 0.0, 0.0]) - e3[0] * e3
    if np.linalg.norm(e1) < 0.1:  # a tandem along the patient's left-right axis: not anatomical, but stay defined
        e1 = np.array([0.0, 1.0, 0.0]) - e3[1] * e3
    e1 = e1 / np.linalg.norm(e1)
    return os_, np.stack([e1, np.cross(e3, e1), e3])




# The atlas grid in the tandem frame: +-60 mm across, 50 mm below to 90 mm above the os, 2 mm steps.
ATLAS_STEP_MM = 2.0
ATLAS_HALF_WIDTH_MM = 60.0
ATLAS_BELOW_MM = 50.0
ATLAS_ABOVE_MM = 90.0


@dataclass(frozen=True)
class CtvAtlas:
    """How often the CTV covers each point of the tandem frame (:func:`tandem_frame`).

    ``probability`` is float32 (n1, n2, n3) over e1, e2, e3; voxel (0, 0, 0) sits at ``start_mm``,
    steps are ``step_mm``. ``scans`` is how many training scans it averages.
    """

    probability: np.ndarray
    start_mm: tuple[float, float, float]
    step_mm: float
    scans: int

    TENSOR = "input_prior.ctv_atlas"  # its key in the weights' safetensors file

    def __post_init__(self):
        p = self.probability
        if p.ndim != 3 or min(p.shape) < 2 or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise ValueError(f"a CTV atlas must be a finite 3-D array in [0, 1] of at least 2 voxels per axis; "
                             f"got shape {p.shape}")
        if not (np.isfinite(self.step_mm) and self.step_mm > 0):
            raise ValueError(f"the CTV atlas step must be a positive number of mm, not {self.step_mm}")

    def card_entry(self) -> dict:
        """What the model card says about it (the array itself is in the safetensors file)."""
        return {"shape": [int(n) for n in self.probability.shape], "start_mm": [float(v) for v in self.start_mm],
                "step_mm": float(self.step_mm), "scans": int(self.scans), "frame": "tandem (engine/applicator_prior.py)"}

    @classmethod
    def from_card(cls, entry: dict, tensor) -> "CtvAtlas":
        array = np.asarray(tensor, dtype=np.float32)
        if list(array.shape) != list(entry["shape"]):
            raise ValueError(f"the CTV atlas tensor is {tuple(array.shape)}, the card says {tuple(entry['shape'])}")
        return cls(array, tuple(float(v) for v in entry["start_mm"]), float(entry["step_mm"]), int(entry["scans"]))

    def sample(self, geometry: Geometry, shape_zyx, fit) -> np.ndarray:
        """The atlas on a grid (float32, ``shape_zyx``), trilinear; zeros outside it or for an untrusted fit."""
        if not _fit_usable(fit):
            return np.zeros(tuple(int(s) for s in shape_zyx), np.float32)
        f = _positions(geometry, shape_zyx, *tandem_frame(fit))
        idx = (f - np.asarray(self.start_mm, float)[:, None, None, None]) / self.step_mm
        return _trilinear(self.probability, idx)


def _trilinear(volume: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``volume`` at fractional indices ``idx`` (3, ...); 0 outside (numpy only: the inference path has no scipy)."""
    lo = np.floor(idx).astype(np.int64)
    frac = (idx - lo).astype(np.float32)
    out = np.zeros(idx.shape[1:], np.float32)
    inside = np.ones(idx.shape[1:], bool)
    for axis, n in enumerate(volume.shape):
        inside &= (lo[axis] >= 0) & (lo[axis] <= n - 2)
    if not inside.any():
        return out
    l0, l1, l2 = (lo[a][inside] for a in range(3))
    f0, f1, f2 = (frac[a][inside] for a in range(3))
    acc = np.zeros(l0.shape, np.float32)
    for d0 in (0, 1):
        w0 = f0 if d0 else 1 - f0
        for d1 in (0, 1):
            w1 = f1 if d1 else 1 - f1
            for d2 in (0, 1):
                w2 = f2 if d2 else 1 - f2
                acc += w0 * w1 * w2 * volume[l0 + d0, l1 + d1, l2 + d2]
    out[inside] = acc
    return out


def build_ctv_atlas(samples: Iterable, step_mm: float = ATLAS_STEP_MM) -> Optional[CtvAtlas]:
    """The CTV atlas of labelled scans, mirrored left-right (e1) so both sides average; None without any.

    Args:
        samples: ``(ctv mask (z, y, x) bool, its Geometry, ApplicatorFit)`` per scan. Scans whose fit is
            not trusted are left out: their frame would be wrong, as it is at inference, where such a
            scan gets an all-zero prior.
        step_mm: Atlas voxel size.
    """
    a = np.arange(-ATLAS_HALF_WIDTH_MM, ATLAS_HALF_WIDTH_MM + step_mm / 2, step_mm)
    t = np.arange(-ATLAS_BELOW_MM, ATLAS_ABOVE_MM + step_mm / 2, step_mm)
    grid = np.stack(np.meshgrid(a, a, t, indexing="ij"), -1)  # (n1, n2, n3, 3) frame mm
    total, n = np.zeros(grid.shape[:3]), 0
    for mask, geometry, fit in samples:
        if not _fit_usable(fit):
            continue
        os_, rows = tandem_frame(fit)
        ijk = np.rint(geometry.physical_to_index(os_ + grid @ rows)).astype(np.int64)  # nearest voxel
        size = np.array(mask.shape[::-1])
        inside = np.all((ijk >= 0) & (ijk < size), -1)
        hit = np.zeros(inside.shape)
        v = ijk[inside]
        hit[inside] = mask[v[:, 2], v[:, 1], v[:, 0]]
        total += hit
        n += 1
    if n == 0:
        return None
    mean = total / n
    mean = 0.5 * (mean + mean[::-1])  # e1 -> -e1: the CTV has no preferred side
    return CtvAtlas(mean.astype(np.float32), (float(a[0]), float(a[0]), float(t[0])), float(step_mm), n)


def applicator_prior_map(prior: str, geometry: Geometry, shape_zyx, fit, atlas: Optional[CtvAtlas] = None
                         ) -> np.ndarray | None:
    """The prior a model with ``InputSpec.applicator_prior == prior`` needs on a grid (None for ``"none"``).

    ``atlas``: the weights' CTV atlas, needed for ``"atlas"``.
    """
    if prior == "none":
        return None
    if prior == "tandem":
        return tandem_prior(geometry, shape_zyx, fit)
    if prior == "atlas":
        if atlas is None:
            raise ValueError("the 'atlas' input prior needs the weights' CTV atlas, and none was given")
        return atlas.sample(geometry, shape_zyx, fit)
    raise ValueError(f"unknown input prior '{prior}'; expected one of {', '.join(APPLICATOR_PRIORS)}")
