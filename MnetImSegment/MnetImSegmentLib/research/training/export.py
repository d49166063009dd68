"""Finish a run: evaluate the held-out test scans through the real inference pipeline, write the card.

The test Dice in the card is measured exactly as a user would get it: the full ``Segmenter`` on the
original CT grid (ROI location, crop, windows, paste-back, threshold, largest component), against
the original mask, never on the training crops.
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from ... import __version__
from ...core.errors import DatasetError, WeightsError
from ...core.files import write_text
from ...core.validate import validate_card, validate_card_fields
from ...engine.inference import Segmenter
from ...engine.io import write_labelmap
from ...engine.roi import RoiSpec
from ...engine.weights import CARD, CARD_FORMAT, TENSORS, load_weights, read_card, save_weights
from ...engine.windows import InputSpec
from ..manifest import read_manifest, style_counts
from ..metrics import volumetric_dice
from . import distributed as dist_
from .data import ATLAS_FILE, read_atlas, read_volume_pair
from .trainer import SPLITS_FILE, TrainConfig, Trainer

INTENDED_USE_RESEARCH = (
    "Research use. Weights trained with MnetImSegment; validate on your own institution's data before any use."
)


def evaluate_scans(segmenter, records, threshold: Optional[float] = None, save_dir=None,
                   save_names: Optional[dict] = None) -> list[dict]:
    """Per-scan volumetric Dice and volumes of the full pipeline against the masks.

    Args:
        segmenter: A loaded :class:`~MnetImSegmentLib.engine.inference.Segmenter`.
        records: The scans.
        threshold: Override of the card's threshold.
        save_dir: Also write the predicted masks here, as labelmaps ``<name>.nii.gz`` (so an
            experiment does not segment the test scans a second time); existing files are kept.
        save_names: scan_id -> file name (without suffix) of the scans to save; default all, by scan_id.
    """

    rows = []
    for r in records:
        image, mask = read_volume_pair(r)
        truth = mask.array == 1 if mask.array.max() > 1 else mask.array > 0
        result = segmenter.segment(image, threshold=threshold, enforce_scope=False)  # score every test scan
        name = r.scan_id if save_names is None else save_names.get(r.scan_id)
        if save_dir is not None and name is not None:
            target = Path(save_dir) / f"{name}.nii.gz"
            if not target.exists():
                Path(save_dir).mkdir(parents=True, exist_ok=True)
                write_labelmap(result.mask, target)
        voxel_ml = float(np.prod(image.geometry.spacing)) / 1000
        rows.append({"scan_id": r.scan_id, "vd": round(volumetric_dice(result.mask.array, truth), 4),
                     "pred_ml": round(result.volume_ml, 2), "truth_ml": round(float(truth.sum()) * voxel_ml, 2),
                     "roi_method": result.roi.method, "seconds": round(result.seconds["total"], 2)})
        if r.style:  # phantoms: which generator made the scan, for the per-style summary
            rows[-1]["style"] = r.style
    return rows


def dice_summary(rows: list[dict]) -> dict:
    """Mean / median / min volumetric Dice of per-scan rows (``evaluate_scans``), and the count."""
    vds = [r["vd"] for r in rows]
    if not vds:
        return {"volumetric_dice_mean": None, "volumetric_dice_median": None, "volumetric_dice_min": None, "n": 0}
    return {"volumetric_dice_mean": round(float(np.mean(vds)), 4),
            "volumetric_dice_median": round(float(np.median(vds)), 4),
            "volumetric_dice_min": round(float(np.min(vds)), 4), "n": len(vds)}


def card_test_section(rows: list[dict]) -> dict:
    """The card's ``test`` entry: overall Dice, per phantom style when the scans have one, the rows.

    A mixed-style test split's single mean hides which generator the model handles; the per-style
    means are what the model card and README report.
    """
    overall = dice_summary(rows)
    section = {k: overall[k] for k in ("volumetric_dice_mean", "volumetric_dice_median", "volumetric_dice_min")}
    styles = sorted({r["style"] for r in rows if r.get("style")})
    if styles:
        section["by_style"] = {st: dice_summary([r for r in rows if r.get("style") == st]) for st in styles}
    section["scans"] = rows
    section["how"] = ("full inference pipeline (ROI, crop, windows, paste-back, threshold, largest component) on "
                      "the original CT grid against the original mask")
    return section


PAPER = ("Huang M, Feng C, Sun D, Cui M, Zhao D. Segmentation of Clinical Target Volume From CT Images "
         "for Cervical Cancer Using Deep Learning. Technol Cancer Res Treat. 2023;22. doi:10.1177/15330338221139164")
THRESHOLD_SELECTION = ("best mean volumetric Dice on the validation scans (ROI crops), "
                       "candidates 0.10-0.90 in steps of 0.05")


def training_data_entry(training_data: Optional[dict], manifest, train_records=()) -> dict:
    """The card's ``training.data``: the caller's description, plus the styles of the training split.

    ``research.generalisation`` reads ``styles`` to tell the phantom styles a model was trained on
    from those it never saw; a description written by hand easily forgets it, and every style row
    would then be reported as in-distribution. A description that gives its own ``styles`` keeps it.
    """
    data = dict(training_data) if training_data else {"manifest": str(manifest)}
    counts = style_counts(train_records)
    if counts and "styles" not in data:
        data["styles"] = counts
    return data


def build_card(config: TrainConfig, summary: dict, name: str, version: str, intended_use: str,
               training_data: Optional[dict], command: str, manifest, train_records=()) -> dict:
    """The model card of a trained run (without ``test``, which is measured on the saved file)."""
    card = {
        "name": name,
        "version": version,
        "architecture": config.model,
        "config": summary["model_config"],
        "input": dict(InputSpec.from_dict(config.input).to_dict(), roi=RoiSpec.from_dict(config.roi).to_dict()),
        "threshold": summary["threshold"],
        "threshold_selection": THRESHOLD_SELECTION,
        "postprocessing": {"largest_component": True},
        "intended_use": intended_use,
        "paper": PAPER,
        "training": {
            "command": command, "seed": config.seed, "config": config.to_dict(),
            "data": training_data_entry(training_data, manifest, train_records),
            "scans": {k: len(v) for k, v in summary["scans"].items()},
            "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
            "stopped_by": summary["stopped_by"], "seconds": summary["train_seconds"],
            "device": summary["device"], "environment": summary["environment"],
        },
        "validation": {"volumetric_dice_roi": summary["val_dice"], "scans": len(summary["scans"].get("val", []))},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": f"MnetImSegment {__version__}",
    }
    if "distributed" in summary:
        card["training"]["distributed"] = summary["distributed"]
    if "parent_model" in summary:  # fine-tuned: which weights it started from
        card["training"]["parent_model"] = summary["parent_model"]
    if summary.get("warnings"):
        card["training"]["warnings"] = summary["warnings"]
    return card


def train_and_export(manifest, run_dir, config: TrainConfig, name: str, version: str = "0.1.0",
                     intended_use: str = INTENDED_USE_RESEARCH, training_data: Optional[dict] = None,
                     command: str = "", resume: bool = False, progress: bool = True,
                     tensorboard: Optional[bool] = None, predictions_dir=None,
                     prediction_names: Optional[dict] = None) -> dict:
    """Train, evaluate the test split, export ``run_dir/weights`` and ``run_dir/summary.json``.

    In a torchrun job rank 0 evaluates and exports while the other ranks wait; every rank returns
    rank 0's summary. ``predictions_dir`` / ``prediction_names``: keep the test predictions (see
    :func:`evaluate_scans`).
    """

    validate_card_fields({"name": name, "version": version, "intended_use": intended_use},
                         f"of '{Path(run_dir) / 'weights'}'")  # before training, not after it
    trainer = Trainer(manifest, run_dir, config, progress=progress, tensorboard=tensorboard)
    summary = trainer.run(resume=resume)
    ctx = dist_.setup(config.device)
    if not ctx.is_main:
        return dist_.handoff(ctx)
    card = build_card(config, summary, name, version, intended_use, training_data, command, manifest,
                      trainer.splits["train"])
    # Weights are written first without test metrics, then evaluated through the real loader,
    # so the numbers in the card are those of the file that ships.
    staging = Path(run_dir) / "weights.staging"
    _remove_stale_weights(staging)
    _remove_stale_weights(Path(run_dir) / "weights")  # from an export interrupted before summary.json
    save_weights(trainer.model, staging, card, atlas=trainer.atlas)
    segmenter = Segmenter(staging, device=ctx.device)
    # The staging tensors are those that ship, so these predictions are the shipped model's.
    rows = evaluate_scans(segmenter, trainer.splits["test"], save_dir=predictions_dir, save_names=prediction_names)
    card["test"] = card_test_section(rows)
    _remove_stale_weights(staging)
    save_weights(trainer.model, Path(run_dir) / "weights", card, atlas=trainer.atlas)
    summary["test"] = card["test"]
    write_text(Path(run_dir) / "summary.json", json.dumps(summary, indent=2), overwrite=True)
    return dist_.handoff(ctx, summary)


def _remove_stale_weights(folder: Path) -> None:
    """Remove a weights folder this run wrote itself (only its two files; anything else is refused)."""

    if not folder.exists():
        return
    for f in folder.iterdir():
        if f.name not in (CARD, TENSORS):
            raise DatasetError(f"'{folder}' holds '{f.name}', which this run did not write; move it away and resume.")
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()


# --------------------------------------------------------------------------- export a run folder
def run_threshold(run_dir) -> dict:
    """Epoch, validation Dice and threshold of a run's ``best.safetensors``, without unpickling anything.

    Read from the file's metadata (runs since this version), else ``summary.json``, else the
    epoch with the best Dice in ``log.csv`` (the first one: the trainer keeps the first best).
    """
    import csv

    from safetensors import safe_open

    run_dir = Path(run_dir)
    with safe_open(str(run_dir / "best.safetensors"), framework="pt") as f:
        meta = f.metadata() or {}
    if "threshold" in meta:
        return {"epoch": int(meta["epoch"]), "val_dice": float(meta["val_dice"]), "threshold": float(meta["threshold"])}
    if (run_dir / "summary.json").is_file():
        s = json.loads((run_dir / "summary.json").read_text())
        return {"epoch": s["best_epoch"], "val_dice": s["val_dice"], "threshold": s["threshold"]}
    log = run_dir / "log.csv"
    rows = list(csv.DictReader(open(log, newline=""))) if log.is_file() else []
    if not rows:
        raise DatasetError(f"'{run_dir}' records no validated epoch (log.csv is empty); cannot tell its threshold.")
    best = max(rows, key=lambda r: float(r["val_dice"]))  # max keeps the first of equal values
    return {"epoch": int(best["epoch"]), "val_dice": float(best["val_dice"]), "threshold": float(best["val_threshold"])}


def export_run(run_dir, weights_dir, name: Optional[str] = None, version: Optional[str] = None,
               intended_use: Optional[str] = None) -> Path:
    """Turn a training run folder into a weights folder that ``mnetim segment --weights`` and Slicer load.

    Works for a finished run (its card is carried over, test metrics included) and for an unfinished
    or interrupted one (the card is built from ``config.json``, the best epoch's threshold and
    ``log.csv``, and says that the run did not finish).

    Args:
        run_dir: A folder written by ``mnetim train`` (``config.json`` + ``best.safetensors``).
        weights_dir: New (or empty) folder for ``model.safetensors`` + ``model.json``.
        name, version, intended_use: Card fields; default: the finished run's card, else the
            model name, "0.1.0" and the research-use statement.

    Returns:
        ``weights_dir``, after checking that it loads.

    Raises:
        DatasetError: ``run_dir`` is not a run folder or its files disagree.
        WeightsError: ``weights_dir`` already holds files.
    """
    from safetensors.torch import load_file

    from ...models import build_model, model_config  # torch

    run_dir = Path(run_dir)
    for f in ("config.json", "best.safetensors"):
        if not (run_dir / f).is_file():
            raise DatasetError(f"'{run_dir}' is not a training run folder with a validated epoch: {f} is missing.")
    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    in_channels = InputSpec.from_dict(config.input).channels
    try:
        model = build_model(config.model, in_channels=in_channels, **config.model_overrides)
        model.load_state_dict(load_file(str(run_dir / "best.safetensors")), strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DatasetError(f"'{run_dir / 'best.safetensors'}' does not fit the {config.model} of its config.json "
                           f"({str(exc).splitlines()[0]}).") from None
    best = run_threshold(run_dir)
    finished_card = run_dir / "weights" / CARD
    if (run_dir / "summary.json").is_file() and finished_card.is_file():
        card = dict(read_card(finished_card.parent).raw)
        if abs(float(card["threshold"]) - best["threshold"]) > 1e-9:
            raise DatasetError(f"'{run_dir}': the card's threshold {card['threshold']} is not that of best.safetensors "
                               f"({best['threshold']}); the folder was changed after training.")
        card.pop("tensors_sha256", None)
        card.pop("format_version", None)
    else:
        split = _recorded_split(run_dir)
        summary = {
            "model_config": model_config(config.model, in_channels=in_channels, **config.model_overrides),
            "threshold": best["threshold"], "val_dice": round(best["val_dice"], 4), "best_epoch": best["epoch"],
            "epochs_run": _epochs_logged(run_dir), "stopped_by": "not finished (exported from best.safetensors)",
            "train_seconds": None, "device": None, "environment": None, "scans": split["scans"] if split else {},
        }
        card = build_card(config, summary, name or config.model, version or "0.1.0",
                          intended_use or INTENDED_USE_RESEARCH, None, "", "see config.json")
        card["validation"] = {"volumetric_dice_roi": summary["val_dice"]}
        if split is not None:  # what the run trained on, as its trainer recorded it
            styles = split["styles"].get("train")
            card["training"]["data"] = {"manifest": split["manifest"], **({"styles": styles} if styles else {})}
            card["validation"]["scans"] = len(split["scans"].get("val", []))
    card["exported_from"] = {"run": str(run_dir.resolve()), "best_epoch": best["epoch"],
                             "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for key, value in (("name", name), ("version", version), ("intended_use", intended_use)):
        if value is not None:
            card[key] = value
    # Checked before anything is written: a name or version the card cannot hold is refused, not saved.
    _check_card(card, "the exported model card")
    atlas = read_atlas(run_dir / ATLAS_FILE) if InputSpec.from_dict(config.input).applicator_prior == "atlas" else None
    save_weights(model.eval(), weights_dir, card, atlas=atlas)
    load_weights(weights_dir)  # the folder must load exactly as segment and Slicer will load it
    return Path(weights_dir)


def _check_card(card: dict, what: str) -> None:
    """Raise WeightsError if ``card`` (before saving: no checksum yet) would not load, as JSON reads it back."""
    validate_card(json.loads(json.dumps({**card, "format_version": CARD_FORMAT, "tensors_sha256": "0" * 64})), what)


def _recorded_split(run_dir: Path) -> Optional[dict]:
    """The run's ``splits.json`` (written by runs since session 13), or None for an older run."""
    path = run_dir / SPLITS_FILE
    if not path.is_file():
        return None
    try:
        split = json.loads(path.read_text())
        return {"manifest": str(split["manifest"]), "scans": dict(split["scans"]), "styles": dict(split["styles"])}
    except (ValueError, KeyError, TypeError):
        raise DatasetError(f"'{path}' is not the split record a training run writes; the folder was changed "
                           "after training.") from None


