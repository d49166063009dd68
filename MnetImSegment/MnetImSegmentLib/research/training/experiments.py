"""The paper's experiments as single commands: k-fold cross-validation (Table 3) and model comparison
(Tables 1, 2, 4, 5; Figures 3-5).

Both write everything under one experiment folder::

    DIR/experiment.json      what was asked: manifest, models or folds, training options, software
    DIR/manifest.csv         (compare) the one split every model uses, with absolute paths
    DIR/folds/fold_<k>.csv   (crossval) each fold's split
    DIR/<run>/               a normal ``mnetim train`` run folder per model / fold (weights/ inside)
    DIR/<run>/predictions/   test-split predictions, labelmaps named <scan_id>.nii.gz, made by the full
                             inference pipeline from the exported weights (what a user would get)
    DIR/.../truth/           the test scans' CTV masks as labelmaps under the same names
    DIR/results/ or DIR/crossval.*   the tables and figures (``evaluation`` module)
    DIR/finished.json        written last; a folder holding it is a finished experiment

Running the same command again continues an interrupted experiment: finished runs are skipped,
unfinished runs resumed from their checkpoints, missing predictions made. A finished experiment,
or a folder holding anything else, is never overwritten, and an experiment is only continued with
the options it was started with.

Scans whose mask holds no CTV are trained on (negative examples) but left out of the evaluation,
whose surface metrics are undefined for an empty truth; the results say which were left out.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ... import __version__
from ...core.errors import DatasetError, OutputError, WeightsError
from ...core.files import transaction, write_text
from ...engine.inference import Segmenter
from ...engine.io import read_image, write_labelmap
from ..evaluation.cases import case_id_of
from ..evaluation.scoring import compare_models, evaluate, summarize
from ..manifest import PAPER_FRACTIONS, SPLITS, ScanRecord, read_manifest, split_records
from . import distributed as dist_
from .data import DatasetWarning, ctv_mask, read_volume_pair
from .export import train_and_export
from .trainer import TrainConfig, check_training_options

EXPERIMENT_FILE = "experiment.json"
FINISHED_FILE = "finished.json"
PREDICTION_SUFFIX = ".nii.gz"
# Table 3's column order (Table 1 puts SD before SO; the paper is not consistent).
TABLE3_METRICS = ("asd", "hd95", "so", "sd", "vd")
# The paper's validation share of the scans that are not test scans: 35 of 164 + 35.
VAL_FRACTION_OF_TRAINVAL = PAPER_FRACTIONS[1] / (PAPER_FRACTIONS[0] + PAPER_FRACTIONS[1])


# --------------------------------------------------------------------------- experiment folder
# An experiment's models/folds must be trained alike, so only where they run may change on resume.
EXPERIMENT_SAFE_CHANGES = frozenset({"train.device", "train.num_threads"})


def _spec_changes(old: dict, new: dict, prefix: str = "") -> dict:
    """{'train.epochs': (old, new), ...}: the leaves that differ between two experiment specs."""
    out = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key == "train":
            out.update(_spec_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = (a, b)
    return out


def open_experiment(out_dir, spec: dict) -> bool:
    """Create the experiment folder or check that it continues the same experiment.

    Args:
        out_dir: The experiment folder.
        spec: What defines the experiment (kind, manifest, models/folds, training options).

    Returns:
        True when an unfinished experiment with the same ``spec`` is continued.

    Raises:
        OutputError: The folder holds a finished experiment, another experiment, or unrelated files.
    """
    out_dir = Path(out_dir)
    if (out_dir / FINISHED_FILE).exists():
        raise OutputError(f"'{out_dir}' holds a finished experiment; choose a new folder (nothing was overwritten).")
    if (out_dir / EXPERIMENT_FILE).is_file():
        saved = json.loads((out_dir / EXPERIMENT_FILE).read_text(encoding="utf-8"))
        wanted = json.loads(json.dumps(spec))
        if saved.get("spec") != wanted:
            changed = _spec_changes(saved.get("spec", {}), wanted)
            unsafe = {k: v for k, v in changed.items() if k not in EXPERIMENT_SAFE_CHANGES}
            if unsafe:
                detail = "; ".join(f"{k}: {old!r} then, {new!r} now" for k, (old, new) in sorted(unsafe.items()))
                raise OutputError(f"'{out_dir}' holds an experiment started with other options ({detail}); continue it "
                                  f"with the same values (only --device and --threads may change: every model/fold must be "
                                  "trained alike) "
                                  "or choose a new folder.")
            saved["spec"] = wanted  # safe changes only (device, threads): the runs resume under them
            write_text(out_dir / EXPERIMENT_FILE, json.dumps(saved, indent=2) + "\n", overwrite=True)
        return True
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputError(f"'{out_dir}' is not empty and holds no experiment; choose a new folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"spec": spec, "software": f"MnetImSegment {__version__}",
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_text(out_dir / EXPERIMENT_FILE, json.dumps(record, indent=2) + "\n")
    return False


def write_split_manifest(path, splits: dict[str, list[ScanRecord]]) -> Path:
    """A manifest with a split column and absolute paths (the experiment folder may live anywhere)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer, lineterminator="\n")
    w.writerow(["image", "mask", "patient_id", "scan_id", "split"])
    for split in SPLITS:
        for r in splits.get(split, []):
            w.writerow([Path(r.image).resolve().as_posix(), Path(r.mask).resolve().as_posix(), r.patient_id,
                        r.scan_id, split])
    write_text(path, buffer.getvalue(), overwrite=True)
    return path


