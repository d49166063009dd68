"""Anatomy shape templates for the v3 phantom: compact measurements of real brachytherapy structure sets.

``phantom_templates.json`` (beside this module) holds, per template, the tandem axis and, per
structure (CTV, bladder, rectum, sigmoid), its centroid offset from the external cervical os, its
principal axes and standard deviations, its volume, and 16 real spherical-harmonic coefficients
(degree <= 3) of its radial function in the whitened principal frame. These numbers are
measurements of the two public example structure sets of the pyTG43 project (``RS.PDR.dcm``,
``RS.rotated.dcm``); no contour, image or identifier is stored. ``scripts/derive_phantom_templates.py``
re-derives the table from those files when ``../shared/data`` is present.

A :class:`StarShape` turns one structure's entry back into a closed smooth surface: a point ``p`` is
inside when ``|A^-1 (p - c)| < r(direction)`` with ``r`` the harmonic expansion. The v3 generator
perturbs the coefficients, the axes and the position, and blends the templates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEMPLATE_FILE = Path(__file__).with_name("phantom_templates.json")
SH_DEGREE = 3
N_SH = (SH_DEGREE + 1) ** 2
STRUCTURES = ("CTV", "bladder", "rectum", "sigmoid")


def real_sh(unit: np.ndarray) -> np.ndarray:
    """Real spherical harmonics up to degree 3 (orthonormal), as polynomials of unit vectors.

    Args:
        unit: (..., 3) unit vectors (x, y, z).

    Returns:
        (..., 16) basis values, ordered by degree then order.
    """
    x, y, z = unit[..., 0], unit[..., 1], unit[..., 2]
    c0 = 0.28209479177387814
    c1 = 0.4886025119029199
    out = [np.full_like(x, c0), c1 * y, c1 * z, c1 * x,
           1.0925484305920792 * x * y, 1.0925484305920792 * y * z, 0.31539156525252005 * (3 * z * z - 1),
           1.0925484305920792 * x * z, 0.5462742152960396 * (x * x - y * y),
           0.5900435899266435 * y * (3 * x * x - y * y), 2.890611442640554 * x * y * z,
           0.4570457994644658 * y * (5 * z * z - 1), 0.3731763325901154 * z * (5 * z * z - 3),
           0.4570457994644658 * x * (5 * z * z - 1), 1.445305721320277 * z * (x * x - y * y),
           0.5900435899266435 * x * (x * x - 3 * y * y)]
    return np.stack(out, axis=-1)


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


@dataclass
class StarShape:
    """A closed surface star-shaped about ``center`` in the frame ``axes`` (columns, mm units).

    ``level(points)`` is < 1 inside, > 1 outside (normalised radius), like the v2 shapes.
    """

    center: np.ndarray  # (3,) mm
    axes: np.ndarray  # (3, 3): columns are the principal directions scaled by the radii (mm)
    coeffs: np.ndarray  # (16,) spherical-harmonic coefficients of the radial function (~1 at c00*Y00)

    def __post_init__(self):
        self._inv = np.linalg.inv(self.axes).astype(np.float32)
        # Used for every slice's edge width: computed once.
        self.min_radius = float(np.linalg.svd(self.axes, compute_uv=False).min() * max(self.radial_extremes()[0], 0.2))

    def radial_extremes(self) -> tuple[float, float]:
        r = real_sh(fibonacci_sphere(256)) @ self.coeffs
        return float(r.min()), float(r.max())

    def bounding_radius(self) -> float:
        return float(np.linalg.svd(self.axes, compute_uv=False).max() * self.radial_extremes()[1])

    def level(self, points: np.ndarray) -> np.ndarray:
        local = (points - self.center.astype(np.float32)) @ self._inv.T
        r = np.sqrt((local**2).sum(-1)) + 1e-6
        unit = local / r[..., None]
        radial = real_sh(unit) @ self.coeffs.astype(np.float32)
        return r / np.maximum(radial, 0.15)


def star_volume_mm3(axes: np.ndarray, coeffs: np.ndarray) -> float:
    """Volume enclosed by a star shape: det(A) * 4 pi / 3 * mean(r^3) over uniform directions."""
    r = np.maximum(real_sh(fibonacci_sphere(2000)) @ np.asarray(coeffs), 0.15)
    return float(abs(np.linalg.det(axes)) * 4 * np.pi / 3 * np.mean(r**3))


def load_templates(path=TEMPLATE_FILE) -> list[dict]:
    """The measured templates (list of dicts, see the module docstring)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["templates"]


def fit_structure(points_inside: np.ndarray, os_point: np.ndarray, voxel_ml: float) -> dict:
    """Measure one structure from the centres of its voxels (rasterised contours).

    Args:
        points_inside: (n, 3) LPS mm of the voxels inside the structure.
        os_point: The external os (template origin), LPS mm.
        voxel_ml: Volume of one voxel in ml.

    Returns:
        Template entry: offset, axes (columns = direction x 2 standard deviations), SH coefficients, volume.
    """
    c = points_inside.mean(0)
    cov = np.cov((points_inside - c).T)
    evals, evecs = np.linalg.eigh(cov)
    if np.linalg.det(evecs) < 0:
        evecs[:, 0] *= -1
    axes = evecs * (2.0 * np.sqrt(np.maximum(evals, 1e-6)))[None, :]
    local = (points_inside - c) @ np.linalg.inv(axes).T
    dirs = fibonacci_sphere(300)
    r_local = np.sqrt((local**2).sum(1))
    u_local = local / np.maximum(r_local[:, None], 1e-6)
    # The surface radius along each direction: the largest normalised radius of the voxels within a
    # narrow cone around it (robust to the voxel grid, no ray marching needed).
    radii = np.empty(len(dirs))
    for n, d in enumerate(dirs):
        cone = u_local @ d > np.cos(np.deg2rad(14))
        radii[n] = np.percentile(r_local[cone], 97) if cone.sum() >= 5 else np.nan
    ok = np.isfinite(radii)
    basis = real_sh(dirs[ok])
    coeffs, *_ = np.linalg.lstsq(basis, radii[ok], rcond=None)
    # The cone percentile and the low-order fit over-fill concave parts: rescale to the measured volume.
    volume = len(points_inside) * voxel_ml * 1000.0
    coeffs *= (volume / star_volume_mm3(axes, coeffs)) ** (1 / 3)
    return {"offset_mm": [round(float(v), 2) for v in c - os_point],
            "axes_mm": [[round(float(v), 3) for v in row] for row in axes],
            "sh": [round(float(v), 4) for v in coeffs],
            "volume_ml": round(float(len(points_inside) * voxel_ml), 1)}
