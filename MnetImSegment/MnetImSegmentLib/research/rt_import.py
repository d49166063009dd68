"""Importing clinical CT + RTSTRUCT exports as training data: one scan, or a whole folder tree.

``import_rt`` turns one CT series + one RTSTRUCT into a mask on the CT grid. ``import_dataset`` walks a
tree of many patients (CT series and RTSTRUCTs in any nesting), pairs each structure set with its CT,
rasterises the ROI matched by a name pattern, and writes ``images/``, ``masks/``, the training
``manifest.csv`` (:func:`.manifest.write_manifest`) and ``import_report.json`` listing every scan
imported or skipped and why. A bad case never stops the batch.

Pairing: a structure set belongs to the CT series that shares its Frame of Reference (the coordinate
system its contours are in). Among several such series, the one it references by Series Instance
UID, else the one whose images its contours reference; otherwise the case is skipped as ambiguous:
guessing would put contours on the wrong images. Several structure sets for one CT: the newest is
used, the others are reported as superseded.

Privacy: patient names, birth dates and the like are never read into reports. Patient ids in the
manifest, file names and report are a SHA-256 prefix of the PatientID (keyed with ``id_salt`` when
given), and UIDs and file paths in messages are replaced by neutral references, unless ``keep_ids``
is set. ``key_file`` (optional, meant to be kept apart from the dataset) maps references back to files.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.commit import refuse_output_equals_input
from ..core.errors import DatasetError, InputError, MnetImError, OutputError
from ..core.files import LABELMAP_SUFFIXES, SEGMENTATION_SUFFIX, suffix_of, transaction, write_text
from ..core.volume import Volume
from ..dicomrt.ct_series import scan_tree
from ..dicomrt.rasterize import rasterize_structure_set
from ..dicomrt.structure_set import (DEFAULT_ROI_PATTERN, StructureSet, compile_roi_pattern, load_name_map,
                                     read_structure_set, select_rois)
from ..engine.io import write_image, write_labelmap, write_mask
from .manifest import ScanRecord, write_manifest

REPORT_NAME = "import_report.json"
RASTER_CONVENTION = (
    "a voxel is in the mask when its centre lies inside the contour (even-odd rule: holes and islands as "
    "drawn), on the slice nearest each contour plane. mask_to_contour_area compares the filled pixel area "
    "with the polygons' own area on those slices: about 1.00 means no bias. Tools that include every pixel "
    "the contour touches (or a partial-volume threshold below 50 %) give masks a few percent larger for "
    "CTV-sized ROIs (a half-pixel ring: 4-9 % at 0.9-1.2 mm pixels for 20-40 ml), so their volumes are "
    "not comparable one to one.")
MANIFEST_NAME = "manifest.csv"
# UIDs (and other long dotted numbers); short ones like a version "0.1.0" are left alone.
_UID_RE = re.compile(r"\b\d+(?:\.\d+){2,}\b")


# --------------------------------------------------------------------------- identifiers
def anonymous_id(value: str, salt: Optional[str] = None, length: int = 12) -> str:
    """A stable pseudonym for an identifier: SHA-256 (HMAC-SHA-256 with ``salt``) hex prefix.

    Without a salt, short numeric ids can be recovered by trying every number: pass a secret salt
    (kept by the data owner) when the PatientIDs are not already anonymised.
    """
    data = (value or "").encode("utf-8")
    if salt:
        digest = hmac.new(salt.encode("utf-8"), data, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(data).hexdigest()
    return digest[:length]


def _safe_name(text: str) -> str:
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text or "").strip("._")
    return out[:64] or "unknown"


class _Privacy:
    """Decides what ids, references and messages may say."""

    def __init__(self, root: Path, keep_ids: bool, salt: Optional[str]):
        self.root, self.keep_ids, self.salt = root, keep_ids, salt

    def patient(self, patient_id: str) -> str:
        if self.keep_ids:
            return _safe_name(patient_id)
        return "p" + anonymous_id(patient_id or "", self.salt)

    def scan(self, patient: str, series_uid: str) -> str:
        return f"{patient}_{anonymous_id(series_uid, self.salt, 8)}"

    def rel(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return Path(path).name

    def ref(self, path: Path) -> str:
        """How reports name a file: its path with --keep-ids, else a hash of it."""
        rel = self.rel(path)
        return rel if self.keep_ids else "file-" + anonymous_id(rel, None, 10)

    def scrub(self, message: str, paths=(), secrets=()) -> str:
        """Remove paths, UIDs and given identifiers from a message (unless ids are kept)."""
        if self.keep_ids:
            return message
        for p in paths:
            for text in sorted({str(p), str(Path(p).resolve()), self.rel(p), Path(p).name}, key=len, reverse=True):
                if text and len(text) > 2:
                    message = message.replace(text, "<file>")
        for s in secrets:
            if s and len(s) > 2:
                message = message.replace(s, "<id>")
        return _UID_RE.sub(lambda m: "<uid>" if len(m.group(0)) >= 10 else m.group(0), message)


# --------------------------------------------------------------------------- pairing
def pair_structure_set(ss: StructureSet, ct_series: dict):
    """The CT series (``dicomrt.ct_series.CtSeries``) a structure set was drawn on.

    Raises:
        InputError: No series shares its frame of reference, or several do and it does not tell which.
    """
    series = list(ct_series.values())
    if ss.frame_of_reference_uids:
        candidates = [s for s in series if s.frame_of_reference_uid in ss.frame_of_reference_uids]
    else:
        candidates = [s for s in series if s.series_instance_uid in ss.referenced_series_uids]
    if not candidates:
        return _no_match(ss, series)
    if len(candidates) == 1:
        return candidates[0]
    named = [s for s in candidates if s.series_instance_uid in ss.referenced_series_uids]
    if len(named) == 1:
        return named[0]
    overlap = [len(ss.referenced_image_uids.intersection(s.sop_instance_uids)) for s in candidates]
    best = max(overlap)
    if best > 0 and overlap.count(best) == 1:
        return candidates[overlap.index(best)]
    raise InputError(f"{len(candidates)} CT series share the structure set's frame of reference and it does not "
                     "reference one of them; keep only the planning CT series beside it, or import this case on its own.")


def _no_match(ss: StructureSet, series: list):
    if not series:
        raise InputError("No CT series was found to pair the structure set with.")
    if not ss.frame_of_reference_uids and not ss.referenced_series_uids:
        raise InputError("The structure set names neither a frame of reference nor a CT series, so it cannot be paired.")
    raise InputError(f"The structure set's frame of reference matches none of the {len(series)} CT series found "
                     "(its CT was not exported, or it belongs to another image).")


# --------------------------------------------------------------------------- one scan
def import_rt(ct_dir, rtstruct, output, pattern: str = DEFAULT_ROI_PATTERN, name_map=None, union: bool = False,
              overwrite: bool = False, image_output=None, max_spread_mm: float = 10.0) -> dict:
    """Rasterise the ROI matched by ``pattern`` of one RTSTRUCT onto its CT and write the mask.

    Args:
        ct_dir: Folder holding the CT series (subfolders searched; the series is paired by frame of reference).
        rtstruct: The RTSTRUCT file.
        output: Mask file: ``.nii.gz``/``.nii``/``.nrrd``/``.mha`` labelmap (1 = ROI) or ``.seg.nrrd``.
        pattern: Case-insensitive regular expression for the whole ROI name.
        name_map: Dict or JSON (file or text) mapping ROI names to canonical names before matching.
        union: Merge several matching ROIs instead of refusing.
        overwrite: Replace existing outputs.
        image_output: Optionally also write the CT volume there.
        max_spread_mm: Skip contours spread more than this across slices.

    Returns:
        A summary dict (output, roi, volume_ml, and the rasterisation report): no identifiers.

    Raises:
        InputError, OutputError: With one sentence saying what is wrong.
    """

    t0 = time.perf_counter()
    output = Path(output)
    if suffix_of(output) not in LABELMAP_SUFFIXES + (SEGMENTATION_SUFFIX,):
        raise OutputError(f"Cannot tell the mask format from '{output}': use .nii.gz, .nii, .nrrd, .mha or .seg.nrrd.")
    for out in (output, Path(image_output) if image_output else None):
        if out is not None and out.exists() and not overwrite:
            raise OutputError(f"'{out}' already exists; choose another output or pass --overwrite.")
    refuse_output_equals_input([output, image_output], [ct_dir, rtstruct])
    names = load_name_map(name_map) if not isinstance(name_map, dict) else name_map
    ss = read_structure_set(rtstruct)
    tree = scan_tree(ct_dir)
    series = pair_structure_set(ss, tree.ct_series)
    geometry, shape = series.grid()
    mask, report = rasterize_structure_set(ss, geometry, shape, pattern, names, union, max_spread_mm=max_spread_mm)
    with transaction(None, overwrite) as tx:  # the image and the mask commit together or not at all
        if image_output:
            write_image(series.read_volume(), image_output, tx=tx)
        write_mask(mask, output, tx=tx)
    return {"output": str(output), "image": str(image_output) if image_output else None, "roi": report.rois,
            "volume_ml": round(report.volume_ml, 3), "shape_zyx": list(shape), "report": report.to_dict(),
            "seconds": round(time.perf_counter() - t0, 3)}


# --------------------------------------------------------------------------- a whole tree
@dataclass
class DatasetImportResult:
    """What ``import_dataset`` wrote and skipped."""

    output: Path
    manifest: Optional[Path]
    report: Path
    imported: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    unreadable_files: int = 0

    def to_dict(self) -> dict:
        return {"output": str(self.output), "manifest": str(self.manifest) if self.manifest else None,
                "report": str(self.report), "imported": len(self.imported), "skipped": len(self.skipped),
                "unreadable_files": self.unreadable_files}


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def import_dataset(tree, out_dir, pattern: str = DEFAULT_ROI_PATTERN, name_map=None, union: bool = False,
                   keep_ids: bool = False, id_salt: Optional[str] = None, key_file=None, image_format: str = ".nii.gz",
                   overwrite: bool = False, max_spread_mm: float = 10.0, progress: bool = False,
                   log=None, anonymise: bool = False) -> DatasetImportResult:
    """Import every (CT, RTSTRUCT) pair under ``tree`` as a training dataset in ``out_dir``.

    Args:
        tree: Root folder of the export (any nesting, any file names; non-DICOM files are ignored).
        out_dir: Output folder (created; must not be inside ``tree``): ``images/``, ``masks/``,
            ``manifest.csv`` (image, mask, patient_id, scan_id, split; paths relative to it) and
            ``import_report.json``.
        pattern, name_map, union, max_spread_mm: ROI choice and rasterisation, as in :func:`import_rt`.
        keep_ids: Use the real PatientIDs and file paths in ids and reports (default: pseudonyms).
        id_salt: Secret key for the pseudonyms (HMAC); same salt -> same ids across imports.
        key_file: Optional CSV mapping each reference and scan id to its source files and real PatientID;
            it holds identifiers, so it must be outside ``out_dir``.
        image_format: ``.nii.gz`` (default), ``.nrrd`` or ``.mha`` for images and masks.
        overwrite: Allow writing into an output that already holds a manifest.
        progress: Show a progress bar on stderr.
        log: Callable taking one line per skipped case (default: print to stderr). Each line names the
            case's source folder (relative to ``tree``) so the person running the import can fix it; the
            files written to ``out_dir`` stay pseudonymised (without ``keep_ids``).
        anonymise: Hashed references only, in the log lines too (for logs that are kept or shared).

    Returns:
        DatasetImportResult.

    Raises:
        DatasetError: The tree or output folder cannot be used, or the tree holds no RTSTRUCT.
    """

    root, out_dir = Path(tree), Path(out_dir)
    if not root.is_dir():
        raise DatasetError(f"'{root}' is not a folder.")
    if _inside(out_dir, root):
        raise DatasetError("The output folder must not be inside the input tree (the input is never written to).")
    fmt = image_format if image_format.startswith(".") else "." + image_format
    if fmt not in (".nii.gz", ".nii", ".nrrd", ".mha"):
        raise DatasetError(f"Image format '{image_format}' is not one of .nii.gz, .nii, .nrrd, .mha.")
    if (out_dir / MANIFEST_NAME).exists() and not overwrite:
        raise DatasetError(f"'{out_dir}' already holds a dataset ({MANIFEST_NAME}); choose a new folder or pass --overwrite.")
    if key_file is not None and _inside(Path(key_file), out_dir):
        raise DatasetError("The key file holds identifiers: write it outside the dataset folder.")
    names = load_name_map(name_map) if not isinstance(name_map, dict) else name_map
    compile_roi_pattern(pattern)  # a bad pattern is one error up front, not one per case
    if log is None:
        from tqdm import tqdm as _tqdm

        def log(line):  # through tqdm, so lines do not tear the progress bar
            _tqdm.write(line, file=sys.stderr)
    privacy = _Privacy(root, keep_ids, id_salt)

    index = scan_tree(root)
    if not index.rtstructs:
        raise DatasetError(f"No RT structure set was found under '{root}' ({len(index.ct_series)} CT series, "
                           f"{len(index.unreadable)} non-DICOM or unreadable files).")
    try:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"Cannot create the output folder '{out_dir}' ({exc.strerror or exc}).") from None

    skipped, keys, candidates = [], [], []

    def skip(path, reason, patient="", secrets=(), stage="structure set"):
        entry = {"ref": privacy.ref(path), "patient_id": patient, "stage": stage,
                 "reason": privacy.scrub(reason, [path, root], secrets)}
        skipped.append(entry)
        keys.append({"ref": entry["ref"], "scan_id": "", "rtstruct": privacy.rel(path), "ct_series": "",
                     "patient_id": patient, "original_patient_id": secrets[0] if secrets else ""})
        source = "" if anonymise or keep_ids else f" (source: {privacy.rel(Path(path).parent)}/)"
        log(f"skipped {entry['ref']}{source}: {entry['reason']}")

    # Phase 1: read, pair and choose ROIs (cheap), so superseded structure sets can be told apart.
    from tqdm import tqdm

    for path in tqdm(sorted(index.rtstructs), desc="structure sets", unit="RS", disable=not progress):
        secrets: tuple = ()
        patient = ""
        try:
            ss = read_structure_set(path)
            secrets = (ss.patient_id,)
            patient = privacy.patient(ss.patient_id)
            series = pair_structure_set(ss, index.ct_series)
            rois = select_rois(ss, pattern, names, union)
            candidates.append((path, ss, series, rois, patient))
        except MnetImError as exc:
            skip(path, str(exc), patient, secrets)
        except Exception as exc:  # a bug or an exotic file must not stop the batch
            skip(path, f"unexpected error ({type(exc).__name__}: {exc})", patient, secrets)

    by_series: dict[str, list] = {}
    for c in candidates:
        by_series.setdefault(c[2].series_instance_uid, []).append(c)
    chosen = []
    for items in by_series.values():
        items.sort(key=lambda c: (c[1].date_time, c[1].sop_instance_uid), reverse=True)
        chosen.append(items[0])
        for c in items[1:]:
            skip(c[0], "Another structure set for the same CT series is newer; this one is superseded.",
                 c[4], (c[1].patient_id,), "structure set")

    # Phase 2: rasterise, read the CT, write image and mask.
    records, imported = [], []
    for path, ss, series, rois, patient in tqdm(sorted(chosen, key=lambda c: str(c[0])), desc="scans", unit="scan",
                                                 disable=not progress):
        scan_id = privacy.scan(patient, series.series_instance_uid)
        image_path, mask_path = out_dir / "images" / f"{scan_id}{fmt}", out_dir / "masks" / f"{scan_id}{fmt}"
        try:
            entry, record = _import_one(ss, series, rois, patient, scan_id, image_path, mask_path, overwrite,
                                        max_spread_mm, pattern, names, union)
        except MnetImError as exc:
            skip(path, str(exc), patient, (ss.patient_id,), "import")
            continue
        except Exception as exc:
            skip(path, f"unexpected error ({type(exc).__name__}: {exc})", patient, (ss.patient_id,), "import")
            continue
        entry["ref"] = privacy.ref(path)
        entry["notes"] = [privacy.scrub(n, [path], (ss.patient_id,)) for n in entry["notes"]]
        imported.append(entry)
        records.append(record)
        keys.append({"ref": entry["ref"], "scan_id": scan_id, "rtstruct": privacy.rel(path),
                     "ct_series": privacy.rel(Path(series.files[0]).parent), "patient_id": patient,
                     "original_patient_id": ss.patient_id})

    manifest = None
    if records:
        manifest = out_dir / MANIFEST_NAME
        write_manifest(manifest, records)
    unreadable: dict[str, int] = {}
    for _, reason in index.unreadable:
        unreadable[reason] = unreadable.get(reason, 0) + 1
    used = {c[2].series_instance_uid for c in chosen}
    report = {
        "tree": str(root) if keep_ids else "<tree>",
        "roi_pattern": pattern, "name_map": bool(names), "union": union, "ids": "kept" if keep_ids else "pseudonymised",
        "imported": imported, "skipped": skipped,
        "unreadable_files": {"count": len(index.unreadable), "reasons": unreadable},
        "other_dicom_files": index.other, "structure_sets": len(index.rtstructs),
        "rasterisation": _raster_summary(imported),
        "ct_series": len(index.ct_series), "ct_series_unused": len(set(index.ct_series) - used),
    }
    report_path = out_dir / REPORT_NAME
    write_text(report_path, json.dumps(report, indent=1), overwrite=True)
    if key_file is not None:
        buffer = io.StringIO(newline="")
        w = csv.DictWriter(buffer, fieldnames=["ref", "scan_id", "patient_id", "original_patient_id", "rtstruct",
                                               "ct_series"], lineterminator="\n")
        w.writeheader()
        w.writerows(keys)
        write_text(Path(key_file), buffer.getvalue(), overwrite=True)
    return DatasetImportResult(out_dir, manifest, report_path, imported, skipped, len(index.unreadable))


def _raster_summary(imported: list) -> dict:
    """The rasterisation convention and how far masks differ from the contour polygons' area."""
    ratios = [e["mask_to_contour_area"] for e in imported if e.get("mask_to_contour_area") is not None]
    out = {"convention": RASTER_CONVENTION}
    if ratios:
        out["mask_to_contour_area"] = {"min": min(ratios), "mean": round(sum(ratios) / len(ratios), 4),
                                       "max": max(ratios)}
    return out