def _same_or_write(path: Path, splits: dict[str, list[ScanRecord]], resuming: bool) -> Path:
    """Write a split manifest, or on resume check the saved one still says the same."""
    if resuming and path.is_file():
        saved = {s: [(r.scan_id, r.patient_id) for r in v] for s, v in
                 split_records(read_manifest(path)).items()}
        now = {s: [(r.scan_id, r.patient_id) for r in splits.get(s, [])] for s in SPLITS}
        if saved != now:
            raise OutputError(f"'{path}' no longer matches the manifest's scans; the data changed since this "
                              "experiment started. Start a new experiment folder.")
        return path
    return write_split_manifest(path, splits)


def case_ids(records: Sequence[ScanRecord]) -> dict[str, str]:
    """scan_id -> file-name-safe case id, one-to-one."""
    out, seen = {}, {}
    for r in records:
        case = re.sub(r"[^A-Za-z0-9._-]", "_", r.scan_id).strip(".") or "scan"
        if case in seen and seen[case] != r.scan_id:
            raise DatasetError(f"Scan ids '{seen[case]}' and '{r.scan_id}' give the same file name '{case}'; "
                               "rename one in the manifest.")
        seen[case] = r.scan_id
        out[r.scan_id] = case
    return out


# --------------------------------------------------------------------------- splits
def kfold_by_patient(records: Sequence[ScanRecord], folds: int, seed: int = 0) -> list[list[ScanRecord]]:
    """Split scans into ``folds`` parts of nearly equal scan counts, all scans of a patient in one part.

    Patients are shuffled with ``seed``, then, largest first, each goes to the part with the fewest
    scans so far (the paper's 235 scans gave 59/59/59/58).

    Raises:
        DatasetError: Fewer patients than folds, or fewer than 2 folds.
    """
    if folds < 2:
        raise DatasetError(f"Cross-validation needs at least 2 folds, got {folds}.")
    by_patient: dict[str, list[ScanRecord]] = {}
    for r in records:
        by_patient.setdefault(r.patient_id, []).append(r)
    if len(by_patient) < folds:
        raise DatasetError(f"{folds}-fold cross-validation needs at least {folds} patients; the manifest has "
                           f"{len(by_patient)}.")
    patients = sorted(by_patient)
    np.random.default_rng(seed).shuffle(patients)
    patients.sort(key=lambda p: -len(by_patient[p]))  # stable: equal sizes keep the shuffled order
    parts: list[list[ScanRecord]] = [[] for _ in range(folds)]
    for p in patients:
        min(parts, key=len).extend(by_patient[p])
    return parts


