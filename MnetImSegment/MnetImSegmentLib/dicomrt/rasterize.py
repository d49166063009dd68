"""Rasterising RT structure set contours onto a CT grid, and a grid for contours without a CT.

Rasterisation (``rasterize_rois``) works in the CT's continuous index space, so oblique and
flipped grids need no special case: every contour point goes LPS -> (i, j, k) through
``Geometry.physical_to_index``.

* Contours are matched to slices by position (Frame of Reference + k within half a slice), never
  only by their referenced SOP instance UIDs, which are often missing or point to another series.
* Contours are grouped by the plane they lie in; a slice takes the plane nearest to its centre, so
  a structure set contoured on another slice spacing does not XOR neighbouring planes together.
  Slices that fall between two sparser contour planes get the nearer plane (reported), as long as
  it is within half the ROI's plane spacing: a real gap in the ROI stays a gap.
* All contours of one plane are filled together with the even-odd rule (pixel centres): holes,
  nested islands and self-intersecting outlines come out as the planning system shows them.
* Contours that are not exactly on one slice (a few mm spread in k: tilted CT, rotated contours)
  go to the slice of their mean position and are reported; beyond ``max_spread_mm`` they are skipped.
* Open contours (applicator channels, OPEN_PLANAR / OPEN_NONPLANAR) and POINT markers enclose no
  volume: skipped with a note. Contours outside the CT extent are reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

import numpy as np

from ..core.errors import InputError
from ..core.volume import Geometry, Volume
from .polygons import even_odd_area, fill_even_odd, polygon_self_intersects
from .structure_set import CLOSED, DEFAULT_ROI_PATTERN, RoiContours, StructureSet, select_rois

# A contour counts as "not on one slice" above this spread along the slice normal; below it the
# spread is float/DS rounding.
NON_AXIAL_MM = 0.05
# Contours whose fitted planes are within this distance (and parallel) are one contour plane.
SAME_PLANE_MM = 0.2


@dataclass
class RasterReport:
    """What rasterisation did, in counts a person can check (no identifiers)."""

    rois: list = field(default_factory=list)
    contours: int = 0
    used: int = 0
    planes: int = 0
    slices: int = 0
    skipped_open: int = 0
    skipped_point: int = 0
    skipped_degenerate: int = 0
    skipped_too_oblique: int = 0
    outside: int = 0
    clipped: int = 0
    non_axial: int = 0
    max_spread_mm: float = 0.0
    max_off_slice_mm: float = 0.0
    self_intersecting: int = 0
    planes_dropped: int = 0
    filled_slices: int = 0
    voxels: int = 0
    volume_ml: float = 0.0
    contour_area_mm2: float = 0.0  # even-odd area of the contour polygons on the planes used
    mask_area_mm2: float = 0.0  # area of the filled pixels on those same slices
    notes: list = field(default_factory=list)

    @property
    def mask_to_contour_area(self) -> Optional[float]:
        """Filled pixel area / polygon area on the contour planes (1.0 = no bias from the pixel grid)."""
        return self.mask_area_mm2 / self.contour_area_mm2 if self.contour_area_mm2 > 0 else None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["max_spread_mm"] = round(self.max_spread_mm, 2)
        out["max_off_slice_mm"] = round(self.max_off_slice_mm, 2)
        out["volume_ml"] = round(self.volume_ml, 3)
        out["contour_area_mm2"] = round(self.contour_area_mm2, 1)
        out["mask_area_mm2"] = round(self.mask_area_mm2, 1)
        ratio = self.mask_to_contour_area
        out["mask_to_contour_area"] = round(ratio, 4) if ratio is not None else None
        return out

    def _finish(self, max_spread_mm: float) -> None:
        # (count, what it means): a note for every count that is not zero, in this order.
        counted = [
            (self.skipped_open, "open contour(s) (applicator channels or open lines) skipped: they enclose no volume."),
            (self.skipped_point, "POINT contour(s) (markers) skipped."),
            (self.skipped_degenerate, "closed contour(s) with fewer than 3 points or no area skipped."),
            (self.skipped_too_oblique, f"contour(s) spread over more than {max_spread_mm:g} mm across slices "
                                       "(not drawn on this CT's slices?) skipped."),
            (self.non_axial, f"contour(s) not on one slice (up to {self.max_spread_mm:.1f} mm spread) "
                             "assigned to the slice of their mean position."),
            (self.outside, "contour(s) lie outside the CT's slice range and were left out."),
            (self.clipped, "contour(s) extend beyond the CT's field of view and were clipped."),
            (self.self_intersecting, "self-intersecting contour(s) filled with the even-odd rule."),
            (self.planes_dropped, "contour(s) on planes between CT slices were dropped for a plane nearer "
                                  "to the same slice."),
            (self.filled_slices, "slice(s) between sparser contour planes took the nearest plane's contours."),
        ]
        self.notes.extend(f"{count} {text}" for count, text in counted if count)
        if self.max_off_slice_mm > 0.1:
            self.notes.append(f"Contour planes lie up to {self.max_off_slice_mm:.2f} mm from their slice centres.")


def _plane_of(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Best-fit plane of a contour: unit normal, offset along it, and area scale (0 if degenerate)."""
    centred = points - points.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    normal = vt[-1]
    return normal, float(normal @ points.mean(0)), float(s[1]) if len(s) > 1 else 0.0


