"""Automatic region of interest: where the CTV can be, as a physical box, plus crop and paste-back.

The paper crops every CT "by an automatic regions of interest location method" without saying
which. Ours, documented here and reported with every result (``Roi.method``):

1. **Body**: voxels above ``body_hu`` (-400 HU); the largest 3D connected component (this drops
   the couch, the applicator handle outside the patient and noise in the air), computed on an
   in-plane sub-sampled copy because only its bounds and centroid are needed.
2. **Applicator** (method ``"applicator"``, with the localiser's ``confidence``): the intrauterine
   applicator found by :func:`applicator.locate_applicator` (a tandem: a long thin cranio-caudal tube
   near the midline with a ring/ovoids at the os; not "any metal", which a hip prosthesis is too)
   with confidence >= 0.5. Metal applicator: the rule the demo weights were trained with, applied
   to the applicator's metal only (inside the body, within 40 mm of the tandem's line, not above
   its tip): the slice with most of it is the ovoid/ring level next to the cervix; the in-plane
   centre is the centroid of that metal within ``metal_center_window_mm`` of that slice, and the
   slice range is its extent +- ``z_margin_mm``, cut to ``z_below_peak_mm`` below and
   ``z_above_peak_mm`` above that slice (the network only runs there). Plastic applicator: centre
   at the cervical os, slices ``z_below_peak_mm`` below to ``z_above_peak_mm`` above it. The tandem
   runs through the CTV into the uterus, so the CTV lies inside that range.
3. **Fallback** (method ``"body"``, no applicator trusted): in-plane centre = centroid of the
   body in the slices of its middle half, slice range = the whole scan. The CTV of a cervix lies near
   the middle of the pelvis, so a 128 mm ROI still covers it; the caller may pass ``center`` (e.g. a
   point the user clicked) to override.

Crop: the ROI grid has the image's own axes re-ordered and flipped to be closest to L, P, S (like
DICOM's "closest orientation"), so the network always sees patients the same way round whatever the
file's direction matrix, while slices stay slices (no interpolation across them for axial scans).
In-plane it is resampled to ``spacing_mm`` (linear); the slices are the image's own. Paste-back
resamples the ROI map onto the sub-box of the original grid it covers (linear) and leaves zeros
elsewhere, so the result has the input's exact geometry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.errors import InputError
from ..core.volume import Geometry, Volume
from .applicator import TRUST, closest_axes, locate_applicator


APPLICATOR_RADIUS_MM = 40.0  # ring/ovoids lie within ~25 mm of the tandem's line; prostheses far beyond


@dataclass(frozen=True)
class RoiSpec:
    """How the ROI is found and sampled (stored in the model card's input spec)."""

    size_px: tuple[int, int] = (128, 128)  # (x, y) = columns, rows
    spacing_mm: tuple[float, float] = (1.0, 1.0)
    body_hu: float = -400.0
    metal_hu: float = 2000.0
    min_metal_ml: float = 0.2
    z_margin_mm: float = 30.0
    metal_center_window_mm: float = 20.0
    # The CTV sits on the cervix, next to the ovoids/ring (the slice with most metal): it is looked
    # for from 40 mm below to 80 mm above that slice. Phantoms place it within [-18, +50] mm; real
    # HR-CTVs reach ~60 mm up the tandem. tests/test_geometry_roi.py checks no CTV slice is lost.
    z_below_peak_mm: float = 40.0
    z_above_peak_mm: float = 80.0

    @classmethod
    def from_dict(cls, d: dict) -> "RoiSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("size_px", "spacing_mm"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Roi:
    """A located region: physical centre (LPS mm), the slices it spans and how it was found."""

    center: tuple[float, float, float]
    slice_axis: int  # which image index axis (0=i, 1=j, 2=k) runs cranio-caudally
    slice_range: tuple[int, int]  # [first, last] image indices along slice_axis, inclusive
    method: str
    confidence: float | None = None  # the applicator localiser's, when method is "applicator"

    def to_dict(self) -> dict:
        d = {"center_lps_mm": [round(c, 3) for c in self.center], "slice_axis": self.slice_axis,
             "slice_range": list(self.slice_range), "method": self.method}
        if self.confidence is not None:
            d["confidence"] = round(float(self.confidence), 3)
        return d


def locate_roi(volume: Volume, spec: RoiSpec = RoiSpec(), center=None, fit=None) -> Roi:
    """Find the region of interest (see module docstring for the algorithm).

    Args:
        volume: CT in HU.
        spec: Thresholds and margins.
        center: Optional LPS point (mm) to use as the in-plane centre instead of the automatic one.
        fit: The :class:`~.applicator.ApplicatorFit` when already computed (else located here).
    """
    import SimpleITK as sitk

    geom = volume.geometry
    order, _ = closest_axes(geom.direction_matrix)
    slice_axis = order[2]  # image axis (0=i,1=j,2=k) closest to S
    arr_axis = 2 - slice_axis  # numpy axis of it
    n_slices = volume.shape[arr_axis]

    # Sub-sample the two in-plane axes to ~4 mm: enough for a body outline, 20x cheaper.
    step = [1, 1, 1]  # numpy (z, y, x) steps
    for ax in range(3):
        if ax != arr_axis:
            step[ax] = max(1, int(4.0 // geom.spacing[2 - ax]))
    small = volume.array[:: step[0], :: step[1], :: step[2]]
    body = _largest_component(small > spec.body_hu)
    if not body.any():
        raise InputError("No patient body was found in the image (nothing above -400 HU): is this a CT?")

    scale = np.asarray([step[2], step[1], step[0]], float)  # (i, j, k) steps
    window = _applicator_window(volume, spec, slice_axis, n_slices, body, step, fit)
    confidence = None
    if window is not None:
        auto_center, (first, last), confidence = window
        method = "applicator"
    else:
        idx = np.argwhere(body)
        s = idx[:, arr_axis]
        lo, hi = np.percentile(s, [25, 75])
        mid = idx[(s >= lo) & (s <= hi)]
        ijk = mid[:, ::-1].astype(float).mean(0) * scale
        auto_center = geom.index_to_physical(ijk)
        first, last = 0, n_slices - 1
        method = "body"
    if center is not None:
        auto_center = np.asarray(center, float)
        method += "+user-center"
    return Roi(tuple(float(c) for c in auto_center), slice_axis, (first, last), method, confidence)


def _applicator_window(volume: Volume, spec: RoiSpec, slice_axis: int, n_slices: int, body: np.ndarray,
                       step: list[int], fit=None):
    """(centre, slice range, confidence) from a trusted applicator, or None (see the module docstring)."""
    fit = locate_applicator(volume) if fit is None else fit
    if not fit.found or fit.confidence < TRUST:
        return None
    window = None
    if fit.kind == "metal":
        window = _applicator_metal_window(volume, spec, slice_axis, n_slices, body, step, fit)
    if window is not None:
        return (*window, float(fit.confidence))
    geom = volume.geometry
    os_ = np.asarray(fit.os_lps, float)
    peak = int(round(float(geom.physical_to_index(os_)[slice_axis])))
    # Superior is +index when the slice axis points to S, else -index.
    up = 1 if geom.direction_matrix[2, slice_axis] > 0 else -1
    below = int(np.ceil(spec.z_below_peak_mm / geom.spacing[slice_axis]))
    above = int(np.ceil(spec.z_above_peak_mm / geom.spacing[slice_axis]))
    lo, hi = sorted((peak - up * below, peak + up * above))
    first, last = max(lo, 0), min(hi, n_slices - 1)
    if first > last:
        return None  # the os lies outside the scan
    return os_, (first, last), float(fit.confidence)


def _applicator_metal_window(volume, spec, slice_axis, n_slices, body, step, fit):
    """The "most metal" rule the demo weights were trained with, on the applicator's metal only.

    Metal inside the body within ``APPLICATOR_RADIUS_MM`` of the tandem's line and not above its
    tip: the tandem, ring/ovoids and their handles, never a hip prosthesis or spinal hardware.
    The slice with most of it is the ovoid/ring level; the in-plane centre is the centroid of that
    metal within ``metal_center_window_mm`` of it; slices: its extent +- ``z_margin_mm``, cut to
    ``z_below_peak_mm`` below and ``z_above_peak_mm`` above the peak.
    """
    geom = volume.geometry
    arr_axis = 2 - slice_axis
    metal_idx = np.stack(np.unravel_index(np.flatnonzero(volume.array >= spec.metal_hu), volume.shape), 1)
    if len(metal_idx):
        small_idx = np.minimum(metal_idx // np.asarray(step), np.asarray(body.shape) - 1)
        metal_idx = metal_idx[body[tuple(small_idx.T)]]
    if not len(metal_idx):
        return None
    pts = geom.index_to_physical(metal_idx[:, ::-1].astype(float))
    os_, axis = np.asarray(fit.os_lps), np.asarray(fit.axis_lps)
    rel = pts - os_
    t = rel @ axis
    d = np.linalg.norm(rel - np.outer(t, axis), axis=1)
    metal_idx = metal_idx[(d <= APPLICATOR_RADIUS_MM) & (t <= fit.length_mm + 10.0)]
    voxel_ml = float(np.prod(geom.spacing)) / 1000.0
    if len(metal_idx) * voxel_ml < spec.min_metal_ml:
        return None
    slices = metal_idx[:, arr_axis]
    counts = np.bincount(slices, minlength=n_slices)
    peak = int(np.argmax(counts))
    window = max(1, int(round(spec.metal_center_window_mm / geom.spacing[slice_axis])))
    near = np.abs(slices - peak) <= window
    centre = geom.index_to_physical(metal_idx[near][:, ::-1].astype(float).mean(0))
    margin = int(np.ceil(spec.z_margin_mm / geom.spacing[slice_axis]))
    first, last = max(int(slices.min()) - margin, 0), min(int(slices.max()) + margin, n_slices - 1)
    up = 1 if geom.direction_matrix[2, slice_axis] > 0 else -1
    below = int(np.ceil(spec.z_below_peak_mm / geom.spacing[slice_axis]))
    above = int(np.ceil(spec.z_above_peak_mm / geom.spacing[slice_axis]))
    lo, hi = sorted((peak - up * below, peak + up * above))
    first, last = max(first, lo), min(last, hi)
    return (centre, (first, last)) if first <= last else None


def _largest_component(mask: np.ndarray) -> np.ndarray:
    import SimpleITK as sitk

    if not mask.any():
        return mask
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))),
                               sortByObjectSize=True)
    return sitk.GetArrayViewFromImage(cc) == 1