def _import_one(ss, series, rois, patient, scan_id, image_path, mask_path, overwrite, max_spread_mm, pattern, names,
                union):

    geometry, shape = series.grid()
    mask, report = rasterize_structure_set(ss, geometry, shape, pattern, names, union, max_spread_mm=max_spread_mm)
    volume = series.read_volume()
    if not volume.geometry.allclose(mask.geometry, atol=1e-3):
        raise InputError("The CT volume's geometry differs from its headers' (internal check).")
    if image_path.exists() and not overwrite:
        raise OutputError("Its image already exists in the output folder; pass --overwrite to replace it.")
    with transaction(None, overwrite) as tx:  # a case is its image and its mask: both or neither
        write_image(volume, image_path, tx=tx)
        write_labelmap(Volume(mask.array, volume.geometry), mask_path, tx=tx)
    ratio = report.mask_to_contour_area
    entry = {"scan_id": scan_id, "patient_id": patient, "roi": report.rois, "volume_ml": round(report.volume_ml, 3),
             "mask_to_contour_area": round(ratio, 4) if ratio is not None else None,
             "slices": report.slices, "shape_zyx": list(shape), "spacing_mm": [round(s, 4) for s in geometry.spacing],
             "notes": list(report.notes), "counts": {k: v for k, v in report.to_dict().items() if k not in ("notes", "rois")}}
    return entry, ScanRecord(image_path, mask_path, patient, scan_id)