def rasterize_rois(rois: Iterable[RoiContours], geometry: Geometry, shape: tuple[int, int, int],
                   max_spread_mm: float = 10.0, check_self_intersection: bool = True) -> tuple[np.ndarray, RasterReport]:
    """Rasterise the closed contours of one or more ROIs onto a voxel grid (union of the ROIs).

    Args:
        rois: ROIs to fill (several are OR-combined; each ROI's contours are even-odd within a plane).
        geometry, shape: The target grid, e.g. the CT's (any direction).
        max_spread_mm: Contours spread further than this across slices are skipped, not squashed.
        check_self_intersection: Count self-intersecting contours for the report.

    Returns:
        (uint8 (z, y, x) mask, RasterReport).
    """
    report = RasterReport()
    nz, ny, nx = (int(v) for v in shape)
    out = np.zeros((nz, ny, nx), bool)
    for roi in rois:
        report.rois.append(roi.name)
        out |= _rasterize_roi(roi, geometry, (nz, ny, nx), max_spread_mm, check_self_intersection, report)
    report.voxels = int(out.sum())
    report.volume_ml = report.voxels * float(np.prod(geometry.spacing)) / 1000.0
    report._finish(max_spread_mm)
    return out.astype(np.uint8), report


def _rasterize_roi(roi: RoiContours, geometry: Geometry, shape, max_spread_mm: float, check_si: bool,
                   report: RasterReport) -> np.ndarray:
    nz, ny, nx = shape
    sz = geometry.spacing[2]
    kaxis = geometry.direction_matrix[:, 2]
    # Plane groups: contours on the same physical plane are one slice's worth of outlines.
    groups: list[dict] = []
    for c in roi.contours:
        report.contours += 1
        gtype = c.geometric_type.upper()
        if gtype == "POINT":
            report.skipped_point += 1
            continue
        if gtype != CLOSED:
            report.skipped_open += 1
            continue
        pts = c.points
        if pts is None or len(pts) < 3:
            report.skipped_degenerate += 1
            continue
        ijk = geometry.physical_to_index(pts)
        spread = float(np.ptp(ijk[:, 2]) * sz)
        normal, offset, scale = _plane_of(pts)
        # Degenerate = all points on a line (zero second singular value); a bowtie's zero signed
        # area is not degenerate, so the shoelace formula is no test here.
        if scale < 1e-6 or np.linalg.svd(ijk[:, :2] - ijk[:, :2].mean(0), compute_uv=False)[-1] < 1e-6:
            report.skipped_degenerate += 1
            continue
        if spread > max_spread_mm:
            report.skipped_too_oblique += 1
            continue
        if spread > NON_AXIAL_MM:
            report.non_axial += 1
            report.max_spread_mm = max(report.max_spread_mm, spread)
        if normal @ kaxis < 0:
            normal, offset = -normal, -offset
        centre = pts.mean(0)
        for g in groups:
            if abs(g["normal"] @ normal) > 0.9999 and abs(g["normal"] @ centre - g["offset"]) < SAME_PLANE_MM:
                g["polys"].append(ijk[:, :2])
                g["k"].append(ijk[:, 2])
                target = g
                break
        else:
            target = {"normal": normal, "offset": offset, "polys": [ijk[:, :2]], "k": [ijk[:, 2]]}
            groups.append(target)
        if check_si and polygon_self_intersects(ijk[:, :2]):
            report.self_intersecting += 1
            target["no_area"] = True  # the shoelace area of a crossing outline is not what even-odd fills
        if ijk[:, 0].min() < -0.5 or ijk[:, 1].min() < -0.5 or ijk[:, 0].max() > nx - 0.5 or ijk[:, 1].max() > ny - 0.5:
            report.clipped += 1
            target["no_area"] = True  # clipped: the mask cannot hold the polygon's full area
    out = np.zeros(shape, bool)
    if not groups:
        return out
    for g in groups:
        g["kc"] = float(np.concatenate(g["k"]).mean())
        g["slice"] = int(np.floor(g["kc"] + 0.5))
    report.planes += len(groups)
    by_slice: dict[int, dict] = {}
    for g in groups:
        if not 0 <= g["slice"] < nz:
            report.outside += len(g["polys"])
            continue
        best = by_slice.get(g["slice"])
        if best is None or abs(g["kc"] - g["slice"]) < abs(best["kc"] - best["slice"]):
            if best is not None:
                report.planes_dropped += len(best["polys"])
            by_slice[g["slice"]] = g
        else:
            report.planes_dropped += len(g["polys"])
    if not by_slice:
        return out
    for s, g in by_slice.items():
        g["fill"] = fill_even_odd(g["polys"], (ny, nx))
        out[s] = g["fill"]
        if not g.get("no_area"):  # planes with clipped or self-crossing outlines are left out of the comparison
            pixel_mm2 = geometry.spacing[0] * geometry.spacing[1]
            report.contour_area_mm2 += even_odd_area(g["polys"]) * pixel_mm2
            report.mask_area_mm2 += int(np.count_nonzero(g["fill"])) * pixel_mm2
        report.used += len(g["polys"])
        report.max_off_slice_mm = max(report.max_off_slice_mm, abs(g["kc"] - s) * sz)
    report.slices += len(by_slice)
    # Slices between sparser contour planes: nearest plane, but only within half the usual plane
    # spacing, so that a deliberate gap in the ROI is not bridged.
    used = sorted(by_slice.values(), key=lambda g: g["kc"])
    kcs = np.array([g["kc"] for g in used])
    if len(used) > 1:
        half_gap = 0.5 * float(np.median(np.diff(kcs)))
        for s in range(int(min(by_slice)), int(max(by_slice)) + 1):
            if s in by_slice:
                continue
            d = np.abs(kcs - s)
            nearest = int(np.argmin(d))
            if d[nearest] <= half_gap + 1e-6:
                out[s] = used[nearest]["fill"]
                report.filled_slices += 1
    return out