def crossval_splits(records: Sequence[ScanRecord], folds: int, seed: int = 0,
                    val_fraction: float = VAL_FRACTION_OF_TRAINVAL) -> list[dict[str, list[ScanRecord]]]:
    """Train / validation / test split of every fold: the fold's part is its test set; from the other
    patients ``val_fraction`` (by patient, at least one) validate (early stopping, threshold), the rest train.
    """
    parts = kfold_by_patient(records, folds, seed)
    out = []
    for k, test in enumerate(parts):
        rest = [r for j, part in enumerate(parts) if j != k for r in part]
        patients = sorted({r.patient_id for r in rest})
        if len(patients) < 2:
            raise DatasetError("Each fold needs at least two patients outside its test part (one to train, one "
                               "to validate); use fewer folds or more patients.")
        np.random.default_rng([seed, k]).shuffle(patients)
        n_val = min(len(patients) - 1, max(1, int(round(val_fraction * len(patients)))))
        val_patients = set(patients[:n_val])
        out.append({"train": [replace(r, split="train") for r in rest if r.patient_id not in val_patients],
                    "val": [replace(r, split="val") for r in rest if r.patient_id in val_patients],
                    "test": [replace(r, split="test") for r in test]})
    return out


# --------------------------------------------------------------------------- predictions and truth
def write_truths(records: Sequence[ScanRecord], truth_dir, cases: dict[str, str]) -> list[str]:
    """Write each scan's CTV as a labelmap ``<case>.nii.gz``; return the scan ids left out (no CTV)."""

    truth_dir = Path(truth_dir)
    truth_dir.mkdir(parents=True, exist_ok=True)
    empty = []
    for r in records:
        target = truth_dir / f"{cases[r.scan_id]}{PREDICTION_SUFFIX}"
        _, mask = read_volume_pair(r)  # also checks that mask and image share a grid
        ctv = ctv_mask(mask.array)
        if not ctv.any():
            empty.append(r.scan_id)
            continue
        if not target.exists():
            write_labelmap(mask.with_array(ctv.astype(np.uint8)), target)
    if empty:
        warnings.warn(f"{len(empty)} test scan(s) have no CTV and are left out of the evaluation (surface metrics "
                      f"need a truth surface): {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}.",
                      DatasetWarning, stacklevel=2)
    return empty


def predict_scans(weights_dir, records: Sequence[ScanRecord], pred_dir, cases: dict[str, str],
                  device: str = "auto", skip: Sequence[str] = ()) -> int:
    """Segment each scan with the exported weights (full pipeline) into ``pred_dir/<case>.nii.gz``.

    Existing predictions are kept (an interrupted experiment continues); each file is written
    atomically, so an existing one is complete. Returns how many were made.
    """

    pred_dir = Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in records if r.scan_id not in skip
            and not (pred_dir / f"{cases[r.scan_id]}{PREDICTION_SUFFIX}").exists()]
    if not todo:
        return 0
    segmenter = Segmenter(weights_dir, device=device)
    for r in todo:
        result = segmenter.segment(read_image(r.image), enforce_scope=False)
        write_labelmap(result.mask, pred_dir / f"{cases[r.scan_id]}{PREDICTION_SUFFIX}")
    return len(todo)


def _link_images(records: Sequence[ScanRecord], images_dir: Path, cases: dict[str, str]) -> Optional[Path]:
    """CTs under the case ids (symbolic links) so the best/worst figure is drawn on the CT; None if impossible."""

    images_dir.mkdir(parents=True, exist_ok=True)
    try:
        for r in records:
            src = Path(r.image).resolve()
            suffix = src.name[len(case_id_of(src) or src.name):] if case_id_of(src) else ""
            if not suffix:  # a DICOM folder or an unknown format: figures without the CT
                return None
            link = images_dir / f"{cases[r.scan_id]}{suffix}"
            if not link.exists():
                link.symlink_to(src)
    except OSError:  # no symlinks here (e.g. Windows without developer mode)
        return None
    return images_dir


# --------------------------------------------------------------------------- training one run
def _train(manifest: Path, run_dir: Path, config: TrainConfig, name: str, command: str, progress: bool,
           tensorboard: Optional[bool], log, prediction_names: Optional[dict] = None) -> dict:
    """Train (or resume, or skip when finished) one run folder; return its summary.

    The test predictions made for the card are kept in ``run_dir/predictions`` under
    ``prediction_names`` (scan_id -> case id), so they are not computed twice.
    """

    if (run_dir / "summary.json").is_file():
        log(f"{run_dir.name}: already trained, skipped")
        return json.loads((run_dir / "summary.json").read_text())
    log(f"{run_dir.name}: training {config.model}" + (" (resuming)" if (run_dir / "checkpoint.pt").exists() else ""))
    return train_and_export(manifest, run_dir, config, name=name, command=command, resume=True, progress=progress,
                            tensorboard=tensorboard, intended_use="Research experiment run; not for clinical use.",
                            predictions_dir=run_dir / "predictions", prediction_names=prediction_names)


