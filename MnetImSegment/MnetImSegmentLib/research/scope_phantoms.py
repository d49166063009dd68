"""CTs the CTV model must NOT silently segment (issue 12): chest, head, water cylinder, MR-like.

Research side (tests, calibration of ``engine/quality.py``): numpy only. Each generator draws its
sizes and levels from ``seed`` and paints analytic shapes on an axial grid (anisotropic spacing,
optional direction), in HU with scanner noise; the pelvis cases (no applicator, hip prosthesis only)
come from :func:`.phantom.make_phantom` and :mod:`.distractors`.
"""

from __future__ import annotations

import numpy as np

from ..core.volume import Geometry, Volume
from .phantom import make_phantom

KINDS = ("chest", "head", "water", "mr_like")


def _grid(rng, matrix: int, slice_mm: float, extent_mm: float, fov_mm: float, direction=None):
    n = max(8, int(round(extent_mm / slice_mm)))
    px = fov_mm / matrix
    d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    origin = -d @ (np.array([px, px, slice_mm]) * (np.array([matrix, matrix, n]) - 1) / 2)  # centred on 0
    geom = Geometry((px, px, slice_mm), tuple(origin), tuple(d.ravel()))
    k, j, i = np.meshgrid(np.arange(n), np.arange(matrix), np.arange(matrix), indexing="ij")
    pts = geom.index_to_physical(np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(float))
    x, y, z = (pts[:, a].reshape(n, matrix, matrix) for a in range(3))
    return geom, x, y, z


def _ellipse(x, y, cx, cy, rx, ry):
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _finish(rng, img, geom, noise=None) -> Volume:
    img = img + rng.normal(0.0, noise if noise is not None else rng.uniform(6, 14), img.shape)
    return Volume(np.clip(np.round(img), -1024, 3071).astype(np.int16), geom)


def chest_phantom(seed: int = 0, matrix: int = 160, slice_mm: float = 2.5, direction=None) -> Volume:
    """A thorax: body with a fat layer, two lungs (-850 HU), heart, spine, ribs, sternum, no pelvis."""
    rng = np.random.default_rng(seed)
    geom, x, y, z = _grid(rng, matrix, slice_mm, rng.uniform(150, 250), 480.0, direction)
    rx, ry = rng.uniform(150, 190), rng.uniform(100, 130)
    img = np.full(x.shape, -1000.0)
    img[_ellipse(x, y, 0, 0, rx, ry)] = rng.uniform(-110, -80)
    img[_ellipse(x, y, 0, 0, rx - 15, ry - 12)] = rng.uniform(30, 50)  # chest wall muscle
    for sx in (-1, 1):
        img[_ellipse(x, y, sx * rx * 0.45, 0, rx * 0.38, ry * 0.7)] = rng.uniform(-880, -820)
    img[_ellipse(x, y, rx * 0.1, -ry * 0.25, rx * 0.28, ry * 0.35)] = rng.uniform(35, 50)  # heart
    img[_ellipse(x, y, 0, ry * 0.7, 18, 16)] = rng.uniform(250, 400)  # vertebra
    img[_ellipse(x, y, 0, -ry + 14, 20, 6)] = rng.uniform(300, 500)  # sternum
    ring = _ellipse(x, y, 0, 0, rx - 10, ry - 8) & ~_ellipse(x, y, 0, 0, rx - 16, ry - 14)
    img[ring & (np.cos(z / 12.0 * np.pi) > 0.3)] = rng.uniform(400, 700)  # ribs every ~24 mm
    return _finish(rng, img, geom)


def head_phantom(seed: int = 0, matrix: int = 128, slice_mm: float = 2.5, direction=None) -> Volume:
    """A head: skull (bone ring), brain (~35 HU), thin scalp fat, no pelvis."""
    rng = np.random.default_rng(seed)
    geom, x, y, z = _grid(rng, matrix, slice_mm, rng.uniform(120, 180), 260.0, direction)
    rx, ry = rng.uniform(70, 80), rng.uniform(90, 100)
    img = np.full(x.shape, -1000.0)
    img[_ellipse(x, y, 0, 0, rx, ry)] = rng.uniform(-100, -70)
    img[_ellipse(x, y, 0, 0, rx - 3, ry - 3)] = rng.uniform(700, 1200)
    img[_ellipse(x, y, 0, 0, rx - 9, ry - 9)] = rng.uniform(30, 40)
    img[_ellipse(x, y, 0, 0, 8, 25)] = rng.uniform(2, 10)  # ventricles
    return _finish(rng, img, geom)


def water_phantom(seed: int = 0, matrix: int = 160, slice_mm: float = 2.5, direction=None) -> Volume:
    """A QA water cylinder (0 HU) in a thin acrylic shell (120 HU)."""
    rng = np.random.default_rng(seed)
    geom, x, y, z = _grid(rng, matrix, slice_mm, rng.uniform(100, 200), 400.0, direction)
    r = rng.uniform(100, 160)
    img = np.full(x.shape, -1000.0)
    img[_ellipse(x, y, 0, 0, r, r)] = 120.0
    img[_ellipse(x, y, 0, 0, r - 5, r - 5)] = rng.uniform(-3, 3)
    return _finish(rng, img, geom, noise=rng.uniform(3, 8))


def mr_like(ct: Volume, seed: int = 0) -> Volume:
    """A CT's anatomy with MR-like intensities: air 0, fat bright, muscle mid-grey, bone/metal dark."""
    rng = np.random.default_rng(seed)
    hu = ct.array.astype(np.float32)
    img = np.zeros_like(hu)
    img[(hu > -250) & (hu <= -40)] = rng.uniform(700, 1000)  # fat: bright on T1
    img[(hu > -40) & (hu <= 150)] = rng.uniform(250, 450)
    img[(hu > 150) & (hu < 2000)] = rng.uniform(50, 150)
    img += np.abs(rng.normal(0, 15, img.shape))  # Rician-like noise floor, never negative
    return Volume(np.round(img).astype(np.int16), ct.geometry)


def make_scope_case(kind: str, seed: int = 0) -> Volume:
    """One out-of-scope CT of ``kind`` (``KINDS``) from ``seed``."""
    if kind == "chest":
        return chest_phantom(seed)
    if kind == "head":
        return head_phantom(seed)
    if kind == "water":
        return water_phantom(seed)
    if kind == "mr_like":
        return mr_like(make_phantom(seed, matrix=160, slice_mm=3.0).ct, seed)
    raise ValueError(f"unknown out-of-scope kind {kind!r}; expected one of {', '.join(KINDS)}")