def rasterize_structure_set(structure_set: StructureSet, geometry: Geometry, shape, pattern: str = DEFAULT_ROI_PATTERN,
                            name_map: Optional[dict] = None, union: bool = False,
                            **kwargs) -> tuple[Volume, RasterReport]:
    """Select ROIs by name and rasterise them: (uint8 mask Volume on the grid, report).

    Raises:
        InputError: No (or several, without ``union``) matching ROIs; or the ROI has no closed contour
            inside the grid (an empty contour sequence, only applicator paths, or all outside the CT).
    """
    rois = select_rois(structure_set, pattern, name_map, union)
    mask, report = rasterize_rois(rois, geometry, shape, **kwargs)
    names = ", ".join(repr(r.name) for r in rois)
    if report.contours == 0:
        raise InputError(f"ROI {names} has an empty contour sequence: nothing to rasterise.")
    if report.voxels == 0:
        why = "; ".join(report.notes) or "its contours fill no voxel"
        raise InputError(f"ROI {names} gives an empty mask on this CT ({why}).")
    return Volume(mask, geometry), report


# --------------------------------------------------------------------------- grid from contours
def grid_from_contours(rois: Iterable[RoiContours], spacing_mm: float = 1.0, slice_mm: Optional[float] = None,
                       margin_mm: float = 5.0, align_to_contours: bool = True) -> tuple[Geometry, tuple[int, int, int]]:
    """A voxel grid that covers the closed contours of ``rois`` (for structure sets without their CT).

    Args:
        rois: ROIs whose closed contours define the bounds.
        spacing_mm: In-plane pixel size.
        slice_mm: Slice spacing (default: the median spacing of the contour planes, else ``spacing_mm``).
        margin_mm: Extra space around the contours in-plane.
        align_to_contours: Tilt the grid so its slices are the contours' planes when all contours share one
            normal (a tilted CT); otherwise the grid is axial.

    Returns:
        (Geometry, (nz, ny, nx)), with contour planes on slice centres.

    Raises:
        InputError: No closed contour with area.
    """
    pts_list, normals = [], []
    for roi in rois:
        for c in roi.closed_contours:
            if c.points is None or len(c.points) < 3:
                continue
            n, _, scale = _plane_of(c.points)
            if scale < 1e-6:
                continue
            pts_list.append(c.points)
            normals.append(n if n[2] >= 0 else -n)
    if not pts_list:
        raise InputError("The structure set has no closed contour to build a grid from.")
    normals = np.asarray(normals)
    kdir = np.array([0.0, 0.0, 1.0])
    if align_to_contours:
        mean = normals.mean(0)
        mean /= np.linalg.norm(mean)
        if np.all(normals @ mean > np.cos(np.deg2rad(1.0))):
            kdir = mean
    idir = np.array([1.0, 0.0, 0.0]) - kdir[0] * kdir
    idir /= np.linalg.norm(idir)
    jdir = np.cross(kdir, idir)
    frame = np.stack([idir, jdir, kdir], axis=1)
    local = [p @ frame for p in pts_list]  # coordinates along (i, j, k) directions
    allpts = np.concatenate(local)
    plane_pos = np.unique(np.round([float(p[:, 2].mean()) for p in local], 2))
    if slice_mm is None:
        gaps = np.diff(plane_pos)
        gaps = gaps[gaps > 0.05]
        slice_mm = float(np.round(np.median(gaps), 2)) if gaps.size else float(spacing_mm)
    lo, hi = allpts.min(0), allpts.max(0)
    lo[:2] -= margin_mm
    hi[:2] += margin_mm
    k0 = float(plane_pos.min())
    nz = int(np.floor((plane_pos.max() - k0) / slice_mm + 0.5)) + 1
    nx = int(np.ceil((hi[0] - lo[0]) / spacing_mm)) + 1
    ny = int(np.ceil((hi[1] - lo[1]) / spacing_mm)) + 1
    origin = frame @ np.array([lo[0], lo[1], k0])
    return Geometry((spacing_mm, spacing_mm, slice_mm), tuple(origin), tuple(frame.ravel())), (nz, ny, nx)