def roi_geometry(volume_geometry: Geometry, roi: Roi, spec: RoiSpec) -> tuple[Geometry, tuple[int, int, int]]:
    """The ROI's sampling grid: closest-to-LPS axes, model spacing in-plane, the image's slices."""
    d = volume_geometry.direction_matrix
    sp = np.asarray(volume_geometry.spacing)
    order, signs = closest_axes(d)
    new_dir = np.stack([signs[a] * d[:, order[a]] for a in range(3)], axis=1)
    slice_axis = roi.slice_axis
    first, last = roi.slice_range
    n = last - first + 1
    # The ROI's first slice is the image slice where the new S axis starts.
    start_slice = first if signs[2] > 0 else last
    c_idx = volume_geometry.physical_to_index(np.asarray(roi.center))
    c_idx[slice_axis] = start_slice
    start = volume_geometry.index_to_physical(c_idx)
    size = (int(spec.size_px[0]), int(spec.size_px[1]), int(n))
    spacing = (float(spec.spacing_mm[0]), float(spec.spacing_mm[1]), float(sp[slice_axis]))
    half = np.array([(size[0] - 1) / 2 * spacing[0], (size[1] - 1) / 2 * spacing[1], 0.0])
    origin = start - new_dir @ half
    return Geometry(spacing, origin, tuple(new_dir.ravel())), size


