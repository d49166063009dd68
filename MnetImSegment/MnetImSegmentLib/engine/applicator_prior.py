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

Physical space throughout: the same patient on an axial, oblique or flipped grid gets the same
prior at the same point (tests/test_prior.py).
"""

from __future__ import annotations

import numpy as np

from ..core.volume import Geometry

APPLICATOR_PRIORS = ("none", "tandem")
TANDEM_PRIOR_SIGMA_MM = 20.0  # the HR-CTV's radius around the tandem is ~15-30 mm
TANDEM_PRIOR_BELOW_MM = 15.0  # the CTV reaches below the os (the vaginal fornices)
TANDEM_PRIOR_ABOVE_MM = 50.0  # ...and ~50 mm up the uterine canal


def applicator_prior_channels(prior: str) -> int:
    """How many input channels ``prior`` adds to the CT slices."""
    return 0 if prior == "none" else 1


def tandem_prior(geometry: Geometry, shape_zyx, fit) -> np.ndarray:
    """The tandem prior (float32, ``shape_zyx``) on a grid, from an :class:`~.applicator.ApplicatorFit`.

    Args:
        geometry: The grid (usually the ROI crop's).
        shape_zyx: Its array shape.
        fit: The localiser's fit, or None; an untrusted fit (``found`` False) gives zeros.
    """
    nz, ny, nx = (int(s) for s in shape_zyx)
    if fit is None or not fit.found or fit.os_lps is None or fit.axis_lps is None:
        return np.zeros((nz, ny, nx), np.float32)
    os_ = np.asarray(fit.os_lps, float)
    axis = np.asarray(fit.axis_lps, float)
    axis = axis / np.linalg.norm(axis)
    length = float(np.dot(np.asarray(fit.tip_lps, float) - os_, axis)) if fit.tip_lps is not None else TANDEM_PRIOR_ABOVE_MM
    lo, hi = -TANDEM_PRIOR_BELOW_MM, max(0.0, min(TANDEM_PRIOR_ABOVE_MM, length))
    # Physical position of every voxel relative to the os: origin + M @ (i, j, k), evaluated per axis
    # so that no (N, 3) array of all voxels is built.
    m = geometry.index_to_physical_matrix()[:3, :3]
    base = np.asarray(geometry.origin, float) - os_
    k, j, i = (np.arange(n, dtype=np.float64) for n in (nz, ny, nx))
    rel = (base[:, None, None, None] + m[:, 0, None, None, None] * i[None, None, None, :]
           + m[:, 1, None, None, None] * j[None, None, :, None] + m[:, 2, None, None, None] * k[None, :, None, None])
    t = np.tensordot(axis, rel, axes=1)  # along the tandem, mm from the os
    closest = np.clip(t, lo, hi)
    d2 = (rel**2).sum(0) - 2.0 * closest * t + closest**2  # |rel - closest * axis|^2
    return np.exp(-np.maximum(d2, 0.0) / (2.0 * TANDEM_PRIOR_SIGMA_MM**2)).astype(np.float32)


def applicator_prior_map(prior: str, geometry: Geometry, shape_zyx, fit) -> np.ndarray | None:
    """The prior a model with ``InputSpec.applicator_prior == prior`` needs on a grid (None for ``"none"``)."""
    if prior == "none":
        return None
    if prior == "tandem":
        return tandem_prior(geometry, shape_zyx, fit)
    raise ValueError(f"unknown input prior '{prior}'; expected one of {', '.join(APPLICATOR_PRIORS)}")
