"""The paper's five segmentation metrics: ASD, HD95, SO, SD and VD, in millimetres.

Huang et al. (2023) report average surface distance (ASD), 95 % Hausdorff distance (HD95), surface
overlap (SO), surface Dice (SD) and volumetric Dice (VD) without formulas. This module implements the
standard definitions of DeepMind's ``surface-distance`` library (Nikolov et al. 2018, "Deep learning to
achieve clinically applicable segmentation of head and neck anatomy for radiotherapy",
arXiv:1809.04430), so numbers are comparable with the many papers that use it. It was written from the
definitions (no code copied): the lookup tables are derived below, the distance transform is our own;
the tests check agreement with ``surface-distance==0.1`` on random shapes with anisotropic spacing.

How a surface is represented
----------------------------
The surface of a mask lies on the lattice of voxel *corners* (every point half a voxel away from the
voxel centres in each axis). For each corner the 2x2x2 voxels around it (2x2 pixels in 2D) form an
8-bit (4-bit) *neighbour code*. A corner whose code is neither all-outside nor all-inside is a surface
element (a "surfel") and carries the area of the marching-cubes surface that passes through its
neighbourhood (in 2D: the length of the marching-squares contour). Areas are computed for the actual
voxel spacing. Distances between surfaces are Euclidean distances in mm between surfel positions,
from an exact Euclidean distance transform.

How the lookup tables are derived (see ``_unit_triangles_3d`` and ``_unit_segments_2d``)
--------------------------------------------------------------------------------------------
All 2^8 corner configurations of a cube (2^4 of a square) are enumerated:

1. every cube edge whose two corners differ is cut at its midpoint;
2. on each face the cuts are joined by segments (marching squares). A face with four cuts is a
   saddle; it is resolved by cutting off the corners of the *minority* class of the cube (the inside
   corners if at most four are inside, else the outside corners), which makes a configuration and
   its complement produce the same surface, as in the classic marching-cubes table;
3. the face segments chain into closed polygons (3 to 7 vertices, some not planar);
4. each polygon is split into triangles with the triangulation of largest total area among all its
   triangulations (a deterministic rule; for non-planar polygons the choice matters once the voxels
   are anisotropic). This reproduces, configuration by configuration, the triangles' area vectors
   (up to sign) of the Lorensen & Cline marching-cubes table the reference library uses, hence its
   surfel areas at any spacing (checked in ``tests/test_metrics.py``).

A triangle with area vector ``n`` in unit-voxel space has area ``|(n0 s1 s2, n1 s0 s2, n2 s0 s1)|`` once
axis ``i`` is stretched by ``s_i`` (the area vector transforms with the cofactor matrix), which is how
the tables are scaled to a spacing. In 2D a segment from ``a`` to ``b`` has length ``|(b - a) * s|``.

Definitions (``METRIC_DEFINITIONS`` holds the wording reports print)
----------------------------------------------------------------------
With ``S_t``/``S_p`` the truth/prediction surfels, ``a(x)`` a surfel's area and ``d(x, S)`` the distance
from surfel ``x`` to the nearest surfel of ``S``:

* ASD: the mean of the two directed area-weighted average distances
  ``sum_{x in S_t} a(x) d(x, S_p) / sum a`` (truth -> prediction) and its converse;
* HD95: the larger of the two directed area-weighted 95th percentiles of ``d`` (surfels sorted by
  distance; the first whose cumulative area fraction reaches 0.95);
* SO: the mean of the two directed surface overlaps at tolerance tau, ``sum_{d(x, S_p) <= tau} a(x) /
  sum a`` (fraction of the truth surface within tau of the prediction) and its converse;
* SD: surface Dice at tolerance tau, (overlapping truth area + overlapping prediction area) /
  (truth area + prediction area);
* VD: volumetric Dice, ``2 |P and T| / (|P| + |T|)``.

``tolerance_mm`` (tau) defaults to ``DEFAULT_TOLERANCE_MM`` = 2.0 mm; the paper does not state its
value. Reasons: 2 mm is about two in-plane voxels on pelvic CT (0.8-1.0 mm), so the unavoidable
one-voxel rasterisation disagreement between two careful contours counts as agreement; it is well
inside the several-millimetre inter-observer variation reported for brachytherapy CTVs, so SO/SD still
separate good from mediocre contours; and it is below the usual 2.5-3 mm slice spacing, so a CTV that
ends one slice too early or late at the cranial/caudal ends is *not* hidden. A surfel exactly at tau
counts as within it (``<=``, as in the reference). Reports always print the tolerance used.

Empty masks (the reference library returns NaN/inf or fails there; we name a convention instead):
both empty -> ``BOTH_EMPTY`` (VD 1, distances 0, SO/SD 1: nothing to find and nothing found);
exactly one empty -> ``ONE_EMPTY`` (VD 0, every distance inf, SO/SD 0).

Performance: the work is done on the bounding box of both masks plus one voxel, so a 512x512x120 CT
with a small CTV costs what the CTV's box costs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

DEFAULT_TOLERANCE_MM = 2.0
DEFAULT_PERCENT = 95.0

# The five headline metrics in the paper's column order (Table 1), then the directed pairs.
METRICS = ("asd", "hd95", "sd", "so", "vd")
DIRECTED = ("asd_gt_to_pred", "asd_pred_to_gt", "hd95_gt_to_pred", "hd95_pred_to_gt", "so_gt", "so_pred")
ALL_KEYS = METRICS + DIRECTED

_INF = float("inf")
BOTH_EMPTY: Mapping[str, float] = MappingProxyType({
    "asd": 0.0, "hd95": 0.0, "sd": 1.0, "so": 1.0, "vd": 1.0,
    "asd_gt_to_pred": 0.0, "asd_pred_to_gt": 0.0, "hd95_gt_to_pred": 0.0, "hd95_pred_to_gt": 0.0,
    "so_gt": 1.0, "so_pred": 1.0,
})
"""Result when prediction and truth are both empty: a perfect (vacuous) agreement."""

ONE_EMPTY: Mapping[str, float] = MappingProxyType({
    "asd": _INF, "hd95": _INF, "sd": 0.0, "so": 0.0, "vd": 0.0,
    "asd_gt_to_pred": _INF, "asd_pred_to_gt": _INF, "hd95_gt_to_pred": _INF, "hd95_pred_to_gt": _INF,
    "so_gt": 0.0, "so_pred": 0.0,
})
"""Result when exactly one of prediction and truth is empty: no agreement at all, distances infinite."""

METRIC_DEFINITIONS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "asd": MappingProxyType({
        "name": "ASD", "title": "average surface distance", "unit": "mm", "better": "lower",
        "definition": "mean of the two directed area-weighted average distances between the surfaces "
                      "(truth->prediction and prediction->truth); surfaces and areas from marching cubes "
                      "on the voxel-corner lattice, Euclidean distances in mm (Nikolov et al. 2018, "
                      "DeepMind surface-distance)"}),
    "hd95": MappingProxyType({
        "name": "HD95", "title": "95% Hausdorff distance", "unit": "mm", "better": "lower",
        "definition": "maximum of the two directed area-weighted 95th percentiles of the surface "
                      "distances (robust Hausdorff distance, DeepMind surface-distance)"}),
    "sd": MappingProxyType({
        "name": "SD", "title": "surface Dice at tolerance tau", "unit": "fraction", "better": "higher",
        "definition": "(truth surface area within tau of the prediction + prediction surface area within "
                      "tau of the truth) / (truth area + prediction area)"}),
    "so": MappingProxyType({
        "name": "SO", "title": "surface overlap at tolerance tau", "unit": "fraction", "better": "higher",
        "definition": "mean of the two directed surface overlaps: fraction of the truth surface area "
                      "within tau of the prediction surface, and of the prediction surface within tau "
                      "of the truth"}),
    "vd": MappingProxyType({
        # Named "Dice" in tables: "VD" alone is read as "volume difference" by many (issue 16).
        "name": "Dice", "title": "volumetric Dice, VD", "unit": "fraction", "better": "higher",
        "definition": "2 |prediction AND truth| / (|prediction| + |truth|), counted in voxels"}),
})
"""What each reported metric means, in words reports print next to the numbers."""

EMPTY_MASK_CONVENTION = (
    "both masks empty: Dice = SO = SD = 1, ASD = HD95 = 0; exactly one mask empty: Dice = SO = SD = 0, "
    "ASD = HD95 = inf"
)
TOLERANCE_RATIONALE = (
    "the default; the paper states no value. 2 mm is about two in-plane voxels on pelvic CT, inside the "
    "inter-observer variation of brachytherapy CTVs, and below the usual 2.5-3 mm slice spacing"
)


# --------------------------------------------------------------------------- lookup tables
def _corners(ndim: int) -> list[tuple[int, ...]]:
    return list(itertools.product((0, 1), repeat=ndim))


def _bit(corner: Sequence[int]) -> int:
    """Bit of a neighbourhood corner in a neighbour code: offset (o0, o1[, o2]) read as a binary number."""
    return int("".join(str(c) for c in corner), 2)


def _face_cycles(ndim: int) -> list[list[tuple[int, ...]]]:
    """The square faces of the unit cube (or the square itself in 2D), corners in cyclic order."""
    if ndim == 2:
        return [[(0, 0), (0, 1), (1, 1), (1, 0)]]
    cycles = []
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]
        for v in (0, 1):
            cycle = []
            for pa, pb in ((0, 0), (0, 1), (1, 1), (1, 0)):
                c = [0, 0, 0]
                c[axis], c[a], c[b] = v, pa, pb
                cycle.append(tuple(c))
            cycles.append(cycle)
    return cycles


def _face_segments(cycle, inside: set, minority_inside: bool) -> list[tuple[tuple, tuple]]:
    """Marching squares on one face: segments between midpoints of the cut edges."""
    edges = [(cycle[i], cycle[(i + 1) % 4]) for i in range(4)]
    mid = lambda e: tuple((np.add(e[0], e[1]) / 2.0).tolist())  # noqa: E731
    cut = [e for e in edges if (e[0] in inside) != (e[1] in inside)]
    if len(cut) == 2:
        return [(mid(cut[0]), mid(cut[1]))]
    if len(cut) == 4:
        # Saddle: cut off each corner of the minority class, so a configuration and its complement
        # give the same surface (the classic marching-cubes choice).
        segments = []
        for i, c in enumerate(cycle):
            if (c in inside) == minority_inside:
                segments.append((mid(edges[i - 1]), mid(edges[i])))
        return segments
    return []


def _chain(segments) -> list[list[tuple]]:
    """Join segments sharing end points into closed polygons (every cut point has two segments)."""
    todo = list(segments)
    polygons = []
    while todo:
        a, b = todo.pop()
        poly = [a, b]
        while poly[-1] != poly[0]:
            for i, (p, q) in enumerate(todo):
                if p == poly[-1] or q == poly[-1]:
                    poly.append(q if p == poly[-1] else p)
                    todo.pop(i)
                    break
            else:  # pragma: no cover - impossible for a consistent marching-squares face set
                raise AssertionError("open marching-cubes polygon")
        polygons.append(poly[:-1])
    return polygons


def _triangulations(poly: list) -> list[list[tuple]]:
    """Every triangulation of a polygon (as vertex triples); Catalan-many, at most 42 for 7 vertices."""
    if len(poly) < 3:
        return [[]]
    if len(poly) == 3:
        return [[tuple(poly)]]
    out = []
    first, last = poly[0], poly[-1]
    for k in range(1, len(poly) - 1):
        for left in _triangulations(poly[: k + 1]):
            for right in _triangulations(poly[k:]):
                out.append(left + right + [(first, poly[k], last)])
    return out


def _area_vector(tri) -> np.ndarray:
    p0, p1, p2 = (np.asarray(v, float) for v in tri)
    return np.cross(p1 - p0, p2 - p0) / 2.0


@lru_cache(maxsize=None)
def _unit_triangles_3d() -> np.ndarray:
    """(256, T, 3): per neighbour code, the |area vectors| of its triangles in a unit cube (0-padded)."""
    corners = _corners(3)
    faces = _face_cycles(3)
    per_code = []
    for code in range(256):
        inside = {c for c in corners if code >> _bit(c) & 1}
        vectors = []
        if 0 < len(inside) < 8:
            segments = [s for f in faces for s in _face_segments(f, inside, len(inside) <= 4)]
            for poly in _chain(segments):
                options = _triangulations(poly)
                areas = [sum(np.linalg.norm(_area_vector(t)) for t in tris) for tris in options]
                best = options[int(np.argmax(np.round(areas, 12)))]
                vectors += [np.abs(_area_vector(t)) for t in best]
        per_code.append(vectors)
    table = np.zeros((256, max(len(v) for v in per_code), 3))
    for code, vectors in enumerate(per_code):
        if vectors:
            table[code, : len(vectors)] = vectors
    table.setflags(write=False)
    return table


@lru_cache(maxsize=None)
def _unit_segments_2d() -> np.ndarray:
    """(16, S, 2): per neighbour code, the |extent vectors| of its contour segments in a unit square."""
    corners = _corners(2)
    per_code = []
    for code in range(16):
        inside = {c for c in corners if code >> _bit(c) & 1}
        segs = _face_segments(_face_cycles(2)[0], inside, len(inside) <= 2) if 0 < len(inside) < 4 else []
        per_code.append([np.abs(np.subtract(b, a)) for a, b in segs])
    table = np.zeros((16, 2, 2))
    for code, vectors in enumerate(per_code):
        if vectors:
            table[code, : len(vectors)] = vectors
    table.setflags(write=False)
    return table


def neighbour_code_areas(spacing_mm: Sequence[float]) -> np.ndarray:
    """Surfel size for every neighbour code at this spacing: areas in mm^2 (3D, 256 codes) or
    contour lengths in mm (2D, 16 codes).

    Args:
        spacing_mm: Voxel spacing in the arrays' axis order, 2 or 3 values.
    """
    s = np.asarray(spacing_mm, float)
    if s.size == 3:
        cofactor = np.array([s[1] * s[2], s[0] * s[2], s[0] * s[1]])
        return np.linalg.norm(_unit_triangles_3d() * cofactor, axis=-1).sum(axis=-1)
    if s.size == 2:
        return np.linalg.norm(_unit_segments_2d() * s, axis=-1).sum(axis=-1)
    raise ValueError(f"spacing_mm must have 2 or 3 values, got {s.size}")


# --------------------------------------------------------------------------- distance transform
def squared_edt(features: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Exact squared Euclidean distance (mm^2) from every grid point to the nearest ``True`` point.

    Separable algorithm (Saito & Toriwaki 1994; lower envelope of parabolas after Felzenszwalb &
    Huttenlocher 2012), vectorised over all lines of an axis, in float64. Each pass adds the exact
    term ``((i - j) * s) ** 2`` of the chosen site, in axis order, so values are the same floats a
    nearest-feature computation gives. Points with no feature at all get ``inf``.

    Args:
        features: Boolean array, any number of dimensions.
        spacing_mm: Grid spacing per axis.
    """
    features = np.asarray(features, bool)
    spacing = [float(v) for v in spacing_mm]
    if len(spacing) != features.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {features.ndim}D array")
    if not features.any():
        return np.full(features.shape, np.inf)
    out = _first_pass(features, spacing[0])
    for axis in range(1, features.ndim):
        moved = np.moveaxis(out, axis, -1)
        shape = moved.shape
        lines = _envelope_pass(np.ascontiguousarray(moved).reshape(-1, shape[-1]), spacing[axis])
        out = np.moveaxis(lines.reshape(shape), -1, axis)
    return np.ascontiguousarray(out)


