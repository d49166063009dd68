"""Reading DICOM RT structure sets, and choosing ROIs by name.

Reading keeps every contour with its geometric type and the image UIDs it names; nothing is
rasterised here (see :mod:`.rasterize`). ROIs are chosen by a case-insensitive regular expression on
the whole ROI name, after an optional name map (``select_rois``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import InputError
from .common import RT_STRUCTURE_SET_STORAGE, dcmread_lenient

# CTV names seen in cervix brachytherapy structure sets: CTV, ctv, HR-CTV, HRCTV, CTV_HR, CTV-HR, HR CTV.
DEFAULT_ROI_PATTERN = r"(hr[-_ ]?)?ctv([-_ ]?hr)?"
# When a plain "CTV" and one high-risk CTV spelling both match, the HR-CTV is the brachytherapy target.
_HR_CTV = re.compile(r"hr[-_ ]?ctv|ctv[-_ ]?hr", re.IGNORECASE)
_PLAIN_CTV = re.compile(r"ctv", re.IGNORECASE)

CLOSED = "CLOSED_PLANAR"
OPEN_TYPES = ("OPEN_PLANAR", "OPEN_NONPLANAR")


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

    path = Path(path)
    if not path.is_file():
        raise InputError(f"'{path}' does not exist or is not a file.")
    try:
        ds = dcmread_lenient(path)
    except InvalidDicomError:
        raise InputError(f"'{path}' is not a DICOM file.") from None
    except Exception as exc:  # damaged files raise many kinds of errors inside pydicom
        raise InputError(f"'{path}' is not a readable DICOM file ({type(exc).__name__}).") from None
    if str(ds.get("Modality", "")).upper() != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE:
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

    Case matters only inside a ``(?-i:...)`` group (e.g. ``(?-i:CTV)`` skips ``ctv``). Preference order
    when several match: one HR-CTV spelling (HR-CTV, HRCTV, CTV_HR, CTV-HR, HR CTV) wins over plain
    ``CTV`` names; any other tie (HR-CTV with IR-CTV, two HR-CTVs) is refused unless ``union``.

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
        high_risk = [r for r in chosen if _HR_CTV.fullmatch(canonical_roi_name(r.name, name_map))]
        plain = [r for r in chosen if _PLAIN_CTV.fullmatch(canonical_roi_name(r.name, name_map))]
        if len(high_risk) == 1 and len(high_risk) + len(plain) == len(chosen):
            return high_risk
        names = ", ".join(repr(r.name) for r in chosen)
        raise InputError(f"Several ROIs match '{rx.pattern}' ({names}); make the pattern more specific, "
                         "map the names, or merge them on purpose (union).")
    return chosen