def _silent(*args, **kwargs) -> None:
    pass


def _model_config(config: TrainConfig, model: str, model_options: Optional[dict]) -> TrainConfig:
    overrides = dict((model_options or {}).get(model, {}))
    return replace(config, model=model, model_overrides=overrides)


# --------------------------------------------------------------------------- cross-validation
def run_crossval(manifest, out_dir, config: TrainConfig, folds: int = 4, model_options: Optional[dict] = None,
                 command: str = "", progress: bool = True, tensorboard: Optional[bool] = None,
                 log=print) -> dict:
    """k-fold cross-validation by scan, grouped by patient (the paper's Table 3).

    Each fold trains ``config.model`` into ``DIR/fold_<k>`` (a normal run folder), segments its test
    part with the exported weights, and scores it with :func:`MnetImSegmentLib.research.evaluation.scoring.evaluate`
    into ``DIR/fold_<k>/evaluation``. ``DIR/crossval.csv`` / ``.md`` / ``.json`` hold the five metrics
    per fold (means over the fold's test scans), their average (the paper's AVG row) and the pooled
    statistics over all scans.

    Args:
        manifest: The dataset manifest (its split column, if any, is ignored: folds replace it).
        out_dir: The experiment folder (see the module docstring for resuming and refusals).
        config: Training options, the same for every fold (``config.model`` is the model).
        folds: Number of folds (paper: 4).
        model_options: ``{model: overrides}`` passed to ``build_model``.
        command: The command line, stored in the cards.
        progress: Progress bars.
        tensorboard: See ``Trainer``.
        log: Where status lines go (``print`` by default).

    Returns:
        The content of ``crossval.json``.
    """

    manifest = Path(manifest).resolve()
    out_dir = Path(out_dir)
    ctx = dist_.setup(config.device)
    records = [replace(r, split=None) for r in read_manifest(manifest)]
    cases = case_ids(records)
    config = _model_config(config, config.model, model_options)
    spec = {"kind": "crossval", "manifest": str(manifest), "model": config.model, "folds": folds,
            "train": config.to_dict()}
    fold_splits = crossval_splits(records, folds, seed=config.seed)
    if not ctx.is_main:  # one voice in a torchrun job
        log = _silent
    setup = None
    if ctx.is_main:
        resuming = open_experiment(out_dir, spec)
        log(("continuing" if resuming else "starting") + f" {folds}-fold cross-validation of {config.model} in {out_dir}")
        paths = [str(_same_or_write(out_dir / "folds" / f"fold_{k + 1}.csv", s, resuming))
                 for k, s in enumerate(fold_splits)]
        # All truths first: a mask that does not fit its CT stops the experiment before any training.
        empties = [write_truths(s["test"], out_dir / "truth" / f"fold_{k + 1}", cases) for k, s in enumerate(fold_splits)]
        for k, (e, s) in enumerate(zip(empties, fold_splits), start=1):
            if len(e) == len(s["test"]):
                raise DatasetError(f"No test scan of fold {k} has CTV, so the fold cannot be scored; use fewer "
                                   "folds or check the masks.")
        images = _link_images(records, out_dir / "images", cases)
        setup = (paths, empties, str(images) if images else None)
    paths, empties, images = dist_.handoff(ctx, setup)

    per_fold, pooled_rows, excluded = [], [], []
    for k, split in enumerate(fold_splits, start=1):
        run_dir = out_dir / f"fold_{k}"
        keep = {r.scan_id: cases[r.scan_id] for r in split["test"] if r.scan_id not in empties[k - 1]}
        summary = _train(Path(paths[k - 1]), run_dir, config, f"{config.model}_crossval_fold{k}", command, progress,
                         tensorboard, log, prediction_names=keep)
        fold_result = None
        if ctx.is_main:
            empty = empties[k - 1]
            excluded += empty
            made = predict_scans(run_dir / "weights", split["test"], run_dir / "predictions", cases,
                                 device=ctx.device, skip=empty)
            if made:  # normally made during training's test evaluation; these were missing
                log(f"fold_{k}: {made} test prediction(s) made")
            result = evaluate(run_dir / "predictions", out_dir / "truth" / f"fold_{k}", run_dir / "evaluation",
                              name=f"fold_{k}", images_dir=images, overwrite=True)
            means = {m: result.summary[f"fold_{k}"][m]["mean"] for m in TABLE3_METRICS}
            fold_result = {"fold": k, "test_scans": len(result.cases), "val_scans": len(split["val"]),
                           "train_scans": len(split["train"]), "means": means,
                           "excluded_no_ctv": empty, "val_dice_roi": summary.get("val_dice"),
                           "threshold": summary.get("threshold"), "rows": result.per_case}
        fold_result = dist_.handoff(ctx, fold_result)
        pooled_rows += fold_result.pop("rows")
        per_fold.append(fold_result)

    report = None
    if ctx.is_main:
        average = {m: float(np.mean([f["means"][m] for f in per_fold])) for m in TABLE3_METRICS}
        pooled = {m: summarize([r[m] for r in pooled_rows]) for m in TABLE3_METRICS}
        report = {"model": config.model, "folds": per_fold, "average_of_folds": average, "pooled": pooled,
                  "excluded_no_ctv": excluded, "manifest": str(manifest),
                  "note": "fold values are means over the fold's test scans; AVG is the mean of the fold values "
                          "(the paper's Table 3); pooled statistics (mean ± SD) are over all test scans. Distances in mm; "
                          "infinite distances (empty predictions) are left out of the means, see each fold's "
                          "evaluation/summary.md."}
        _write_crossval_tables(out_dir, report)
        _finish(out_dir, report)
        log(f"cross-validation finished -> {out_dir / 'crossval.md'}")
    return dist_.handoff(ctx, report)


