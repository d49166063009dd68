"""DICOM RT Structure Sets: read, rasterise onto a CT grid, and write one from a mask.

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

Export (``write_rtstruct``) traces each slice of the mask with marching squares (our own, with
consistent orientation so outer boundaries and holes come out as separate closed loops) and writes
them in patient coordinates, referencing the CT's study, series, frame of reference and every
contoured image.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .errors import InputError, OutputError
from .volume import Geometry, Volume

# CTV names seen in cervix brachytherapy structure sets: CTV, ctv, HR-CTV, HRCTV, CTV_HR, CTV-HR, HR CTV.
DEFAULT_ROI_PATTERN = r"(hr[-_ ]?)?ctv([-_ ]?hr)?"

CLOSED = "CLOSED_PLANAR"
OPEN_TYPES = ("OPEN_PLANAR", "OPEN_NONPLANAR")

# A contour counts as "not on one slice" above this spread along the slice normal; below it the
# spread is float/DS rounding.
NON_AXIAL_MM = 0.05
# Contours whose fitted planes are within this distance (and parallel) are one contour plane.
SAME_PLANE_MM = 0.2


# --------------------------------------------------------------------------- reading
@dataclass
class Contour:
    """One contour: points in LPS mm, its geometric type, the image UIDs it says it was drawn on."""

    points: np.ndarray
    geometric_type: str = CLOSED
    image_uids: tuple = ()


@dataclass
class RoiContours:
    """One ROI of a structure set with its contours."""

    number: int
    name: str
    interpreted_type: str = ""
    frame_of_reference_uid: str = ""
    contours: list = field(default_factory=list)

    @property
    def closed_contours(self) -> list:
        return [c for c in self.contours if c.geometric_type.upper() == CLOSED]


@dataclass
class StructureSet:
    """What the importer needs from an RTSTRUCT file (identifiers stay in memory, never reported)."""

    path: Path
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    patient_id: str = ""
    frame_of_reference_uids: tuple = ()
    referenced_series_uids: tuple = ()
    referenced_image_uids: frozenset = frozenset()
    label: str = ""
    date_time: str = ""
    rois: list = field(default_factory=list)

    def roi_names(self) -> list[str]:
        return [r.name for r in self.rois]


def _contour_points(item) -> Optional[np.ndarray]:
    """ContourData as (n, 3) floats, parsed from the raw bytes when possible (pydicom's DS path is slow)."""
    from pydicom.dataelem import RawDataElement

    tag = 0x30060050
    if tag not in item:
        return None
    raw = item.get_item(tag)
    try:
        if isinstance(raw, RawDataElement) and isinstance(raw.value, (bytes, bytearray)):
            text = raw.value.decode("ascii", "replace").replace("\x00", " ").strip()
            values = np.array([float(v) for v in text.split("\\")] if text else [], float)
        else:
            values = np.asarray([float(v) for v in item.ContourData], float)
    except ValueError:
        return None
    if values.size == 0 or values.size % 3 or not np.all(np.isfinite(values)):
        return None
    return values.reshape(-1, 3)


def read_structure_set(path) -> StructureSet:
    """Read an RTSTRUCT file.

    Raises:
        InputError: Not a readable DICOM file, or not an RT structure set.
    """
    from pydicom.errors import InvalidDicomError

    from .dicom import dcmread_lenient

    path = Path(path)
    if not path.is_file():
        raise InputError(f"'{path}' does not exist or is not a file.")
    try:
        ds = dcmread_lenient(path)
    except InvalidDicomError:
        raise InputError(f"'{path}' is not a DICOM file.") from None
    except Exception as exc:  # damaged files raise many kinds of errors inside pydicom
        raise InputError(f"'{path}' is not a readable DICOM file ({type(exc).__name__}).") from None
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.481.3":
        raise InputError(f"'{path}' is a {ds.get('Modality', 'non-RT')} file, not an RT structure set.")
    try:
        return _parse_structure_set(ds, path)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"'{path}' is a malformed RT structure set ({type(exc).__name__}: {str(exc)[:100]}).") from None


