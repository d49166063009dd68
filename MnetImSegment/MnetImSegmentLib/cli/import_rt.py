"""``mnetim import-rt``: one CT + RTSTRUCT into a mask, or a whole export tree into a training dataset."""

from __future__ import annotations

import os

from ..core.errors import InputError
from ..dicomrt.structure_set import DEFAULT_ROI_PATTERN
from ..research.rt_import import import_dataset, import_rt
from .options import add_json, add_overwrite, emit


def add_parser(subparsers) -> None:
    """Register ``import-rt`` (sets ``func``)."""
    p = subparsers.add_parser(
        "import-rt",
        help="rasterise an RTSTRUCT ROI onto its CT (one scan), or import a whole tree as a training dataset",
        description="One scan: mnetim import-rt CT_DIR RTSTRUCT -o MASK. Dataset: mnetim import-rt --dataset TREE -o OUT_DIR. "
                    "ROIs are chosen by a case-insensitive regular expression on the whole ROI name "
                    f"(default '{DEFAULT_ROI_PATTERN}': CTV, HRCTV, HR-CTV, CTV-HR, CTV_HR, HR CTV; one HR-CTV is preferred over a "
                    "plain CTV). Privacy: the dataset folder (ids, file names, import_report.json) is pseudonymised "
                    "by default; the terminal names each skipped case's source folder so you can fix it "
                    "(--anonymise: hashes there too; --keep-ids: real ids and paths everywhere).")
    p.add_argument("ct_dir", nargs="?", help="CT series folder (one-scan mode)")
    p.add_argument("rtstruct", nargs="?", help="RTSTRUCT file (one-scan mode)")
    p.add_argument("--dataset", metavar="TREE", help="import every CT + RTSTRUCT pair under TREE")
    p.add_argument("-o", "--output", required=True, help="mask file (.nii.gz, .nrrd, .mha, .seg.nrrd) or, with --dataset, a folder")
    p.add_argument("--roi", default=DEFAULT_ROI_PATTERN, metavar="PATTERN", help="ROI name regular expression (whole name, any case)")
    p.add_argument("--name-map", metavar="JSON", help="JSON file or text mapping ROI names to canonical names before matching")
    p.add_argument("--union", action="store_true", help="merge several matching ROIs instead of refusing")
    p.add_argument("--image", metavar="PATH", help="one-scan mode: also write the CT volume there")
    p.add_argument("--format", default=".nii.gz", help="dataset mode: image/mask format (.nii.gz, .nrrd, .mha)")
    privacy = p.add_mutually_exclusive_group()
    privacy.add_argument("--keep-ids", action="store_true", help="use real PatientIDs and paths in ids and reports")
    privacy.add_argument("--anonymise", "--anonymize", action="store_true",
                         help="hashed references only, also in the terminal lines about skipped cases")
    p.add_argument("--id-salt", metavar="SECRET", help="secret key for pseudonymous ids (or env MNETIM_ID_SALT)")
    p.add_argument("--key-file", metavar="CSV", help="dataset mode: write the reference -> source key there (holds identifiers)")
    p.add_argument("--max-spread-mm", type=float, default=10.0, help="skip contours spread more than this across slices")
    add_overwrite(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.dataset:
        if args.ct_dir or args.rtstruct:
            raise InputError("Give either --dataset TREE or CT_DIR RTSTRUCT, not both.")
        result = import_dataset(args.dataset, args.output, pattern=args.roi, name_map=args.name_map, union=args.union,
                                keep_ids=args.keep_ids, id_salt=args.id_salt or os.environ.get("MNETIM_ID_SALT"),
                                key_file=args.key_file, image_format=args.format, overwrite=args.overwrite,
                                max_spread_mm=args.max_spread_mm, progress=not args.json, anonymise=args.anonymise,
                                log=(lambda line: None) if args.json else None)
        where = result.manifest or "no manifest"
        emit(args, result.to_dict(), f"{len(result.imported)} scan(s) imported, {len(result.skipped)} skipped -> {where} "
                                     f"(report: {result.report})")
        return 0 if result.imported else 1
    if not (args.ct_dir and args.rtstruct):
        raise InputError("Give CT_DIR and RTSTRUCT (one scan) or --dataset TREE (a whole folder tree).")
    summary = import_rt(args.ct_dir, args.rtstruct, args.output, pattern=args.roi, name_map=args.name_map,
                        union=args.union, overwrite=args.overwrite, image_output=args.image,
                        max_spread_mm=args.max_spread_mm)
    r = summary["report"]
    emit(args, summary, lambda: [f"{', '.join(summary['roi'])}: {summary['volume_ml']:.1f} ml, {r['used']} contour(s) on "
                                 f"{r['slices']} slice(s) -> {summary['output']}"] + [f"  note: {note}" for note in r["notes"]])
    return 0