def _first_pass(features: np.ndarray, s: float) -> np.ndarray:
    """Along axis 0 the input is binary: the nearest feature on each line is the previous or next one."""
    n = features.shape[0]
    index = np.arange(n).reshape((n,) + (1,) * (features.ndim - 1))
    big = 4 * n + 4  # farther than any real feature, and still an exact integer
    previous = np.maximum.accumulate(np.where(features, index, -big), axis=0)
    following = np.minimum.accumulate(np.where(features, index, big)[::-1], axis=0)[::-1]
    steps = np.minimum(index - previous, following - index)
    out = (steps * s) ** 2
    out[steps > n] = np.inf
    return out


def _envelope_pass(f: np.ndarray, s: float) -> np.ndarray:
    """``g[l, i] = min_j f[l, j] + ((i - j) s)^2`` for every line ``l`` (rows of ``f``), exactly."""
    n_lines, n = f.shape
    if n == 1:
        return f.copy()
    sites = np.zeros((n_lines, n), np.intp)  # parabola apexes of the lower envelope, left to right
    bounds = np.full((n_lines, n + 1), np.inf)  # bounds[l, k]: where parabola k starts to be the lowest
    top = np.full(n_lines, -1, np.intp)  # index of the last parabola; -1: none yet
    for q in range(n):
        live = np.flatnonzero(np.isfinite(f[:, q]))
        if live.size == 0:
            continue
        started = top[live] >= 0
        new, todo = live[~started], live[started]
        top[new] = 0
        sites[new, 0] = q
        bounds[new, 0] = -np.inf
        bounds[new, 1] = np.inf
        fq = f[:, q]
        while todo.size:
            k = top[todo]
            v = sites[todo, k]
            # Abscissa (in units of s) where the parabola of q drops below that of v.
            x = ((fq[todo] - f[todo, v]) / (s * s) / (q - v) + (q + v)) / 2.0
            pop = x <= bounds[todo, k]
            keep = todo[~pop]
            k_new = top[keep] + 1
            top[keep] = k_new
            sites[keep, k_new] = q
            bounds[keep, k_new] = x[~pop]
            bounds[keep, k_new + 1] = np.inf
            todo = todo[pop]
            top[todo] -= 1
    out = np.full(f.shape, np.inf)
    rows = np.flatnonzero(top >= 0)
    if rows.size == 0:
        return out
    # Parabola k is the lowest for the integers q with bounds[k] < q <= bounds[k + 1]: the run
    # floor(bounds[k]) + 1 .. floor(bounds[k + 1]). Runs tile 0..n-1, so one repeat fills every line.
    count = top[rows] + 1
    valid = np.arange(n) < count[:, None]
    edges = np.clip(np.floor(bounds[rows]) + 1, 0, n)  # -inf -> 0, inf -> n
    runs = np.where(valid, edges[:, 1:] - edges[:, :-1], 0).astype(np.intp)
    v = np.repeat(sites[rows][valid], runs[valid]).reshape(rows.size, n)
    q = np.arange(n)
    out[rows] = np.take_along_axis(f[rows], v, axis=1) + ((q - v) * s) ** 2
    return out