def _write_crossval_tables(out_dir: Path, report: dict) -> None:
    names = {"asd": "ASD", "hd95": "HD95", "so": "SO", "sd": "SD", "vd": "Dice"}
    header = ["fold", "test scans"] + [names[m] for m in TABLE3_METRICS]
    rows = [[f"{f['fold']}-fold", str(f["test_scans"])] + [f"{f['means'][m]:.4f}" for m in TABLE3_METRICS]
            for f in report["folds"]]
    rows.append(["AVG.", "-"] + [f"{report['average_of_folds'][m]:.4f}" for m in TABLE3_METRICS])
    pooled = report["pooled"]
    rows.append(["all scans", str(sum(f["test_scans"] for f in report["folds"]))]
                + [f"{pooled[m]['mean']:.4f} ± {pooled[m]['std']:.4f}" for m in TABLE3_METRICS])
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    md = [f"# {report['model']}: {len(report['folds'])}-fold cross-validation (Table 3 layout)", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "ASD and HD95 in mm (lower is better); SO, SD, Dice (volumetric) fractions (higher is better). " + report["note"]]
    if report["excluded_no_ctv"]:
        md += ["", f"Left out (no CTV in the mask): {', '.join(report['excluded_no_ctv'])}."]
    with transaction(None, overwrite=True) as tx:  # the three tables of one result commit together
        write_text(out_dir / "crossval.csv", buffer.getvalue(), tx=tx)
        write_text(out_dir / "crossval.md", "\n".join(md) + "\n", tx=tx)
        write_text(out_dir / "crossval.json", json.dumps(report, indent=2, default=float) + "\n", tx=tx)


