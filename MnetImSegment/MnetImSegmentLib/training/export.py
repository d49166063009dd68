"""Finish a run: evaluate the held-out test scans through the real inference pipeline, write the card.

The test Dice in the card is measured exactly as a user would get it: the full ``Segmenter`` on the
original CT grid (ROI location, crop, windows, paste-back, threshold, largest component), against
the original mask, never on the training crops.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__
from ..roi import RoiSpec
from ..windows import InputSpec
from .data import read_volume_pair
from .trainer import TrainConfig, Trainer, dice

INTENDED_USE_RESEARCH = (
    "Research use. Weights trained with MnetImSegment; validate on your own institution's data before any use."
)


def evaluate_scans(segmenter, records, threshold: Optional[float] = None) -> list[dict]:
    """Per-scan volumetric Dice and volumes of the full pipeline against the masks."""
    rows = []
    for r in records:
        image, mask = read_volume_pair(r)
        truth = mask.array == 1 if mask.array.max() > 1 else mask.array > 0
        result = segmenter.segment(image, threshold=threshold)
        voxel_ml = float(np.prod(image.geometry.spacing)) / 1000
        rows.append({"scan_id": r.scan_id, "vd": round(dice(result.mask.array, truth), 4),
                     "pred_ml": round(result.volume_ml, 2), "truth_ml": round(float(truth.sum()) * voxel_ml, 2),
                     "roi_method": result.roi.method, "seconds": round(result.seconds["total"], 2)})
    return rows


def train_and_export(manifest, run_dir, config: TrainConfig, name: str, version: str = "0.1.0",
                     intended_use: str = INTENDED_USE_RESEARCH, training_data: Optional[dict] = None,
                     command: str = "", resume: bool = False, progress: bool = True) -> dict:
    """Train, evaluate the test split, export ``run_dir/weights`` and ``run_dir/summary.json``."""
    from ..inference import Segmenter
    from ..weights import save_weights

    trainer = Trainer(manifest, run_dir, config, progress=progress)
    summary = trainer.run(resume=resume)
    card = {
        "name": name,
        "version": version,
        "architecture": config.model,
        "config": summary["model_config"],
        "input": dict(InputSpec.from_dict(config.input).to_dict(), roi=RoiSpec.from_dict(config.roi).to_dict()),
        "threshold": summary["threshold"],
        "threshold_selection": "best mean volumetric Dice on the validation scans (ROI crops), "
                               "candidates 0.10-0.90 in steps of 0.05",
        "postprocessing": {"largest_component": True},
        "intended_use": intended_use,
        "paper": "Huang M, Feng C, Sun D, Cui M, Zhao D. Segmentation of Clinical Target Volume From CT Images "
                 "for Cervical Cancer Using Deep Learning. Technol Cancer Res Treat. 2023;22. doi:10.1177/15330338221139164",
        "training": {
            "command": command, "seed": config.seed, "config": config.to_dict(),
            "data": training_data or {"manifest": str(manifest)},
            "scans": {k: len(v) for k, v in summary["scans"].items()},
            "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
            "stopped_by": summary["stopped_by"], "seconds": summary["train_seconds"],
            "device": summary["device"], "environment": summary["environment"],
        },
        "validation": {"volumetric_dice_roi": summary["val_dice"], "scans": len(summary["scans"]["val"])},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": f"MnetImSegment {__version__}",
    }
    # Weights are written first without test metrics, then evaluated through the real loader,
    # so the numbers in the card are those of the file that ships.
    staging = Path(run_dir) / "weights.staging"
    save_weights(trainer.model, staging, card)
    segmenter = Segmenter(staging, device=config.device)
    rows = evaluate_scans(segmenter, trainer.splits["test"])
    vds = [r["vd"] for r in rows]
    card["test"] = {
        "volumetric_dice_mean": round(float(np.mean(vds)), 4) if vds else None,
        "volumetric_dice_median": round(float(np.median(vds)), 4) if vds else None,
        "volumetric_dice_min": round(float(np.min(vds)), 4) if vds else None,
        "scans": rows,
        "how": "full inference pipeline (ROI, crop, windows, paste-back, threshold, largest component) on the "
               "original CT grid against the original mask",
    }
    for f in staging.iterdir():
        f.unlink()
    staging.rmdir()
    save_weights(trainer.model, Path(run_dir) / "weights", card)
    summary["test"] = card["test"]
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