def crop(volume: Volume, roi: Roi, spec: RoiSpec, default: float = -1024.0) -> Volume:
    """Resample the ROI out of ``volume`` (linear in-plane); returns a (slices, H, W) float32 Volume."""
    import SimpleITK as sitk

    geom, size = roi_geometry(volume.geometry, roi, spec)
    # Resample from the sub-box of the image that the ROI grid touches (+1 voxel for interpolation),
    # not from the whole CT: a 512 x 512 x 120 volume would otherwise be copied twice for nothing.
    nx, ny, nz = size
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
    idx = volume.geometry.physical_to_index(geom.index_to_physical(corners))
    full = np.array(volume.shape[::-1])
    lo = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, full - 1)
    hi = np.clip(np.ceil(idx.max(0)).astype(int) + 2, 1, full)
    sub = volume.array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    sub_geom = Geometry(volume.geometry.spacing, volume.geometry.index_to_physical(lo.astype(float)),
                        volume.geometry.direction)
    image = Volume(np.ascontiguousarray(sub, dtype=np.float32), sub_geom).to_sitk()
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, geom.origin, geom.spacing,
                        geom.direction, float(default), sitk.sitkFloat32)
    return Volume.from_sitk(out)


def paste(roi_map: Volume, target: Geometry, target_shape_zyx: tuple[int, int, int],
          interpolator: str = "linear") -> np.ndarray:
    """Resample a map on the ROI grid back onto the original grid; zero outside the ROI."""
    out = np.zeros(target_shape_zyx, np.float32)
    box, values = paste_box(roi_map, target, target_shape_zyx, interpolator)
    if box is not None:
        out[box] = values
    return out


def paste_box(roi_map: Volume, target: Geometry, target_shape_zyx: tuple[int, int, int],
              interpolator: str = "linear"):
    """The ROI map resampled onto the sub-box of the original grid it covers: ``(slices, array)``.

    Only that sub-box is resampled and returned (a 512 x 512 x 120 CT would otherwise cost
    full-volume passes for a 128 x 128 map); ``(None, None)`` when the ROI misses the grid.
    """
    import SimpleITK as sitk

    g = roi_map.geometry
    nz, ny, nx = roi_map.shape
    corners = np.array([[i, j, k] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)])
    idx = target.physical_to_index(g.index_to_physical(corners))
    full = np.array(target_shape_zyx[::-1])
    lo = np.clip(np.floor(idx.min(0)).astype(int), 0, full)
    hi = np.clip(np.ceil(idx.max(0)).astype(int) + 1, 0, full)
    if np.any(hi <= lo):
        return None, None
    sub_origin = target.index_to_physical(lo.astype(float))
    interp = sitk.sitkLinear if interpolator == "linear" else sitk.sitkNearestNeighbor
    res = sitk.Resample(roi_map.to_sitk(), [int(v) for v in hi - lo], sitk.Transform(), interp,
                        tuple(sub_origin), target.spacing, target.direction, 0.0, sitk.sitkFloat32)
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    return box, sitk.GetArrayFromImage(res)