def _parse_structure_set(ds, path: Path) -> StructureSet:
    fors, series, images = [], [], set()
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        if fr.get("FrameOfReferenceUID"):
            fors.append(str(fr.FrameOfReferenceUID))
        for st in fr.get("RTReferencedStudySequence", []):
            for se in st.get("RTReferencedSeriesSequence", []):
                if se.get("SeriesInstanceUID"):
                    series.append(str(se.SeriesInstanceUID))
                for im in se.get("ContourImageSequence", []):
                    images.add(str(im.get("ReferencedSOPInstanceUID", "")))
    rois = {}
    for item in ds.get("StructureSetROISequence", []):
        number = int(item.ROINumber)
        rois[number] = RoiContours(number, str(item.get("ROIName", "")).strip(),
                                   frame_of_reference_uid=str(item.get("ReferencedFrameOfReferenceUID", "")))
        if rois[number].frame_of_reference_uid and rois[number].frame_of_reference_uid not in fors:
            fors.append(rois[number].frame_of_reference_uid)
    for obs in ds.get("RTROIObservationsSequence", []):
        number = int(obs.get("ReferencedROINumber", -1))
        if number in rois:
            rois[number].interpreted_type = str(obs.get("RTROIInterpretedType", "") or "")
    for rc in ds.get("ROIContourSequence", []):
        if rc.get("ReferencedROINumber") is None:
            # Type 1; missing in practice only when the file was cut short (pydicom reads what is there).
            raise InputError(f"'{path}' is damaged or truncated: a contour set names no ROI.")
        number = int(rc.ReferencedROINumber)
        roi = rois.setdefault(number, RoiContours(number, f"ROI {number}"))
        for c in rc.get("ContourSequence", []) or []:
            pts = _contour_points(c)
            if pts is None and 0x30060050 in c:
                raise InputError(f"'{path}' is damaged or truncated: ROI '{roi.name}' has contour data that are not "
                                 "x, y, z triples of numbers.")
            uids = tuple(str(im.get("ReferencedSOPInstanceUID", "")) for im in c.get("ContourImageSequence", []) or [])
            gtype = str(c.get("ContourGeometricType", CLOSED) or CLOSED).upper()
            roi.contours.append(Contour(pts if pts is not None else np.zeros((0, 3)), gtype, uids))
            images.update(u for u in uids if u)
    images.discard("")
    return StructureSet(
        path=path, sop_instance_uid=str(ds.get("SOPInstanceUID", "")), study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")), frame_of_reference_uids=tuple(dict.fromkeys(fors)),
        referenced_series_uids=tuple(dict.fromkeys(series)), referenced_image_uids=frozenset(images),
        label=str(ds.get("StructureSetLabel", "")),
        date_time=f"{ds.get('StructureSetDate', '') or ds.get('InstanceCreationDate', '')}"
                  f"{ds.get('StructureSetTime', '') or ds.get('InstanceCreationTime', '')}",
        rois=sorted(rois.values(), key=lambda r: r.number),
    )


# --------------------------------------------------------------------------- choosing ROIs
def compile_roi_pattern(pattern: str) -> "re.Pattern":
    """The ROI name pattern as a case-insensitive regular expression matched against whole names.

    Raises:
        InputError: Not a valid regular expression.
    """
    try:
        return re.compile(pattern or DEFAULT_ROI_PATTERN, re.IGNORECASE)
    except re.error as exc:
        raise InputError(f"The ROI pattern '{pattern}' is not a valid regular expression ({exc}).") from None


def load_name_map(spec) -> dict[str, str]:
    """A ROI name map from a JSON file or a JSON string, as {original name (lower case): canonical name}.

    Two JSON forms are accepted: ``{"HR-CTV": "CTV", "ctv_hr": "CTV"}`` (original -> canonical) and
    ``{"CTV": ["HR-CTV", "ctv_hr"]}`` (canonical -> originals).

    Raises:
        InputError: Unreadable file, invalid JSON, or values that are neither strings nor lists of strings.
    """
    if spec is None or spec == "":
        return {}
    if isinstance(spec, dict):
        data = spec
    else:
        text = str(spec)
        try:
            if Path(text).is_file():
                text = Path(text).read_text(encoding="utf-8")
        except OSError:
            pass  # a long JSON string is not a path; parse it as JSON below
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"The ROI name map is neither a readable JSON file nor valid JSON ({exc.msg}).") from None
    if not isinstance(data, dict):
        raise InputError("The ROI name map must be a JSON object.")
    out = {}
    for key, value in data.items():
        if isinstance(value, str):
            out[str(key).strip().lower()] = value.strip()
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            for v in value:
                out[v.strip().lower()] = str(key).strip()
        else:
            raise InputError(f"The ROI name map entry '{key}' must map to a name or a list of names.")
    return out


def canonical_roi_name(name: str, name_map: Optional[dict] = None) -> str:
    return (name_map or {}).get(name.strip().lower(), name.strip())