def _finish(out_dir: Path, report: dict) -> None:
    record = {"finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "results": {k: v for k, v in report.items() if k in ("model", "models", "results", "average_of_folds")}}
    write_text(out_dir / FINISHED_FILE, json.dumps(record, indent=2, default=float) + "\n", overwrite=True)


# --------------------------------------------------------------------------- model comparison
def run_compare(manifest, out_dir, models: Sequence[str], config: TrainConfig, model_options: Optional[dict] = None,
                command: str = "", progress: bool = True, tensorboard: Optional[bool] = None, log=print,
                reference: Optional[str] = None) -> dict:
    """Train several models on the same split and compare them on its test scans (Tables 1/2/4/5, Figs 3-5).

    Every model is trained into ``DIR/<model>/`` with the same options and split (``DIR/manifest.csv``:
    the manifest's own split column if every scan has one, else the paper's 70/15/15 by patient with
    ``config.seed``). Test predictions go to ``DIR/<model>/predictions`` and
    :func:`MnetImSegmentLib.research.evaluation.scoring.compare_models` writes one table and the box plots to
    ``DIR/results``.

    Args:
        manifest: The dataset manifest.
        out_dir: The experiment folder.
        models: Model names (``models.MODEL_NAMES``), in table order; the first is the reference for
            the best/worst figure unless ``reference`` says otherwise.
        config: Training options shared by all models (its ``model`` field is ignored).
        model_options: ``{model: overrides}`` passed to ``build_model``.
        command, progress, tensorboard, log: As for :func:`run_crossval`.
        reference: Model whose Dice picks the best and worst cases of the figure.

    Returns:
        The content of ``DIR/results/evaluation.json``'s summary plus the runs' validation results.
    """
    from ...models import MODEL_NAMES  # torch

    models = list(models)
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown or not models:
        raise DatasetError(f"Unknown model(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(MODEL_NAMES)}.")
    if len(set(models)) != len(models):
        raise DatasetError("A model is named twice in --models.")
    extra = sorted(set(model_options or {}) - set(models))
    if extra:
        raise DatasetError(f"--model-options names model(s) not compared: {', '.join(extra)}.")
    # Every model's constraints before any is trained: a refusal after hours of training the others helps nobody.
    problems = []
    for model in models:
        try:
            check_training_options(_model_config(config, model, model_options))
        except (DatasetError, WeightsError) as exc:
            problems.append(f"{model}: {exc}")
    if problems:
        raise DatasetError("Nothing was trained; not every model accepts these options. " + " ".join(problems))
    manifest = Path(manifest).resolve()
    out_dir = Path(out_dir)
    ctx = dist_.setup(config.device)
    records = read_manifest(manifest)
    splits = split_records(records, seed=config.seed)
    if not splits["test"]:
        raise DatasetError("The split has no test scans to compare the models on.")
    cases = case_ids(records)
    base = config.to_dict()
    base.pop("model"), base.pop("model_overrides")
    spec = {"kind": "compare", "manifest": str(manifest), "models": models, "model_options": model_options or {},
            "train": base}
    split_manifest = out_dir / "manifest.csv"
    if not ctx.is_main:
        log = _silent
    if ctx.is_main:
        resuming = open_experiment(out_dir, spec)
        log(("continuing" if resuming else "starting") + f" comparison of {', '.join(models)} in {out_dir}")
        _same_or_write(split_manifest, splits, resuming)
    dist_.handoff(ctx)

    empty: list[str] = []
    if ctx.is_main:
        empty = write_truths(splits["test"], out_dir / "truth", cases)
        if len(empty) == len(splits["test"]):
            raise DatasetError("No test scan has CTV: there is nothing to compare the models on.")
    empty = dist_.handoff(ctx, empty)
    keep = {r.scan_id: cases[r.scan_id] for r in splits["test"] if r.scan_id not in empty}
    runs = {}
    for model in models:
        run_dir = out_dir / model
        summary = _train(split_manifest, run_dir, _model_config(config, model, model_options), f"{model}_compare",
                         command, progress, tensorboard, log, prediction_names=keep)
        runs[model] = {"val_dice_roi": summary.get("val_dice"), "threshold": summary.get("threshold"),
                       "epochs_run": summary.get("epochs_run"), "train_seconds": summary.get("train_seconds")}
        if ctx.is_main:
            made = predict_scans(run_dir / "weights", splits["test"], run_dir / "predictions", cases,
                                 device=ctx.device, skip=empty)
            if made:
                log(f"{model}: {made} test prediction(s) made")
        dist_.handoff(ctx)

    report = None
    if ctx.is_main:
        images = _link_images([r for r in splits["test"] if r.scan_id not in empty], out_dir / "images", cases)
        result = compare_models({m: out_dir / m / "predictions" for m in models}, out_dir / "truth",
                                out_dir / "results", images_dir=images, reference=reference, overwrite=True)
        report = {"models": models, "runs": runs, "test_scans": len(result.cases), "excluded_no_ctv": empty,
                  "results": {m: {k: result.summary[m][k]["mean"] for k in ("asd", "hd95", "sd", "so", "vd")}
                              for m in models},
                  "tables": str(out_dir / "results" / "summary.md"), "manifest": str(manifest)}
        write_text(out_dir / "compare.json", json.dumps(report, indent=2, default=float) + "\n", overwrite=True)
        _finish(out_dir, report)
        log(f"comparison finished -> {out_dir / 'results' / 'summary.md'}")
    return dist_.handoff(ctx, report)