# --------------------------------------------------------------------------- surfaces
@dataclass(frozen=True)
class SurfaceDistances:
    """Surfels of both masks with their areas and distances to the other surface.

    Areas are mm^2 in 3D and mm (contour lengths) in 2D; distances are mm. A mask with no surfel
    (empty) has empty arrays, and the other's distances are ``inf``.
    """

    distances_gt_to_pred: np.ndarray
    distances_pred_to_gt: np.ndarray
    surfel_areas_gt: np.ndarray
    surfel_areas_pred: np.ndarray


def _check_mask(name: str, mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.integer):
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise ValueError(f"{name} must be a boolean mask (got integer values {mask.min()}..{mask.max()}); "
                             "select one label first, e.g. labels == 1")
        return mask.astype(bool)
    raise ValueError(f"{name} must be a boolean mask, got dtype {mask.dtype}; threshold probabilities first")


def _check_inputs(pred, truth, spacing_mm):
    pred, truth = _check_mask("pred", pred), _check_mask("truth", truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must have the same shape")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D, got {pred.ndim}D")
    spacing = tuple(float(v) for v in np.asarray(spacing_mm, float).ravel())
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing_mm needs {pred.ndim} values (the arrays' axis order), got {len(spacing)}")
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(f"spacing_mm must be positive and finite, got {spacing}")
    return pred, truth, spacing


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Neighbour code of every corner point of a mask padded with one empty voxel on each side.

    ``mask`` is the padded crop (shape m + 2); the result has shape m + 1: corner ``c`` sits between
    padded voxels ``c`` and ``c + 1`` along every axis.
    """
    ndim = mask.ndim
    inner = tuple(slice(0, n - 1) for n in mask.shape)
    codes = np.zeros(tuple(n - 1 for n in mask.shape), np.uint8)
    for corner in _corners(ndim):
        window = tuple(slice(o, o + sl.stop) for o, sl in zip(corner, inner))
        codes |= mask[window].astype(np.uint8) << _bit(corner)
    return codes


def surface_distances(pred, truth, spacing_mm: Sequence[float]) -> SurfaceDistances:
    """Surfels, their areas and their distances to the other mask's surface.

    Args:
        pred: Predicted mask, 2D or 3D, boolean (or integer 0/1).
        truth: Ground-truth mask, same shape.
        spacing_mm: Voxel spacing in the arrays' axis order ((z, y, x) for a volume).

    Returns:
        SurfaceDistances in mm (and mm^2 / mm for the areas).
    """
    pred, truth, spacing = _check_inputs(pred, truth, spacing_mm)
    both = pred | truth
    empty = np.array([])
    if not both.any():
        return SurfaceDistances(empty, empty, empty, empty)
    # Everything happens inside the bounding box of both masks plus one empty voxel on each side:
    # every surfel lies there, so nothing outside can change a distance.
    box = []
    for axis in range(both.ndim):
        hit = np.flatnonzero(both.any(axis=tuple(a for a in range(both.ndim) if a != axis)))
        box.append(slice(hit[0], hit[-1] + 1))
    box = tuple(box)
    pad = [(1, 1)] * both.ndim
    codes_gt = _neighbour_codes(np.pad(truth[box], pad))
    codes_pred = _neighbour_codes(np.pad(pred[box], pad))
    full = (1 << (2 ** both.ndim)) - 1
    border_gt = (codes_gt != 0) & (codes_gt != full)
    border_pred = (codes_pred != 0) & (codes_pred != full)
    areas = neighbour_code_areas(spacing)

    def to_surface(border, at):
        if not border.any():
            return np.full(int(at.sum()), np.inf)
        return np.sqrt(squared_edt(border, spacing)[at])

    return SurfaceDistances(
        distances_gt_to_pred=to_surface(border_pred, border_gt),
        distances_pred_to_gt=to_surface(border_gt, border_pred),
        surfel_areas_gt=areas[codes_gt[border_gt]],
        surfel_areas_pred=areas[codes_pred[border_pred]],
    )


# --------------------------------------------------------------------------- metrics
def _directed_mean(distances: np.ndarray, areas: np.ndarray) -> float:
    return float(np.sum(distances * areas) / np.sum(areas))


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """Smallest distance whose cumulative share of the (distance-sorted) surface reaches ``percent``."""
    order = np.lexsort((areas, distances))
    d, a = distances[order], areas[order]
    share = np.cumsum(a) / np.sum(a)
    return float(d[min(int(np.searchsorted(share, percent / 100.0)), d.size - 1)])


def _directed_overlap(distances: np.ndarray, areas: np.ndarray, tolerance_mm: float) -> float:
    return float(np.sum(areas[distances <= tolerance_mm]) / np.sum(areas))


def volumetric_dice(pred, truth) -> float:
    """2 |P and T| / (|P| + |T|); 1.0 when both masks are empty (``BOTH_EMPTY``)."""
    pred, truth = _check_mask("pred", pred), _check_mask("truth", truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must have the same shape")
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return BOTH_EMPTY["vd"]
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def segmentation_metrics(pred, truth, spacing_mm: Sequence[float], tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                         percent: float = DEFAULT_PERCENT) -> dict[str, float]:
    """ASD, HD95, SO, SD and VD of a predicted mask against the truth (definitions: module docstring).

    Args:
        pred: Predicted mask, 2D or 3D, boolean (integer 0/1 accepted).
        truth: Ground-truth mask of the same shape.
        spacing_mm: Voxel spacing in the ARRAYS' axis order: (z, y, x) for a (z, y, x) volume, (y, x)
            for a slice. Use all ones for results in voxel units.
        tolerance_mm: Surface tolerance tau of SO and SD, in mm (default ``DEFAULT_TOLERANCE_MM``).
        percent: Percentile of the robust Hausdorff distance (95 for HD95).

    Returns:
        ``asd``, ``hd95`` (mm), ``so``, ``sd``, ``vd`` (fractions in [0, 1]) and the directed pairs
        ``asd_gt_to_pred``, ``asd_pred_to_gt``, ``hd95_gt_to_pred``, ``hd95_pred_to_gt`` (mm), ``so_gt``
        (share of the truth surface within tau of the prediction) and ``so_pred`` (the converse). Empty
        masks give ``BOTH_EMPTY`` or ``ONE_EMPTY``.

    Raises:
        ValueError: Masks that are not boolean, shapes that differ, or a spacing of the wrong length.
    """
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    pred, truth, spacing = _check_inputs(pred, truth, spacing_mm)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return dict(BOTH_EMPTY)
    if not has_pred or not has_truth:
        return dict(ONE_EMPTY)
    s = surface_distances(pred, truth, spacing)
    gt = (s.distances_gt_to_pred, s.surfel_areas_gt)
    pr = (s.distances_pred_to_gt, s.surfel_areas_pred)
    out = {
        "asd_gt_to_pred": _directed_mean(*gt),
        "asd_pred_to_gt": _directed_mean(*pr),
        "hd95_gt_to_pred": _directed_percentile(*gt, percent),
        "hd95_pred_to_gt": _directed_percentile(*pr, percent),
        "so_gt": _directed_overlap(*gt, tolerance_mm),
        "so_pred": _directed_overlap(*pr, tolerance_mm),
    }
    near_gt = np.sum(s.surfel_areas_gt[s.distances_gt_to_pred <= tolerance_mm])
    near_pred = np.sum(s.surfel_areas_pred[s.distances_pred_to_gt <= tolerance_mm])
    result = {
        "asd": (out["asd_gt_to_pred"] + out["asd_pred_to_gt"]) / 2.0,
        "hd95": max(out["hd95_gt_to_pred"], out["hd95_pred_to_gt"]),
        "sd": float((near_gt + near_pred) / (np.sum(s.surfel_areas_gt) + np.sum(s.surfel_areas_pred))),
        "so": (out["so_gt"] + out["so_pred"]) / 2.0,
        "vd": volumetric_dice(pred, truth),
    }
    result.update(out)
    return result