def select_rois(structure_set: StructureSet, pattern: str = DEFAULT_ROI_PATTERN, name_map: Optional[dict] = None,
                union: bool = False) -> list[RoiContours]:
    """The ROI(s) whose (mapped) name fully matches ``pattern``, case-insensitively.

    Raises:
        InputError: No ROI matches; or several do and ``union`` is not set (merging HR-CTV with
            IR-CTV silently would corrupt training data).
    """
    rx = compile_roi_pattern(pattern)
    chosen = [r for r in structure_set.rois if rx.fullmatch(canonical_roi_name(r.name, name_map))]
    if not chosen:
        names = ", ".join(repr(n) for n in structure_set.roi_names()) or "none"
        raise InputError(f"The structure set has no ROI matching '{rx.pattern}' (its ROIs: {names}); "
                         "change the pattern or add a name map.")
    if len(chosen) > 1 and not union:
        names = ", ".join(repr(r.name) for r in chosen)
        raise InputError(f"Several ROIs match '{rx.pattern}' ({names}); make the pattern more specific, "
                         "map the names, or merge them on purpose (union).")
    return chosen


# --------------------------------------------------------------------------- polygon fill
def fill_even_odd(polygons: Iterable[np.ndarray], shape_yx: tuple[int, int]) -> np.ndarray:
    """Fill closed polygons on a pixel grid with the even-odd rule, sampling pixel centres.

    All polygons are filled together, so overlapping ones XOR (holes, nested islands) and a
    self-intersecting outline fills like a planning system draws it.

    Args:
        polygons: (n, 2) vertex arrays in continuous index coordinates (i = column, j = row); pixel
            (j, i) has its centre at (i, j). The closing edge is implicit.
        shape_yx: (rows, columns) of the output.

    Returns:
        Boolean (rows, columns) mask.
    """
    ny, nx = int(shape_yx[0]), int(shape_yx[1])
    width = nx + 1  # one spare column collects crossings right of the last pixel
    cells = []
    for poly in polygons:
        p = np.asarray(poly, float)
        if len(p) < 3:
            continue
        x0, y0 = p[:, 0], p[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        # Half-open rule (ylo <= row < yhi): a vertex exactly on a row is counted once, horizontal edges never.
        ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
        first = np.clip(np.ceil(ylo), 0, ny).astype(np.int64)
        stop = np.clip(np.ceil(yhi), 0, ny).astype(np.int64)
        count = np.maximum(stop - first, 0)
        total = int(count.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(len(p)), count)
        offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        row = first[edge] + offset
        t = (row - y0[edge]) / (y1[edge] - y0[edge])
        x = x0[edge] + t * (x1[edge] - x0[edge])
        # A crossing at x toggles every pixel centre to its right (i > x): ray casting towards -x.
        start = np.clip(np.floor(x).astype(np.int64) + 1, 0, nx)
        cells.append(row * width + start)
    if not cells:
        return np.zeros((ny, nx), bool)
    toggles = np.bincount(np.concatenate(cells), minlength=ny * width).reshape(ny, width)
    return (np.cumsum(toggles, axis=1)[:, :nx] & 1).astype(bool)


def polygon_self_intersects(poly: np.ndarray) -> bool:
    """Whether two non-adjacent edges of a closed polygon cross (proper crossings only)."""
    p = np.asarray(poly, float)
    keep = np.ones(len(p), bool)
    keep[1:] = np.any(np.diff(p, axis=0) != 0, axis=1)  # repeated points make zero-length edges
    p = p[keep]
    if len(p) > 1 and np.all(p[0] == p[-1]):
        p = p[:-1]
    n = len(p)
    if n < 4:
        return False
    a, b = p, np.roll(p, -1, axis=0)
    lo, hi = np.minimum(a, b), np.maximum(a, b)

    def orient(p0, p1, q):
        return (p1[..., 0] - p0[..., 0]) * (q[..., 1] - p0[..., 1]) - (p1[..., 1] - p0[..., 1]) * (q[..., 0] - p0[..., 0])

    idx = np.arange(n)
    chunk = max(1, 2_000_000 // n)  # bounded memory for long outlines
    for s in range(0, n, chunk):
        i = idx[s:s + chunk, None]
        # Bounding boxes first: cheap, and removes almost every pair of a real contour.
        cand = ((lo[s:s + chunk, None, 0] <= hi[None, :, 0]) & (lo[None, :, 0] <= hi[s:s + chunk, None, 0])
                & (lo[s:s + chunk, None, 1] <= hi[None, :, 1]) & (lo[None, :, 1] <= hi[s:s + chunk, None, 1]))
        cand &= (idx[None, :] > i + 1) & ~((i == 0) & (idx[None, :] == n - 1))
        ii, jj = np.nonzero(cand)
        if ii.size == 0:
            continue
        ii = ii + s
        d1, d2 = orient(a[ii], b[ii], a[jj]), orient(a[ii], b[ii], b[jj])
        d3, d4 = orient(a[jj], b[jj], a[ii]), orient(a[jj], b[jj], b[ii])
        if np.any((d1 * d2 < 0) & (d3 * d4 < 0)):
            return True
    return False


# --------------------------------------------------------------------------- rasterisation
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
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["max_spread_mm"] = round(self.max_spread_mm, 2)
        out["max_off_slice_mm"] = round(self.max_off_slice_mm, 2)
        out["volume_ml"] = round(self.volume_ml, 3)
        return out

    def _finish(self, max_spread_mm: float) -> None:
        n = self.notes
        if self.skipped_open:
            n.append(f"{self.skipped_open} open contour(s) (applicator channels or open lines) skipped: they enclose no volume.")
        if self.skipped_point:
            n.append(f"{self.skipped_point} POINT contour(s) (markers) skipped.")
        if self.skipped_degenerate:
            n.append(f"{self.skipped_degenerate} closed contour(s) with fewer than 3 points or no area skipped.")
        if self.skipped_too_oblique:
            n.append(f"{self.skipped_too_oblique} contour(s) spread over more than {max_spread_mm:g} mm across slices "
                     "(not drawn on this CT's slices?) skipped.")
        if self.non_axial:
            n.append(f"{self.non_axial} contour(s) not on one slice (up to {self.max_spread_mm:.1f} mm spread) "
                     "assigned to the slice of their mean position.")
        if self.outside:
            n.append(f"{self.outside} contour(s) lie outside the CT's slice range and were left out.")
        if self.clipped:
            n.append(f"{self.clipped} contour(s) extend beyond the CT's field of view and were clipped.")
        if self.self_intersecting:
            n.append(f"{self.self_intersecting} self-intersecting contour(s) filled with the even-odd rule.")
        if self.planes_dropped:
            n.append(f"{self.planes_dropped} contour(s) on planes between CT slices were dropped for a plane nearer "
                     "to the same slice.")
        if self.filled_slices:
            n.append(f"{self.filled_slices} slice(s) between sparser contour planes took the nearest plane's contours.")
        if self.max_off_slice_mm > 0.1:
            n.append(f"Contour planes lie up to {self.max_off_slice_mm:.2f} mm from their slice centres.")


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
                break
        else:
            groups.append({"normal": normal, "offset": offset, "polys": [ijk[:, :2]], "k": [ijk[:, 2]]})
        if check_si and polygon_self_intersects(ijk[:, :2]):
            report.self_intersecting += 1
        if ijk[:, 0].min() < -0.5 or ijk[:, 1].min() < -0.5 or ijk[:, 0].max() > nx - 0.5 or ijk[:, 1].max() > ny - 0.5:
            report.clipped += 1
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


# --------------------------------------------------------------------------- export: marching squares
# Cell corners: 1 = top-left (y, x), 2 = top-right (y, x+1), 4 = bottom-right (y+1, x+1), 8 = bottom-left (y+1, x).
# Edge midpoints in doubled coordinates relative to the cell's top-left corner (2x, 2y).
_EDGE = {"T": (1, 0), "R": (2, 1), "B": (1, 2), "L": (0, 1)}
_CORNER = {1: (0, 0), 2: (2, 0), 4: (2, 2), 8: (0, 2)}
# Which edges each case connects; saddles (5, 10) keep diagonal foreground pixels apart, so each
# 4-connected island gets its own loop.
_PAIRS = {1: ["TL"], 2: ["TR"], 3: ["LR"], 4: ["RB"], 5: ["TL", "RB"], 6: ["TB"], 7: ["LB"], 8: ["LB"],
          9: ["TB"], 10: ["TR", "LB"], 11: ["RB"], 12: ["LR"], 13: ["TR"], 14: ["TL"]}


def _segment_table() -> dict[int, list]:
    """Directed segments per case, oriented so the foreground is always on the same side.

    That orientation gives every crossing point exactly one incoming and one outgoing segment, so
    loops link without search, and outer boundaries and holes run in opposite senses.
    """
    table = {}
    for case, pairs in _PAIRS.items():
        segs = []
        for pair in pairs:
            a, b = np.array(_EDGE[pair[0]], float), np.array(_EDGE[pair[1]], float)
            mid, d = (a + b) / 2, b - a
            # The corner nearest the segment on each side decides which side is foreground.
            sides = {}
            for bit, pos in _CORNER.items():
                cross = d[0] * (pos[1] - a[1]) - d[1] * (pos[0] - a[0])
                dist = np.linalg.norm(np.array(pos) - mid)
                side = cross > 0
                if side not in sides or dist < sides[side][0]:
                    sides[side] = (dist, bool(case & bit))
            if sides[True][1] == sides[False][1]:
                raise AssertionError(f"bad marching-squares table entry {case}")
            if not sides[True][1]:  # put the foreground on the positive-cross side
                a, b = b, a
            segs.append((tuple(int(v) for v in a), tuple(int(v) for v in b)))
        table[case] = segs
    return table


_SEGMENTS = _segment_table()


def mask_to_polygons(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D binary mask, holes included, in index coordinates (i, j).

    Marching squares at the 0.5 level through edge midpoints: every foreground pixel centre lies
    strictly inside the outlines and every background one strictly outside, so even-odd filling of
    the result gives back the mask exactly. Collinear vertices are removed.

    Returns:
        A list of (n, 2) float arrays (i = column, j = row), one per loop; outer boundaries and holes
        run in opposite directions.
    """
    m = np.asarray(mask2d).astype(bool)
    ny, nx = m.shape
    p = np.zeros((ny + 2, nx + 2), np.uint8)
    p[1:-1, 1:-1] = m
    case = p[:-1, :-1] * 1 + p[:-1, 1:] * 2 + p[1:, 1:] * 4 + p[1:, :-1] * 8
    width = 2 * (nx + 2) + 1
    starts, ends = [], []
    for c, segs in _SEGMENTS.items():
        yy, xx = np.nonzero(case == c)
        if yy.size == 0:
            continue
        for (ax, ay), (bx, by) in segs:
            starts.append((2 * yy + ay) * width + 2 * xx + ax)
            ends.append((2 * yy + by) * width + 2 * xx + bx)
    if not starts:
        return []
    s, e = np.concatenate(starts), np.concatenate(ends)
    nxt = dict(zip(s.tolist(), e.tolist()))
    loops = []
    seen = set()
    for start in s.tolist():
        if start in seen:
            continue
        loop, key = [], start
        while key not in seen:
            seen.add(key)
            loop.append(key)
            key = nxt[key]
        keys = np.asarray(loop)
        xy = np.stack([(keys % width) / 2.0 - 1.0, (keys // width) / 2.0 - 1.0], axis=1)
        loops.append(_drop_collinear(xy))
    return loops


def _drop_collinear(xy: np.ndarray) -> np.ndarray:
    d_in = xy - np.roll(xy, 1, axis=0)
    d_out = np.roll(xy, -1, axis=0) - xy
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    keep = np.abs(cross) > 1e-9
    return xy[keep] if keep.sum() >= 3 else xy


# --------------------------------------------------------------------------- export: RTSTRUCT file
def _ds_text(values: np.ndarray) -> str:
    """DS multi-value text, 4 decimals (0.1 micrometre), within DICOM's 16 characters per value."""
    parts = []
    for v in np.ravel(values):
        s = f"{v:.4f}".rstrip("0").rstrip(".")
        parts.append("0" if s in ("-0", "") else s)
    return "\\".join(parts)


def split_model_label(model_label: str) -> tuple[str, str]:
    """'Mnet_Im 0.1.0' -> ('Mnet_Im', '0.1.0'); a label without a version gets the package's version."""
    from . import __version__

    label = (model_label or "").strip() or "Mnet_Im"
    name, _, version = label.rpartition(" ")
    if name and version and any(ch.isdigit() for ch in version):
        return name, version
    return label, __version__


def write_rtstruct(mask: Volume, series, path, model_label: str = "", roi_name: str = "CTV",
                   overwrite: bool = False, color=(230, 96, 30), series_description: str = "MnetImSegment CTV") -> Path:
    """Write a mask as an RTSTRUCT with one ROI referencing the CT series it lies on.

    Args:
        mask: Non-zero = ROI; on the CT's grid (axes may be flipped, see ``dicom.mask_on_ct_grid``).
        series: The CT series (``dicom.CtSeries``).
        path: Output file; written atomically.
        model_label: Model name and version for ROIGenerationDescription, e.g. "Mnet_Im 0.1.0".
        roi_name: ROIName; its RTROIInterpretedType is CTV.
        overwrite: Replace an existing file.
        color: ROIDisplayColor (RGB 0-255).
        series_description: SeriesDescription of the new RT series.

    Returns:
        ``path``.

    Raises:
        OutputError: Empty mask, mask not on the CT grid, or the file cannot be written.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    from . import __version__
    from .dicom import RT_STRUCTURE_SET_STORAGE, _now, mask_on_ct_grid, new_uid
    from .io import atomic_path

    on_ct = mask_on_ct_grid(mask, series) > 0
    if not on_ct.any():
        raise OutputError(f"The segmentation is empty: there is no {roi_name} contour to write.")
    geometry, _ = series.grid()
    ct = pydicom.dcmread(str(series.files[0]), stop_before_pixels=True)
    date, time = _now()
    model, version = split_model_label(model_label)

    ds = Dataset()
    if "SpecificCharacterSet" in ct:
        ds.SpecificCharacterSet = ct.SpecificCharacterSet
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = new_uid()
    # Patient and study come from the CT: the structure set belongs to the same patient and study.
    for kw in ("StudyDate", "StudyTime", "AccessionNumber"):
        setattr(ds, kw, ct.get(kw, ""))
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "MnetImSegment"
    ds.ReferringPhysicianName = ct.get("ReferringPhysicianName", "")
    if ct.get("StudyDescription"):
        ds.StudyDescription = ct.StudyDescription
    ds.SeriesDescription = series_description
    ds.OperatorsName = ""
    ds.ManufacturerModelName = "MnetImSegment"
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, kw, ct.get(kw, ""))
    ds.SoftwareVersions = f"MnetImSegment {__version__}"
    ds.StudyInstanceUID = series.study_instance_uid or str(ct.get("StudyInstanceUID", ""))
    ds.SeriesInstanceUID = new_uid()
    ds.StudyID = ct.get("StudyID", "")
    # Recent editions of the RT Structure Set IOD include the Frame of Reference module.
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ct.get("PositionReferenceIndicator", "")
    ds.SeriesNumber = 9001
    ds.InstanceNumber = 1
    ds.StructureSetLabel = f"{roi_name} auto"[:16]
    ds.StructureSetName = f"{model} {roi_name}"[:64]
    ds.StructureSetDate, ds.StructureSetTime = date, time

    def image_ref(uid: str) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = series.sop_class_uid
        item.ReferencedSOPInstanceUID = uid
        return item

    rt_series = Dataset()
    rt_series.SeriesInstanceUID = series.series_instance_uid
    rt_series.ContourImageSequence = Sequence([image_ref(u) for u in series.sop_instance_uids])
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Study Component Management (detached study)
    rt_study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    rt_study.RTReferencedSeriesSequence = Sequence([rt_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = Sequence([rt_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])

    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
    roi.ROIName = roi_name
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"{model} {version} (MnetImSegment), not reviewed"[:64]
    ds.StructureSetROISequence = Sequence([roi])

    contours = []
    for k in np.flatnonzero(on_ct.reshape(on_ct.shape[0], -1).any(1)):
        for poly in mask_to_polygons(on_ct[k]):
            ijk = np.column_stack([poly, np.full(len(poly), float(k))])
            item = Dataset()
            item.ContourImageSequence = Sequence([image_ref(series.sop_instance_uids[k])])
            item.ContourGeometricType = CLOSED
            item.NumberOfContourPoints = len(poly)
            item.ContourNumber = len(contours) + 1
            item.add_new(0x30060050, "DS", _ds_text(geometry.index_to_physical(ijk)))
            contours.append(item)
    roi_contour = Dataset()
    roi_contour.ROIDisplayColor = [int(c) for c in color]
    roi_contour.ContourSequence = Sequence(contours)
    roi_contour.ReferencedROINumber = 1
    ds.ROIContourSequence = Sequence([roi_contour])

    obs = Dataset()
    obs.ObservationNumber = 1
    obs.ReferencedROINumber = 1
    obs.RTROIInterpretedType = "CTV"
    obs.ROIInterpreter = ""
    ds.RTROIObservationsSequence = Sequence([obs])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    path = Path(path)
    try:
        with atomic_path(path, overwrite) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    except OSError as exc:
        raise OutputError(f"Could not write '{path}' ({exc.strerror or exc}).") from None
    return path
