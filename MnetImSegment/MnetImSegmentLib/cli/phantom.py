"""``mnetim phantom``: synthetic brachytherapy CT phantom(s) with labels (one, or a dataset with a manifest)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from ..core.errors import OutputError
from ..core.files import write_text
from ..dicomrt.ct_writer import write_ct_series
from ..engine.io import write_image, write_labelmap
from ..research.manifest import SPLITS, ScanRecord, split_records, write_manifest
from ..research.fractions_phantom import make_fraction_series
from ..research.phantom_styles import HELDOUT_STYLE, assign_styles, make_phantom_style, parse_style_mix
from .options import add_json, emit


def add_parser(sub) -> None:
    ph = sub.add_parser("phantom", help="write synthetic brachytherapy CT phantom(s) with labels")
    ph.add_argument("-o", "--output", required=True, help="folder")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--count", type=int, default=1)
    ph.add_argument("--dataset", action="store_true", help="write a manifest even for one phantom")
    ph.add_argument("--matrix", type=int, help="in-plane matrix (default: random 256/384/512)")
    ph.add_argument("--slice-mm", type=float, help="slice spacing (default: random, v2 1-3 mm, v3 1-5 mm)")
    ph.add_argument("--format", default=".nii.gz", help=".nii.gz, .nrrd or .mha")
    ph.add_argument("--dicom", action="store_true", help="also write a DICOM CT series")
    ph.add_argument("--style", default="v2",
                    help="generator: v2 (default), v3 (domain-randomised), v4 (v3 with the CTV tied to the image), v5 (v4 "
                         "rendered SynthSeg-style, harsher metal artefacts), heldout (test-only, its manifest is all "
                         "'test'), or a training mix such as 'v3,v2' or 'v3:0.8,v2:0.2'; the manifest records each scan's style")
    ph.add_argument("--workers", type=int, default=0)
    ph.add_argument("--fractions", type=int, default=0,
                    help="write N fractions of one patient (applicator re-inserted): fraction_1..N/image + label")
    add_json(ph)
    ph.set_defaults(func=run)


def write_one_phantom(job) -> dict:
    """One phantom into its folder (a module-level function, so worker processes can run it)."""
    seed, folder, matrix, slice_mm, fmt, dicom, style = job
    ph = make_phantom_style(style, seed, matrix=matrix, slice_mm=slice_mm)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_image(ph.ct, folder / f"image{fmt}", overwrite=True)  # phantoms are regenerated, not user data
    write_labelmap(ph.labels, folder / f"label{fmt}", overwrite=True)
    write_text(folder / "phantom.json", json.dumps(ph.params, indent=1), overwrite=True)
    if dicom:
        write_ct_series(ph.ct, folder / "dicom", patient_id=f"PHANTOM{seed:04d}", overwrite=True)
    return {"seed": seed, "folder": str(folder), "shape": ph.ct.shape, "style": style}


def run(args) -> int:
    from tqdm import tqdm

    out = Path(args.output)
    fmt = args.format if args.format.startswith(".") else "." + args.format
    if args.fractions:
        return _run_fractions(args, out, fmt)
    styles = assign_styles(args.count, parse_style_mix(args.style), seed=args.seed)
    if args.count == 1 and not args.dataset:
        write_one_phantom((args.seed, out, args.matrix, args.slice_mm, fmt, args.dicom, styles[0]))
        if not args.json:
            print(f"phantom seed {args.seed} -> {out}")
        return 0
    if (out / "manifest.csv").exists():
        raise OutputError(f"'{out}' already holds a phantom dataset (manifest.csv); choose a new folder.")
    jobs = [(args.seed + i, out / f"phantom_{args.seed + i:04d}", args.matrix, args.slice_mm, fmt, args.dicom, styles[i])
            for i in range(args.count)]
    workers = max(1, min(args.workers or (os.cpu_count() or 1), len(jobs)))
    with ProcessPoolExecutor(workers) as pool:
        done = list(tqdm(pool.map(write_one_phantom, jobs), total=len(jobs), desc="phantoms", disable=args.json))
    records = [ScanRecord(Path(d["folder"]) / f"image{fmt}", Path(d["folder"]) / f"label{fmt}",
                          f"phantom{d['seed']:04d}", f"phantom{d['seed']:04d}", style=d["style"]) for d in done]
    if all(r.style == HELDOUT_STYLE for r in records):  # measures generalisation only: never trained on
        splits = {"train": [], "val": [], "test": [replace(r, split="test") for r in records]}
    else:
        splits = split_records(records, seed=args.seed)
    write_manifest(out / "manifest.csv", [r for s in SPLITS for r in splits[s]])
    emit(args, {"output": str(out), "count": len(done)}, f"{len(done)} phantoms -> {out} (manifest.csv)")
    return 0


def _run_fractions(args, out: Path, fmt: str) -> int:
    if args.fractions < 1:
        raise OutputError("--fractions needs a positive number of fractions.")
    folders = []
    for fraction in make_fraction_series(args.seed, args.fractions, matrix=args.matrix, slice_mm=args.slice_mm):
        folder = out / f"fraction_{fraction.index}"
        folder.mkdir(parents=True, exist_ok=True)
        ph = fraction.phantom
        write_image(ph.ct, folder / f"image{fmt}", overwrite=True)
        write_labelmap(ph.labels, folder / f"label{fmt}", overwrite=True)
        (folder / "phantom.json").write_text(json.dumps(ph.params, indent=1))
        if args.dicom:  # one patient: the same PatientID for every fraction, a new frame of reference each
            write_ct_series(ph.ct, folder / "dicom", patient_id=f"PHANTOM{args.seed:04d}", overwrite=True)
        folders.append(str(folder))
    emit(args, {"output": str(out), "fractions": folders}, f"{len(folders)} fractions -> {out}")
    return 0