def _epochs_logged(run_dir: Path) -> int:
    import csv

    log = run_dir / "log.csv"
    return len(list(csv.DictReader(open(log, newline="")))) if log.is_file() else 0


ENSEMBLE_COMBINATION = ("mean of the members' logits, each shifted by logit(its own threshold); threshold 0.5 on the "
                        "sigmoid of the mean (models/ensemble.py)")
# Card fields that describe one trained network, not the ensemble: they move under ensemble.members.
_MEMBER_ONLY = ("training", "validation", "test", "generalisation", "exported_from", "threshold_selection",
                "quality_calibration", "tensors_sha256", "format_version", "created", "software")


def _member_entry(card: dict) -> dict:
    """What the ensemble card keeps of one member: identity, threshold and how it was trained."""
    entry = {k: card[k] for k in ("name", "version", "threshold", "tensors_sha256")}
    for key in ("training", "validation", "exported_from"):
        if key in card:
            entry[key] = card[key]
    if "test" in card:
        entry["test"] = {k: v for k, v in card["test"].items() if k != "scans"}
    return entry


def _data_kind(card: dict) -> str:
    """A member's training data in one phrase (its card's ``training.data.kind``, else its manifest)."""
    data = (card.get("training") or {}).get("data") or {}
    return str(data.get("kind") or data.get("manifest") or "not recorded")


