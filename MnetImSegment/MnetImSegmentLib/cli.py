"""``mnetim``: the command line of MnetImSegment.

Commands: ``segment`` (one CT or a whole folder), ``demo``, ``phantom``, ``train``.
Contract (DESIGN.md): bad input -> exit code != 0 and one clear line on stderr, no traceback, no
partial output file; ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import Cancelled, InputError, MnetImError, OutputError

DICOM_FORMATS = ("rtstruct", "dicom-seg")


# --------------------------------------------------------------------------- segment
def _output_kind(path: Path) -> str:
    from .io import LABELMAP_SUFFIXES, SEGMENTATION_SUFFIX, suffix_of

    suffix = suffix_of(path)
    if suffix == SEGMENTATION_SUFFIX:
        return "segmentation"
    if suffix in LABELMAP_SUFFIXES:
        return "labelmap"
    raise OutputError(f"Cannot tell the output format from '{path}': use .seg.nrrd (Slicer segmentation), "
                      ".nii.gz, .nii, .nrrd or .mha (labelmap).")


def write_result(result, output: Path, overwrite: bool = False, probability_path: Path | None = None) -> None:
    from .io import write_image, write_labelmap, write_segmentation

    kind = _output_kind(output)
    if kind == "segmentation":
        write_segmentation(result.mask, output, model=result.model, threshold=result.threshold, overwrite=overwrite)
    else:
        write_labelmap(result.mask, output, overwrite=overwrite)
    if probability_path is not None and result.probability is not None:
        write_image(result.probability, probability_path, overwrite=overwrite)


def cmd_segment(args) -> int:
    from .inference import Segmenter
    from .io import read_image

    inp, out = Path(args.input), Path(args.output)
    t0 = time.perf_counter()
    if args.batch or (inp.is_dir() and not _looks_like_series(inp)):
        return _segment_batch(args, inp, out)
    dicom_out = args.format in DICOM_FORMATS
    if dicom_out:
        if not inp.is_dir():
            raise InputError(f"--format {args.format} needs a DICOM CT series folder as input (the export references its images).")
    elif args.format not in (None, "auto"):
        raise OutputError(f"Unknown --format '{args.format}' for one CT: use rtstruct, dicom-seg, or let the output suffix decide.")
    else:
        _output_kind(out)
        if out.exists() and not args.overwrite:
            raise OutputError(f"'{out}' already exists; choose another output or pass --overwrite.")
    volume = read_image(inp, series_uid=args.series)
    segmenter = Segmenter(args.weights, device=args.device, batch_size=args.batch_size, precision=args.precision)
    result = segmenter.segment(volume, threshold=args.threshold, largest_component=not args.no_largest_component,
                               keep_probability=args.probability is not None)
    if dicom_out:
        from .dicom import write_segmentation_dicom

        out = write_segmentation_dicom(result.mask, inp, out, args.format, model_label=result.model,
                                       overwrite=args.overwrite)
        if args.probability:
            from .io import write_image

            write_image(result.probability, Path(args.probability), overwrite=args.overwrite)
    else:
        write_result(result, out, args.overwrite, Path(args.probability) if args.probability else None)
    report = {"input": str(inp), "output": str(out), "ctv_ml": round(result.volume_ml, 2),
              "seconds": round(time.perf_counter() - t0, 3), "device": result.device,
              "precision": segmenter.precision,
              "threshold": result.threshold, "model": result.model, "roi": result.roi.to_dict(),
              "stage_seconds": {k: round(v, 3) for k, v in result.seconds.items()}}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"CTV {report['ctv_ml']:.1f} ml -> {out} ({report['seconds']:.1f} s on {result.device})")
    return 0


def _looks_like_series(folder: Path) -> bool:
    """A folder is one DICOM series (not a batch of files) if it holds no image files at its top."""
    from .io import IMAGE_SUFFIXES, suffix_of

    return not any(suffix_of(p) in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


def _segment_batch(args, inp: Path, out: Path) -> int:
    """Every image file (or DICOM series subfolder) of ``inp`` into ``out``; skips finished cases."""
    from tqdm import tqdm

    from .inference import Segmenter
    from .io import IMAGE_SUFFIXES, SEGMENTATION_SUFFIX, read_image, suffix_of

    if not inp.is_dir():
        raise InputError(f"Batch input '{inp}' must be a folder.")
    cases = []
    for p in sorted(inp.iterdir()):
        suffix = suffix_of(p)
        if p.is_file() and suffix in IMAGE_SUFFIXES:
            cases.append((p, p.name[: -len(suffix)]))
        elif p.is_dir():
            cases.append((p, p.name))
    if not cases:
        raise InputError(f"'{inp}' holds no image files or series folders to segment.")
    out.mkdir(parents=True, exist_ok=True)
    fmt = args.format or ".seg.nrrd"
    if fmt in DICOM_FORMATS:
        raise OutputError("Batch mode writes .seg.nrrd or labelmaps; export DICOM RT one series at a time.")
    ext = fmt if fmt.startswith(".") else "." + fmt
    segmenter = Segmenter(args.weights, device=args.device, batch_size=args.batch_size, precision=args.precision)
    results, failures = [], []
    todo = []
    for path, stem in cases:
        target = out / f"{stem}{ext}"
        if target.exists() and not args.overwrite:
            results.append({"input": str(path), "output": str(target), "skipped": "already done"})
        else:
            todo.append((path, target))

    def read(path):
        try:
            return read_image(path), None
        except MnetImError as exc:
            return None, exc

    # One reader and one writer thread overlap file I/O with the network, which releases the GIL:
    # while CT n is segmented, CT n+1 is read and result n-1 is written.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending_read = reader.submit(read, todo[0][0]) if todo else None
        pending_write = None
        for i, (path, target) in enumerate(tqdm(todo, desc="CTs", unit="CT", disable=args.json)):
            t0 = time.perf_counter()
            volume, error = pending_read.result()
            pending_read = reader.submit(read, todo[i + 1][0]) if i + 1 < len(todo) else None
            try:
                if error is not None:
                    raise error
                result = segmenter.segment(volume, threshold=args.threshold,
                                           largest_component=not args.no_largest_component)
                if pending_write is not None:
                    _finish_write(pending_write, results, failures)
                pending_write = (writer.submit(write_result, result, target, args.overwrite), path, target,
                                 result, t0)
            except MnetImError as exc:
                failures.append({"input": str(path), "error": str(exc)})
                print(f"skipped {path}: {exc}", file=sys.stderr)
        if pending_write is not None:
            _finish_write(pending_write, results, failures)
    if args.json:
        print(json.dumps({"output": str(out), "cases": results, "failed": failures}))
    else:
        print(f"{len(results)} CT(s) done, {len(failures)} failed -> {out}")
    return 1 if failures and not results else 0


def _finish_write(pending, results: list, failures: list) -> None:
    future, path, target, result, t0 = pending
    try:
        future.result()
        results.append({"input": str(path), "output": str(target), "ctv_ml": round(result.volume_ml, 2),
                        "seconds": round(time.perf_counter() - t0, 3), "device": result.device})
    except MnetImError as exc:
        failures.append({"input": str(path), "error": str(exc)})
        print(f"skipped {path}: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- phantom
def _write_one_phantom(job) -> dict:
    from .io import write_image, write_labelmap
    from .phantom import make_phantom

    seed, folder, matrix, slice_mm, fmt, dicom = job
    ph = make_phantom(seed, matrix=matrix, slice_mm=slice_mm)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_image(ph.ct, folder / f"image{fmt}", overwrite=True)  # phantoms are regenerated, not user data
    write_labelmap(ph.labels, folder / f"label{fmt}", overwrite=True)
    (folder / "phantom.json").write_text(json.dumps(ph.params, indent=1))
    if dicom:
        from .dicom import write_ct_series

        write_ct_series(ph.ct, folder / "dicom", patient_id=f"PHANTOM{seed:04d}", overwrite=True)
    return {"seed": seed, "folder": str(folder), "shape": ph.ct.shape}


def cmd_phantom(args) -> int:
    from .training.data import ScanRecord, split_records, write_manifest

    out = Path(args.output)
    fmt = args.format if args.format.startswith(".") else "." + args.format
    if args.count == 1 and not args.dataset:
        _write_one_phantom((args.seed, out, args.matrix, args.slice_mm, fmt, args.dicom))
        if not args.json:
            print(f"phantom seed {args.seed} -> {out}")
        return 0
    if (out / "manifest.csv").exists():
        raise OutputError(f"'{out}' already holds a phantom dataset (manifest.csv); choose a new folder.")
    jobs = [(args.seed + i, out / f"phantom_{args.seed + i:04d}", args.matrix, args.slice_mm, fmt, args.dicom)
            for i in range(args.count)]
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    workers = max(1, min(args.workers or (os.cpu_count() or 1), len(jobs)))
    with ProcessPoolExecutor(workers) as pool:
        done = list(tqdm(pool.map(_write_one_phantom, jobs), total=len(jobs), desc="phantoms", disable=args.json))
    records = [ScanRecord(Path(d["folder"]) / f"image{fmt}", Path(d["folder"]) / f"label{fmt}",
                          f"phantom{d['seed']:04d}", f"phantom{d['seed']:04d}") for d in done]
    splits = split_records(records, seed=args.seed)
    write_manifest(out / "manifest.csv", [r for s in ("train", "val", "test") for r in splits[s]])
    if args.json:
        print(json.dumps({"output": str(out), "count": len(done)}))
    else:
        print(f"{len(done)} phantoms -> {out} (manifest.csv)")
    return 0


# --------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from .training.commands import train_config_from_args
    from .training.distributed import is_main_process
    from .training.export import INTENDED_USE_RESEARCH, train_and_export

    cfg = train_config_from_args(args, model=args.model)
    overrides = (args.model_options or {}).get(args.model)
    if overrides:
        cfg.model_overrides = dict(overrides)
    command = "mnetim " + " ".join(sys.argv[1:])
    summary = train_and_export(args.manifest, args.output, cfg, name=args.name, version=args.version,
                               intended_use=args.intended_use or INTENDED_USE_RESEARCH,
                               training_data=json.loads(args.data_description) if args.data_description else None,
                               command=command, resume=args.resume, progress=not args.json,
                               tensorboard=False if args.no_tensorboard else None)
    if not is_main_process():  # under torchrun, rank 0 reports for everyone
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        t = summary["test"]
        print(f"best validation Dice {summary['val_dice']:.3f} (threshold {summary['threshold']}), "
              f"test Dice {t['volumetric_dice_mean']} -> {Path(args.output) / 'weights'}")
    return 0


# --------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from .demo import run_demo

    report = run_demo(Path(args.output), weights=args.weights, device=args.device, seed=args.seed)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"CTV {report['ctv_ml']:.1f} ml, Dice vs phantom truth {report['dice']:.3f}, "
              f"{report['seconds']:.1f} s on {report['device']}")
        print(f"segmentation: {report['segmentation']}")
        print(f"overlay:      {report['overlay']}")
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="mnetim", description="CTV segmentation for cervical-cancer brachytherapy CT (Mnet_Im).")
    p.add_argument("--version", action="version", version=f"mnetim {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment the CTV of a CT (DICOM folder or image file), or of every CT in a folder")
    s.add_argument("input", help="DICOM series folder, image file (.nii.gz/.nrrd/.mha), or a folder of them (batch)")
    s.add_argument("-o", "--output", required=True, help=".seg.nrrd (Slicer segmentation) or .nii.gz/.nrrd/.mha labelmap; a folder in batch mode")
    s.add_argument("--weights", help="weights folder (default: the shipped demo weights)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu"])
    s.add_argument("--threshold", type=float, help="probability threshold (default: the model card's)")
    s.add_argument("--no-largest-component", action="store_true", help="keep every connected piece, not only the largest")
    s.add_argument("--probability", help="also write the probability map to this image file")
    s.add_argument("--series", help="DICOM SeriesInstanceUID when the folder holds several CT series")
    s.add_argument("--batch", action="store_true", help="treat INPUT as a folder of CTs")
    s.add_argument("--format", help="rtstruct or dicom-seg (OUTPUT is then a folder; INPUT a DICOM series); "
                   "in batch mode the file format (.seg.nrrd default, .nii.gz, ...); else the OUTPUT suffix decides")
    s.add_argument("--batch-size", type=int, default=16, help="windows per network pass")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 on CUDA and on CPUs with native bf16 (Dice >= 0.999 to fp32), else fp32")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_segment)

    d = sub.add_parser("demo", help="segment a phantom CT with the shipped weights; write an overlay PNG and the Dice")
    d.add_argument("-o", "--output", default="out/demo")
    d.add_argument("--weights")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu"])
    d.add_argument("--seed", type=int, default=20231)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)

    ph = sub.add_parser("phantom", help="write synthetic brachytherapy CT phantom(s) with labels")
    ph.add_argument("-o", "--output", required=True, help="folder")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--count", type=int, default=1)
    ph.add_argument("--dataset", action="store_true", help="write a manifest even for one phantom")
    ph.add_argument("--matrix", type=int, help="in-plane matrix (default: random 256/384/512)")
    ph.add_argument("--slice-mm", type=float, help="slice spacing (default: random 1-3 mm)")
    ph.add_argument("--format", default=".nii.gz", help=".nii.gz, .nrrd or .mha")
    ph.add_argument("--dicom", action="store_true", help="also write a DICOM CT series")
    ph.add_argument("--workers", type=int, default=0)
    ph.add_argument("--json", action="store_true")
    ph.set_defaults(func=cmd_phantom)

    t = sub.add_parser("train", help="train a model on a manifest and export a weights folder")
    t.add_argument("manifest", help="CSV: image, mask, patient_id, scan_id[, split]")
    t.add_argument("-o", "--output", required=True, help="run folder (must be new, or --resume)")
    t.add_argument("--model", default="Mnet_Im")
    from .training.commands import add_train_options

    add_train_options(t)
    t.add_argument("--name", default="Mnet_Im")
    t.add_argument("--version", default="0.1.0")
    t.add_argument("--intended-use")
    t.add_argument("--data-description", help="JSON object describing the training data, stored in the card")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train)

    # Commands that live with their own layer (DICOM RT import, evaluation, experiments).
    from . import rt_import

    rt_import.add_commands(sub)
    from . import evaluation
    from .training import commands as research_commands

    evaluation.add_commands(sub)
    research_commands.add_commands(sub, compare_name="compare")
    return p


def main(argv=None) -> int:
    import SimpleITK as sitk

    # ITK prints its own warnings (e.g. "No Series were found" for every sub-folder) straight to
    # stderr; the contract is one clear line from us, so they are silenced here, not in the library.
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Cancelled as exc:
        print(f"mnetim: {exc}", file=sys.stderr)
        return exc.exit_code
    except MnetImError as exc:
        print(f"mnetim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mnetim: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except MemoryError:
        print("mnetim: error: out of memory.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