def _same_input(a: dict, b: dict) -> bool:
    """Two cards' input specs agree apart from their CTV atlas (the ensemble feeds member 0's to all)."""
    strip = lambda spec: {k: v for k, v in spec.items() if k != "ctv_atlas"}  # noqa: E731
    return strip(a) == strip(b)


def export_ensemble(member_folders, weights_dir, name: str, version: str, intended_use: Optional[str] = None,
                    test_manifest=None, command: str = "", device: str = "cpu") -> Path:
    """Combine trained weights folders into one ensemble weights folder (:class:`~...models.ensemble.OutputEnsemble`).

    The members must share the architecture, its configuration and the input spec (window, HU window,
    prior, metal reduction, ROI); with the ``"atlas"`` prior every member gets member 0's CTV atlas.
    Each member's ``model.safetensors`` is copied unchanged as ``member<i>.safetensors``.
    The card keeps member 0's quality thresholds and postprocessing; each member's identity, threshold
    and training record go under ``ensemble.members``.

    Args:
        member_folders: Two or more weights folders (``mnetim train`` / ``mnetim export`` output).
        weights_dir: New (or empty) folder for the ensemble.
        name, version: Card fields of the ensemble.
        intended_use: Default: member 0's statement.
        test_manifest: Optional manifest of scans that **no member** was trained or validated on: the
            ensemble is measured on them through the full pipeline, as ``mnetim train`` measures its test
            split, and the card's ``test`` holds the result.
        command: The command line, recorded as ``training.command``.
        device: Device for the test measurement.

    Returns:
        ``weights_dir``, after checking that it loads.

    Raises:
        WeightsError: a member does not load, members differ in architecture/configuration/input, a
            member is itself an ensemble, or ``weights_dir`` already holds files.
        DatasetError: ``test_manifest`` is unreadable or empty.
    """
    from ...models.ensemble import MAX_MEMBERS, OutputEnsemble  # torch

    folders = [Path(f) for f in member_folders]
    if not 2 <= len(folders) <= MAX_MEMBERS:
        raise WeightsError(f"An ensemble needs 2 to {MAX_MEMBERS} weights folders, not {len(folders)}.")
    loaded = [load_weights(f) for f in folders]
    cards = [card.raw for _, card in loaded]
    first = cards[0]
    for folder, card in zip(folders, cards):
        if "ensemble" in card:
            raise WeightsError(f"'{folder}' is itself an ensemble; combine its members' folders instead.")
        for key, same in (("architecture", card["architecture"] == first["architecture"]),
                          ("config", card["config"] == first["config"]),
                          ("input", _same_input(card["input"], first["input"]))):
            if not same:
                raise WeightsError(f"'{folder}' differs from '{folders[0]}' in its card's {key}: ensemble members must "
                                   "take the same input through the same network configuration.")
    weights_dir = Path(weights_dir)
    if weights_dir.exists() and (not weights_dir.is_dir() or any(weights_dir.iterdir())):
        raise WeightsError(f"'{weights_dir}' already exists and is not an empty folder; choose a new folder for the "
                           "weights.")  # checked before the test scans are segmented, not after
    weights_dir.parent.mkdir(parents=True, exist_ok=True)
    records = None
    if test_manifest is not None:
        records = read_manifest(test_manifest)
        if not records:
            raise DatasetError(f"The test manifest '{test_manifest}' lists no scans.")
    thresholds = [float(c["threshold"]) for c in cards]
    model = OutputEnsemble([m for m, _ in loaded], thresholds).eval()
    card = {k: v for k, v in first.items() if k not in _MEMBER_ONLY}
    styles: dict = {}
    for c in cards:
        for style, count in ((c.get("training") or {}).get("data") or {}).get("styles", {}).items():
            styles[style] = max(styles.get(style, 0), count)
    card.update({
        "name": name, "version": version, "threshold": 0.5,
        "threshold_selection": "0.5, where the members' votes balance: " + ENSEMBLE_COMBINATION,
        "intended_use": intended_use or first["intended_use"],
        "ensemble": {"member_thresholds": thresholds, "combination": ENSEMBLE_COMBINATION,
                     "ctv_atlas": "member 0's" if loaded[0][1].atlas is not None else "none",
                     "members": [_member_entry(c) for c in cards]},
        "training": {"command": command or "mnetim ensemble " + " ".join(str(f) for f in folders),
                     "data": {"kind": f"an ensemble of {len(cards)} trained networks (see ensemble.members) trained on: "
                                      + "; ".join(dict.fromkeys(_data_kind(c) for c in cards)),
                              **({"styles": styles} if styles else {})}},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": f"MnetImSegment {__version__}",
    })
    # Checked before anything is written: a name or version the card cannot hold is refused, not saved.
    _check_card(card, "the ensemble's model card")
    atlas = loaded[0][1].atlas
    member_files = [f / TENSORS for f in folders]  # copied byte for byte (checked by load_weights above)
    if records is not None:
        # As train_and_export: the numbers in the card are those of the saved file, read back.
        with tempfile.TemporaryDirectory(prefix=".ensemble-", dir=weights_dir.parent) as tmp:
            staging = save_weights(model, Path(tmp) / "weights", card, atlas=atlas, member_files=member_files)
            rows = evaluate_scans(Segmenter(staging, device=device), records)
        card["test"] = card_test_section(rows)
        card["test"]["manifest"] = str(test_manifest)
    save_weights(model, weights_dir, card, atlas=atlas, member_files=member_files)
    load_weights(weights_dir)  # the folder must load exactly as segment and Slicer will load it
    return weights_dir
